"""IMOD transform (``.xf``/``.prexf``/``.prexg``) and tilt-angle (``.tlt``) files.

Everything a user needs to continue in IMOD/etomo without Scipion: the coarse
alignment as tiltxcorr writes it (``.prexf``, view-to-previous), as
``xftoxg -nfit 0`` turns it into global transforms (``.prexg``, the file
``newstack -xform`` applies) and the tilt angles (``.tlt``), in IMOD's own
text formats. Each file is written whole or not at all (`atomic_output`).

IMOD composes transforms with ``xfmult(f, g)``, "f followed by g", the matrix
product ``G @ F``: xftoxg's rule ``g_i = f_i * g_(i-1)`` is
``G_i = G_(i-1) @ F_i``. How the files relate to the registered transforms,
and the transform convention itself, are in ``docs/conventions.md``.
"""

from __future__ import annotations

import math

import numpy as np

from .files import atomic_output

__all__ = [
    "format_xf_line",
    "global_to_previous",
    "previous_to_global",
    "read_tlt",
    "read_xf",
    "write_imod_files",
    "write_tlt",
    "write_xf",
]

_XF_FIELD = 12  # Fortran format (4f12.7, 2f12.3) of IMOD's xfwrite


# --------------------------------------------------------------------------- checks
def _check_transforms(transforms: np.ndarray, what: str = "transforms") -> np.ndarray:
    """Return `transforms` as float64 `(n, 3, 3)` affine matrices, or raise ValueError."""
    array = np.asarray(transforms, dtype=np.float64)
    if array.ndim != 3 or array.shape[1:] != (3, 3):
        raise ValueError(f"{what} must have shape (n, 3, 3), got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = sorted({int(i) + 1 for i in np.argwhere(~np.isfinite(array))[:, 0]})
        raise ValueError(f"{what} contain NaN or infinite values (views {bad}, 1-based)")
    if not np.allclose(array[:, 2, :], [0.0, 0.0, 1.0]):
        raise ValueError(f"{what} are not 2-D affine: the last row of each matrix must be [0, 0, 1]")
    return array


def _check_angles(tilt_angles: np.ndarray, n: int | None = None) -> np.ndarray:
    angles = np.asarray(tilt_angles, dtype=np.float64)
    if angles.ndim != 1:
        raise ValueError(f"tilt angles must have shape (n,), got {angles.shape}")
    if n is not None and angles.shape[0] != n:
        raise ValueError(f"{angles.shape[0]} tilt angles for {n} transforms: give one angle per view")
    if not np.all(np.isfinite(angles)):
        bad = [int(i) + 1 for i in np.flatnonzero(~np.isfinite(angles))]
        raise ValueError(f"tilt angles contain NaN or infinite values (views {bad}, 1-based)")
    return angles


# --------------------------------------------------------------------------- text formats
def _numbered_lines(path: str, what: str) -> list[tuple[int, str]]:
    """The lines of a text file, numbered from 1; a ValueError naming it if it is not text."""
    try:
        with open(path, encoding="ascii") as handle:
            return list(enumerate(handle, start=1))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of {what}: is it the right file?") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None



def _fortran_f(value: float, decimals: int) -> str:
    """``F12.<decimals>`` as IMOD's Fortran writes it (values rounding to 0 print unsigned)."""
    text = f"{value:{_XF_FIELD}.{decimals}f}"
    if float(text) == 0.0:
        text = f"{0.0:{_XF_FIELD}.{decimals}f}"
    return text


def format_xf_line(transform: np.ndarray) -> str:
    """One ``.xf`` line, ``A11 A12 A21 A22 DX DY``, in IMOD's fixed-width format.

    IMOD's ``xfwrite`` uses the Fortran format ``(4f12.7, 2f12.3)``: four
    matrix elements with 7 decimals and the two shifts (pixels) with 3
    decimals, each right-aligned in 12 columns, no separator.

    Parameters
    ----------
    transform
        `(3, 3)` affine matrix ``[[A11, A12, DX], [A21, A22, DY], [0, 0, 1]]``.

    Returns
    -------
    str
        72 characters, without the newline.
    """
    m = np.asarray(transform, dtype=np.float64)
    values = (m[0, 0], m[0, 1], m[1, 0], m[1, 1])
    return "".join(_fortran_f(v, 7) for v in values) + _fortran_f(m[0, 2], 3) + _fortran_f(m[1, 2], 3)


def write_xf(path: str, transforms: np.ndarray) -> str:
    """Write `(n, 3, 3)` transforms as an IMOD ``.xf`` file, one line per view.

    Returns the path written.
    """
    array = _check_transforms(transforms)
    with atomic_output(path) as temporary, open(temporary, "w") as handle:
        handle.writelines(format_xf_line(m) + "\n" for m in array)
    return path


def _parse_xf_line(line: str) -> list[float]:
    fields = line.split()
    if len(fields) != 6:
        # Fortran fixed width: fields touch when a value fills its 12 columns.
        stripped = line.rstrip("\r\n")
        if len(stripped) >= 6 * _XF_FIELD:
            fields = [stripped[i * _XF_FIELD:(i + 1) * _XF_FIELD] for i in range(6)]
    if len(fields) != 6:
        raise ValueError(f"expected 6 numbers (A11 A12 A21 A22 DX DY), found {len(line.split())}")
    return [float(f) for f in fields]


def read_xf(path: str) -> np.ndarray:
    """Read an IMOD ``.xf``/``.prexf``/``.prexg`` file.

    Parameters
    ----------
    path
        Text file with one line ``A11 A12 A21 A22 DX DY`` per view; blank
        lines are ignored.

    Returns
    -------
    numpy.ndarray
        `(n, 3, 3)` float64 transforms
        ``[[A11, A12, DX], [A21, A22, DY], [0, 0, 1]]``, in file order.

    Raises
    ------
    ValueError
        If a line is not six numbers (the message names the file and line).
    """
    rows = []
    for number, line in _numbered_lines(path, "IMOD transforms"):
        if not line.strip():
            continue
        try:
            a11, a12, a21, a22, dx, dy = _parse_xf_line(line)
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: not an IMOD transform line "
                             f"({error}): {line.strip()!r}") from None
        rows.append([[a11, a12, dx], [a21, a22, dy], [0.0, 0.0, 1.0]])
    if not rows:
        raise ValueError(f"{path} holds no transforms: is it an IMOD .xf file?")
    return np.array(rows, dtype=np.float64)


