"""First stage: neighbouring views correlated on coarse copies, chained into estimates.

It only has to land within a pixel or two of the truth (the final pass
refines), but it must land: a wrong peak here is inherited by every view
beyond it. So it measures how significant each peak is
(`PairCorrelator.correlate(significance=True)`: peak height over the
correlation map's root mean square) and adapts:

- **coarser views** while the peaks are weak (`choose_level`): binning by 2
  halves the noise per pixel and keeps the specimen's large features;
- **bridging**: a view that correlates with neither neighbour while the
  views on either side correlate with each other holds no specimen (a blank
  view); it is flagged and its outer neighbour pairs with the last usable
  view (`bridge_blank_views`), as views the screen flagged are from the start;
- **averaged references** (`reference_walk`): when peaks stay weak, each
  view is found again with a full search against the weighted sum of the
  views before it in its branch, all in the reference view's frame, walking
  outwards; averaging beats the noise of a single neighbour.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from .binning import BinnedViews
from .correlate import CorrelationFilter, PairCorrelator, pairs_per_chunk
from .geometry import stretch_factors, stretch_images, unstretch_shifts
from .memory import items_per_chunk
from .resample import WARP_BYTES_PER_PIXEL

PREVIEW_MIN_SIZE = 128  # the first stage runs on 2x binned views when they are at least this large
STAGE1_MIN_SIZE = 64    # coarser levels only while the views keep at least this many pixels
WINDOW_ITERATIONS = 2   # passes with matched windows, while a peak still moves
Z_LOW = 6.0             # a peak below this significance is no better than noise
Z_GOOD = 12.0           # a median significance from here on needs no adapting


def chain_pairs(tilt_angles: torch.Tensor) -> tuple[int, list[tuple[int, int]]]:
    """The reference view and the `(inner, outer)` pairs, each branch walked outwards.

    `tilt_angles` `(b,)` in any order; returns input indices. The reference
    is the view with the smallest |tilt|. Views with equal tilts are paired
    in stack order.
    """
    order = torch.argsort(tilt_angles, stable=True).tolist()
    position = min(range(len(order)), key=lambda p: (abs(float(tilt_angles[order[p]])), p))
    reference = order[position]
    pairs = [(order[p - 1], order[p]) for p in range(position + 1, len(order))]
    pairs += [(order[p + 1], order[p]) for p in range(position - 1, -1, -1)]
    return reference, pairs


def choose_reference(tilt_angles: torch.Tensor, unusable: torch.Tensor) -> int:
    """The usable view with the smallest |tilt| (the first in stack order among equals)."""
    order = torch.argsort(tilt_angles, stable=True).tolist()
    usable = [p for p in range(len(order)) if not unusable[order[p]]]
    return order[min(usable, key=lambda p: (abs(float(tilt_angles[order[p]])), p))]


def tilt_branches(tilt_angles: torch.Tensor, reference: int) -> list[list[int]]:
    """Views in tilt order from `reference` outwards: up to two lists, each starting with it."""
    order = torch.argsort(tilt_angles, stable=True).tolist()
    p = order.index(reference)
    return [branch for branch in (order[p:], order[p::-1]) if len(branch) > 1]


def branch_pairs(branches: list[list[int]], unusable: torch.Tensor) -> list[tuple[int, int]]:
    """`(inner, outer)` pairs walking each branch outwards; `inner` is the last usable view before."""
    pairs = []
    for branch in branches:
        inner = branch[0]
        for view in branch[1:]:
            pairs.append((inner, view))
            if not unusable[view]:
                inner = view
    return pairs


def chain_shifts(pairs: list[tuple[int, int]], pair_shifts: torch.Tensor, angles: torch.Tensor,
                 across: torch.Tensor) -> torch.Tensor:
    """Alignment shifts `(b, 2)` from pair shifts `(n_pairs, 2)`, walking each branch outwards.

    `e_outer = K^-1 (e_inner + s)`: the inner view's shift is carried into the
    stretched frame, which keeps the tilt axis at the image centre. Pairs
    must come inner before outer (as `branch_pairs` gives them).
    """
    shifts = torch.zeros(angles.numel(), 2, dtype=torch.float64)
    if not pairs:
        return shifts
    inner_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    outer_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    factors = stretch_factors(angles[inner_idx], angles[outer_idx])
    for k, (inner, outer) in enumerate(pairs):
        shifts[outer] = unstretch_shifts((shifts[inner] + pair_shifts[k])[None],
                                         factors[k:k + 1], across)[0]
    return shifts


def base_extra(work_shape: tuple[int, int]) -> int:
    """The first stage's default extra binning: 4 for 1024+ px views, 2 from 128 px, else 1."""
    if min(work_shape) < PREVIEW_MIN_SIZE:
        return 1
    return 4 if min(work_shape) >= 4 * PREVIEW_MIN_SIZE and max(work_shape) >= 1024 else 2


