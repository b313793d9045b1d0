"""Coarse alignment of a tilt series by stretched cross-correlation (IMOD tiltxcorr's method).

Outline:
1. Sort the views by tilt; the reference is the view with the smallest |tilt|.
   Walking outwards from it on each side, each view is paired with its
   lower-tilt neighbour ("inner" view).
2. For each pair the outer view is stretched across the tilt axis by
   `cos(inner) / cos(outer)` about the image centre, so that a thin specimen
   looks the same in both; both are tapered, padded, Fourier transformed and
   cross-correlated through IMOD's filter. The peak is found on a coarse grid
   and then climbed exactly (`peak.refine_peak`).
3. The measured shift `s` lays the stretched outer view on the inner one. With
   `e` the alignment shift of a view (content moves by `+e`), the geometry gives
   `e_outer = K^-1 (e_inner + s)` with `K` the stretch: the running shift is
   carried into the stretched frame, which keeps the tilt axis at the image
   centre (IMOD's "adjust the shift to bring the tilt axis to the true center").
   Steps 2-3 run on 2x or 4x binned copies of large views ("stage 1"): they
   only have to land within a pixel.
4. Stage 2, at full working resolution: every view, moved by its estimate, is
   stretched once into the reference view's frame and correlated with a
   weighted sum of the lower-tilt views of its branch (weights 1,
   `reference_memory`, `reference_memory**2`...; all 1 with `cumulative=True`,
   IMOD's CumulativeCorrelation). The residual shifts follow from a linear
   recursion (`refine_in_reference_frame`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..options import CoarseOptions, check_binned_size
from .binning import BinnedViews, bin_stack
from .correlate import CorrelationFilter, PairCorrelator
from .geometry import axis_directions, stretch_factors, stretch_images, unstretch_shifts
from .result import TiltxcorrResult
from .validation import check_angles, check_stack

WORKING_BYTES = 384 << 20  # rough budget for the temporaries of one chunk of pairs


def chain_pairs(tilt_angles: torch.Tensor) -> tuple[int, list[tuple[int, int]]]:
    """The reference view and the `(inner, outer)` pairs, each branch walked outwards.

    `tilt_angles` `(b,)` in any order; returns input indices. Views with equal
    tilts are paired in stack order.
    """
    order = torch.argsort(tilt_angles, stable=True).tolist()
    position = min(range(len(order)), key=lambda p: (abs(float(tilt_angles[order[p]])), p))
    reference = order[position]
    pairs = [(order[p - 1], order[p]) for p in range(position + 1, len(order))]
    pairs += [(order[p + 1], order[p]) for p in range(position - 1, -1, -1)]
    return reference, pairs


def chain_shifts(pairs: list[tuple[int, int]], pair_shifts: torch.Tensor, angles: torch.Tensor,
                 across: torch.Tensor) -> torch.Tensor:
    """Alignment shifts `(b, 2)` from pair shifts `(n_pairs, 2)`, walking each branch outwards.

    `e_outer = K^-1 (e_inner + s)`: the inner view's shift is carried into the
    stretched frame, which keeps the tilt axis at the image centre.
    """
    shifts = torch.zeros(angles.numel(), 2, dtype=torch.float64)
    inner_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    outer_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    factors = stretch_factors(angles[inner_idx], angles[outer_idx])
    for k, (inner, outer) in enumerate(pairs):
        shifts[outer] = unstretch_shifts((shifts[inner] + pair_shifts[k])[None],
                                         factors[k:k + 1], across)[0]
    return shifts


def _pairs_per_chunk(shape: tuple[int, int], fft_shape: tuple[int, int]) -> int:
    h, w = shape
    fh, fw = fft_shape
    per_pair = 4 * (6 * h * w + 6 * fh * (fw // 2 + 1))  # stretched view, grid, spectra
    return max(1, WORKING_BYTES // per_pair)


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
        `interpolation` ("bilinear" or "bicubic").

    Returns
    -------
    TiltxcorrResult
        Shifts `(b, 2)` `(dy, dx)` in input pixels (content moves by `+shift`
        to align; the reference view gets 0), per-view correlation scores, the
        reference view, the pairing and the binning used.

    Raises
    ------
    ValueError
        For input that cannot be aligned: fewer than 2 views, an angle count
        that does not match, |tilt| > 82, views too small for the taper,
        options out of range (`OptionError`); `ViewError` (naming the views by
        their 0-based index in `tilt_series`) for NaN, infinite or blank views.
    """
    opts = CoarseOptions.from_kwargs(**options)
    b, h, w = check_stack(tilt_series)
    factor = check_binned_size((h, w), opts.binning)
    angles = check_angles(tilt_angles, b, tilt_axis_angle)
    binned = bin_stack(tilt_series.detach(), factor)
    return _align(binned, angles, tilt_axis_angle, opts, progress)


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
    return _align(binned, angles, tilt_axis_angle, opts, progress)


