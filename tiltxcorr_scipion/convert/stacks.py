"""Reading tilt-series views from MRC stacks (``.mrc``, ``.st``, ``.mrcs``, ``.ali``).

Scipion's tilt images point at ``(index, file)``: a 1-based position in a
stack. Tilt series imported by tomo are sorted by tilt angle while the stack
keeps its acquisition order, so views are always read by stack position,
never by item order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import mrcfile
import numpy as np

__all__ = ["StackReadError", "stack_shape", "read_stack_views"]


class StackReadError(ValueError):
    """A stack could not be read: missing, not MRC, truncated, or an index out of range."""


def _open(path: str):
    if not os.path.exists(path):
        raise StackReadError(f"stack file {path!r} does not exist (moved or deleted?)")
    try:
        # permissive: some writers leave header quirks; real damage is caught below.
        return mrcfile.mmap(path, mode="r", permissive=True)
    except (ValueError, OSError) as exc:
        raise StackReadError(f"cannot read {path!r} as MRC: {exc}") from exc


def stack_shape(path: str) -> tuple[int, int, int]:
    """`(n, h, w)` of an MRC stack (a single 2-D image counts as n = 1)."""
    with _open(path) as mrc:
        data = mrc.data
        if data is None:
            raise StackReadError(f"{path!r} has no readable data (truncated or not MRC)")
        if data.ndim == 2:
            return (1, *data.shape)
        return tuple(int(s) for s in data.shape)  # type: ignore[return-value]


def read_stack_views(path: str, stack_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Read the given views of one stack, memory-mapped, as float32.

    Parameters
    ----------
    path
        MRC stack (any extension); data laid out ``(n, h, w)`` (``data[z, y, x]``).
    stack_indices
        `(k,)` 1-based stack positions (Scipion's tilt-image index), any order.

    Returns
    -------
    `(k, h, w)` float32 array, view j = stack position ``stack_indices[j]``.

    Raises
    ------
    StackReadError
        Missing or unreadable file, truncated data, or an index outside ``1..n``.
    """
    idx = np.asarray(stack_indices, dtype=np.int64).reshape(-1)
    with _open(path) as mrc:
        data = mrc.data
        if data is None:
            raise StackReadError(f"{path!r} has no readable data (truncated or not MRC)")
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise StackReadError(f"{path!r} holds a {data.ndim}-D array, expected a (n, h, w) stack")
        n = data.shape[0]
        bad = idx[(idx < 1) | (idx > n)]
        if bad.size:
            raise StackReadError(
                f"{path!r} has {n} views; tilt images point at positions {bad.tolist()} "
                f"(1-based) outside it")
        try:
            views = np.asarray(data[idx - 1], dtype=np.float32)
        except (ValueError, OSError) as exc:  # a truncated file shows up when the pages are read
            raise StackReadError(f"cannot read views of {path!r}: {exc}") from exc
    return views