@dataclass
class PairMeasurements:
    """Pair shifts (binned pixels of their level), NCC, peak and significance, per pair."""

    pairs: list[tuple[int, int]]
    shifts: torch.Tensor
    ncc: torch.Tensor
    peak: torch.Tensor
    z: torch.Tensor
    stretched: torch.Tensor = field(repr=False)


class Level:
    """The views of one first-stage binning, with their correlator and area boxes."""

    def __init__(self, binned: BinnedViews, extra: int, correlation_filter: CorrelationFilter,
                 *, taper_fraction: float, pad_fraction: float, area, across: torch.Tensor):
        self.extra = extra
        self.binned = binned if extra == 1 else binned.rebinned(extra)
        self.correlator = PairCorrelator(tuple(self.binned.views.shape[-2:]),
                                         correlation_filter.coarser(extra),
                                         taper_fraction=taper_fraction, pad_fraction=pad_fraction,
                                         device=binned.views.device)
        self.area = area
        self.across = across

    def boxes(self, tilts: torch.Tensor) -> torch.Tensor | None:
        if self.area is None:
            return None
        from .area import area_boxes

        return area_boxes(self.area, tilts, self.across, self.binned)


def _stretch_outer_views(views, angles, pairs, across, centre, *, interpolation):
    """The outer view of every pair stretched onto its inner neighbour: `(n_pairs, h, w)`."""
    device = views.device
    out = torch.empty(len(pairs), *views.shape[1:], dtype=torch.float32, device=device)
    chunk = items_per_chunk(WARP_BYTES_PER_PIXEL * views.shape[1] * views.shape[2], device)
    for first in range(0, len(pairs), chunk):
        block = pairs[first:first + chunk]
        inner = torch.tensor([p[0] for p in block], dtype=torch.long)
        outer = torch.tensor([p[1] for p in block], dtype=torch.long)
        out[first:first + len(block)] = stretch_images(
            views[outer.to(device)], stretch_factors(angles[inner], angles[outer]), across,
            centre, mode=interpolation)
    return out


def _measure_pairs(level: Level, angles, stretched, pairs, *, start=None, refine=True,
                   max_shift=None):
    """Shifts `(n, 2)`, NCC, peak and significance `(n,)` of `(inner, outer)` pairs, by chunks.

    `stretched` `(n, h, w)` holds each pair's outer view stretched onto its
    inner one. Without `start`, a full search with the fixed taper. With
    `start` `(n, 2)` (approximate shifts), windows matched to those shifts
    remove the taper's bias and the peak is climbed from there.
    """
    views = level.binned.views
    correlator = level.correlator
    device = views.device
    n_pairs = len(pairs)
    shifts = torch.zeros(n_pairs, 2, dtype=torch.float64)
    ncc = torch.zeros(n_pairs, dtype=torch.float64)
    peak = torch.zeros(n_pairs, dtype=torch.float64)
    z = torch.full((n_pairs,), float("nan"), dtype=torch.float64)
    inner_all = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    boxes = level.boxes(angles[inner_all]) if n_pairs else None
    chunk = pairs_per_chunk(correlator.shape, correlator.fft_shape, device)
    for first in range(0, n_pairs, chunk):
        block = slice(first, min(first + chunk, n_pairs))
        inner = inner_all[block].to(device)
        guess = None if start is None else start[block].to(device)
        box = None if boxes is None else boxes[block]
        reference = correlator.spectra(views[inner], guess, boxes=box)
        moving = correlator.spectra(stretched[block], None if guess is None else -guess, boxes=box)
        s, c, p, q = correlator.correlate(reference, moving, refine=refine, max_shift=max_shift,
                                          start=guess, significance=True)
        shifts[block], ncc[block], peak[block], z[block] = s.cpu(), c.cpu(), p.cpu(), q
    return shifts, ncc, peak, z


def search_pairs(level: Level, angles, pairs, *, max_shift, interpolation) -> PairMeasurements:
    """Full search of every pair on `level` (no sub-pixel refinement yet)."""
    stretched = _stretch_outer_views(level.binned.views, angles, pairs, level.across,
                                     level.binned.centre, interpolation=interpolation)
    shifts, ncc, peak, z = _measure_pairs(level, angles, stretched, pairs, refine=False,
                                          max_shift=max_shift)
    return PairMeasurements(list(pairs), shifts, ncc, peak, z, stretched)


