"""The area to correlate: IMOD's XMinAndMax, YMinAndMax and BordersInXandY.

The area is given in input pixels as it lies on the zero-tilt view. As IMOD's
tiltxcorr does, each view correlates the box that holds the same specimen: the
box keeps its size, its centre's distance from the image centre across the
tilt axis shrinks by `cos(tilt)` (the specimen is foreshortened towards the
axis), and it is kept inside the view. The engine does not cut the views: it
tapers the correlation window down at the box's edges, so the shifts still
refer to the whole view and the tilt axis stays at the image centre (IMOD's
default, without LeaveTiltAxisShifted).
"""

from __future__ import annotations

import torch

from .binning import BinnedViews


def area_boxes(area: tuple[tuple[int, int], tuple[int, int]], tilts: torch.Tensor,
               across: torch.Tensor, binned: BinnedViews) -> torch.Tensor:
    """Boxes `(n, 4)` float64 `(top, left, height, width)` in `binned` pixels, one per tilt.

    Parameters
    ----------
    area
        `((first_row, last_row), (first_col, last_col))` in input pixels,
        numbered from 0, both ends included, at zero tilt.
    tilts
        `(n,)` tilt angles in degrees at which to place the box.
    across
        `(2,)` unit vector across the tilt axis in `(row, col)`.
    binned
        The binned views (their binning and origin place the box).

    `top` and `left` are continuous coordinates of the box's first edge
    (binned pixel `j` spans `j - 0.5 .. j + 0.5`).
    """
    (r0, r1), (c0, c1) = area
    h, w = binned.full_shape
    size = torch.tensor([r1 - r0 + 1.0, c1 - c0 + 1.0], dtype=torch.float64)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    offset = torch.tensor([(r0 + r1) / 2, (c0 + c1) / 2], dtype=torch.float64) - centre
    p = across.detach().cpu().to(torch.float64)
    cosines = torch.cos(torch.deg2rad(tilts.detach().cpu().to(torch.float64)))  # (n,)
    moved = offset[None] + ((cosines - 1.0) * float(offset @ p))[:, None] * p[None]  # (n, 2)
    first = centre[None] + moved - (size[None] - 1) / 2  # first pixel's centre
    limit = torch.tensor([h, w], dtype=torch.float64) - size  # keep the box in the view
    first = torch.minimum(torch.maximum(first, torch.zeros(2, dtype=torch.float64)), limit)
    f = binned.factor
    origin = torch.tensor(binned.origin, dtype=torch.float64)
    start = (first - 0.5 - origin - (f - 1) / 2) / f  # continuous edge in binned pixels
    extent = size / f
    return torch.cat([start, extent.expand(len(first), 2)], dim=1)


def describe_area(area: tuple[tuple[int, int], tuple[int, int]] | None) -> str:
    """Human-readable area, e.g. ``"columns 100-899, rows 0-1023 (at zero tilt)"``."""
    if area is None:
        return "the whole view"
    (r0, r1), (c0, c1) = area
    return f"columns {c0}-{c1}, rows {r0}-{r1} (input pixels at zero tilt)"