def write_tlt(path: str, tilt_angles: np.ndarray) -> str:
    """Write tilt angles (degrees) one per line as IMOD does (Fortran ``f7.2``).

    IMOD's ``.tlt`` files hold two decimals; angles are rounded to 0.01 degree.
    Returns the path written.
    """
    angles = _check_angles(tilt_angles)
    with atomic_output(path) as temporary, open(temporary, "w") as handle:
        handle.writelines(f"{a + 0.0:7.2f}\n" for a in angles)
    return path


def read_tlt(path: str) -> np.ndarray:
    """Read an IMOD ``.tlt``/``.rawtlt`` file: one tilt angle (degrees) per line.

    Blank lines are ignored. Returns `(n,)` float64 angles in file order.

    Raises
    ------
    ValueError
        If a line is not a single finite number, or the file is empty (the
        message names the file and the line).
    """
    angles = []
    for number, line in _numbered_lines(path, "tilt angles (one per line)"):
        text = line.strip()
        if not text:
            continue
        try:
            (value,) = (float(f) for f in text.split())
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected one tilt angle in degrees, "
                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}, line {number}: tilt angle {text!r} is not finite")
        angles.append(value)
    if not angles:
        raise ValueError(f"{path} holds no tilt angles: expected one angle (degrees) per line")
    return np.array(angles, dtype=np.float64)


# --------------------------------------------------------------------------- composition
def global_to_previous(transforms: np.ndarray) -> np.ndarray:
    """View-to-previous transforms (a ``.prexf``) from global ones.

    Parameters
    ----------
    transforms
        `(n, 3, 3)` global transforms ``T_i`` (raw -> aligned), in stack order.

    Returns
    -------
    numpy.ndarray
        `(n, 3, 3)` float64 ``F`` with ``F_1 = I`` and
        ``F_i = T_(i-1)^-1 @ T_i``: the transform taking view i onto view
        i-1, so that xftoxg's ``g_i = f_i * g_(i-1)`` (``G_i = G_(i-1) @ F_i``)
        rebuilds ``T_1^-1 @ T_i``.
    """
    array = _check_transforms(transforms)
    previous = np.empty_like(array)
    previous[0] = np.eye(3)
    if len(array) > 1:
        previous[1:] = np.linalg.inv(array[:-1]) @ array[1:]
    return previous


def _cumulative(previous: np.ndarray) -> np.ndarray:
    """``G_1 = I``, ``G_i = G_(i-1) @ F_i`` (xftoxg ignores ``F_1``)."""
    cumulative = np.empty_like(previous)
    cumulative[0] = np.eye(3)
    for i in range(1, len(previous)):
        cumulative[i] = cumulative[i - 1] @ previous[i]
    return cumulative