def refine_pairs(level: Level, angles, found: PairMeasurements, *, refine: bool) -> None:
    """Matched windows and exact peaks from the full search's shifts, in place.

    Repeated while a peak still moves by over 0.25 px.
    """
    todo = list(range(len(found.pairs)))
    for _ in range(WINDOW_ITERATIONS):
        if not todo:
            break
        index = torch.tensor(todo, dtype=torch.long)
        s, c, p, _ = _measure_pairs(level, angles, found.stretched[index.to(found.stretched.device)],
                                    [found.pairs[k] for k in todo], start=found.shifts[index],
                                    refine=refine)
        moved = (s - found.shifts[index]).norm(dim=1)
        found.shifts[index], found.ncc[index], found.peak[index] = s, c, p
        todo = [k for k, m in zip(todo, moved.tolist(), strict=True) if m > 0.25]


def median_z(found: PairMeasurements, unusable: torch.Tensor) -> float:
    values = [float(z) for (_, outer), z in zip(found.pairs, found.z, strict=True)
              if not unusable[outer] and math.isfinite(float(z))]
    return statistics.median(values) if values else float("nan")


def bridge_blank_views(level: Level, angles, branches, unusable, reasons, found: PairMeasurements,
                       *, max_shift, interpolation) -> PairMeasurements:
    """Flag views with no significant peak either side whose neighbours correlate; re-pair.

    A usable view `v` between usable views `g` (inner) and `w` (outer) is
    blank when both its peaks are below `Z_LOW` while the bridge `g`-`w` is
    significant and at least twice as strong. `unusable` and `reasons` are
    updated; the returned measurements pair `w` with `g`.
    """
    z_of = {outer: float(z) for (_, outer), z in zip(found.pairs, found.z, strict=True)}
    candidates = []  # (inner, view, outer) usable views in a row
    for branch in branches:
        usable = [v for v in branch if not unusable[v]]
        for k in range(1, len(usable) - 1):
            inner, view, outer = usable[k - 1], usable[k], usable[k + 1]
            if z_of[view] < Z_LOW and z_of[outer] < Z_LOW:
                candidates.append((inner, view, outer))
    if not candidates:
        return found
    bridges = search_pairs(level, angles, [(g, w) for g, _, w in candidates],
                           max_shift=max_shift, interpolation=interpolation)
    changed = False
    for (_, view, outer), z_bridge in zip(candidates, bridges.z.tolist(), strict=True):
        weaker = max(z_of[view], z_of[outer])
        if z_bridge >= Z_LOW and z_bridge >= 2 * weaker and not unusable[view]:
            unusable[view] = True
            reasons[view] = (f"blank: no significant correlation with the neighbouring views "
                             f"(peak significance {z_of[view]:.1f} and {z_of[outer]:.1f}; "
                             f"{z_bridge:.1f} across it)")
            changed = True
    if not changed:
        return found
    pairs = branch_pairs(branches, unusable)
    known = {pair: k for k, pair in enumerate(found.pairs)}
    known_bridge = {pair: k for k, pair in enumerate(bridges.pairs)}
    index_found = [known.get(pair, -1) for pair in pairs]
    missing = [pair for pair, k in zip(pairs, index_found, strict=True)
               if k < 0 and pair not in known_bridge]
    extra = search_pairs(level, angles, missing, max_shift=max_shift,
                         interpolation=interpolation) if missing else None
    rows = []
    for pair, k in zip(pairs, index_found, strict=True):
        if k >= 0:
            rows.append((found, k))
        elif pair in known_bridge:
            rows.append((bridges, known_bridge[pair]))
        else:
            rows.append((extra, extra.pairs.index(pair)))
    return PairMeasurements(
        pairs,
        torch.stack([m.shifts[k] for m, k in rows]),
        torch.stack([m.ncc[k] for m, k in rows]),
        torch.stack([m.peak[k] for m, k in rows]),
        torch.stack([m.z[k] for m, k in rows]),
        torch.stack([m.stretched[k] for m, k in rows]),
    )


