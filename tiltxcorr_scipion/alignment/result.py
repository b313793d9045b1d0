"""The detailed result of an alignment run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TiltxcorrResult:
    """What `align_tilt_series` found, all in the input's view order.

    Attributes
    ----------
    shifts
        `(b, 2)` float32 `(dy, dx)` in input pixels: moving the content of
        view i by `+shifts[i]` aligns it (as `fourier_shift_image_2d` moves
        content). The reference view gets `(0, 0)`.
    correlation
        `(b,)` float32 normalised cross-correlation (-1..1) between each view,
        aligned and stretched, and the reference it was correlated with,
        computed on the filtered, tapered images. NaN for the reference view.
    peak_height
        `(b,)` float32 height of the filtered cross-correlation peak for each
        view's last correlation (arbitrary units, comparable within a series).
        NaN for the reference view.
    reference_view
        Input index of the reference view: the one with the smallest |tilt|.
    paired_with
        `(b,)` int64 input index of the view each view was correlated against
        (its lower-tilt neighbour); -1 for the reference view.
    binning
        Binning factor of the views the engine read (shifts are still
        reported in input pixels); the final pass may bin further on noisy
        data (`final_binning`).
    unusable
        `(b,)` bool: views judged to hold no usable specimen (blocked by an
        opaque object, dark, bright, blank or constant). No other view is
        aligned to them or through them: the chain bridges them (the next
        view pairs with the last usable one, see `paired_with`), and they are
        left out of every reference. Their shift is only a best estimate
        (measured if their own peak was significant, else interpolated in
        tilt between the usable views on either side).
    reasons
        `(b,)` strings: why each unusable view is unusable, e.g.
        ``"dark: mean 12.1 sd below the neighbouring views, 100% of it unlike
        the specimen"`` or ``"blank: no significant correlation with the
        neighbouring views (peak significance 4.2 and 3.9, 31.0 across it)"``;
        ``""`` for usable views. They name no other view.
    notes
        `(b,)` strings: what the engine did for each view beyond the plain
        method, ``"; "``-joined, e.g. ``"paired across unusable views"``,
        ``"wider search (+-24 px): first-stage peak not significant"``,
        ``"shift interpolated between the usable views on either side"``;
        ``""`` when nothing special. They name no other view (use
        `paired_with`).
    peak_significance
        `(b,)` float32: height of each view's final correlation peak over the
        root mean square of its correlation map. Peaks of pure noise reach
        about 4 to 5; a clean specimen gives 20 to 100. NaN for the
        reference view.
    series_notes
        What the engine found and did for the whole series, e.g.
        ``"fixed pattern detected (zero-shift spike 0.47 of the correlation):
        removed"``, ``"first stage at binning 8: peaks weak at binning 2"``,
        ``"low-pass lowered to 0.070 cycles/input pixel: neighbouring views
        agree only below it"``.
    fixed_pattern_removed
        Whether a fixed camera pattern was subtracted before correlating.
    first_stage_binning, final_binning
        Binning factors (relative to the input) of the first stage and of
        the final pass.
    low_pass_used
        The final pass's low-pass cutoff in cycles per pixel of the final
        binning (0: none).
    residual
        `(b,)` float32 the self-check's held-out residual of each view, input
        pixels: the median, over the view's links to its nearest views in
        tilt on both sides, of each link's misfit under the solve of all the
        other links (`selfcheck`); NaN for views with no links (unusable).
    adjacent_correlation
        `(b,)` float32 the mean normalised correlation, after alignment and
        in the correlation band, of each view with its nearest usable views
        in tilt (NaN where none).
    unreliable
        True when the self-check found no self-consistent alignment: the
        shifts are the best the engine has, not to be trusted (see
        `unreliable_reason`).
    unreliable_reason
        Why, with the figure that says so (``""`` when reliable).
    path
        The candidate path kept, e.g. ``"plain"`` or ``"adaptive, 4x binned"``.
    check_binning
        Binning (relative to the input) at which the self-check decided.
    """

    shifts: torch.Tensor
    correlation: torch.Tensor
    peak_height: torch.Tensor
    reference_view: int
    paired_with: torch.Tensor
    binning: int
    unusable: torch.Tensor | None = None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    peak_significance: torch.Tensor | None = None
    series_notes: tuple[str, ...] = field(default=())
    fixed_pattern_removed: bool = False
    first_stage_binning: int = 0
    final_binning: int = 0
    low_pass_used: float = 0.0
    residual: torch.Tensor | None = None
    adjacent_correlation: torch.Tensor | None = None
    unreliable: bool = False
    unreliable_reason: str = ""
    path: str = "plain"
    check_binning: int = 0

    def unusable_views(self) -> list[int]:
        """Input indices (0-based) of the views judged unusable, in input order."""
        if self.unusable is None:
            return []
        return torch.nonzero(self.unusable.cpu()).flatten().tolist()