def _align(binned: BinnedViews, angles: torch.Tensor, tilt_axis_angle: float,
           opts: CoarseOptions, progress) -> TiltxcorrResult:
    """The alignment proper, on checked angles `(b,)` float64 and binned views."""
    correlation_filter = CorrelationFilter(opts.high_pass_sigma, opts.high_pass_radius,
                                           opts.low_pass_cutoff, opts.low_pass_sigma)
    views, factor = binned.views, binned.factor
    work_shape = tuple(views.shape[-2:])
    device = views.device
    centre = binned.centre
    _, across = axis_directions(tilt_axis_angle, device=device)
    reference, pairs = chain_pairs(angles)
    n_views = angles.numel()
    binned_max_shift = None if opts.max_shift is None else opts.max_shift / factor

    # Stage 1: neighbour pairs, on 2x or 4x binned views when they are large
    # enough (it only has to land within a pixel or so), chained into estimates.
    if min(work_shape) >= PREVIEW_MIN_SIZE:
        extra = 4 if min(work_shape) >= 4 * PREVIEW_MIN_SIZE and max(work_shape) >= 1024 else 2
        stage1 = binned.rebinned(extra)
        stage1_filter = correlation_filter.coarser(extra)
    else:
        extra, stage1, stage1_filter = 1, binned, correlation_filter
    stage1_correlator = PairCorrelator(tuple(stage1.views.shape[-2:]), stage1_filter,
                                       taper_fraction=opts.taper_fraction,
                                       pad_fraction=opts.pad_fraction, device=device)
    pair_shifts, _, _ = _correlate_neighbours(
        stage1.views, angles, pairs, stage1_correlator, across, stage1.centre,
        refine=opts.refine,
        max_shift=None if binned_max_shift is None else binned_max_shift / extra,
        interpolation=opts.interpolation)
    estimates = chain_shifts(pairs, pair_shifts, angles, across.cpu()) * extra
    del stage1

    # Stage 2: every view against a (cumulative) reference in the reference
    # view's frame, at full working resolution; solves for the residuals.
    memory = 1.0 if opts.cumulative else opts.reference_memory
    unpadded = PairCorrelator(work_shape, correlation_filter, taper_fraction=opts.taper_fraction,
                              pad_fraction=0.0, device=device)
    shifts, ncc, peak = refine_in_reference_frame(
        views, angles, reference, pairs, estimates, unpadded, across, centre,
        memory=memory, refine=opts.refine, interpolation=opts.interpolation, progress=progress)

    inner_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    outer_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    correlation = torch.full((n_views,), float("nan"), dtype=torch.float32)
    peak_height = torch.full((n_views,), float("nan"), dtype=torch.float32)
    paired_with = torch.full((n_views,), -1, dtype=torch.long)
    correlation[outer_idx] = ncc[outer_idx].to(torch.float32)
    peak_height[outer_idx] = peak[outer_idx].to(torch.float32)
    paired_with[outer_idx] = inner_idx
    return TiltxcorrResult(
        shifts=(shifts * factor).to(torch.float32).to(device),
        correlation=correlation.to(device),
        peak_height=peak_height.to(device),
        reference_view=reference,
        paired_with=paired_with.to(device),
        binning=factor,
    )


