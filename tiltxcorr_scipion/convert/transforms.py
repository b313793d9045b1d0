"""2-D alignment transforms: engine shifts <-> IMOD/Scipion matrices.

`(n, 3, 3)` IMOD forward (raw -> aligned) transforms, `(n, 2)` shifts
`(dy, dx)` with ``DX = dx``, ``DY = dy``; "first P, then N" is ``N @ P``.
The convention is written once, in ``docs/conventions.md``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "identity_transforms",
    "shifts_to_transforms",
    "compose_transforms",
    "rotation_angles_deg",
    "is_identity",
]


def identity_transforms(n: int) -> np.ndarray:
    """`(n, 3, 3)` float64 identity matrices."""
    return np.tile(np.eye(3), (n, 1, 1))


def shifts_to_transforms(shifts_dy_dx: np.ndarray) -> np.ndarray:
    """Pure-shift transforms from engine shifts.

    Parameters
    ----------
    shifts_dy_dx
        `(n, 2)` `(dy, dx)` in pixels: moving the content of view i by
        ``+shifts[i]`` aligns it.

    Returns
    -------
    `(n, 3, 3)` float64 ``[[1, 0, dx], [0, 1, dy], [0, 0, 1]]``.
    """
    shifts = np.asarray(shifts_dy_dx, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shifts must be (n, 2) (dy, dx), got shape {shifts.shape}")
    out = identity_transforms(len(shifts))
    out[:, 0, 2] = shifts[:, 1]  # DX = dx
    out[:, 1, 2] = shifts[:, 0]  # DY = dy
    return out


def compose_transforms(new: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """``new @ previous`` per view: apply ``previous`` first, then ``new``.

    ``previous`` None means no earlier alignment (``new`` is returned as float64).
    Both `(n, 3, 3)`.
    """
    new = np.asarray(new, dtype=np.float64)
    if previous is None:
        return new.copy()
    previous = np.asarray(previous, dtype=np.float64)
    if previous.shape != new.shape:
        raise ValueError(f"cannot compose transforms of shapes {new.shape} and {previous.shape}")
    return np.einsum("nij,njk->nik", new, previous)


def rotation_angles_deg(transforms: np.ndarray) -> np.ndarray:
    """`(n,)` counter-clockwise rotation (degrees) of the linear part of each transform.

    With X along columns and Y along rows (IMOD, Y up on screen), a rotation by
    ``theta`` has ``A21 = sin(theta)``, ``A11 = cos(theta)``. A tilt axis at angle
    ``a`` in the raw image sits at ``a + theta`` in the transformed image.
    """
    t = np.asarray(transforms, dtype=np.float64)
    return np.degrees(np.arctan2(t[:, 1, 0], t[:, 0, 0]))


def is_identity(transforms: np.ndarray, atol: float = 1e-6) -> bool:
    """True when every `(3, 3)` matrix in `(n, 3, 3)` is the identity within ``atol``."""
    t = np.asarray(transforms, dtype=np.float64)
    return bool(np.allclose(t, np.eye(3), atol=atol))