def name_the_limit(level, angles, branches, unusable, reasons, views, max_shift, interpolation,
                   input_pixels):
    """Re-word the reasons of flagged `views` whose match lies beyond `max_shift`: the limit's doing.

    A view the limit kept from its match correlates with nothing within it
    and is flagged (blank, or set aside by the self-check); searched again
    without the limit, a significant match farther than `max_shift` (level
    pixels; `input_pixels` input pixels per level pixel, for the message)
    shows what rejected it.
    """
    inner_of = {}
    for branch in branches:
        for position, view in enumerate(branch[1:], start=1):
            inner_of[view] = next((v for v in reversed(branch[:position]) if not unusable[v]),
                                  branch[0])
    pairs = [(inner_of[v], v) for v in views]
    free = search_pairs(level, angles, pairs, max_shift=None, interpolation=interpolation)
    for (_, view), shift, z in zip(pairs, free.shifts, free.z.tolist(), strict=True):
        distance = float(shift.norm())
        if z >= Z_LOW and distance > max_shift:
            reasons[view] = (f"rejected by the maximum shift: its match with the neighbouring "
                             f"view lies {distance * input_pixels:.1f} input px away (peak "
                             f"significance {z:.1f}), beyond the maximum shift of "
                             f"{max_shift * input_pixels:g} px allowed between neighbours "
                             "(max_shift; --max-shift on the command line, 'Maximum shift "
                             "(px)' in the form): raise it")


def reference_walk(level: Level, angles, branches, unusable, estimates, pair_z, *, memory: float,
                   max_shift, interpolation, refine: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view found again against the weighted sum of the views before it, in the reference frame.

    Walking each branch outwards, view `v` is moved by its current estimate
    and stretched into the reference view's frame, then correlated (full
    search) with `sum_j w_j view_j`, the usable views before it aligned by
    their final shifts (weights 1, `memory`, `memory**2`... from the
    neighbour inwards). In the reference frame the chain is additive
    (`K_v e_v = K_g e_g + K_g s`), so a correction found for one view is
    carried to the next view's starting estimate. Unusable views are
    measured the same way but never join a reference.

    `estimates` `(b, 2)` are level pixels; `pair_z` `(b,)` each view's
    first-stage significance (a weak pair's shift is not trusted as a start).
    Returns new estimates `(b, 2)` and each view's significance `(b,)`.
    """
    views = level.binned.views
    correlator = level.correlator
    device = views.device
    across = level.across
    centre = level.binned.centre
    reference = branches[0][0]
    cos_ref = math.cos(math.radians(float(angles[reference])))
    factors = cos_ref / torch.cos(torch.deg2rad(angles))  # (b,) into the reference frame
    p = across.detach().cpu().to(torch.float64)

    def to_frame(shift, view):  # K_v e
        return shift + (float(factors[view]) - 1.0) * float(shift @ p) * p

    def from_frame(shift, view):  # K_v^-1 r
        return shift + (1.0 / float(factors[view]) - 1.0) * float(shift @ p) * p

    window = correlator.mask
    if level.area is not None:
        window = window * correlator.box_mask(level.boxes(angles[reference:reference + 1])[0])
    ky = correlator.ky.to(torch.float64)
    kx = correlator.kx.to(torch.float64)

    def spectrum(view, shift):
        image = stretch_images(views[view:view + 1], factors[view:view + 1], across, centre,
                               pre_shifts=shift[None].to(device), mode=interpolation)
        return correlator.spectra(image, window=window)

    def moved(spec, s):  # the spectrum of the content moved by +s
        phase = torch.exp(-2j * math.pi * (s[0] * ky[:, None] + s[1] * kx[None, :]))
        return spec * phase.to(spec.dtype).to(spec.device)

    chained = torch.stack([to_frame(estimates[v], v) for v in range(len(factors))])
    final = chained.clone()
    z_out = torch.full((len(factors),), float("nan"), dtype=torch.float64)
    for branch in branches:
        total = spectrum(reference, torch.zeros(2, dtype=torch.float64))
        last = reference
        for view in branch[1:]:
            trusted = math.isfinite(float(pair_z[view])) and float(pair_z[view]) >= Z_LOW
            guess = chained[view] + (final[last] - chained[last]) if trusted else final[last]
            spec = spectrum(view, from_frame(guess, view))
            s, _, _, z = correlator.correlate(total, spec, refine=refine, max_shift=max_shift,
                                              significance=True)
            s = s[0].cpu()
            final[view] = guess + s
            z_out[view] = float(z[0])
            if unusable[view]:
                continue
            total = moved(spec, s) + memory * total
            last = view
    new = torch.stack([from_frame(final[v], v) for v in range(len(factors))])
    new[reference] = 0.0
    return new, z_out