def _stretch_outer_views(views, angles, pairs, across, centre, *, interpolation):
    """The outer view of every pair stretched onto its inner neighbour: `(n_pairs, h, w)`."""
    device = views.device
    out = torch.empty(len(pairs), *views.shape[1:], dtype=torch.float32, device=device)
    chunk = max(1, WORKING_BYTES // (12 * views.shape[1] * views.shape[2]))
    for first in range(0, len(pairs), chunk):
        block = pairs[first:first + chunk]
        inner = torch.tensor([p[0] for p in block], dtype=torch.long)
        outer = torch.tensor([p[1] for p in block], dtype=torch.long)
        out[first:first + len(block)] = stretch_images(
            views[outer.to(device)], stretch_factors(angles[inner], angles[outer]), across,
            centre, mode=interpolation)
    return out


def _measure_pairs(views, stretched, pairs, correlator, *, start=None, refine=True,
                   max_shift=None):
    """Shifts `(n, 2)`, NCC `(n,)` and peak `(n,)` of each `(inner, outer)` pair, by chunks.

    `stretched` `(n, h, w)` holds each pair's outer view stretched onto its
    inner one. Without `start`, a full search with the fixed taper. With
    `start` `(n, 2)` (approximate shifts), windows matched to those shifts
    remove the taper's bias and the peak is climbed from there.
    """
    device = views.device
    n_pairs = len(pairs)
    pair_shifts = torch.zeros(n_pairs, 2, dtype=torch.float64)
    ncc = torch.zeros(n_pairs, dtype=torch.float64)
    peak = torch.zeros(n_pairs, dtype=torch.float64)
    chunk = _pairs_per_chunk(correlator.shape, correlator.fft_shape)
    for first in range(0, n_pairs, chunk):
        block = slice(first, min(first + chunk, n_pairs))
        inner = torch.tensor([p[0] for p in pairs[block]], dtype=torch.long, device=device)
        guess = None if start is None else start[block].to(device)
        reference_spectra = correlator.spectra(views[inner], guess)
        moving_spectra = correlator.spectra(stretched[block], None if guess is None else -guess)
        s, c, p = correlator.correlate(reference_spectra, moving_spectra, refine=refine,
                                       max_shift=max_shift, start=guess)
        pair_shifts[block], ncc[block], peak[block] = s.cpu(), c.cpu(), p.cpu()
    return pair_shifts, ncc, peak


PREVIEW_MIN_SIZE = 128  # stage 1 runs on 2x binned views when they are at least this large
WINDOW_ITERATIONS = 2   # passes with matched windows, while a peak still moves
RESIDUAL_SEARCH = 6.0   # pixels: stage 2 looks for residual shifts this far from its estimate
COARSE_BAND = 0.12      # cycles/pixel: stage 2's short search needs only low frequencies


def _correlate_neighbours(views, angles, pairs, correlator, across, centre, *, refine,
                          max_shift, interpolation):
    """Every outer view against its inner neighbour: shifts, NCC and peak per pair.

    A full search with the fixed taper lands within a fraction of a pixel;
    then windows matched to the found shift remove the taper's pull towards
    zero, and the exact peak is climbed again, repeated while a peak still
    moves by over 0.25 px.
    """
    stretched = _stretch_outer_views(views, angles, pairs, across, centre,
                                     interpolation=interpolation)
    # The first search only has to land near the peak: no refinement yet.
    shifts, ncc, peak = _measure_pairs(views, stretched, pairs, correlator, refine=False,
                                       max_shift=max_shift)
    todo = list(range(len(pairs)))
    for _ in range(WINDOW_ITERATIONS):
        index = torch.tensor(todo, dtype=torch.long)
        s, c, p = _measure_pairs(views, stretched[index.to(views.device)],
                                 [pairs[k] for k in todo], correlator, start=shifts[index],
                                 refine=refine)
        moved = (s - shifts[index]).norm(dim=1)
        shifts[index], ncc[index], peak[index] = s, c, p
        todo = [k for k, m in zip(todo, moved.tolist(), strict=True) if m > 0.25]
        if not todo:
            break
    return shifts, ncc, peak


def refine_in_reference_frame(views, angles, reference, pairs, estimates, correlator, across,
                              centre, *, memory, refine, interpolation, progress=None):
    """Final pass: each view against a weighted sum of its branch's lower-tilt views.

    Every view is moved by its current estimate and stretched into the frame
    of the reference view (by `cos(t_ref) / cos(t)`), once. In that common
    frame, the reference for a view is the sum of the views before it in its
    branch, weighted 1, `memory`, `memory**2`... from the neighbour inwards:
    averaging several views beats the noise, and errors no longer add up
    view after view as in a chain of neighbours. Residual shifts are small,
    so the fixed taper causes no bias. The residuals `rho` then follow from
    the measured `s` by `rho_m = K_m^-1 (s_m + sum_j w_j K_j rho_j)`.

    Returns shifts `(b, 2)` float64 (binned pixels), NCC `(b,)` and peak `(b,)`
    of each view against its reference (NaN for the reference view).
    """
    device = views.device
    n_views = angles.numel()
    cos_ref = math.cos(math.radians(float(angles[reference])))
    factors = cos_ref / torch.cos(torch.deg2rad(angles))  # (b,) stretch into the reference frame
    # Views moved by up to max|estimate|: the window keeps clear of pixels that
    # some view lacks, and of the search range, so no padding is needed either.
    margin = float(estimates.abs().max()) + RESIDUAL_SEARCH
    window = correlator.inset_mask(margin)

    spectra = []
    chunk = _pairs_per_chunk(correlator.shape, correlator.fft_shape)
    for first in range(0, n_views, chunk):
        idx = torch.arange(first, min(first + chunk, n_views))
        warped = stretch_images(views[idx.to(device)], factors[idx], across, centre,
                                pre_shifts=estimates[idx].to(device), mode=interpolation)
        spectra.append(correlator.spectra(warped, window=window))
    spectra = torch.cat(spectra)  # (b, rows, cols)

    # Branches: reference first, then outwards.
    branches: list[list[int]] = []
    for inner, outer in pairs:
        if inner == reference:
            branches.append([reference, outer])
        else:
            next(b for b in branches if b[-1] == inner).append(outer)

    energies = correlator.energy(spectra)  # (b,)
    measured = torch.zeros(n_views, 2, dtype=torch.float64)
    ncc = torch.full((n_views,), float("nan"), dtype=torch.float64)
    peak = torch.full((n_views,), float("nan"), dtype=torch.float64)
    weights_of: dict[int, dict[int, float]] = {}
    done = 0
    total = len(pairs)
    for branch in branches:
        # refs[k] = spectra[inner] + memory * refs[k - 1]: one pass per view; the
        # normalisation by the weights' sum changes neither peak nor NCC.
        previous = torch.zeros_like(spectra[0])
        weights: dict[int, float] = {}
        todo_views: list[int] = []
        norms: list[float] = []
        refs = torch.empty(chunk, *spectra.shape[1:], dtype=spectra.dtype, device=device)
        for position in range(1, len(branch)):
            inner, view = branch[position - 1], branch[position]
            slot = refs[len(todo_views)]
            torch.add(spectra[inner], previous, alpha=memory, out=slot)
            previous = slot
            weights = {j: w * memory for j, w in weights.items()}
            weights[inner] = 1.0
            norm = sum(weights.values())
            weights_of[view] = {j: w / norm for j, w in weights.items()}
            norms.append(norm)
            todo_views.append(view)
            if len(todo_views) == chunk or position == len(branch) - 1:
                idx = torch.tensor(todo_views, device=device)
                s, c, p = correlator.correlate(
                    refs[:len(todo_views)], spectra[idx], refine=refine,
                    max_shift=RESIDUAL_SEARCH, coarse_band=COARSE_BAND,
                    moving_energy=energies[idx])
                measured[todo_views], ncc[todo_views] = s.cpu(), c.cpu()
                peak[todo_views] = p.cpu() / torch.tensor(norms, dtype=torch.float64)
                done += len(todo_views)
                previous = previous.clone()  # refs is overwritten by the next chunk
                todo_views, norms = [], []
                if progress is not None:
                    progress(done, total)

    # Residuals, branch by branch from the reference outwards.
    across64 = across.cpu().to(torch.float64)
    stretch = [torch.eye(2, dtype=torch.float64) + (float(k) - 1.0) * torch.outer(across64, across64)
               for k in factors.tolist()]
    residual = torch.zeros(n_views, 2, dtype=torch.float64)
    for branch in branches:
        for view in branch[1:]:
            pulled = sum((w * (stretch[j] @ residual[j]) for j, w in weights_of[view].items()),
                         torch.zeros(2, dtype=torch.float64))
            residual[view] = torch.linalg.solve(stretch[view], measured[view] + pulled)
    return estimates + residual, ncc, peak


def tiltxcorr(
    tilt_series: torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    low_pass_cutoff: float = CoarseOptions.low_pass_cutoff,
    **options,
) -> torch.Tensor:
    """Shifts `(b, 2)` float32 `(dy, dx)` that align each view of a tilt series.

    The simple entry point, compatible with torch-tiltxcorr: moving the
    content of view i by `+shifts[i]` (as `fourier_shift_image_2d` does)
    aligns it; the view with the smallest |tilt| gets `(0, 0)`. Shifts are in
    input pixels, in the input's view order, on the input's device. See
    `align_tilt_series` for the options and for per-view correlation scores.
    """
    return align_tilt_series(tilt_series, tilt_angles, tilt_axis_angle,
                             low_pass_cutoff=low_pass_cutoff, **options).shifts
