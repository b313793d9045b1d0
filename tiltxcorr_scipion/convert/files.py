"""Output files appear whole or not at all.

Every file the package writes goes through `atomic_output`: it is written
under a temporary name in the same folder and renamed into place only once
complete (a rename within a folder is atomic), so a crash, a kill or a full
disk never leaves a file that looks complete but is not. A failure removes
the temporary file. `atomic_outputs` does the same for a group of files that
belong together (the files of one tilt series): all are written first, then
all renamed. Leftovers of a killed process carry `TEMPORARY_MARK` in their
name and are removed by `remove_temporaries` (the protocol does it on
Continue, the command line before it writes).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
from collections.abc import Iterator

__all__ = ["TEMPORARY_MARK", "OutputError", "atomic_output", "atomic_outputs",
           "describe_os_error", "remove_temporaries"]

#: Inserted before a temporary file's random suffix: ``<name>.partial-<hex>``.
TEMPORARY_MARK = ".partial-"


class OutputError(OSError):
    """An output file could not be written; the message names it and the cause."""


def describe_os_error(path: str, error: OSError) -> str:
    """One line for a failed write: the file (its final name), the cause in plain words, what to do."""
    path = path.split(TEMPORARY_MARK)[0]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "the disk is full (or the quota is exceeded): free space or write elsewhere"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "permission denied (read-only folder?): choose a folder you can write to"
    elif error.errno == errno.ENOENT:
        cause = "its folder does not exist"
    else:
        cause = error.strerror or str(error)
    return f"cannot write {path}: {cause}"


def _temporary_name(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f"{os.path.basename(path)}{TEMPORARY_MARK}{secrets.token_hex(4)}")


def _as_output_error(path: str, error: OSError) -> OutputError:
    failure = OutputError(describe_os_error(path, error))
    failure.errno = error.errno
    return failure


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    On any exception the temporary file is removed and the exception
    propagates; an ``OSError`` becomes an `OutputError` that names `path` and
    says what to do. An existing `path` is replaced only on success.
    """
    temporary = _temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _as_output_error(path, error) from error
        raise


@contextlib.contextmanager
def atomic_outputs(paths: dict[str, str]) -> Iterator[dict[str, str]]:
    """Yield a temporary path for each of `paths` (same keys); rename them all on success.

    The renames come one after the other once every file is complete, so
    either all files appear or none (but for a kill in the instant between
    two renames). On any exception the temporary files are removed, and an
    ``OSError`` becomes an `OutputError` naming the file.
    """
    temporaries = {key: _temporary_name(path) for key, path in paths.items()}
    try:
        yield temporaries
        for key, temporary in temporaries.items():
            os.replace(temporary, paths[key])
    except BaseException as error:
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):
                os.remove(temporary)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _as_output_error(str(error.filename or "an output file"), error) from error
        raise


def remove_temporaries(folder: str, names: list[str] | None = None) -> list[str]:
    """Remove the temporary files a killed run left in `folder`; return them.

    With `names` (file names), only the temporaries of those files.
    """
    removed = []
    patterns = [f"{glob.escape(name)}{TEMPORARY_MARK}*" for name in names] if names else [
        f"*{TEMPORARY_MARK}*"]
    leftovers = [path for pattern in patterns
                 for path in glob.glob(os.path.join(glob.escape(folder), pattern))]
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            os.remove(leftover)
            removed.append(leftover)
    return sorted(removed)