def _natural(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """IMOD's ``amat_to_rotmag``: (rotation, y-x rotation difference, mag, y-x mag difference)."""
    a11, a12, a21, a22 = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    xmag = math.hypot(a11, a21)
    xtheta = math.degrees(math.atan2(a21, a11))
    ymag = math.hypot(a12, a22)
    ytheta = math.degrees(math.atan2(-a12, a22))
    ydtheta = ytheta - xtheta
    if abs(ydtheta) > 180.0:
        ydtheta -= math.copysign(360.0, ydtheta)
    theta = xtheta + 0.5 * ydtheta
    if abs(theta) > 180.0:
        theta -= math.copysign(360.0, theta)
    return theta, ydtheta, 0.5 * (xmag + ymag), ymag - xmag


def _from_natural(theta: float, ydtheta: float, smag: float, ydmag: float) -> np.ndarray:
    """IMOD's ``rotmag_to_amat``: the `(2, 2)` matrix of natural parameters."""
    xmag, ymag = smag - ydmag / 2.0, smag + ydmag / 2.0
    xtheta, ytheta = math.radians(theta - ydtheta / 2.0), math.radians(theta + ydtheta / 2.0)
    return np.array([[xmag * math.cos(xtheta), -ymag * math.sin(ytheta)],
                     [xmag * math.sin(xtheta), ymag * math.cos(ytheta)]])


def _natural_average(cumulative: np.ndarray) -> np.ndarray:
    """xftoxg's average transform: mean of the natural parameters and of the shifts.

    Rotations are unwrapped so they change continuously around +-180 degrees,
    as xftoxg does (its ``RangeOfAnglesInAverage`` grouping is not needed:
    with the default range every view is in one group).
    """
    naturals = np.array([_natural(m) for m in cumulative])  # (n, 4)
    delta = 0.0
    for k in range(1, len(naturals)):
        difference = naturals[k - 1, 0] - (naturals[k, 0] + delta)
        if abs(difference) > 180.0:
            delta += math.copysign(360.0, difference)
        naturals[k, 0] += delta
    average = np.eye(3)
    average[:2, :2] = _from_natural(*naturals.mean(axis=0))
    average[:2, 2] = cumulative[:, :2, 2].mean(axis=0)
    return average


def previous_to_global(previous: np.ndarray, *, remove_average: bool = True) -> np.ndarray:
    """Global transforms from view-to-previous ones: ``xftoxg -nfit 0``.

    Parameters
    ----------
    previous
        `(n, 3, 3)` view-to-previous transforms ``F`` (a ``.prexf``); ``F_1``
        is ignored, as xftoxg does.
    remove_average
        If True (xftoxg's global alignment), multiply every cumulative
        transform by the inverse of their average, so the series is centred
        (for shifts: zero mean shift). If False, return the cumulative
        transforms, which align every view to the first one.

    Returns
    -------
    numpy.ndarray
        `(n, 3, 3)` float64 global transforms: ``G_1 = I``,
        ``G_i = G_(i-1) @ F_i`` (IMOD's ``g_i = f_i * g_(i-1)``), then
        ``A^-1 @ G_i`` with ``A`` the average of the ``G_i`` in IMOD's natural
        parameters (rotation, magnification, their x/y differences; shifts
        averaged directly).
    """
    array = _check_transforms(previous, "view-to-previous transforms")
    cumulative = _cumulative(array)
    if not remove_average:
        return cumulative
    return np.linalg.inv(_natural_average(cumulative)) @ cumulative


# --------------------------------------------------------------------------- files
def write_imod_files(paths: dict[str, str], transforms: np.ndarray,
                     tilt_angles: np.ndarray) -> list[str]:
    """Write a coarse alignment for IMOD/etomo: the ``prexf``, ``prexg`` and ``tlt`` of `paths`.

    Parameters
    ----------
    paths
        File path by kind, ``"prexf"``, ``"prexg"`` and ``"tlt"``; kinds left
        out are not written.
    transforms
        `(n, 3, 3)` registered transforms ``T_i`` (IMOD forward convention,
        pixels of the stack), one per view in stack order, disabled views
        included (identity).
    tilt_angles
        `(n,)` tilt angles in degrees, stack order.

    Returns
    -------
    list[str]
        The paths written.

    Notes
    -----
    ``.prexf``: view-to-previous transforms ``F_1 = I``,
    ``F_i = T_(i-1)^-1 @ T_i`` (`global_to_previous`), as tiltxcorr writes
    them. ``.prexg``: exactly what ``xftoxg -nfit 0`` computes from that
    ``.prexf`` (`previous_to_global`), i.e. ``C @ T_i`` with one constant
    ``C`` (the inverse of the average); for shift-only transforms
    ``DX_prexg = DX - mean(DX)`` and ``DY_prexg = DY - mean(DY)``.
    ``.tlt``: one angle per line, two decimals. All in IMOD's text formats
    (``(4f12.7, 2f12.3)`` for transforms, ``f7.2`` for angles). Each file
    appears whole or not at all.
    """
    array = _check_transforms(transforms)
    angles = _check_angles(tilt_angles, len(array))
    previous = global_to_previous(array)
    contents = {"prexf": lambda path: write_xf(path, previous),
                "prexg": lambda path: write_xf(path, previous_to_global(previous)),
                "tlt": lambda path: write_tlt(path, angles)}
    return [contents[kind](paths[kind]) for kind in ("prexf", "prexg", "tlt") if kind in paths]
