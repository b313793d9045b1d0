"""The self-check: align along candidate paths, measure each from the data alone, keep the best.

Every run is measured, and the measure decides between candidates instead of
thresholds tuned on one simulator. The plain IMOD path is always a candidate
and is kept unless the data show another one clearly better, so the defaults
cannot be worse than the plain method by this measure; when no candidate is
self-consistent the series is marked unreliable, with the figure that says so.

**The measure** (`Judge.measure`: one set of shifts at one judge binning).
Every usable view, moved by its shift and stretched into the reference view's
frame, is correlated with its next `JUDGE_LAGS` usable views in tilt order on
both sides (`links`), on the working views binned 1, 2, 4... times more
(`Judge.levels`), with the options' correlation filter per judge pixel, each
frequency weighted by its signal-to-noise ratio measured between neighbours
(`FRC / (1 - FRC)`: the band where the data hold signal, whatever the noise).
Opaque areas the screen found (a grid bar's shadow) carry no weight. Each
link's residual shift is searched within `JUDGE_RADIUS` judge pixels; a robust
least-squares solve of all links (`links.solve_links`) gives the corrections
the links still ask for (`LinkCheck.correction`, input pixels, the motions no
tilt series fixes removed: `geometry.unfixed_motions`) and each link's
*held-out* residual, its misfit under the solve made without it
(`links.held_out`). A link *agrees* when that residual is within `AGREE` judge
pixel (1 link in 64 does by chance when nothing correlates). A level is
*consistent* when at least `CONSISTENT` of the links agree and no gap between
neighbouring views is crossed by fewer than `TIES` agreeing links (a break),
views whose links disagree as if by chance, or that match their neighbours far
less than the neighbours match each other (another view's image), set aside
(`outliers`). Per view: the median held-out residual of its links
(`residual`) and its links' correlation with its nearest neighbours
(`adjacent_correlation`).

**The choice** (`align_checked`). The plain path runs first and is measured on
views of at most `QUICK_SIZE` pixels. It is kept at once (clean data pay for
one measure) when it is consistent there, its links ask for at most `SETTLED`
working pixels RMS, no fixed pattern was found, and neighbouring views look no
more alike unstretched than stretched (`_slab_unlike`: a compact specimen, a
particle or a needle along the axis, does not foreshorten as a slab does).
When they do look more alike unstretched, the plain path without the cosine
stretch runs and is kept at once on the same terms, judged in its own frame
(its links settled, neighbours still clearly more alike under it), unless its
links ask for more than the plain path's do in theirs: then the two figures
disagree on the model, nothing shows the other one clearly better, and the
plain path, settled, is kept. Otherwise the candidates run, each path once whichever step asks for it
(`candidate_paths`): the plain path (and with a
fixed pattern removed, when one was found), the adaptive path, both on 2x and
4x binned views; and, judged in an unstretched frame, the plain and adaptive
paths without the cosine stretch. Each family is measured from the working
binning outwards, and the finest binning where some candidate is consistent
decides: in order of preference, a candidate replaces the one kept so far only
when it at least halves the mean squared correction (`BETTER`), smaller view
by view by Wilcoxon's signed ranks (`SIGNIFICANT`), sets aside no view the
kept one aligns, and does not make
neighbouring views overlap worse (`_lower`, on the views with a found pattern
removed). Between the two families the data choose the geometry: the
unstretched one is kept when its neighbours look clearly more alike, each in
its own frame. A kept series is unreliable when no binning is consistent, when
it breaks, or when its links still ask for more than `MAX_CORRECTION` pixels
RMS. Outlying views are made unusable, with the figures, and the kept path is
run again without them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch

from .area import area_boxes
from .binning import BinnedViews, bin_views
from .core import PLAIN, Path, align_path, prepare_views
from .correlate import CorrelationFilter, PairCorrelator
from .final_pass import _frame_spectra, measure_links
from .geometry import axis_directions, unfixed_motions
from .links import LinkSystem, frame_factors, held_out, link_pairs, solve_links, stretch_matrices
from .memory import items_per_chunk
from .result import TiltxcorrResult

JUDGE_LAGS = 3          # each view is linked to its next 3 usable views in tilt order
JUDGE_RADIUS = 8.0      # judge pixels searched around the alignment for each link (wide enough
#                         to find the true peak of a specimen that repeats itself nearby)
AGREE = 1.0             # a link agrees when its held-out residual is within this (judge px):
#                         by chance (nothing correlates) 1 link in 64 does
CONSISTENT = 0.8        # a consistent level has at least this fraction of links agreeing
JUDGE_MIN_SIZE = 48     # coarser judge levels while views keep at least this many pixels
JUDGE_MIN_SD = 0.2      # judge px: the least robust SD the link solve assumes
OUTLIER_DISAGREE = 0.75  # a view with at least this fraction of its links disagreeing is set aside
TIES = 2                # a gap with fewer agreeing links across it is a break
STRANGER = 0.75         # a view whose links correlate below this share of the link across it...
STRANGER_SPREADS = 4.0  # ...by this many robust spreads of the series' link-to-link variation
CHANCE = JUDGE_RADIUS / 2  # ...and their median held-out residual this far off (judge px): by
#                            chance (nothing correlates) the median is 0.71 of the radius
MAX_CORRECTION = 2.0    # input px RMS: a kept alignment whose links ask for more is unreliable
SETTLED = 0.5           # working px RMS: a consistent plain path asked for no more is kept at once
QUICK_SIZE = 256        # ...as measured on views of at most this many pixels (cheap)
BETTER = 0.5            # a challenger must at least halve the kept path's mean squared correction
SIGNIFICANT = 2.0       # ...and be smaller view by view beyond this z (signed ranks)
OVERLAP_LOSS = 0.01     # ...and not make neighbours overlap worse by 1% of their decorrelation
COARSER = (2, 4)        # extra binnings of the coarser candidates (as far as views allow)
MIN_CANDIDATE_SIZE = 48  # a coarser candidate keeps views of at least this many pixels


@dataclass(frozen=True)
class LinkCheck:
    """One set of shifts measured at one judge binning (see the module docstring).

    Attributes
    ----------
    binning
        The judge's binning relative to the input views.
    pairs
        The links `(i, j)`, input indices.
    held_out
        `(n_links,)` held-out residual of each link, input pixels.
    agree
        `(n_links,)` bool: links whose held-out residual is within `AGREE`
        judge pixels.
    correction
        `(b, 2)` corrections the links still ask for, input pixels, the
        unfixed motions removed; NaN for views without links.
    ncc
        `(n_links,)` normalised correlation of each link at its peak.
    lags
        `(n_links,)` how many views apart in tilt order each link's views are.
    outliers
        Views whose links (nearly) all disagree, or that match their
        neighbours far less than the neighbours match each other across them,
        set aside before judging (`outlier_reasons` says which, with figures).
    breaks
        `(inner, outer)` neighbouring views with most links across them
        disagreeing.
    """

    binning: int
    pairs: list[tuple[int, int]]
    held_out: torch.Tensor
    agree: torch.Tensor
    correction: torch.Tensor
    ncc: torch.Tensor
    lags: torch.Tensor
    outliers: tuple[int, ...] = ()
    breaks: tuple[tuple[int, int], ...] = ()
    outlier_reasons: dict[int, str] = field(default_factory=dict)

    def _kept(self) -> torch.Tensor:
        out = set(self.outliers)
        return torch.tensor([i not in out and j not in out for i, j in self.pairs],
                            dtype=torch.bool)

    @property
    def agreeing(self) -> float:
        """Fraction of the links (outliers' aside) that agree."""
        kept = self._kept()
        return float(self.agree[kept].double().mean()) if bool(kept.any()) else 0.0

    @property
    def consistent(self) -> bool:
        return self.agreeing >= CONSISTENT and not self.breaks

    @property
    def error(self) -> float:
        """RMS over the linked views (outliers aside) of the corrections asked for, input px."""
        keep = torch.isfinite(self.correction[:, 0])
        keep[list(self.outliers)] = False
        if not bool(keep.any()):
            return math.inf
        return float(self.correction[keep].norm(dim=1).pow(2).mean().sqrt())

    def view_figures(self, n_views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(b,)` median held-out residual of each view's links (input px) and the mean
        correlation of its links to its nearest neighbours (NaN where it has none)."""
        residual = torch.full((n_views,), float("nan"), dtype=torch.float64)
        correlation = torch.full((n_views,), float("nan"), dtype=torch.float64)
        nearest = self.lags == 1
        for view in range(n_views):
            mine = torch.tensor([view in pair for pair in self.pairs], dtype=torch.bool)
            if bool(mine.any()):
                residual[view] = float(self.held_out[mine].median())
            if bool((mine & nearest).any()):
                correlation[view] = float(self.ncc[mine & nearest].mean())
        return residual, correlation

    def describe(self) -> str:
        text = (f"links agree {100 * self.agreeing:.0f}%, corrections asked "
                f"{self.error:.2f} px RMS")
        if self.breaks:
            text += f", {len(self.breaks)} break(s)"
        return text


def _outliers_and_breaks(pairs, agree: torch.Tensor, residual: torch.Tensor, order: list[int]
                         ) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Views whose links nearly all disagree, as if by chance; gaps whose links do.

    `residual` `(n_links,)` held-out residuals in judge pixels. A view is an
    outlier when at least `OUTLIER_DISAGREE` of its links disagree and their
    median residual is beyond `CHANCE` (its image does not match its
    neighbours at all), and more so than both its neighbours in tilt (next to
    a break, a view has half its links across it). A gap between neighbouring
    views (outliers aside) is a break when fewer than `TIES` links across it
    agree: nothing then holds one side in place against the other (each link
    agrees by chance with a probability of 1/16).
    """
    agreeing = agree.tolist()
    links_of: dict[int, list[int]] = {v: [] for v in order}
    for k, (i, j) in enumerate(pairs):
        for view in (i, j):
            if view in links_of:
                links_of[view].append(k)
    rate = {v: sum(not agreeing[k] for k in links) / len(links) if links else 0.0
            for v, links in links_of.items()}

    def off(view: int) -> bool:
        return rate[view] >= OUTLIER_DISAGREE \
            and float(residual[links_of[view]].median()) > CHANCE

    outliers = []
    for p, view in enumerate(order):
        neighbours = [order[q] for q in (p - 1, p + 1) if 0 <= q < len(order)]
        if len(links_of[view]) >= 2 and off(view) and all(
                rate[n] < rate[view] for n in neighbours):
            outliers.append(view)
    out = set(outliers)
    remaining = [v for v in order if v not in out]
    place = {v: p for p, v in enumerate(remaining)}
    # links across each gap p (between remaining views p and p + 1), and how many agree
    crossing = [0] * len(remaining)
    ties = [0] * len(remaining)
    for k, (i, j) in enumerate(pairs):
        if i in place and j in place:
            low, high = sorted((place[i], place[j]))
            for step, count in ((low, 1), (high, -1)):
                crossing[step] += count
                ties[step] += count * agreeing[k]
    breaks = []
    across = agreed = 0
    for p in range(len(remaining) - 1):
        across, agreed = across + crossing[p], agreed + ties[p]
        if across and agreed < TIES:
            breaks.append((remaining[p], remaining[p + 1]))
    return tuple(outliers), tuple(breaks)


def _strangers(pairs, lags: torch.Tensor, ncc: torch.Tensor, order: list[int]) -> dict[int, str]:
    """Views that match their neighbours far less than the neighbours match each other.

    Views two apart in tilt correlate less than neighbours in any series; a
    view whose links to both neighbours correlate below `STRANGER` of the link
    across it, by more than `STRANGER_SPREADS` robust spreads of the series'
    own link-to-link variation, is not the image its tilt says (another view's
    image, a different specimen area).
    """
    index = {pair: k for k, pair in enumerate(pairs)}
    nearest = [float(ncc[index[(order[p], order[p + 1])]]) for p in range(len(order) - 1)]
    if len(nearest) < 4:
        return {}
    steps = torch.tensor(nearest, dtype=torch.float64).diff().abs()
    spread = 1.4826 * float(steps.median()) / 2 ** 0.5
    found = {}
    for p in range(1, len(order) - 1):
        before, after = nearest[p - 1], nearest[p]
        across = index.get((order[p - 1], order[p + 1]))
        if across is None:
            continue
        bridge = float(ncc[across])
        if (max(before, after) < STRANGER * bridge
                and bridge - max(before, after) > STRANGER_SPREADS * spread):
            found[order[p]] = (f"matches its neighbouring views less than they match each other "
                               f"across it: correlation {before:.2f} and {after:.2f} with them, "
                               f"{bridge:.2f} between them")
    return found


class JudgeLevels:
    """The judge's levels: the working views binned 1, 2, 4... times more, while they keep
    `JUDGE_MIN_SIZE` pixels (or `count` levels).

    Each is made on first use, straight from the working views (a clean series
    needs one level only), and kept by them (`BinnedViews.rebinned`): the
    first stage, the coarser candidates and both models' judges share them.
    """

    def __init__(self, views: BinnedViews, count: int | None = None):
        self.views = views
        if count is None:
            count = 1
            while min(self.shape(count - 1)) // 2 >= JUDGE_MIN_SIZE:
                count += 1
        self.count = count

    def shape(self, level: int) -> tuple[int, int]:
        """`(h, w)` of a level's views, without making them."""
        h, w = self.views.views.shape[-2:]
        return h // 2 ** level, w // 2 ** level

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, level: int) -> BinnedViews:
        if not 0 <= level < self.count:
            raise IndexError(f"judge level {level} of {self.count}")
        return self.views if level == 0 else self.views.rebinned(2 ** level)


class Judge:
    """Measures sets of shifts on the working views, at the working binning and coarser."""

    def __init__(self, views: BinnedViews, angles: torch.Tensor, unusable: torch.Tensor,
                 tilt_axis_angle: float, correlation_filter: CorrelationFilter, *,
                 taper_fraction: float, interpolation: str, area=None,
                 opaque_weights: dict[int, torch.Tensor] | None = None,
                 overlap_views: BinnedViews | None = None, stretch: bool = True):
        self.angles = angles
        self.stretch = stretch
        self.area = area
        self.opaque_weights = opaque_weights or {}
        self.tilt_axis_angle = tilt_axis_angle
        self.filter = correlation_filter
        self.taper_fraction = taper_fraction
        self.interpolation = interpolation
        self.order = [v for v in torch.argsort(angles, stable=True).tolist() if not unusable[v]]
        self.reference = min(self.order, key=lambda v: (abs(float(angles[v])), v))
        _, self.across = axis_directions(tilt_axis_angle)
        # Without the cosine stretch (a compact specimen, not a slab) views are compared as
        # they are: every factor 1.
        self.factors = (frame_factors(angles, self.reference) if stretch
                        else torch.ones(angles.numel(), dtype=torch.float64))
        self.pairs, self.lags = link_pairs(self.order, JUDGE_LAGS)
        self.system = LinkSystem.build(self.pairs, self.reference,
                                       stretch_matrices(self.factors, self.across))
        self.prior = self.lags.to(torch.float64) ** -1.0
        self.levels = JudgeLevels(views)
        self.overlap_levels = (self.levels if overlap_views is None
                               else JudgeLevels(overlap_views, len(self.levels)))
        self._correlators: dict[int, PairCorrelator] = {}
        self._kept: tuple | None = None  # (views and level, shifts, spectra): see `_frame`
        keep = torch.zeros(angles.numel(), dtype=torch.bool)
        keep[self.order] = True
        self._keep = keep
        basis = unfixed_motions(angles, tilt_axis_angle)[keep]  # (n, 2, 4)
        self._basis = basis.reshape(-1, 4)

    def _weights(self, level: int) -> dict[int, torch.Tensor]:
        """The views' opaque weights (see `core.PreparedViews`) binned to this level."""
        return {v: bin_views(w[None], 2 ** level)[0] for v, w in self.opaque_weights.items()}

    def _box(self, level: int) -> torch.Tensor:
        """The area to correlate (`CoarseOptions.area`) at the reference tilt, this level's px."""
        tilt = self.angles[self.reference:self.reference + 1]
        return area_boxes(self.area, tilt, self.across, self.levels[level])[0]

    def _correlator(self, level: int) -> PairCorrelator:
        if level not in self._correlators:
            views = self.levels[level].views
            self._correlators[level] = PairCorrelator(
                tuple(views.shape[-2:]), self.filter, taper_fraction=self.taper_fraction,
                pad_fraction=0.0, device=views.device)
        return self._correlators[level]

    def quick_level(self) -> int:
        """The level that checks the plain path alone: views of at most `QUICK_SIZE` px."""
        for level in range(len(self.levels)):
            if max(self.levels.shape(level)) <= QUICK_SIZE:
                return level
        return len(self.levels) - 1

    def spectra(self, shifts: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Band spectra `(b, rows, cols)` of the views moved by `shifts` (input px) and stretched
        into the reference frame at judge level `level`, and the ring correlation `(rings,)`
        of neighbouring views (links to the next view in tilt), ring `i` centred on
        `(i + 0.5) * RING` cycles per judge pixel."""
        spectra = self._frame(self.levels[level], shifts, level)
        nearest = [pair for pair, lag in zip(self.pairs, self.lags.tolist(), strict=True)
                   if lag == 1]
        return spectra, ring_correlation(spectra, self._correlator(level), nearest)

    def _frame(self, binned: BinnedViews, shifts: torch.Tensor, level: int) -> torch.Tensor:
        """Band spectra of `binned` (this level's views) moved by `shifts`, in the reference frame.

        The last ones made on views of at most `QUICK_SIZE` px are kept: the
        quick check measures a path and then asks for its neighbours' overlap.
        """
        key = (id(binned), level)
        if self._kept is not None and self._kept[0] == key and torch.equal(self._kept[1], shifts):
            return self._kept[2]
        correlator = self._correlator(level)
        estimates = shifts.detach().cpu().to(torch.float64) / binned.factor
        size = min(binned.views.shape[-2:])
        typical = float(estimates[self.order].norm(dim=1).quantile(0.9))
        window = correlator.inset_mask(min(typical, 0.25 * size) + JUDGE_RADIUS)
        if self.area is not None:
            window = window * correlator.box_mask(self._box(level))
        spectra = _frame_spectra(binned.views, self.factors, estimates, correlator, window,
                                 self.across, binned.centre, self.interpolation,
                                 weights=self._weights(level))
        if max(binned.views.shape[-2:]) <= QUICK_SIZE:
            self._kept = (key, shifts.detach().clone(), spectra)
        return spectra

    def adjacent_correlation(self, shifts: torch.Tensor, level: int) -> torch.Tensor:
        """`(n_nearest,)` normalised correlation of each view with its next one in tilt.

        Computed at no shift beyond `shifts` (input px), in the options'
        correlation band, on `overlap_views` (the views with a fixed pattern
        removed when one was found: a pattern the views share would otherwise
        reward the shifts that lock on it).
        """
        spectra = self._frame(self.overlap_levels[level], shifts, level)
        correlator = self._correlator(level)
        first = torch.tensor(self.order[:-1])
        second = torch.tensor(self.order[1:])
        energy = correlator.energy(spectra).cpu()
        value = correlator.overlap(spectra, first, second).cpu()
        return value / (energy[first] * energy[second]).sqrt().clamp_min(1e-300)

    def measure(self, shifts: torch.Tensor, level: int = 0, *,
                prepared: tuple[torch.Tensor, torch.Tensor] | None = None,
                rings: torch.Tensor | None = None) -> LinkCheck:
        """`LinkCheck` of shifts `(b, 2)` (input pixels) at judge level `level` (0: working).

        Each frequency counts by its signal-to-noise ratio, `FRC / (1 - FRC)`
        from the ring correlation of neighbouring views (`rings`, by default
        these shifts' own; candidates compared at one level share the best
        ring correlation any of them reached), on top of the options' filter:
        the links then use the band where the data hold signal, whatever the
        noise. `prepared`: `spectra(shifts, level)` if already made.
        """
        binned = self.levels[level]
        factor = binned.factor
        spectra, own = prepared if prepared is not None else self.spectra(shifts, level)
        correlator = self._correlator(level)
        weighted = copy.copy(correlator)
        weighted.reweight(_snr_weight(own if rings is None else rings))
        n_views = self.angles.numel()
        measured, ncc, _ = measure_links(spectra, self.pairs, weighted, radius=JUDGE_RADIUS,
                                         refine=True)
        solution, weights, _ = solve_links(self.system, measured, self.prior,
                                           min_sd=JUDGE_MIN_SD)
        residual = held_out(self.system, measured, solution, weights).norm(dim=1)
        agree = residual <= AGREE
        rho = self.system.spread(solution, n_views)[self._keep].reshape(-1)
        fit = torch.linalg.lstsq(self._basis, rho[:, None]).solution
        correction = torch.full((n_views, 2), float("nan"), dtype=torch.float64)
        correction[self._keep] = (rho - (self._basis @ fit)[:, 0]).reshape(-1, 2) * factor
        outliers, breaks = _outliers_and_breaks(self.pairs, agree, residual, self.order)
        why = {}
        for view in outliers:
            mine = [k for k, pair in enumerate(self.pairs) if view in pair]
            why[view] = (f"links disagree with the neighbouring views: "
                         f"{int((~agree[mine]).sum())} of {len(mine)} links off by more than "
                         f"{AGREE * factor:.1f} px (median "
                         f"{float(residual[mine].median()) * factor:.1f} px)")
        for view, text in _strangers(self.pairs, self.lags, ncc, self.order).items():
            why.setdefault(view, text)
        return LinkCheck(binning=factor, pairs=self.pairs, held_out=residual * factor,
                         agree=agree, correction=correction, ncc=ncc, lags=self.lags,
                         outliers=tuple(sorted(why)), breaks=breaks, outlier_reasons=why)


RING = 0.02  # cycles per judge pixel: width of the rings of the ring correlation


def ring_correlation(spectra: torch.Tensor, correlator: PairCorrelator,
                     pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Ring correlation `(rings,)` float64 of the band spectra of `pairs`, summed over pairs."""
    frequency = torch.sqrt(correlator.ky[:, None].to(torch.float64) ** 2
                           + correlator.kx[None, :].to(torch.float64) ** 2).cpu()
    n_rings = int(0.5 / RING)
    rings = (frequency / RING).long().clamp(max=n_rings - 1).flatten()
    weight = correlator.col_weights.to(torch.float64).cpu()[None, :].expand_as(frequency).flatten()
    first = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    second = torch.tensor([j for _, j in pairs], dtype=torch.long)
    cross = torch.zeros(frequency.numel(), dtype=torch.float64)
    power_a = torch.zeros_like(cross)
    power_b = torch.zeros_like(cross)
    # per pair, alive at once: both gathered spectra and one product (each is summed, then
    # freed), complex64 as float32 pairs
    chunk = items_per_chunk(3 * spectra[0].numel() * 8, spectra.device, cached=True)
    for start in range(0, len(pairs), chunk):
        a = torch.view_as_real(spectra[first[start:start + chunk].to(spectra.device)]).flatten(1, 2)
        b = torch.view_as_real(spectra[second[start:start + chunk].to(spectra.device)]).flatten(1, 2)
        # real and imaginary parts summed first, then the pairs: sum(dim=(0, 2)) takes a path
        # twice as slow for some chunk sizes (3 pairs of 256 px views)
        cross += (a * b).sum(dim=2).sum(dim=0).cpu().double()
        power_a += a.square().sum(dim=2).sum(dim=0).cpu().double()
        power_b += b.square().sum(dim=2).sum(dim=0).cpu().double()
    cross, power_a, power_b = cross * weight, power_a * weight, power_b * weight
    sums = [torch.zeros(n_rings, dtype=torch.float64).index_add_(0, rings, x)
            for x in (cross, power_a, power_b)]
    return sums[0] / (sums[1] * sums[2]).sqrt().clamp_min(1e-300)


def _snr_weight(rings: torch.Tensor):
    """Radial weight (cycles per pixel in): each ring's `FRC / (1 - FRC)`, at most 1."""
    frc = rings.clamp(0.0, 0.95)
    snr = frc / (1 - frc)
    snr = snr / snr.max().clamp_min(1e-12)

    def weight(frequency: torch.Tensor) -> torch.Tensor:
        index = (frequency / RING).long().clamp(0, len(snr) - 1)
        return snr[index].to(frequency.dtype)

    return weight


@dataclass
class _Candidate:
    path: Path
    result: TiltxcorrResult
    checks: dict[int, LinkCheck] = field(default_factory=dict)


def _better(challenger: LinkCheck, kept: LinkCheck) -> bool:
    """Whether `challenger`'s corrections are clearly smaller than `kept`'s.

    Clearly: the mean squared correction at most `BETTER` of the kept one's,
    and smaller view by view (Wilcoxon's signed-rank test, `z < -SIGNIFICANT`:
    a few views under a grid bar's shadow must not decide by their size
    alone, nor hide a gain everywhere else). A judge level's own view of the
    shifts is not the truth either: a candidate correlated at the same band
    as the judge looks a little better to it than it is, so small gains do
    not count. Nor does a challenger that sets aside a view the kept path
    aligns: it would win by losing that view (a 4x binned plain path that
    misaligned a grid-barred view at 60 degrees by 23 px looked smallest,
    the view's own links aside).
    """
    if set(challenger.outliers) - set(kept.outliers):
        return False
    both = torch.isfinite(challenger.correction[:, 0]) & torch.isfinite(kept.correction[:, 0])
    both[list(set(challenger.outliers) | set(kept.outliers))] = False
    if int(both.sum()) < 3:
        return False
    mine = challenger.correction[both].norm(dim=1).square()
    theirs = kept.correction[both].norm(dim=1).square()
    return (float(mine.mean()) <= BETTER * float(theirs.mean())
            and signed_rank_z(mine - theirs) < -SIGNIFICANT)


def signed_rank_z(diff: torch.Tensor) -> float:
    """Wilcoxon's signed-rank statistic of paired differences `(n,)`, as a z value (0 if < 3)."""
    diff = diff[torch.isfinite(diff) & (diff != 0)].to(torch.float64)
    n = diff.numel()
    if n < 3:
        return 0.0
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.argsort(diff.abs())] = torch.arange(1, n + 1, dtype=torch.float64)
    positive = float(ranks[diff > 0].sum())
    mean = n * (n + 1) / 4
    spread = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return (positive - mean) / spread


def _lower(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether link correlations `first` are clearly lower than `second`.

    Lower link by link (signed ranks), and by more than `OVERLAP_LOSS` of
    what `second` lacks of a perfect correlation: paths that weigh
    frequencies differently differ by a few 1e-4 everywhere, which says
    nothing of how well they align.
    """
    both = torch.isfinite(first) & torch.isfinite(second)
    loss = float((second - first)[both].mean()) if bool(both.any()) else 0.0
    return (signed_rank_z(first - second) < -SIGNIFICANT
            and loss > OVERLAP_LOSS * float((1 - second[both]).mean()))


def candidate_paths(work_shape: tuple[int, int], remove_pattern: bool, forced: bool = False,
                    *, stretch: bool = True) -> list[Path]:
    """The candidates when the plain path is not settled, in order of preference.

    With the cosine stretch: the plain path as it ran (unless `forced`:
    `fixed_pattern="on"`), then with the pattern removed when one was found,
    the adaptive path, then both on coarser views as far as the views allow.
    Without it (`stretch=False`, a compact specimen): the plain and the
    adaptive path.
    """
    if not stretch:
        return [Path(stretch=False, remove_pattern=remove_pattern),
                Path(stretch=False, adaptive=True, remove_pattern=remove_pattern)]
    paths = [] if forced else [PLAIN]
    if remove_pattern:
        paths.append(Path(remove_pattern=True))
    paths.append(Path(adaptive=True, remove_pattern=remove_pattern))
    for extra in COARSER:
        if min(work_shape) // extra >= MIN_CANDIDATE_SIZE:
            paths += [Path(binning=extra, adaptive=True, remove_pattern=remove_pattern),
                      Path(binning=extra, remove_pattern=remove_pattern)]
    return paths


def align_checked(binned: BinnedViews, angles: torch.Tensor, tilt_axis_angle: float, opts,
                  progress=None) -> TiltxcorrResult:
    """The coarse alignment with its self-check (module docstring); checked inputs."""
    prepared = prepare_views(binned, angles, opts)
    found_pattern = prepared.pattern is not None and prepared.pattern.present
    forced = opts.fixed_pattern == "on"
    correlation_filter = CorrelationFilter(opts.high_pass_sigma, opts.high_pass_radius,
                                           opts.low_pass_cutoff, opts.low_pass_sigma)
    judge_args = dict(taper_fraction=opts.taper_fraction, interpolation=opts.interpolation,
                      area=opts.area(binned.full_shape), opaque_weights=prepared.opaque_weights,
                      overlap_views=prepared.views(found_pattern or forced))

    def judge_for(stretch: bool, unusable: torch.Tensor = prepared.unusable) -> Judge:
        # The judge sees the views as they are: a pattern fixed in the camera is pixel-scale
        # detail that its coarser levels average away, while an aligned specimen taken for a
        # pattern (a needle along the tilt axis looks alike at every tilt) keeps its say.
        return Judge(prepared.views(False), prepared.angles, unusable, tilt_axis_angle,
                     correlation_filter, stretch=stretch, **judge_args)

    judges = {True: judge_for(True)}
    first = replace(PLAIN, remove_pattern=forced)
    plain = _Candidate(first, align_path(prepared, first, tilt_axis_angle, opts, progress))
    quick = judges[True].quick_level()
    plain.checks[quick] = judges[True].measure(plain.result.shifts, quick)
    settled = (plain.checks[quick].consistent and not found_pattern
               and plain.checks[quick].error <= SETTLED * binned.factor)
    made = {first: plain}

    def candidate(path: Path) -> _Candidate:  # each path runs once, whichever step asks
        if path not in made:
            made[path] = _Candidate(path, align_path(prepared, path, tilt_axis_angle, opts))
        return made[path]

    kept, level, family = plain, quick, [plain]
    if settled and opts.adaptive:  # is the specimen a slab? (a compact one looks alike unstretched)
        judges[False] = judge_for(False)
        if _slab_unlike(plain.result.shifts, judges, quick):
            # the same shortcut in the other model: its plain path kept when its own links
            # are settled and it still makes neighbours clearly more alike
            unstretched = candidate(Path(stretch=False, remove_pattern=forced))
            check = unstretched.checks[quick] = judges[False].measure(
                unstretched.result.shifts, quick)
            if check.consistent and check.error > plain.checks[quick].error:
                # the links fit the slab better, the overlap the compact specimen: the two
                # figures disagree on the model, so nothing shows the other one clearly
                # better and the plain path, settled, is kept (the figures in the note)
                family = [plain, unstretched]
            else:
                settled = (check.consistent and check.error <= SETTLED * binned.factor
                           and _slab_unlike((plain.result.shifts, unstretched.result.shifts),
                                            judges, quick))
                if settled:
                    kept, family = unstretched, [plain, unstretched]
    if opts.adaptive and not settled:
        judges.setdefault(False, judge_for(False))
        best = {}
        for stretch in (True, False):
            family = [candidate(path) for path in candidate_paths(
                tuple(binned.views.shape[-2:]), found_pattern or forced, forced, stretch=stretch)]
            best[stretch] = (*_choose(family, judges[stretch], plain, quick), family)
        kept, level, family = best[True][:2] + (best[True][3],)
        unstretched, found_n = best[False][0], best[False][2]
        if found_n and (not best[True][2] or _slab_unlike(
                (kept.result.shifts, unstretched.result.shifts), judges, quick)):
            kept, level, family = best[False][0], best[False][1], best[False][3]
    judge = judges[kept.path.stretch]
    check = kept.checks[level]
    if check.outliers and check.consistent:
        result = align_path(prepared, kept.path, tilt_axis_angle, opts,
                            unusable_extra=check.outlier_reasons)
        kept = _Candidate(kept.path, result)
        check = judge_for(kept.path.stretch, result.unusable.cpu()).measure(result.shifts, level)
        kept.checks[level] = check
    return _finish(kept, family, check, level, judge)


def _slab_unlike(shifts, judges: dict[bool, Judge], level: int) -> bool:
    """Whether neighbouring views look clearly more alike unstretched than stretched.

    Cosine stretching models a thin slab, which tilting foreshortens across
    the axis; a compact specimen (a particle, a needle along the axis) does
    not foreshorten, and views stretched for it look less alike. `shifts`:
    one set for both frames, or a pair `(stretched, unstretched)`, each
    judged in its own frame at `level` (each path in the frame of its model:
    a path that misaligned in the stretched frame looks better there than
    unstretched; compared in one frame, or by the links in one frame, the
    jittered catalyst kept a stretched path 13 px off instead of 0.27 px).
    """
    stretched, unstretched = shifts if isinstance(shifts, tuple) else (shifts, shifts)
    return _lower(judges[True].adjacent_correlation(stretched, level),
                  judges[False].adjacent_correlation(unstretched, level))

def _choose(candidates: list[_Candidate], judge: Judge, plain: _Candidate, quick: int
            ) -> tuple[_Candidate, int, bool]:
    """The candidate kept, the judge level that decided, and whether one was consistent.

    The plain path (measured at level `quick`) when no candidate is
    consistent at any level (module docstring).
    """
    for level in range(len(judge.levels)):
        made = {id(c): judge.spectra(c.result.shifts, level) for c in candidates}
        rings = torch.stack([rings for _, rings in made.values()]).max(dim=0).values
        for candidate in candidates:
            candidate.checks[level] = judge.measure(candidate.result.shifts, level,
                                                    prepared=made[id(candidate)], rings=rings)
        del made
        consistent = [c for c in candidates if c.checks[level].consistent]
        if not consistent:
            continue
        kept = consistent[0]
        overlap = {id(kept): judge.adjacent_correlation(kept.result.shifts, level)}
        for challenger in consistent[1:]:
            if not _better(challenger.checks[level], kept.checks[level]):
                continue
            overlap[id(challenger)] = judge.adjacent_correlation(challenger.result.shifts, level)
            # the neighbours must overlap no worse than under the paths kept so far
            if all(not _lower(overlap[id(challenger)], overlap[key]) for key in overlap):
                kept = challenger
        return kept, level, True
    if quick not in plain.checks:
        plain.checks[quick] = judge.measure(plain.result.shifts, quick)
    return plain, quick, False


def _finish(kept: _Candidate, candidates: list[_Candidate], check: LinkCheck, level: int,
            judge: Judge) -> TiltxcorrResult:
    """The kept result with the self-check's figures, verdict and notes."""
    n_views = judge.angles.numel()
    residual, correlation = check.view_figures(n_views)
    reason = ""
    if not check.consistent:
        if check.breaks:
            inner, outer = check.breaks[0]
            reason = (f"the alignment breaks between the views at "
                      f"{float(judge.angles[inner]):.1f} and {float(judge.angles[outer]):.1f} "
                      f"degrees: fewer than {TIES} of the links across them agree")
        else:
            reason = (f"no candidate is self-consistent at any binning: at best "
                      f"{100 * max(c.checks[lv].agreeing for c in candidates for lv in c.checks):.0f}"
                      f"% of the links agree (at least {100 * CONSISTENT:.0f}% needed)")
    elif check.error > MAX_CORRECTION:
        reason = (f"the links still ask for corrections of {check.error:.1f} px RMS "
                  f"(more than {MAX_CORRECTION:g} px): the alignment is not settled")
    figures = "; ".join(
        f"{c.path.describe()}: {c.checks[level].describe()}" for c in candidates
        if level in c.checks)
    note = (f"self-check at binning {check.binning}: kept {kept.path.describe()} ({figures})")
    return replace(
        kept.result,
        residual=residual.to(torch.float32),
        adjacent_correlation=correlation.to(torch.float32),
        unreliable=bool(reason),
        unreliable_reason=reason,
        path=kept.path.describe(),
        check_binning=check.binning,
        series_notes=tuple(kept.result.series_notes) + (note,),
    )
