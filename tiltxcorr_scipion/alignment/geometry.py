"""Tilt geometry: axis directions, cosine stretching, shifts carried between frames.

Conventions (all in `(row, col)` pixel-index space):
- the image centre is the geometric centre `((h - 1) / 2, (w - 1) / 2)`;
- a tilt axis angle `a` (degrees from the Y axis, counter-clockwise positive,
  IMOD's RotationAngle) points along `(cos a, -sin a)`; the direction across
  the axis, along which tilting foreshortens the image, is `(sin a, cos a)`;
- stretching by a factor `k` about the centre scales distances across the
  axis by `k` and leaves distances along it unchanged: the matrix is
  `K = I + (k - 1) p p^T` with `p` the across-axis direction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def axis_directions(tilt_axis_angle: float, *, dtype=torch.float64, device=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors `(along, across)` of the tilt axis in `(row, col)` space, each `(2,)`."""
    a = math.radians(tilt_axis_angle)
    along = torch.tensor([math.cos(a), -math.sin(a)], dtype=dtype, device=device)
    across = torch.tensor([math.sin(a), math.cos(a)], dtype=dtype, device=device)
    return along, across


def image_centre(shape: tuple[int, int], *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Geometric centre `(2,)` of an `(h, w)` image in `(row, col)` index coordinates."""
    h, w = shape
    return torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=dtype, device=device)


def stretch_factors(inner_tilts: torch.Tensor, outer_tilts: torch.Tensor) -> torch.Tensor:
    """Cosine stretch `(n,)` that maps an outer (higher-tilt) view onto its inner neighbour.

    A thin specimen seen at tilt t is foreshortened by cos(t) across the
    axis, so the view at `outer` expands by `cos(inner) / cos(outer)` to
    match the view at `inner`. Angles in degrees.
    """
    return torch.cos(torch.deg2rad(inner_tilts)) / torch.cos(torch.deg2rad(outer_tilts))


def unstretch_shifts(shifts: torch.Tensor, factors: torch.Tensor, across: torch.Tensor
                     ) -> torch.Tensor:
    """Apply `K^-1` to shift vectors: `(n, 2)` shifts, `(n,)` factors, `(2,)` direction."""
    along_across = shifts @ across.to(shifts.dtype)  # (n,)
    correction = (1.0 / factors.to(shifts.dtype) - 1.0) * along_across
    return shifts + correction[:, None] * across.to(shifts.dtype)[None, :]


def stretch_images(images: torch.Tensor, factors: torch.Tensor, across: torch.Tensor,
                   centre: torch.Tensor, pre_shifts: torch.Tensor | None = None,
                   mode: str = "bicubic") -> torch.Tensor:
    """Stretch images `(n, h, w)` across the tilt axis about `centre`.

    Output pixel `r` takes the value of the input at
    `centre + K^-1 (r - centre) - pre_shift`, i.e. the view is first moved by
    `pre_shift` (content moves by `+pre_shift`), then stretched by `factors`
    `(n,)` about the centre. Samples outside the input repeat the border.
    """
    n, h, w = images.shape
    dtype, device = images.dtype, images.device
    rows = torch.arange(h, dtype=torch.float64, device=device) - centre[0]
    cols = torch.arange(w, dtype=torch.float64, device=device) - centre[1]
    across = across.to(device=device, dtype=torch.float64)
    proj = rows[:, None] * across[0] + cols[None, :] * across[1]  # (h, w), distance across axis
    scale = (1.0 / factors.to(device=device, dtype=torch.float64) - 1.0)[:, None, None]
    src_row = centre[0] + rows[None, :, None] + scale * proj[None] * across[0]  # (n, h, w)
    src_col = centre[1] + cols[None, None, :] + scale * proj[None] * across[1]
    if pre_shifts is not None:
        pre = pre_shifts.to(device=device, dtype=torch.float64)
        src_row = src_row - pre[:, 0, None, None]
        src_col = src_col - pre[:, 1, None, None]
    # grid_sample with align_corners=True: -1 and +1 are the centres of the edge pixels
    grid = torch.stack([src_col * (2.0 / (w - 1)) - 1.0, src_row * (2.0 / (h - 1)) - 1.0], dim=-1)
    out = F.grid_sample(images[:, None], grid.to(dtype), mode=mode, padding_mode="border",
                        align_corners=True)
    return out[:, 0]
