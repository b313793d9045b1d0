"""Aligned (interpolated) tilt-series stacks: apply the transforms, bin, write MRC.

The stack is read memory-mapped and processed one view at a time, so memory
stays at a few copies of one view whatever the stack size.

Interpolation
-------------
Shift-only transforms (the coarse alignment) are applied in Fourier space:
``out(r) = in(r - d)``, computed as ``F_out(k) = F_in(k) exp(-2 pi i k . d)``.
This is exact for sub-pixel shifts of band-limited images (no interpolation
blur, unlike bilinear). The view is mirrored by 32 pixels on each side
first, so the jump between opposite edges of a non-periodic image does not
ring into it. Pixels whose source lies outside the input view (content the
shift brings in from beyond the edge) are filled with the view's mean, as
IMOD's ``newstack`` does.
Transforms with a rotation or magnification (an earlier alignment composed
in) fall back to bicubic interpolation about the image centre, in IMOD's
convention ``X' = A (X - Xc) + D + Xc``, with the same mean fill.

Binning
-------
The aligned view is binned by averaging ``binning x binning`` blocks of
pixels, as ``newstack -bin`` does (mean densities are kept). When a
dimension is not a multiple of the binning, the leftover pixels are trimmed
equally from both edges (the extra one, if odd, from the high edge).

Coordinates: rows of the MRC data are IMOD's Y, columns its X; the image
centre is ``((h - 1) / 2, (w - 1) / 2)`` in 0-based pixel indices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import mrcfile
import mrcfile.mrcmemmap
import numpy as np
import torch
from mrcfile.dtypes import HEADER_DTYPE

__all__ = ["apply_transform_2d", "bin_image_2d", "open_stack", "write_aligned_stack"]

_IDENTITY_TOLERANCE = 1e-6
_MIRROR = 32  # pixels mirrored on each side before a Fourier shift


def apply_transform_2d(image: torch.Tensor, transform: np.ndarray) -> torch.Tensor:
    """Apply one IMOD forward transform to one image.

    Parameters
    ----------
    image
        `(h, w)` float32 view.
    transform
        `(3, 3)` ``[[A11, A12, DX], [A21, A22, DY], [0, 0, 1]]``: raw pixel
        ``(X, Y) = (col, row)`` goes to ``A (X - Xc, Y - Yc) + (DX, DY) + (Xc, Yc)``.

    Returns
    -------
    torch.Tensor
        `(h, w)` float32 transformed view; pixels whose source lies outside
        the input are set to the input's mean.
    """
    h, w = image.shape
    matrix = np.asarray(transform, dtype=np.float64)
    fill = float(image.mean())
    if np.allclose(matrix[:2, :2], np.eye(2), atol=_IDENTITY_TOLERANCE, rtol=0):
        dx, dy = float(matrix[0, 2]), float(matrix[1, 2])
        shifted = _fourier_shift(image, dy, dx)
        rows = torch.arange(h, dtype=torch.float64)[:, None] - dy
        cols = torch.arange(w, dtype=torch.float64)[None, :] - dx
    else:
        shifted, rows, cols = _affine(image, matrix)
    outside = (rows < 0) | (rows > h - 1) | (cols < 0) | (cols > w - 1)
    return torch.where(outside, torch.tensor(fill, dtype=shifted.dtype), shifted)


def _fourier_shift(image: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """Move the content of `(h, w)` `image` by `(+dy, +dx)` pixels.

    The image is mirrored by `_MIRROR` pixels on each side before the FFT, so
    that its periodic extension has no jump at the edges: a jump would ring
    (Gibbs) far into the image under a sub-pixel shift.
    """
    h, w = image.shape
    if dy == 0.0 and dx == 0.0:
        return image.clone()
    py, px = min(_MIRROR, h - 1), min(_MIRROR, w - 1)
    padded = torch.nn.functional.pad(image[None, None], (px, px, py, py), mode="reflect")[0, 0]
    hp, wp = padded.shape
    ky = torch.fft.fftfreq(hp, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(wp, dtype=torch.float64)[None, :]
    # separable phase ramp: exp(-2 pi i (ky dy + kx dx)) = column factor x row factor
    phase = (torch.exp(-2j * torch.pi * ky * dy) * torch.exp(-2j * torch.pi * kx * dx)
             ).to(torch.complex64)
    shifted = torch.fft.irfft2(torch.fft.rfft2(padded) * phase, s=(hp, wp))
    return shifted[py:py + h, px:px + w]


def _affine(image: torch.Tensor, matrix: np.ndarray):
    """Bicubic resampling; returns the image and the source row/col of every output pixel."""
    h, w = image.shape
    inverse = np.linalg.inv(matrix[:2, :2])
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])  # (X, Y)
    rows_out, cols_out = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                        torch.arange(w, dtype=torch.float64), indexing="ij")
    out_x = cols_out - centre[0] - matrix[0, 2]
    out_y = rows_out - centre[1] - matrix[1, 2]
    cols = inverse[0, 0] * out_x + inverse[0, 1] * out_y + centre[0]
    rows = inverse[1, 0] * out_x + inverse[1, 1] * out_y + centre[1]
    grid = torch.stack([2 * cols / max(w - 1, 1) - 1, 2 * rows / max(h - 1, 1) - 1], dim=-1)
    sampled = torch.nn.functional.grid_sample(
        image[None, None], grid[None].to(image.dtype), mode="bicubic",
        padding_mode="border", align_corners=True)[0, 0]
    return sampled, rows, cols


def bin_image_2d(image: torch.Tensor, binning: int) -> torch.Tensor:
    """Average `binning x binning` blocks of a `(h, w)` image -> `(h // b, w // b)`.

    Leftover rows/columns are trimmed equally from both edges.
    """
    if binning == 1:
        return image
    h, w = image.shape
    hb, wb = h // binning, w // binning
    top, left = (h - hb * binning) // 2, (w - wb * binning) // 2
    block = image[top:top + hb * binning, left:left + wb * binning]
    return block.reshape(hb, binning, wb, binning).mean(dim=(1, 3))


def _plausible_header(path: str) -> bool:
    """Whether the first 1024 bytes could be an MRC header of this file, in either byte order."""
    with open(path, "rb") as handle:
        raw = handle.read(1024)
    if len(raw) < 1024:
        return False
    size = os.path.getsize(path)
    for order in ("<", ">"):
        header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order))[0]
        dims = [int(header[k]) for k in ("nx", "ny", "nz")]
        if min(dims) >= 1 and 0 <= int(header["nsymbt"]) <= size - 1024:
            return True
    return False


def open_stack(path: str) -> mrcfile.mrcmemmap.MrcMemmap:
    """Open an MRC stack read-only, memory-mapped; the caller closes it.

    Files that break the MRC2014 standard in harmless ways (older IMOD and
    SerialEM ``.st`` files) are read permissively after a strict attempt.

    Raises
    ------
    ValueError
        If the file is missing or not readable as MRC (the message names it).
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file; give the path of an MRC stack (.mrc, .st, .ali)")
    try:
        return mrcfile.mmap(path, mode="r")
    except ValueError as error:
        strict_error = error
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error}") from None
    if _plausible_header(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            handle = mrcfile.mmap(path, mode="r", permissive=True)
        if handle.data is not None:
            return handle
        handle.close()
    raise ValueError(f"{path} is not a readable MRC stack ({strict_error}); check it with "
                     "mrcfile.validate() or IMOD's header program")


def write_aligned_stack(in_path: str, out_path: str, transforms: np.ndarray, binning: int,
                        pixel_size: float, *,
                        progress: Callable[[int, int], None] | None = None) -> None:
    """Write the aligned, binned stack of a tilt series as MRC (mode 2, float32).

    Parameters
    ----------
    in_path
        MRC stack (``.mrc``, ``.st``... are all MRC), `(n, h, w)`; read
        memory-mapped, one view at a time.
    out_path
        Output MRC stack, `(n, h // binning, w // binning)`; overwritten if
        it exists.
    transforms
        `(n, 3, 3)` IMOD forward transforms in stack order (pixels of the
        input); identity (a disabled view) leaves the view unshifted.
    binning
        Integer binning factor >= 1 (block averaging).
    pixel_size
        Input pixel size in Angstrom; the header voxel size is written as
        ``pixel_size * binning``.
    progress
        Optional ``callable(done, total)``, called after each view.

    Raises
    ------
    ValueError
        If the file cannot be read, the number of transforms does not match
        the number of views, or an argument is out of range (the message
        names the file and what to change).
    """
    if isinstance(binning, bool) or not isinstance(binning, (int, np.integer)) or binning < 1:
        raise ValueError(f"binning must be an integer >= 1, got {binning!r}")
    binning = int(binning)
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel size must be a positive number of Angstrom, got {pixel_size!r}")
    matrices = np.asarray(transforms, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3):
        raise ValueError(f"transforms must have shape (n, 3, 3), got {matrices.shape}")
    if not np.all(np.isfinite(matrices)):
        raise ValueError("transforms contain NaN or infinite values")
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise ValueError(f"{out_path} is the input stack: choose another output file name")

    with open_stack(in_path) as source:
        data = source.data
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"{in_path} holds a {data.ndim}-D volume; expected a stack of 2-D views")
        n, h, w = data.shape
        if len(matrices) != n:
            raise ValueError(f"{in_path} has {n} views but {len(matrices)} transforms were given: "
                             "give one transform per view, in stack order")
        hb, wb = h // binning, w // binning
        if hb < 1 or wb < 1:
            raise ValueError(f"binning {binning} is larger than the {w} x {h} views of {in_path}")

        total, total_sq = 0.0, 0.0
        low, high = np.inf, -np.inf
        with mrcfile.new_mmap(out_path, shape=(n, hb, wb), mrc_mode=2, overwrite=True) as out:
            out.set_image_stack()  # ispg 0: n views, not a volume
            out.voxel_size = float(pixel_size) * binning
            for i in range(n):
                view = torch.from_numpy(np.asarray(data[i], dtype=np.float32).copy())
                if not torch.isfinite(view).all():
                    raise ValueError(f"{in_path}: view {i + 1} contains NaN or infinite values")
                aligned = bin_image_2d(apply_transform_2d(view, matrices[i]), binning)
                values = aligned.numpy()
                out.data[i] = values
                total += float(values.sum(dtype=np.float64))
                total_sq += float(np.square(values, dtype=np.float64).sum())
                low, high = min(low, float(values.min())), max(high, float(values.max()))
                if progress is not None:
                    progress(i + 1, n)
            count = n * hb * wb
            mean = total / count
            out.header.dmin, out.header.dmax, out.header.dmean = low, high, mean
            out.header.rms = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
            out.add_label(f"tiltxcorr-scipion: aligned (Fourier shift), binned by {binning}")
