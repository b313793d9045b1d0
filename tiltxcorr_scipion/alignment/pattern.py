"""A pattern fixed in the camera frame: detect it, estimate it, subtract it.

What an imperfect gain reference leaves (pixel gains, column offsets) is the
same in every view while the specimen moves and changes with tilt. In a
correlation of two views it adds a peak at zero shift (smeared into a streak
across the tilt axis once one view is stretched) that can outweigh the
specimen's own peak: the chain then locks at zero.

Detection: correlate high-passed views pairwise *without* stretching, in the
camera frame, at zero shift and at the four one-pixel shifts. A pattern of
pixel-sized detail gives a spike (the zero-shift value far above its
neighbours); the specimen gives a smooth peak, and at zero shift only if the
views happen to be aligned already. The pattern is deemed present when the
spike is significant over all pairs (`SPIKE_T`) and makes up most of the
zero-shift correlation (`SPIKE_SHARE`).

Removal: the mean over views of the high-passed views holds the pattern in
full and the specimen only faintly (the specimen moves about between views);
each view has that mean subtracted, scaled by least squares to the view
(counting cameras scale the pattern with the dose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .memory import items_per_chunk

#: Side of the central crop the detection looks at (working pixels).
DETECTION_CROP = 256
#: The spike must be this many standard errors above zero, over the pairs...
SPIKE_T = 6.0
#: ...and at least this share of the zero-shift correlation...
SPIKE_SHARE = 0.5
#: ...and at least this large (normalised correlation): weaker patterns do no harm.
SPIKE_MIN = 0.003
#: ...and as strong between views a third of the series apart in tilt (at least this share of
#: it): a camera pattern is the same in every view, a specimen that is aligned already looks
#: alike only in views of nearby tilts.
FAR_RATIO = 0.5
FAR_FRACTION = 3
#: Sigma (cycles/pixel) of the inverted Gaussian high-pass of the pattern estimate.
PATTERN_HIGH_PASS = 0.03


@dataclass(frozen=True)
class PatternTest:
    """The detection's figures: median spike and zero-shift correlation, spike t value."""

    present: bool
    spike: float
    share: float
    t_value: float
    far_ratio: float = 0.0

    def describe(self) -> str:
        return (f"zero-shift spike {self.spike:.3f} ({100 * self.share:.0f}% of the zero-shift "
                f"correlation, t = {self.t_value:.0f}; {100 * self.far_ratio:.0f}% of it between "
                "views far apart in tilt)")


def detect_fixed_pattern(views: torch.Tensor, angles: torch.Tensor,
                         usable: torch.Tensor) -> PatternTest:
    """Whether views `(b, h, w)` share a fixed pattern (see the module docstring).

    Pairs are consecutive usable views in tilt order; only a central crop of
    `DETECTION_CROP` pixels is used, so this costs little.
    """
    b, h, w = views.shape
    order = [v for v in torch.argsort(angles, stable=True).tolist() if usable[v]]
    if len(order) < 3:
        return PatternTest(False, 0.0, 0.0, 0.0)
    crop_h, crop_w = min(h, DETECTION_CROP), min(w, DETECTION_CROP)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    index = torch.tensor(order, device=views.device)
    crops = views[:, top:top + crop_h, left:left + crop_w][index].to(torch.float32)
    # pixel-scale detail only: each pixel less the mean of its four neighbours
    high = crops[:, 1:-1, 1:-1] - 0.25 * (crops[:, :-2, 1:-1] + crops[:, 2:, 1:-1]
                                          + crops[:, 1:-1, :-2] + crops[:, 1:-1, 2:])
    near = _spikes(high[:-1], high[1:])
    far_lag = max(2, len(order) // FAR_FRACTION)
    far = _spikes(high[:-far_lag], high[far_lag:]) if len(order) > far_lag else near
    spike, zero = near
    n = spike.numel()
    spread = float(spike.std()) if n > 1 else float("inf")
    t_value = float(spike.mean()) / max(spread / n ** 0.5, 1e-12)
    median_spike = float(spike.median())
    median_zero = float(zero.median())
    share = median_spike / median_zero if median_zero > 0 else 0.0
    far_ratio = float(far[0].median()) / median_spike if median_spike > 0 else 0.0
    present = (t_value >= SPIKE_T and share >= SPIKE_SHARE and median_spike >= SPIKE_MIN
               and far_ratio >= FAR_RATIO)
    return PatternTest(present, median_spike, share, t_value, far_ratio)


def _spikes(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of high-passed crops: the zero-shift spike over its 4 neighbours, and the NCC.

    A few pairs at a time: the products stay small enough to be reused memory.
    """
    # per pair, alive at once: one square or product of crops (each is summed, then freed)
    chunk = items_per_chunk(4 * first.shape[-2] * first.shape[-1], first.device, cached=True)
    parts = [_spikes_of(first[k:k + chunk], second[k:k + chunk])
             for k in range(0, first.shape[0], chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _spikes_of(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = first.shape[-2:]
    a = first[:, 1:rows - 1, 1:cols - 1]
    norm_a = a.square().sum(dim=(1, 2)).double().cpu().numpy()

    def ncc(dy: int, dx: int) -> torch.Tensor:
        c = second[:, 1 + dy:rows - 1 + dy, 1 + dx:cols - 1 + dx]
        norm_c = c.square().sum(dim=(1, 2)).double().cpu().numpy()
        norm = torch.from_numpy(np.sqrt(np.maximum(norm_a * norm_c, 1e-60)))
        return (a * c).sum(dim=(1, 2)).double().cpu() / norm

    zero = ncc(0, 0)
    around = (ncc(0, 1) + ncc(0, -1) + ncc(1, 0) + ncc(-1, 0)) / 4
    return zero - around, zero


def remove_fixed_pattern(views: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Subtract the fixed pattern from views `(b, h, w)` in place; returns each view's scale `(b,)`.

    The pattern is the mean of the `usable` views, high-passed (inverted
    Gaussian of sigma `PATTERN_HIGH_PASS` cycles/pixel); each view (usable
    or not) loses `a_i` times it, `a_i` its least-squares scale. The mean is
    summed in float64, so it does not depend on how many views a chunk holds.
    """
    b, h, w = views.shape
    ky = torch.fft.fftfreq(h, device=views.device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, device=views.device, dtype=torch.float64)
    high_pass = 1.0 - torch.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2)
                                / (2 * PATTERN_HIGH_PASS ** 2))
    total = torch.zeros(h, w, dtype=torch.float64, device=views.device)
    members = torch.nonzero(usable.to(views.device)).flatten()
    # per view: the gathered view and its float64 copy; later its scaled pattern (float32)
    chunk = items_per_chunk((4 + 8) * h * w, views.device)
    for first in range(0, members.numel(), chunk):
        total += views[members[first:first + chunk]].sum(dim=0, dtype=torch.float64)
    spectrum = torch.fft.rfft2(total / max(1, members.numel()))
    pattern = torch.fft.irfft2(spectrum * high_pass, s=(h, w)).to(torch.float32)  # (h, w)
    energy = float(pattern.square().sum())
    scales = torch.zeros(b, dtype=torch.float64)
    if energy <= 0:
        return scales
    for first in range(0, b, chunk):
        block = views[first:first + chunk]
        scale = torch.einsum("nhw,hw->n", block.to(torch.float32), pattern) / energy  # (k,)
        block -= scale[:, None, None].to(block.dtype) * pattern.to(block.dtype)
        scales[first:first + block.shape[0]] = scale.double().cpu()
    return scales
