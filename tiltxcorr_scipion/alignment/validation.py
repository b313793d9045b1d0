"""Input checks: every problem becomes a ValueError a person can act on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..options import MAX_TILT_DEG


def views_preview(numbers: Sequence, limit: int = 8) -> str:
    """'view 3' or 'views 3, 4 and 9 more', for view numbers in whatever numbering the caller uses."""
    shown = ", ".join(str(i) for i in numbers[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return ("view " if len(numbers) == 1 else "views ") + shown + more


class ViewError(ValueError):
    """Some views cannot be aligned.

    `views` are their indices in the engine's input (0-based positions in
    `tilt_series`); `problem` says what is wrong with them, `advice` what to
    do. A caller that numbers views differently (1-based stack positions,
    say) words the message with `describe`.
    """

    def __init__(self, views: Sequence[int], problem: str, advice: str = "") -> None:
        self.views = [int(v) for v in views]
        self.problem = problem
        self.advice = advice
        super().__init__(f"{views_preview(self.views)} (0-based): {problem}"
                         + (f"; {advice}" if advice else ""))

    def describe(self, number_of) -> str:
        """The problem with each view named by `number_of(index)` (e.g. its stack position)."""
        return f"{views_preview([number_of(v) for v in self.views])}: {self.problem}"


def check_stack(tilt_series) -> tuple[int, int, int]:
    """`(b, h, w)` of a floating-point `(b, h, w)` tensor of at least 2 views, or a ValueError."""
    if not isinstance(tilt_series, torch.Tensor):
        raise ValueError(f"tilt_series must be a torch.Tensor of shape (b, h, w), "
                         f"got {type(tilt_series).__name__}")
    if tilt_series.ndim != 3:
        raise ValueError(f"tilt_series must have shape (b, h, w), got shape {tuple(tilt_series.shape)}")
    if not tilt_series.is_floating_point():
        raise ValueError(f"tilt_series must hold floating-point pixels, got {tilt_series.dtype}; "
                         "convert it with .float()")
    b, h, w = tilt_series.shape
    return int(b), int(h), int(w)


def check_angles(tilt_angles, n_views: int, tilt_axis_angle: float) -> torch.Tensor:
    """Validate the geometry of an alignment; return the angles as a float64 CPU tensor `(b,)`.

    Checked: at least 2 views, one finite tilt angle per view within
    +-82 degrees (IMOD's limit for stretching), a finite axis angle.
    """
    if n_views < 2:
        raise ValueError(f"a tilt series needs at least 2 views to be aligned, got {n_views}")
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).detach().cpu().reshape(-1)
    if angles.numel() != n_views:
        raise ValueError(f"got {angles.numel()} tilt angles for {n_views} views: "
                         "give exactly one angle per view, in stack order")
    if not torch.isfinite(angles).all():
        bad = torch.nonzero(~torch.isfinite(angles)).flatten().tolist()
        raise ViewError(bad, "tilt angle is not a finite number", "correct the tilt angles")
    too_high = torch.nonzero(angles.abs() > MAX_TILT_DEG).flatten().tolist()
    if too_high:
        worst = float(angles.abs().max())
        raise ViewError(too_high, f"tilted beyond +-{MAX_TILT_DEG:g} degrees (up to "
                                  f"{worst:.1f}): cosine stretching is undefined there",
                        "exclude those views")
    if not math.isfinite(float(tilt_axis_angle)):
        raise ValueError(f"tilt axis angle must be a finite number of degrees, got {tilt_axis_angle}")
    return angles


def check_shifts(shifts, n_views: int, name: str = "shifts") -> torch.Tensor:
    """Shifts `(b, 2)` `(dy, dx)` as a float64 CPU tensor, or a ValueError naming `name`.

    None gives zeros.
    """
    if shifts is None:
        return torch.zeros(n_views, 2, dtype=torch.float64)
    shifts = torch.as_tensor(shifts).detach().to(device="cpu", dtype=torch.float64)
    if shifts.shape != (n_views, 2):
        raise ValueError(f"{name} must have shape ({n_views}, 2), one (dy, dx) per view, "
                         f"got {tuple(shifts.shape)}")
    bad = torch.nonzero(~torch.isfinite(shifts).all(dim=1)).flatten().tolist()
    if bad:
        raise ValueError(f"{name} of view {bad[0]} (0-based) is not a finite number")
    return shifts
