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

from .resample import warp_images


def axis_directions(tilt_axis_angle: float, *, dtype=torch.float64, device=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors `(along, across)` of the tilt axis in `(row, col)` space, each `(2,)`."""
    a = math.radians(tilt_axis_angle)
    along = torch.tensor([math.cos(a), -math.sin(a)], dtype=dtype, device=device)
    across = torch.tensor([math.sin(a), math.cos(a)], dtype=dtype, device=device)
    return along, across


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
                   mode: str = "bilinear", fill_outside: bool = True) -> torch.Tensor:
    """Stretch images `(n, h, w)` across the tilt axis about `centre`.

    Output pixel `r` takes the value of the input at
    `centre + K^-1 (r - centre) - pre_shift`, i.e. the view is first moved by
    `pre_shift` (content moves by `+pre_shift`), then stretched by `factors`
    `(n,)` about the centre. Sources outside the view get its mean
    (`resample.warp_images`; with `fill_outside=False` the border pixels).
    """
    device = images.device
    across = across.to(device=device, dtype=torch.float64)
    centre = centre.to(device=device, dtype=torch.float64)
    scale = 1.0 / factors.to(device=device, dtype=torch.float64) - 1.0  # (n,)
    inverse = (torch.eye(2, dtype=torch.float64, device=device)[None]
               + scale[:, None, None] * torch.outer(across, across)[None])  # (n, 2, 2) K^-1
    offset = centre[None] - inverse @ centre  # (n, 2)
    if pre_shifts is not None:
        offset = offset - pre_shifts.to(device=device, dtype=torch.float64)
    return warp_images(images, torch.cat([inverse, offset[:, :, None]], dim=2), mode=mode,
                       fill_outside=fill_outside)


def unfixed_motions(tilt_angles: torch.Tensor, tilt_axis_angle: float) -> torch.Tensor:
    """`(b, 2, 4)` shift patterns that no tilt series fixes, one column each.

    A 3-D translation `(X, Y, Z)` of the specimen moves its projection at
    tilt `t` by `Y` along the axis and by `X cos t + Z sin t` across it, and
    where the series' centre lies is a convention: a constant `(dy, dx)`, and
    `cos t` and `sin t` across the axis (degrees in, `(row, col)` out). Two
    estimates of a series' shifts may differ by any combination of these
    columns and still agree.
    """
    tilts = torch.deg2rad(torch.as_tensor(tilt_angles).detach().cpu().to(torch.float64))
    _, across = axis_directions(float(tilt_axis_angle))
    b = tilts.numel()
    return torch.stack([torch.tensor([1.0, 0.0], dtype=torch.float64).expand(b, 2),
                        torch.tensor([0.0, 1.0], dtype=torch.float64).expand(b, 2),
                        torch.cos(tilts)[:, None] * across, torch.sin(tilts)[:, None] * across],
                       dim=-1)
