"""Input checks: every problem becomes a ValueError a person can act on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MAX_STRETCH_TILT = 82.0  # IMOD refuses to stretch beyond this: 1/cos(82) is already 7.2


def _views_preview(indices: Sequence[int], limit: int = 8) -> str:
    """'view 3' or 'views 3, 4 and 9 more' (0-based stack positions)."""
    shown = ", ".join(str(i) for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ("view " if len(indices) == 1 else "views ") + shown + more


def check_tilt_series(tilt_series: torch.Tensor, tilt_angles, tilt_axis_angle: float,
                      *, min_size: int, chunk_views: int = 8) -> torch.Tensor:
    """Validate the inputs of an alignment and return the angles as a float64 tensor `(b,)`.

    Checked: a floating `(b, h, w)` stack of at least 2 views, each view at
    least `min_size` pixels on a side, finite pixels, no constant view, one
    finite tilt angle per view within +-82 degrees, a finite axis angle.
    The pixel checks run a few views at a time so that a large stack costs no
    large temporary.
    """
    if not isinstance(tilt_series, torch.Tensor):
        raise ValueError(f"tilt_series must be a torch.Tensor of shape (b, h, w), "
                         f"got {type(tilt_series).__name__}")
    if tilt_series.ndim != 3:
        raise ValueError(f"tilt_series must have shape (b, h, w), got shape {tuple(tilt_series.shape)}")
    if not (tilt_series.is_floating_point()):
        raise ValueError(f"tilt_series must hold floating-point pixels, got {tilt_series.dtype}; "
                         "convert it with .float()")
    b, h, w = tilt_series.shape
    if b < 2:
        raise ValueError(f"a tilt series needs at least 2 views to be aligned, got {b}")
    if min(h, w) < min_size:
        raise ValueError(f"views of {h} x {w} pixels are too small: the taper and the "
                         f"correlation need at least {min_size} pixels on each side "
                         f"(after binning)")

    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).detach().cpu().reshape(-1)
    if angles.numel() != b:
        raise ValueError(f"got {angles.numel()} tilt angles for {b} views: "
                         "give exactly one angle per view, in stack order")
    if not torch.isfinite(angles).all():
        bad = torch.nonzero(~torch.isfinite(angles)).flatten().tolist()
        raise ValueError(f"tilt angle of {_views_preview(bad)} (0-based): not a finite number")
    too_high = torch.nonzero(angles.abs() > MAX_STRETCH_TILT).flatten().tolist()
    if too_high:
        worst = float(angles.abs().max())
        raise ValueError(f"{_views_preview(too_high)} (0-based): tilted beyond "
                         f"+-{MAX_STRETCH_TILT:g} degrees (up to {worst:.1f}): cosine "
                         "stretching is undefined there; exclude those views")
    if not math.isfinite(float(tilt_axis_angle)):
        raise ValueError(f"tilt axis angle must be a finite number of degrees, got {tilt_axis_angle}")

    non_finite: list[int] = []
    constant: list[int] = []
    for start in range(0, b, chunk_views):
        chunk = tilt_series[start:start + chunk_views].flatten(1)
        low, high = torch.aminmax(chunk, dim=1)  # one pass; NaN and inf show up here
        finite = torch.isfinite(low) & torch.isfinite(high)
        non_finite += (torch.nonzero(~finite).flatten() + start).tolist()
        constant += (torch.nonzero(finite & (high <= low)).flatten() + start).tolist()
    if non_finite:
        raise ValueError(f"{_views_preview(non_finite)} (0-based): NaN or infinite pixels; "
                         "the stack file may be corrupt: exclude or repair the view")
    if constant:
        raise ValueError(f"{_views_preview(constant)} (0-based): constant (blank) image, "
                         "nothing to correlate: exclude the view")
    return angles
