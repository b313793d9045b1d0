"""Output files appear whole or not at all.

Every file the package writes goes through `atomic_output`: it is written
under a temporary name in the same folder and renamed into place only once
complete (a rename within a folder is atomic), so a crash, a kill or a full
disk never leaves a file that looks complete but is not. A failure removes
the temporary file. Leftovers of a killed process match `TEMPORARY_PATTERN`
and are removed by `remove_temporaries` (the protocol does it on Continue).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
from collections.abc import Iterator

__all__ = ["TEMPORARY_MARK", "OutputError", "atomic_output", "remove_temporaries",
           "describe_os_error"]

#: Inserted before a temporary file's random suffix: ``<name>.partial-<hex>``.
TEMPORARY_MARK = ".partial-"


class OutputError(OSError):
    """An output file could not be written; the message names it and the cause."""


def describe_os_error(path: str, error: OSError) -> str:
    """One line for a failed write: the file, the cause in plain words, what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "the disk is full (or the quota is exceeded): free space or write elsewhere"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "permission denied (read-only folder?): choose a folder you can write to"
    elif error.errno == errno.ENOENT:
        cause = "its folder does not exist"
    else:
        cause = error.strerror or str(error)
    return f"cannot write {path}: {cause}"


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    On any exception the temporary file is removed and the exception
    propagates; an ``OSError`` becomes an `OutputError` that names `path` and
    says what to do. An existing `path` is replaced only on success.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f"{os.path.basename(path)}{TEMPORARY_MARK}"
                                     f"{secrets.token_hex(4)}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            failure = OutputError(describe_os_error(path, error))
            failure.errno = error.errno
            raise failure from error
        raise


def remove_temporaries(folder: str) -> list[str]:
    """Remove the temporary files `atomic_output` left in `folder` (a killed run); return them."""
    removed = []
    for leftover in glob.glob(os.path.join(glob.escape(folder), f"*{TEMPORARY_MARK}*")):
        with contextlib.suppress(OSError):
            os.remove(leftover)
            removed.append(leftover)
    return sorted(removed)
