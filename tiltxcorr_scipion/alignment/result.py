"""The detailed result of an alignment run."""

from __future__ import annotations

from dataclasses import dataclass

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
        Binning factor the correlations were computed at (shifts are still
        reported in input pixels).
    """

    shifts: torch.Tensor
    correlation: torch.Tensor
    peak_height: torch.Tensor
    reference_view: int
    paired_with: torch.Tensor
    binning: int
