"""Resampling views: the cosine stretch, earlier alignments, aligned stacks.

Every resampling in the package goes through `warp_images` (interpolation)
or `fourier_shift_image` (exact shifts), with one edge rule, IMOD's: an
output pixel whose source lies outside the input view (beyond the centres of
its edge pixels) gets the view's mean, as newstack and tiltxcorr fill it.
Inside, interpolation near the edge repeats the border pixels rather than
blending in zeros, so no dark fringe appears for the correlation to lock on.

Coordinates are `(row, col)` pixel indices. IMOD's transforms use `(X, Y) =
(col, row)` and act about the centre `(X, Y) = (w / 2, h / 2)` in 0-based
indices, as newstack applies them (docs/conventions.md): `imod_source_maps`
converts them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["apply_imod_transforms", "fourier_shift_image", "imod_forward_transforms",
           "imod_source_maps", "warp_images"]

_EDGE_TOLERANCE = 1e-6  # normalised units: a source exactly on the edge pixel is inside
_MIRROR = 32  # pixels mirrored on each side before a Fourier shift
_IDENTITY_TOLERANCE = 1e-6


#: Bytes of temporaries `warp_images` needs per output pixel: its sampling grid (two float32)
#: and its output (float32); what a chunked caller counts per view (`memory.items_per_chunk`).
WARP_BYTES_PER_PIXEL = 12


def warp_images(images: torch.Tensor, source_maps: torch.Tensor, *,
                mode: str = "bilinear", fill_outside: bool = True,
                out_shape: tuple[int, int] | None = None,
                fill: torch.Tensor | None = None, first_row: int = 0) -> torch.Tensor:
    """Resample images `(n, h, w)` through affine maps from output to input pixels.

    Parameters
    ----------
    images
        `(n, h, w)` float views (any device).
    source_maps
        `(n, 2, 3)` affine maps: output pixel `(row, col)` takes the input's
        value at `M[:, :2] @ (row, col) + M[:, 2]` (row, col order).
    mode
        ``"bilinear"`` or ``"bicubic"``.
    fill_outside
        Give sources outside the view the view's mean (IMOD's rule); False
        repeats the border pixels there instead, which saves a pass over the
        pixels when the caller's window leaves those pixels out anyway.
    out_shape
        `(rows, cols)` of the output; default the input's `(h, w)`.
    fill
        `(n,)` values for sources outside the view instead of the views' means (a caller
        that knows them saves a pass over the pixels).
    first_row
        Output rows are `first_row` to `first_row + rows - 1` of the maps' output: a slab of
        a larger output, each row sampled as in the whole (the same float32 grid), so the
        result does not depend on how the output is cut into slabs.

    Returns
    -------
    `(n, rows, cols)` float32; sources outside the view get the view's mean.
    """
    n, h, w = images.shape
    out_h, out_w = out_shape or (h, w)
    device = images.device
    maps = source_maps.to(device=device, dtype=torch.float64)
    # Normalised grid coordinates (align_corners=True: -1 and 1 are the edge
    # pixel centres), built as two broadcast multiply-adds per output plane:
    # several times faster on CPU than F.affine_grid's batched matmul.
    to_norm = torch.tensor([2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)], dtype=torch.float64,
                           device=device)
    rows = torch.arange(first_row, first_row + out_h, dtype=torch.float32, device=device)
    cols = torch.arange(out_w, dtype=torch.float32, device=device)
    grid = torch.empty(n, out_h, out_w, 2, dtype=torch.float32, device=device)
    for plane, axis in ((0, 1), (1, 0)):  # grid x = source col, grid y = source row
        coeff = maps[:, axis] * to_norm[axis]  # (n, 3)
        along_cols = coeff[:, 1, None, None].float() * cols[None, None, :]  # (n, 1, cols)
        along_rows = (coeff[:, 0, None].float() * rows[None, :]
                      + (coeff[:, 2] - 1.0)[:, None].float())  # (n, rows)
        torch.add(along_cols, along_rows[:, :, None], out=grid[..., plane])
    out = F.grid_sample(images[:, None].to(torch.float32), grid, mode=mode,
                        padding_mode="border", align_corners=True)[:, 0]
    if not fill_outside:
        return out
    outside = (grid.abs() > 1.0 + _EDGE_TOLERANCE).any(dim=-1)  # (n, rows, cols)
    means = images.to(torch.float32).mean(dim=(-2, -1)) if fill is None else fill
    return torch.where(outside, means.to(out)[:, None, None], out)


def imod_forward_transforms(linear, shifts, centre_offset=(-0.5, -0.5)) -> torch.Tensor:
    """IMOD forward transforms `(n, 3, 3)` float64, in ``(X, Y)``, of the engine's maps.

    The engine maps ``aligned = L_i (raw - c') + shifts[i] + c'`` (`linear` `L`
    `(n, 2, 2)` and `shifts` `(n, 2)`, both in ``(row, col)``) about a centre
    ``c'`` that lies at `centre_offset` ``(row, col)`` from IMOD's centre
    ``c = (h / 2, w / 2)`` (`imod_source_maps`); by default the engine's own,
    ``((h - 1) / 2, (w - 1) / 2)``. About IMOD's centre the same map shifts by
    ``shifts[i] + (I - L_i) centre_offset``.
    """
    linear = torch.as_tensor(linear, dtype=torch.float64)
    offset = torch.as_tensor(centre_offset, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    moved = (torch.as_tensor(shifts, dtype=torch.float64)
             + ((eye - linear) @ offset[:, None])[..., 0])
    out = torch.eye(3, dtype=torch.float64).repeat(linear.shape[0], 1, 1)
    out[:, :2, :2] = linear.flip(-1).flip(-2)  # (X, Y) = (col, row)
    out[:, :2, 2] = moved.flip(-1)
    return out


def imod_source_maps(transforms, shape: tuple[int, int]) -> torch.Tensor:
    """Source maps `(n, 2, 3)` (for `warp_images`) of IMOD forward transforms `(n, 3, 3)`.

    IMOD's forward (raw -> aligned) transform maps raw ``(X, Y)`` to
    ``A (X - Xc, Y - Yc) + (DX, DY) + (Xc, Yc)`` about the centre
    ``(Xc, Yc) = (w / 2, h / 2)`` (0-based pixel indices: newstack's
    ``xcenIn = nxBin / 2.`` with cubinterp's 1-based ``xco = xc + 1``), X along
    columns; the source of an aligned pixel is its inverse.
    """
    t = torch.as_tensor(np.asarray(transforms, dtype=np.float64) if not torch.is_tensor(transforms)
                        else transforms, dtype=torch.float64)
    h, w = shape
    centre_xy = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    inverse = torch.linalg.inv(t[:, :2, :2])  # (n, 2, 2) acting on (X, Y)
    # X_src = inv (X' - c - D) + c
    offset_xy = centre_xy - (inverse @ (centre_xy[None, :, None] + t[:, :2, 2:]))[:, :, 0]
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # (X, Y) <-> (row, col)
    linear = swap @ inverse @ swap
    offset = offset_xy.flip(-1)
    return torch.cat([linear, offset[:, :, None]], dim=2)


def fourier_shift_image(image: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """Move the content of an `(h, w)` image by `(+dy, +dx)` pixels, exactly (band-limited).

    ``out(r) = in(r - d)``, computed as ``F_out(k) = F_in(k) exp(-2 pi i k.d)``:
    no interpolation blur. The image is mirrored by 32 pixels on each side
    first, so its periodic extension has no jump at the edges (a jump would
    ring far into the image). Pixels whose source lies outside the view get
    its mean.
    """
    h, w = image.shape
    image = image.to(torch.float32)
    if dy == 0.0 and dx == 0.0:
        return image.clone()
    py, px = min(_MIRROR, h - 1), min(_MIRROR, w - 1)
    padded = F.pad(image[None, None], (px, px, py, py), mode="reflect")[0, 0]
    hp, wp = padded.shape
    ky = torch.fft.fftfreq(hp, dtype=torch.float64, device=image.device)[:, None]
    kx = torch.fft.rfftfreq(wp, dtype=torch.float64, device=image.device)[None, :]
    # separable phase ramp: exp(-2 pi i (ky dy + kx dx)) = row factor x column factor
    phase = (torch.exp(-2j * math.pi * ky * dy) * torch.exp(-2j * math.pi * kx * dx)
             ).to(torch.complex64)
    shifted = torch.fft.irfft2(torch.fft.rfft2(padded) * phase, s=(hp, wp))[py:py + h, px:px + w]
    rows = torch.arange(h, dtype=torch.float64, device=image.device)[:, None] - dy
    cols = torch.arange(w, dtype=torch.float64, device=image.device)[None, :] - dx
    outside = (rows < -_EDGE_TOLERANCE) | (rows > h - 1 + _EDGE_TOLERANCE) | \
        (cols < -_EDGE_TOLERANCE) | (cols > w - 1 + _EDGE_TOLERANCE)
    return torch.where(outside, image.mean(), shifted)


def apply_imod_transforms(images: torch.Tensor, transforms, *, mode: str = "bilinear"
                          ) -> torch.Tensor:
    """Resample views `(n, h, w)` into the aligned frame of IMOD forward transforms `(n, 3, 3)`.

    ``mode`` ``"bilinear"``/``"bicubic"`` interpolates; ``"fourier"`` applies
    shift-only transforms exactly (`fourier_shift_image`) and falls back to
    bicubic for those with a rotation or magnification. Sources outside a
    view get its mean. Returns `(n, h, w)` float32.
    """
    t = np.asarray(transforms.cpu() if torch.is_tensor(transforms) else transforms,
                   dtype=np.float64)
    n, h, w = images.shape
    if t.shape != (n, 3, 3):
        raise ValueError(f"transforms must be ({n}, 3, 3), got {t.shape}")
    if mode != "fourier":
        return warp_images(images, imod_source_maps(t, (h, w)), mode=mode)
    out = torch.empty(n, h, w, dtype=torch.float32, device=images.device)
    for i in range(n):
        if np.allclose(t[i, :2, :2], np.eye(2), atol=_IDENTITY_TOLERANCE, rtol=0):
            out[i] = fourier_shift_image(images[i], float(t[i, 1, 2]), float(t[i, 0, 2]))
        else:
            out[i] = warp_images(images[i:i + 1], imod_source_maps(t[i:i + 1], (h, w)),
                                 mode="bicubic")[0]
    return out
