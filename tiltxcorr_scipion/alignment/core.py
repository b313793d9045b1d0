"""Coarse alignment of a tilt series by stretched cross-correlation (IMOD tiltxcorr's method).

Outline (`_align`):
1. **Screen** the views (`screening`): constant, blocked, dark or bright views
   are judged unusable; opaque areas of the others (a grid bar's shadow) are
   filled with the specimen's mean so that only specimen is correlated.
2. **Fixed pattern** (`pattern`): a pattern that stays put in the camera
   frame is detected and subtracted (option `fixed_pattern`).
3. **First stage** (`first_stage`), on 2x or 4x binned copies, coarser while
   the peaks are weak: from the usable view with the smallest |tilt| (the
   reference), walking outwards on each side, each view is paired with the
   last usable view before it. The outer view is stretched across the tilt
   axis by `cos(inner) / cos(outer)` about the image centre, both are tapered,
   padded and cross-correlated through IMOD's filter; the peak is found on a
   coarse grid, its significance measured, and climbed exactly. A view that
   correlates with neither neighbour while they correlate across it is
   blank: flagged and bridged. Pair shifts are chained: with `e` the
   alignment shift of a view (content moves by `+e`), `e_outer = K^-1
   (e_inner + s)`, `K` the stretch, which keeps the tilt axis at the image
   centre (IMOD's "adjust the shift to bring the tilt axis to the true
   center"). Where peaks stay weak, every view is found again against the
   average of the views before it (`reference_walk`).
4. **Final pass** (`final_pass`), at working resolution (binned further and
   low-passed where neighbouring views agree only at low frequencies):
   every view, moved by its estimate, is stretched once into the reference
   view's frame and correlated with a weighted sum of the usable lower-tilt
   views of its branch (weights 1, `reference_memory`,
   `reference_memory**2`...; all 1 with `cumulative=True`, IMOD's
   CumulativeCorrelation). The residual shifts follow from a linear
   recursion. Views whose first-stage peak was not significant get a wider
   search, then a second pass.
5. Unusable views keep a best estimate: their own measurement if its peak is
   significant, else an interpolation in tilt between their usable
   neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..options import MAX_TILT_DEG, CoarseOptions, OptionError, check_binned_size
from .area import area_boxes
from .binning import BinnedViews, bin_stack
from .correlate import CorrelationFilter, PairCorrelator
from .final_pass import (
    LINK_LAGS,
    RESIDUAL_SEARCH,
    neighbour_frc,
    refine_by_links,
    refine_in_reference_frame,
)
from .first_stage import (
    STAGE1_MIN_SIZE,
    Z_GOOD,
    Z_LOW,
    Level,
    base_extra,
    branch_pairs,
    bridge_blank_views,
    chain_pairs,
    chain_shifts,
    choose_reference,
    median_z,
    name_the_limit,
    reference_walk,
    refine_pairs,
    search_pairs,
    tilt_branches,
)
from .geometry import axis_directions
from .pattern import PatternTest, detect_fixed_pattern, remove_fixed_pattern
from .result import TiltxcorrResult
from .screening import fill_opaque, opaque_weight, screen_views
from .validation import ViewError, check_angles, check_stack

__all__ = ["align_binned_views", "align_tilt_series", "chain_pairs", "chain_shifts",
           "teamtomo_shifts", "tiltxcorr"]

FRC_LOWER = 0.6          # the low-pass adapts only below this fraction of the given cutoff
MIN_FINAL_SIZE = 128     # the final pass bins further only while views keep this many pixels
MAX_FINAL_EXTRA = 4      # ...and by at most this factor
FINAL_BINNED_CUTOFF = 0.25  # ...so that its low-pass stays at most this (cycles/binned pixel)
NOISY_MEMORY = 0.75      # reference memory on data whose peaks are weak
SKIP_FRC_Z = 25.0        # first-stage peaks this clear: no need to measure the ring correlation


def align_tilt_series(
    tilt_series: torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> TiltxcorrResult:
    """Align a tilt series by stretched cross-correlation of neighbouring views.

    Parameters
    ----------
    tilt_series
        `(b, h, w)` float tensor, views in any order, on any device (the work
        runs there). Views need not be square.
    tilt_angles
        `(b,)` tilt angles in degrees, in the stack's order; |tilt| <= 82.
    tilt_axis_angle
        Degrees from the image Y axis, counter-clockwise positive (IMOD's
        RotationAngle, Scipion's tiltAxisAngle). In `(row, col)` index space
        the axis points along `(cos a, -sin a)`.
    progress
        Called as `progress(done, total)` while pairs are correlated.
    **options
        The fields of `tiltxcorr_scipion.options.CoarseOptions`, with IMOD's
        defaults: `low_pass_cutoff` (0.25), `low_pass_sigma` (0.05),
        `high_pass_sigma` (0.03), `high_pass_radius` (0; all four in cycles
        per binned pixel, IMOD's -radius2, -sigma2, -sigma1, -radius1),
        `taper_fraction` (0.1), `pad_fraction` (0.05), `binning` ("auto": at
        most 1180 px, up to 4x; or an integer), `cumulative` (False),
        `reference_memory` (0.75), `refine` (True: exact sub-pixel peaks),
        `max_shift` (None: any; input pixels between neighbours),
        `interpolation` ("bilinear" or "bicubic"), `fixed_pattern` ("auto",
        "on", "off"; IMOD's ExcludeCentralPeak answers the same problem),
        `x_min_max`, `y_min_max` (None), `borders` ((0, 0)) (IMOD's
        XMinAndMax, YMinAndMax, BordersInXandY: input pixels from 0 at zero
        tilt), `angle_offset` (0; IMOD's AngleOffset), `absolute_cosine_stretch`
        (True; IMOD's AbsoluteCosineStretch), `adaptive` (True).

    Returns
    -------
    TiltxcorrResult
        Shifts `(b, 2)` `(dy, dx)` in input pixels (content moves by `+shift`
        to align; the reference view gets 0), per-view correlation scores and
        peak significance, the reference view, the pairing, the binning used,
        the views judged unusable with their reasons, and notes of what was
        done per view and for the series.

    Raises
    ------
    ValueError
        For input that cannot be aligned: fewer than 2 views, an angle count
        that does not match, |tilt| (plus `angle_offset`) > 82, views too small
        for the taper, an area outside the views or options out of range
        (`OptionError`); `ViewError` (naming the views by their 0-based index
        in `tilt_series`) for NaN or infinite pixels, or when fewer than 2
        views hold anything to correlate. Blank, constant, dark or blocked
        views are not errors: they are flagged in the result.
    """
    opts = CoarseOptions.from_kwargs(**options)
    b, h, w = check_stack(tilt_series)
    factor = check_binned_size((h, w), opts.binning)
    angles = check_angles(tilt_angles, b, tilt_axis_angle)
    opts.area((h, w))  # an area outside the views fails before any work
    binned = bin_stack(tilt_series.detach(), factor)
    return _checked(binned, angles, tilt_axis_angle, opts, progress)


def align_binned_views(
    binned: BinnedViews,
    tilt_angles,
    tilt_axis_angle: float,
    options: CoarseOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> TiltxcorrResult:
    """`align_tilt_series` on views binned already (e.g. by `bin_chunks` as they were read).

    `options.binning` is not used: the views' own binning is. Everything
    else, including the result, is as in `align_tilt_series`.
    """
    opts = CoarseOptions() if options is None else options
    check_binned_size(binned.full_shape, binned.factor)
    angles = check_angles(tilt_angles, binned.views.shape[0], tilt_axis_angle)
    opts.area(binned.full_shape)
    return _checked(binned, angles, tilt_axis_angle, opts, progress)


def _checked(binned, angles, tilt_axis_angle, opts, progress) -> TiltxcorrResult:
    from .selfcheck import align_checked  # it runs this module's paths

    return align_checked(binned, angles, tilt_axis_angle, opts, progress)


def _effective_angles(angles: torch.Tensor, offset: float) -> torch.Tensor:
    """Tilt angles plus IMOD's AngleOffset, checked against the stretch's limit."""
    if offset == 0:
        return angles
    shifted = angles + offset
    too_high = torch.nonzero(shifted.abs() > MAX_TILT_DEG).flatten().tolist()
    if too_high:
        raise ViewError(too_high, f"tilted beyond +-{MAX_TILT_DEG:g} degrees once the angle offset "
                                  f"of {offset:g} is added (up to {float(shifted.abs().max()):.1f}): "
                                  "cosine stretching is undefined there; exclude those views")
    return shifted


class _Notes:
    """Per-view and series notes, collected while aligning."""

    def __init__(self, n_views: int):
        self.views: list[list[str]] = [[] for _ in range(n_views)]
        self.series: list[str] = []

    def add(self, view: int, text: str) -> None:
        if text not in self.views[view]:
            self.views[view].append(text)

    def joined(self) -> tuple[str, ...]:
        return tuple("; ".join(items) for items in self.views)


@dataclass(frozen=True)
class Path:
    """Which stages one candidate alignment runs (the self-check compares candidates).

    binning
        Extra binning on top of the working views' (1, 2, 4...): coarser
        views halve the noise per pixel each time and keep large features.
    remove_pattern
        Subtract the fixed camera pattern first (`pattern`).
    adaptive
        The stages for noise-limited data (outline, 3 and 4): a coarser first
        stage while its peaks are weak, blank views found by their lack of
        correlation, averaged references, the low-pass set where neighbours
        stop agreeing, a wider search, links on both sides. False: IMOD's
        plain method with the given filter.
    stretch
        Stretch views across the tilt axis by the ratio of cosines (IMOD's
        model of a thin slab, which tilting foreshortens). False: compare
        views as they are, for a compact specimen (a particle, a needle along
        the axis) that does not foreshorten.
    """

    binning: int = 1
    remove_pattern: bool = False
    adaptive: bool = False
    stretch: bool = True

    def describe(self) -> str:
        parts = ["adaptive" if self.adaptive else "plain"]
        if not self.stretch:
            parts.append("no cosine stretch")
        if self.binning > 1:
            parts.append(f"{self.binning}x binned")
        if self.remove_pattern:
            parts.append("fixed pattern removed")
        return ", ".join(parts)


#: IMOD's method as it is: the path every self-check keeps unless the data show better.
PLAIN = Path()
#: Tilts are scaled by this for a path without the cosine stretch (cos 1e-4 deg = 1 - 2e-12).
NO_STRETCH_SCALE = 1e-6


@dataclass
class PreparedViews:
    """What every candidate path shares: the screened views, their verdicts, the pattern test.

    `binned` holds the working views with opaque areas filled; `pattern` is
    the fixed-pattern test (None when `fixed_pattern` is "on" or "off");
    `notes` the series notes of the screening; `opaque_weights` how far each
    pixel of the views with opaque areas is specimen (`(h, w)` per view, 0
    where opaque). `views(remove_pattern)` gives
    the working views with or without the fixed pattern subtracted (made
    once, on first use).
    """

    binned: BinnedViews
    angles: torch.Tensor
    unusable: torch.Tensor
    reasons: list[str]
    view_notes: list[list[str]]
    notes: list[str]
    pattern: PatternTest | None
    opaque_weights: dict[int, torch.Tensor]
    _removed: BinnedViews | None = None

    def views(self, remove_pattern: bool) -> BinnedViews:
        if not remove_pattern:
            return self.binned
        if self._removed is None:
            views = self.binned.views.clone()
            constant = torch.tensor([r.startswith("blank: constant") for r in self.reasons])
            remove_fixed_pattern(views, ~constant)
            self._removed = replace(self.binned, views=views)
        return self._removed


def prepare_views(binned: BinnedViews, angles_in: torch.Tensor, opts: CoarseOptions
                  ) -> PreparedViews:
    """Screen the views (unusable ones, opaque areas filled) and test for a fixed pattern."""
    angles = _effective_angles(angles_in, opts.angle_offset)
    n_views = angles.numel()
    notes = _Notes(n_views)
    extra0 = base_extra(tuple(binned.views.shape[-2:]))
    coarse = binned if extra0 == 1 else binned.rebinned(extra0)
    screen = screen_views(coarse.views, angles)
    unusable = screen.unusable.clone()
    reasons = list(screen.reasons)
    _check_enough_views(unusable, reasons)
    partial = screen.partial_views()
    weights: dict[int, torch.Tensor] = {}
    if partial:
        notes.series.append(f"opaque areas (e.g. a grid bar's shadow) left out of the correlation "
                            f"in {len(partial)} views")
        views = binned.views.clone()
        for view in partial:
            notes.add(view, f"{100 * float(screen.opaque_fraction[view]):.0f}% of the view opaque: "
                            "left out")
            weights[view] = opaque_weight(views[view], screen.opaque[view], screen.size * extra0,
                                          float(screen.level[view]),
                                          float(screen.opaque_level[view]))
            views[view] = fill_opaque(views[view], weights[view])
        binned = replace(binned, views=views)
    pattern = None
    if opts.fixed_pattern == "auto":
        pattern = detect_fixed_pattern(binned.views, angles, ~unusable)
    return PreparedViews(binned, angles, unusable, reasons, notes.views, notes.series, pattern,
                         weights)


def align_path(prepared: PreparedViews, path: Path, tilt_axis_angle: float, opts: CoarseOptions,
               progress=None, *, unusable_extra: dict[int, str] | None = None
               ) -> TiltxcorrResult:
    """One candidate path of the alignment on prepared views (see the module docstring).

    `path` says which stages run: on views binned `path.binning` times more
    than the working views, with or without the fixed pattern removed, with
    or without the stages for noise-limited data (`path.adaptive`).
    `unusable_extra` marks more views unusable, with their reasons (views the
    self-check found disagreeing with the rest).
    """
    # Without the stretch, the tilts scaled towards 0 keep their order (the reference, the
    # branches) while every ratio of cosines becomes 1.
    angles = prepared.angles if path.stretch else prepared.angles * NO_STRETCH_SCALE
    n_views = angles.numel()
    notes = _Notes(n_views)
    notes.views = [list(items) for items in prepared.view_notes]
    notes.series = list(prepared.notes)
    adaptive = path.adaptive
    correlation_filter = CorrelationFilter(opts.high_pass_sigma, opts.high_pass_radius,
                                           opts.low_pass_cutoff, opts.low_pass_sigma)
    device = prepared.binned.views.device
    _, across = axis_directions(tilt_axis_angle, device=device)
    across_cpu = across.cpu()
    area = opts.area(prepared.binned.full_shape)

    binned = prepared.views(path.remove_pattern)
    if path.binning > 1:
        binned = binned.rebinned(path.binning)
    factor = binned.factor
    work_shape = tuple(binned.views.shape[-2:])
    unusable = prepared.unusable.clone()
    reasons = list(prepared.reasons)
    for view, reason in (unusable_extra or {}).items():
        unusable[view] = True
        reasons[view] = reason
    _check_enough_views(unusable, reasons)
    if path.remove_pattern:
        test = prepared.pattern
        notes.series.append(f"fixed pattern detected ({test.describe()}): removed" if test
                            else "fixed pattern removed (fixed_pattern='on')")
    extra0 = base_extra(work_shape)
    level_args = dict(taper_fraction=opts.taper_fraction, pad_fraction=opts.pad_fraction,
                      area=area, across=across)
    level = Level(binned, extra0, correlation_filter, **level_args)

    # 3. First stage: the reference, the branches, neighbour pairs.
    reference = choose_reference(angles, unusable)
    if abs(float(angles[reference])) > float(angles.abs().min()):
        notes.series.append("reference view: the lowest-tilt usable view (lower tilts unusable)")
    branches = tilt_branches(angles, reference)
    pairs = branch_pairs(branches, unusable)
    pair_args = dict(interpolation=opts.interpolation)
    binned_max_shift = None if opts.max_shift is None else opts.max_shift / factor

    def level_max_shift(lvl):
        return None if binned_max_shift is None else binned_max_shift / lvl.extra

    found = search_pairs(level, angles, pairs, max_shift=level_max_shift(level), **pair_args)
    tried = [(level.extra, median_z(found, unusable))]
    if adaptive:
        best = (tried[0][1], level, found)
        extra = level.extra
        while tried[-1][1] < Z_GOOD and min(work_shape) // (2 * extra) >= STAGE1_MIN_SIZE:
            extra *= 2
            candidate = Level(binned, extra, correlation_filter, **level_args)
            measured = search_pairs(candidate, angles, pairs,
                                    max_shift=level_max_shift(candidate), **pair_args)
            tried.append((extra, median_z(measured, unusable)))
            if tried[-1][1] > best[0]:
                best = (tried[-1][1], candidate, measured)
            else:
                break
        _, level, found = best
        if len(tried) > 1:
            figures = ", ".join(f"{z:.1f} at binning {e * factor}" for e, z in tried)
            notes.series.append(f"first stage at binning {level.extra * factor}: median peak "
                                f"significance {figures}")
        found = bridge_blank_views(level, angles, branches, unusable, reasons, found,
                                   max_shift=level_max_shift(level), **pair_args)
    refine_pairs(level, angles, found, refine=opts.refine)
    flagged = [v for v in range(n_views) if unusable[v] and not prepared.unusable[v]]
    if opts.max_shift is not None and flagged:
        name_the_limit(level, angles, branches, unusable, reasons, flagged,
                       level_max_shift(level), opts.interpolation, level.extra * factor)
    estimates = chain_shifts(found.pairs, found.shifts, angles, across_cpu)  # level pixels
    pair_z = torch.full((n_views,), float("nan"), dtype=torch.float64)
    paired_with = torch.full((n_views,), -1, dtype=torch.long)
    for (inner, outer), z in zip(found.pairs, found.z.tolist(), strict=True):
        pair_z[outer] = z
        paired_with[outer] = inner
    for branch in branches:
        for position, view in enumerate(branch[1:], start=1):
            if int(paired_with[view]) != branch[position - 1]:
                notes.add(view, "paired across unusable views")

    level_z = median_z(found, unusable)
    usable_z = pair_z[[v for v in range(n_views) if not unusable[v] and v != reference]]
    weak = bool((usable_z < Z_LOW).any()) if usable_z.numel() else False
    noisy = adaptive and (level_z < Z_GOOD or weak)
    unsure = torch.zeros(n_views, dtype=torch.bool)
    if noisy:
        memory_walk = max(opts.reference_memory, NOISY_MEMORY)
        before = estimates.clone()
        estimates, walk_z = reference_walk(level, angles, branches, unusable, estimates, pair_z,
                                           memory=memory_walk, max_shift=level_max_shift(level),
                                           interpolation=opts.interpolation, refine=False)
        notes.series.append("first stage repeated against averaged references (weak peaks "
                            "between neighbours)")
        moved = (estimates - before).norm(dim=1)
        for view in range(n_views):
            if view != reference and float(moved[view]) > 1.0:
                notes.add(view, "first-stage shift replaced by a search against the average of "
                                "lower-tilt views")
        pair_z = torch.where(torch.isfinite(walk_z), walk_z, pair_z)
        for view in range(n_views):
            if view != reference and not unusable[view] and float(pair_z[view]) < Z_LOW:
                unsure[view] = True
    estimates = estimates * level.extra  # working pixels

    # 4. Final pass: low-pass and binning tuned to how far neighbours agree.
    final_extra = 1
    cutoff = opts.low_pass_cutoff  # cycles per working pixel (0: none)
    memory = 1.0 if opts.cumulative else opts.reference_memory
    if adaptive and (noisy or level_z < SKIP_FRC_Z):
        fine = binned if extra0 == 1 else binned.rebinned(extra0)
        agree, ring_correlation = neighbour_frc(fine.views, angles, reference, branches, unusable,
                              estimates / extra0, across, fine.centre,
                              extra=extra0, interpolation=opts.interpolation)
        limit = opts.low_pass_cutoff if opts.low_pass_cutoff > 0 else 0.5
        if agree < FRC_LOWER * limit:
            cutoff = agree
            while (final_extra * 2 <= MAX_FINAL_EXTRA
                   and cutoff * final_extra * 2 <= FINAL_BINNED_CUTOFF
                   and min(work_shape) // (final_extra * 2) >= MIN_FINAL_SIZE):
                final_extra *= 2
            text = (f"low-pass lowered to {cutoff / factor:.3f} cycles per input pixel, "
                    "frequencies weighted by their signal-to-noise ratio: neighbouring views "
                    "agree only below it")
            if final_extra > 1:
                text += f"; final pass at binning {final_extra * factor}"
            notes.series.append(text)
            if not opts.cumulative and memory < NOISY_MEMORY:
                memory = NOISY_MEMORY
                notes.series.append(f"references averaged over more views (memory {memory:g})")
    final_views = binned if final_extra == 1 else binned.rebinned(final_extra)
    if final_extra == 1 and cutoff == opts.low_pass_cutoff:
        final_filter = correlation_filter
    else:  # IMOD's values hold per pixel of the final binning; the roll-off scales with the cutoff
        binned_cutoff = cutoff * final_extra
        final_filter = CorrelationFilter(opts.high_pass_sigma, opts.high_pass_radius, binned_cutoff,
                                         min(opts.low_pass_sigma, binned_cutoff / 3))
    correlator = PairCorrelator(tuple(final_views.views.shape[-2:]), final_filter,
                                taper_fraction=opts.taper_fraction, pad_fraction=0.0, device=device)
    if cutoff != opts.low_pass_cutoff:  # noisy data: weigh each frequency by its measured SNR
        correlator.reweight(_snr_weight(ring_correlation, final_extra))
    box = None
    if area is not None:
        box = area_boxes(area, angles[reference:reference + 1], across, final_views)[0]
    radius = torch.full((n_views,), RESIDUAL_SEARCH, dtype=torch.float64)
    wide = RESIDUAL_SEARCH + 2.0 * level.extra / final_extra
    for view in torch.nonzero(unsure).flatten().tolist():
        radius[view] = wide
        notes.add(view, f"wider search (+-{wide * final_extra * factor:.0f} input px): "
                        "first-stage peak not significant")
    sure = (pair_z >= Z_LOW) & ~unusable  # a first-stage estimate worth keeping
    final_args = dict(memory=memory, refine=opts.refine, interpolation=opts.interpolation,
                      unusable=unusable, absolute=opts.absolute_cosine_stretch, box=box,
                      keep_if_weak=sure if adaptive else None)
    start = estimates / final_extra
    shifts, ncc, peak, z, kept = refine_in_reference_frame(
        final_views.views, angles, reference, branches, start, correlator, across,
        final_views.centre, search=radius, progress=progress, **final_args)
    if bool(unsure.any()) and float((shifts - start)[unsure].norm(dim=1).max()) > RESIDUAL_SEARCH / 2:
        shifts, ncc, peak, z, kept = refine_in_reference_frame(
            final_views.views, angles, reference, branches, shifts, correlator, across,
            final_views.centre, **final_args)
        notes.series.append("final pass repeated from the wider search's shifts")
    for view in torch.nonzero(kept).flatten().tolist():
        notes.add(view, f"first-stage shift kept: final peak not significant "
                        f"({float(z[view]):.1f})")
    # Noise-limited (neighbours' peaks weak at the working binning, and the low-pass
    # lowered): links on both sides stop the drift a chain of weak links accumulates.
    if cutoff != opts.low_pass_cutoff and tried[0][1] < Z_GOOD:
        shifts, links = refine_by_links(final_views.views, angles, reference, shifts, correlator,
                                        across, final_views.centre, unusable=unusable,
                                        refine=opts.refine, interpolation=opts.interpolation,
                                        box=box)
        notes.series.append(f"shifts solved from {links} links between each view and its "
                            f"{LINK_LAGS} next views in tilt, both sides of the reference "
                            "(noise-limited data: a chain would drift)")
    shifts = shifts * final_extra  # working pixels

    # 5. Unusable views: their own measurement if significant, else interpolated.
    for view in torch.nonzero(unusable).flatten().tolist():
        if view == reference:
            continue
        if math.isfinite(float(z[view])) and float(z[view]) >= Z_LOW:
            notes.add(view, f"shift measured against the usable views below it "
                            f"(peak significance {float(z[view]):.1f})")
        else:
            shifts[view], text = _interpolated_shift(view, angles, branches, unusable, shifts)
            notes.add(view, text)

    correlation = ncc.to(torch.float32)
    peak_height = peak.to(torch.float32)
    significance = z.to(torch.float32)
    for tensor in (correlation, peak_height, significance):
        tensor[reference] = float("nan")
    paired_with[reference] = -1
    return TiltxcorrResult(
        shifts=(shifts * factor).to(torch.float32).to(device),
        correlation=correlation.to(device),
        peak_height=peak_height.to(device),
        reference_view=reference,
        paired_with=paired_with.to(device),
        binning=factor,
        unusable=unusable.to(device),
        reasons=tuple(reasons),
        notes=notes.joined(),
        peak_significance=significance.to(device),
        series_notes=tuple(notes.series),
        fixed_pattern_removed=path.remove_pattern,
        first_stage_binning=level.extra * factor,
        final_binning=final_extra * factor,
        low_pass_used=float(final_filter.low_pass_cutoff),
    )


def _snr_weight(ring_correlation: torch.Tensor, final_extra: int):
    """Radial weight (a function of cycles per final pixel): the signal-to-noise ratio per ring.

    `FRC = SNR / (1 + SNR)` between neighbouring views, so `SNR = FRC / (1 - FRC)`;
    weighing the cross-power by it (on top of the low-pass) lets each frequency count
    as much as it carries signal, which locates a noisy peak better than a flat band.
    """
    from .final_pass import FRC_BIN

    frc = ring_correlation.clamp(0.0, 0.95)
    snr = frc / (1 - frc)
    snr = snr / snr.max().clamp_min(1e-12)

    def weight(frequency: torch.Tensor) -> torch.Tensor:
        working = frequency / final_extra
        position = (working / FRC_BIN - 0.5).clamp(0.0, len(snr) - 1.0)
        low = position.floor().long().clamp(max=len(snr) - 1)
        high = (low + 1).clamp(max=len(snr) - 1)
        t = (position - low.to(position.dtype)).to(snr.dtype)
        return ((1 - t) * snr[low] + t * snr[high]).to(frequency.dtype)

    return weight


def _check_enough_views(unusable: torch.Tensor, reasons: list[str]) -> None:
    """A ViewError when fewer than 2 views are usable."""
    if int((~unusable).sum()) >= 2:
        return
    bad = torch.nonzero(unusable).flatten().tolist()
    first = next(r for r in reasons if r)
    raise ViewError(bad, f"no specimen to correlate ({first}); fewer than 2 usable views remain")


def _interpolated_shift(view, angles, branches, unusable, shifts):
    """Shift `(2,)` of an unusable view, linear in tilt between the usable views around it."""
    branch = next(b for b in branches if view in b[1:])
    position = branch.index(view)
    inner = next(v for v in reversed(branch[:position]) if not unusable[v])
    outer = next((v for v in branch[position + 1:] if not unusable[v]), None)
    if outer is None:
        return shifts[inner].clone(), "shift of the nearest usable view (none beyond it)"
    t, t0, t1 = float(angles[view]), float(angles[inner]), float(angles[outer])
    weight = 0.5 if t1 == t0 else (t - t0) / (t1 - t0)
    return ((1 - weight) * shifts[inner] + weight * shifts[outer],
            "shift interpolated between the usable views on either side")


def tiltxcorr(
    tilt_series: torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    *,
    pixel_spacing_angstroms: float | None = None,
    lowpass_angstroms: float | None = None,
    preprocess: bool = True,
    low_pass_cutoff: float | None = None,
    **options,
) -> torch.Tensor:
    """Shifts `(b, 2)` float32 `(dy, dx)` that align each view: torch-tiltxcorr's function.

    A drop-in for torch-tiltxcorr's `tiltxcorr` (0.1.4 to 0.6.0): same
    arguments, same result. Moving the content of view i by `+shifts[i]` (as
    `fourier_shift_image_2d` does) aligns it; the view with the smallest |tilt|
    gets `(0, 0)`. Shifts are in input pixels, in the input's view order, on
    the input's device.

    Like teamtomo's packages (torch-tiltxcorr, torch-fourier-slice), and
    unlike `align_tilt_series`, the tilt axis crosses each view at the DFT
    centre `(h // 2, w // 2)`, not IMOD's `((h - 1) / 2, (w - 1) / 2)`, so
    that the shifts compose with teamtomo's projection code. On even sizes
    the two differ by `delta = (1/2, 1/2)` (0 on odd sides), and view i's
    shift by `n (delta . n) (1 - cos t_i / cos t_ref)`, `n` the unit vector
    across the tilt axis, `t_ref` the reference view's tilt (`teamtomo_shifts`).

    Everything after the three data arguments is keyword-only (a pixel
    spacing given in fourth place would otherwise be read as a cutoff):

    pixel_spacing_angstroms, lowpass_angstroms
        torch-tiltxcorr's low-pass: at `pixel_spacing_angstroms /
        lowpass_angstroms` cycles per input pixel, whatever binning the engine
        chooses (above the binned views' Nyquist frequency the binning has
        removed those frequencies already); no low-pass when either is None.
    preprocess
        Accepted for torch-tiltxcorr's callers; it changes nothing. Its
        preprocessing (background plane subtraction, band-pass, normalisation)
        has counterparts here that always run: each view's mean is removed,
        the taper, IMOD's high-pass (`high_pass_sigma`) and the low-pass above.
    low_pass_cutoff
        Cycles per binned pixel (IMOD's -radius2, the seed's keyword); not
        together with `lowpass_angstroms`. None and no `lowpass_angstroms`: no
        low-pass, as torch-tiltxcorr.
    **options
        The other options of `align_tilt_series`.
    """
    if not isinstance(preprocess, bool):
        raise OptionError("preprocess", f"must be True or False, got {preprocess!r}")
    cutoff = _drop_in_cutoff(tilt_series, pixel_spacing_angstroms, lowpass_angstroms,
                             low_pass_cutoff, options.get("binning", CoarseOptions.binning))
    result = align_tilt_series(tilt_series, tilt_angles, tilt_axis_angle,
                               low_pass_cutoff=cutoff, **options)
    return teamtomo_shifts(result, tilt_angles, tilt_axis_angle,
                           tuple(tilt_series.shape[-2:]), options.get("angle_offset", 0.0))


def _drop_in_cutoff(tilt_series, pixel_spacing, lowpass, low_pass_cutoff, binning) -> float:
    """The low-pass cutoff (cycles per binned pixel) that `tiltxcorr`'s keywords ask for."""
    if lowpass is not None and low_pass_cutoff is not None:
        raise OptionError("lowpass_angstroms", "give either lowpass_angstroms (with "
                          "pixel_spacing_angstroms) or low_pass_cutoff, not both")
    if low_pass_cutoff is not None:
        return low_pass_cutoff
    if pixel_spacing is None or lowpass is None:
        return 0.0
    for name, value in (("pixel_spacing_angstroms", pixel_spacing),
                        ("lowpass_angstroms", lowpass)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise OptionError(name, f"must be a positive number of angstroms, got {value!r}")
    factor = check_binned_size(tuple(tilt_series.shape[-2:]), binning)
    binned = factor * pixel_spacing / lowpass
    return 0.0 if binned >= 0.5 else binned


def teamtomo_shifts(result: TiltxcorrResult, tilt_angles, tilt_axis_angle: float,
                    shape: tuple[int, int], angle_offset: float = 0.0) -> torch.Tensor:
    """`result.shifts` (IMOD's centre) for a tilt axis through the DFT centre `(h // 2, w // 2)`.

    With the axis through `c + delta` instead of `c = ((h - 1) / 2, (w - 1) / 2)`,
    `delta = (h % 2 == 0, w % 2 == 0) / 2`, a view at tilt t shows the point of
    the reference view at `c + delta` moved by `n (delta . n) (cos t / cos t_ref - 1)`
    across the axis (`n`), so its shift gains `n (delta . n) (1 - cos t / cos t_ref)`.
    A series aligned without the cosine stretch (the self-check's path for a
    compact specimen) does not foreshorten: nothing changes.
    """
    shifts = result.shifts
    if "no cosine stretch" in result.path:
        return shifts
    h, w = shape
    delta = torch.tensor([0.5 * (h % 2 == 0), 0.5 * (w % 2 == 0)], dtype=torch.float64)
    if not bool(delta.any()):
        return shifts
    _, across = axis_directions(tilt_axis_angle)
    across = across.to(torch.float64).cpu()
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).cpu() + angle_offset
    cosines = torch.cos(torch.deg2rad(angles))
    ratio = cosines / cosines[result.reference_view]
    term = (delta @ across) * (1 - ratio)[:, None] * across[None, :]
    return (shifts.to(torch.float64).cpu() + term).to(shifts.dtype).to(shifts.device)
