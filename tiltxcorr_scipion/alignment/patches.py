"""Patch tracking through a tilt series (IMOD tiltxcorr's patch tracking mode), batched.

Outline:
1. Patches are laid out on a regular grid over the reference view (the view
   with the smallest |tilt|), as tiltxcorr does: a patch size and either a
   minimum overlap or a number of patches per axis. Blank patches (low
   filtered contrast) are not tracked.
2. Each patch is followed outwards from the reference view, view by view on
   both sides. From its position `x_j` in the inner view `j`, the outer view
   `k` is sampled on the patch grid carried over by the thin-specimen
   geometry: with the coarse shifts `s` (content moves by `+s` to align) and
   the cosine stretch `K` across the tilt axis (factor `cos t_k / cos t_j`),
   a point at raw `x` in view j lies near ``c + K (x - c + s_j) - s_k`` in
   view k (`c` the image centre). The inner patch is cut at whole pixels
   (no interpolation); the outer one is resampled, so it looks like the
   inner one. The correlation of the two (IMOD's filter, exact sub-pixel
   peak, see `PairCorrelator`) gives the residual displacement; with
   `iterations` > 1 the outer patch is resampled where the last correlation
   put it and correlated again, which removes the taper's pull towards zero.
   All patches of the view pairs at the same distance from the reference
   (one pair per side) are correlated in one batch.
3. A track ends on its side where the outer patch would leave the image,
   is blank, correlates poorly compared with the other patches of the same
   pair, or moves away from their median motion (a jump).
4. Tracks are cut into overlapping pieces of limited length (tiltxcorr's
   LengthAndOverlap, imodchopconts): each piece becomes a separate 3-D point
   in the geometry solve, so the slow drift of a long correlation chain does
   not bend the solution.

Positions are `(row, col)` indices of the RAW input views (not coarse-aligned),
in input pixels, whatever binning the tracking ran at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..options import FINE_DEFAULTS, check_option
from .binning import bin_stack
from .core import chain_pairs
from .correlate import CorrelationFilter, PairCorrelator
from .geometry import axis_directions
from .validation import check_angles, check_shifts, check_stack

MIN_PATCH_SIZE = 24  # binned pixels: smaller patches hold too little for a correlation
AUTO_TRACKING_SIZE = 640  # "auto" binning brings the larger side to at most this many pixels
AUTO_PATCH_FRACTION = 8   # default patch: this fraction of the smaller binned side...
AUTO_PATCH_MIN = 48       # ...but at least this many binned pixels
CUT_REASONS = ("blank_start", "off_image", "blank", "low_score", "jump")


@dataclass(frozen=True)
class PatchTracks:
    """Tracked patch centres, as contours of points (one contour per 3-D point).

    Attributes
    ----------
    positions
        `(n_contours, b, 2)` float64 `(row, col)` positions in the raw input
        views (input pixels, before any alignment), NaN where the contour has
        no point in that view. Views are in stack order.
    scores
        `(n_contours, b)` float32 normalised cross-correlation (-1..1) of the
        correlation that found each point against the previous view's patch;
        NaN where there is no point, and at the reference view (where points
        are placed, not found).
    patch_index
        `(n_contours,)` int64 index in `patch_centres` of the patch each
        contour (piece) was tracked from.
    patch_centres
        `(n_patches, 2)` float64 `(row, col)` centres of the patch grid in the
        raw reference view, input pixels.
    reference_view
        Stack index of the view the tracks start from (smallest |tilt|).
    view_order
        `(b,)` int64 stack indices sorted by tilt angle (the order contours
        run in).
    patch_size
        `(rows, cols)` patch size in input pixels.
    image_shape
        `(h, w)` of the input views.
    binning
        Binning factor the tracking ran at.
    cut_counts
        How many track ends each cause produced: ``"blank_start"`` (patches
        never tracked, blank in the reference view), ``"off_image"``,
        ``"blank"``, ``"low_score"``, ``"jump"``; each side of a patch ends
        once at most.
    """

    positions: torch.Tensor
    scores: torch.Tensor
    patch_index: torch.Tensor
    patch_centres: torch.Tensor
    reference_view: int
    view_order: torch.Tensor
    patch_size: tuple[int, int]
    image_shape: tuple[int, int]
    binning: int
    cut_counts: dict[str, int]

    @property
    def n_contours(self) -> int:
        return int(self.positions.shape[0])

    @property
    def present(self) -> torch.Tensor:
        """`(n_contours, b)` bool: where a contour has a point."""
        return torch.isfinite(self.positions[..., 0])

    def landmarks(self) -> torch.Tensor:
        """All points as rows `(contour, view, row, col)`: `(n_points, 4)` float64.

        `contour` and `view` are 0-based indices (view in stack order); the
        rows are sorted by contour, then view.
        """
        contour, view = torch.nonzero(self.present, as_tuple=True)
        xy = self.positions[contour, view]
        return torch.cat([contour[:, None].double(), view[:, None].double(), xy], dim=1)


def _pair_of_ints(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not float(v).is_integer() or v < 1
                             for v in pair):
        raise ValueError(f"{name} must be a positive integer or a (rows, cols) pair of them, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def grid_centres(side: int, patch: int, border: int, *, overlap: float,
                 number: int | None) -> torch.Tensor:
    """Centres `(n,)` (pixel indices) of patches of `patch` pixels along a side of `side`.

    The patches cover `[border, side - border)`; the first and last touch its
    ends and the rest are evenly spaced. Their number is `number`, or the
    smallest that makes neighbours overlap by at least `overlap` of a patch.
    """
    usable = side - 2 * border
    if number is None:
        step = patch * (1.0 - overlap)
        number = 1 if usable <= patch else math.ceil((usable - patch) / step - 1e-9) + 1
    if number == 1:
        return torch.tensor([(side - 1) / 2], dtype=torch.float64)
    spacing = (usable - patch) / (number - 1)
    return border + (patch - 1) / 2 + spacing * torch.arange(number, dtype=torch.float64)


def chop_contours(present: torch.Tensor, view_order: torch.Tensor, length: int | None,
                  overlap: int, min_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each track into pieces of at most `length` views overlapping by >= `overlap`.

    Parameters
    ----------
    present
        `(n_tracks, b)` bool: the views each track has a point in (stack
        order). Each track must be a run of views adjacent in tilt.
    view_order
        `(b,)` stack indices sorted by tilt.
    length, overlap
        Piece length and minimum overlap in views; `length` None keeps whole
        tracks. A track of `L > length` views gives
        `ceil((L - overlap) / (length - overlap))` pieces of exactly `length`
        views, spread evenly from one end to the other (imodchopconts).
    min_length
        Pieces (or whole tracks) with fewer views are dropped.

    Returns
    -------
    `(track_of_piece (n_pieces,) int64, piece_present (n_pieces, b) bool)`.
    """
    n_tracks, n_views = present.shape
    in_tilt_order = present[:, view_order]  # (n_tracks, b)
    tracks: list[int] = []
    runs: list[tuple[int, int]] = []
    for track in range(n_tracks):
        where = torch.nonzero(in_tilt_order[track]).flatten()
        if where.numel() < max(min_length, 1):
            continue
        first, last = int(where[0]), int(where[-1])
        if last - first + 1 != where.numel():
            raise ValueError(f"track {track} has gaps: tracks must be runs of adjacent views")
        total = last - first + 1
        if length is None or total <= length:
            starts = [first]
            size = total
        else:
            pieces = math.ceil((total - overlap) / (length - overlap))
            starts = [first + round(k * (total - length) / (pieces - 1)) for k in range(pieces)]
            size = length
        for start in starts:
            tracks.append(track)
            runs.append((start, start + size))
    piece_present = torch.zeros(len(runs), n_views, dtype=torch.bool)
    for piece, (start, stop) in enumerate(runs):
        piece_present[piece, view_order[start:stop]] = True
    return torch.tensor(tracks, dtype=torch.long), piece_present


def tracking_binning(binning: int | str, shape: tuple[int, int]) -> int:
    """Binning factor for tracking: `binning`, or for ``"auto"`` (or 0) the smallest
    factor that brings the larger side to at most `AUTO_TRACKING_SIZE` pixels.

    Patch tracking needs less resolution than the coarse correlation and
    runs on many more correlations; IMOD's patch tracking also runs on
    binned views.
    """
    if binning == "auto" or binning == 0:
        return max(1, math.ceil(max(shape) / AUTO_TRACKING_SIZE))
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise ValueError(f"binning must be 'auto' (or 0) or a positive integer, got {binning!r}")
    return binning


def _branches(angles: torch.Tensor) -> tuple[int, list[list[int]]]:
    """The reference view and the branches walked outwards from it (stack indices)."""
    reference, pairs = chain_pairs(angles)
    branches: list[list[int]] = []
    for inner, outer in pairs:
        if inner == reference:
            branches.append([reference, outer])
        else:
            next(b for b in branches if b[-1] == inner).append(outer)
    return reference, branches


def _carry_matrices(inner_tilts: torch.Tensor, outer_tilts: torch.Tensor, across: torch.Tensor
                    ) -> torch.Tensor:
    """`(n, 2, 2)` maps of thin-specimen positions (about the axis) from inner to outer view.

    `K = I + (cos t_outer / cos t_inner - 1) p p^T`, `p` across the axis.
    """
    factor = torch.cos(torch.deg2rad(outer_tilts)) / torch.cos(torch.deg2rad(inner_tilts))
    eye = torch.eye(2, dtype=torch.float64)
    return eye[None] + (factor - 1.0)[:, None, None] * torch.outer(across, across)[None]


def _apply(matrices: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """`matrices @ vectors` for `(..., 2, 2)` matrices and `(..., 2)` vectors (broadcast)."""
    return (matrices @ vectors[..., None])[..., 0]


def _sample_patches(views: torch.Tensor, view_of: torch.Tensor, base: torch.Tensor,
                    carry: torch.Tensor, offsets: tuple[torch.Tensor, torch.Tensor], mode: str
                    ) -> torch.Tensor:
    """Patches `(n, P, Q)` of `views[view_of]` sampled at `base + carry @ (o_row, o_col)`.

    `base` `(n, 2)` in `(row, col)` pixels, `carry` `(n, 2, 2)`, `offsets`
    the `(P,)` row and `(Q,)` column offsets of the patch grid. The grid is
    built by broadcasting (tiny batched matmuls are slow) and sampled with
    `grid_sample`, one call per distinct view.
    """
    h, w = views.shape[-2:]
    dtype = views.dtype  # single precision is plenty for positions within the view
    rows = offsets[0].to(dtype)[None, :, None]  # (1, P, 1)
    cols = offsets[1].to(dtype)[None, None, :]  # (1, 1, Q)

    def normalised(axis: int, size: int) -> torch.Tensor:  # (n, P, Q), align_corners=True
        k = carry[:, axis, :, None, None].to(dtype)  # (n, 2, 1, 1)
        start = base[:, axis, None, None].to(dtype)
        return (start + k[:, 0] * rows + k[:, 1] * cols).mul_(2.0 / (size - 1)).sub_(1.0)

    grid = torch.stack([normalised(1, w), normalised(0, h)], dim=-1)  # (n, P, Q, 2) as (x, y)
    n, p, q = grid.shape[:3]
    out = torch.empty(n, p, q, dtype=views.dtype, device=views.device)
    for view in view_of.unique().tolist():
        members = torch.nonzero(view_of == view).flatten()
        sampled = F.grid_sample(views[view][None, None],
                                grid[members].reshape(1, -1, q, 2).to(views.device),
                                mode=mode, padding_mode="border", align_corners=True)
        out[members.to(views.device)] = sampled.reshape(members.numel(), p, q)
    return out


def _cut_patches(views: torch.Tensor, view_of: torch.Tensor, starts: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """Whole-pixel patches `(n, P, Q)` of `views[view_of]` starting at `starts` `(n, 2)` int64."""
    p, q = size
    rows = starts[:, 0:1] + torch.arange(p)[None]  # (n, P)
    cols = starts[:, 1:2] + torch.arange(q)[None]  # (n, Q)
    device = views.device
    return views[view_of.to(device)[:, None, None], rows.to(device)[:, :, None],
                 cols.to(device)[:, None, :]]


def _correlate_outwards(views, correlator, inner_patches, outer, patch_centre, carry,
                        translation, offsets, *, iterations, search, interpolation):
    """Displacements of inner patches `(n, P, Q)` in their outer views, refined `iterations` times.

    The outer view is sampled where the thin-specimen map puts the patch,
    minus the displacement found so far, and correlated with the inner
    patch; after the first (searching up to `search` pixels) each round
    climbs the peak from zero. Returns `moved` `(n, 2)` (in the inner view's
    frame: the inner patch's content lies at the outer view's
    `map(patch_centre - moved)`), the last NCC `(n,)` and the outer patches'
    filtered energy `(n,)`, on the CPU.
    """
    reference = correlator.spectra(inner_patches)
    moved = torch.zeros(patch_centre.shape[0], 2, dtype=torch.float64)
    for iteration in range(iterations):
        moving = correlator.spectra(_sample_patches(
            views, outer, _apply(carry, patch_centre - moved) + translation, carry, offsets,
            interpolation))
        found, ncc, _ = correlator.correlate(
            reference, moving, max_shift=search if iteration == 0 else None,
            start=None if iteration == 0 else torch.zeros_like(moved))
        moved = moved + found.cpu()
    return moved, ncc.cpu(), correlator.energy(moving).cpu()


def _end_reasons(inside, blank, ncc, moved, branch_of, *, min_relative_score, jump
                 ) -> dict[str, torch.Tensor]:
    """Which tracks end at this step and why: `(n,)` masks, one cause per track.

    Scores and motions are judged against the median of the other tracked
    patches of the same view pair (branch).
    """
    low_score = torch.zeros_like(inside)
    jumped = torch.zeros_like(inside)
    for branch in branch_of.unique().tolist():
        mine = (branch_of == branch) & inside & ~blank
        if mine.any():
            low_score |= mine & (ncc < min_relative_score * ncc[mine].median())
            typical_motion = moved[mine].median(dim=0).values
            jumped |= mine & ((moved - typical_motion).norm(dim=1) > jump)
    return {"off_image": ~inside, "blank": inside & blank,
            "low_score": inside & ~blank & low_score,
            "jump": inside & ~blank & ~low_score & jumped}


def track_patches(
    tilt_series: torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    *,
    shifts: torch.Tensor | None = None,
    size_of_patches: int | tuple[int, int] | None = FINE_DEFAULTS.size_of_patches,
    overlap_of_patches: float = FINE_DEFAULTS.overlap_of_patches,
    number_of_patches: tuple[int, int] | None = FINE_DEFAULTS.number_of_patches,
    borders: int = FINE_DEFAULTS.borders,
    iterations: int = FINE_DEFAULTS.iterations,
    length_and_overlap: tuple[int, int] | None = FINE_DEFAULTS.length_and_overlap,
    min_contour_length: int = FINE_DEFAULTS.min_contour_length,
    min_relative_score: float = FINE_DEFAULTS.min_relative_score,
    max_jump: float = FINE_DEFAULTS.max_jump,
    min_contrast: float = FINE_DEFAULTS.min_contrast,
    low_pass_cutoff: float = FINE_DEFAULTS.low_pass_cutoff,
    low_pass_sigma: float = FINE_DEFAULTS.low_pass_sigma,
    high_pass_sigma: float = FINE_DEFAULTS.high_pass_sigma,
    taper_fraction: float = FINE_DEFAULTS.taper_fraction,
    pad_fraction: float = FINE_DEFAULTS.pad_fraction,
    binning: int | str = FINE_DEFAULTS.binning,
    interpolation: str = FINE_DEFAULTS.interpolation,
) -> PatchTracks:
    """Track a grid of patches through a tilt series, as tiltxcorr's patch tracking does.

    Parameters
    ----------
    tilt_series
        `(b, h, w)` float RAW views (not coarse-aligned), any order.
    tilt_angles
        `(b,)` tilt angles in degrees, stack order; |tilt| <= 82.
    tilt_axis_angle
        Degrees from the image Y axis, counter-clockwise positive (IMOD's
        RotationAngle); in `(row, col)` the axis points along `(cos a, -sin a)`.
        Only used to predict where a patch goes next: a few degrees off is fine.
    shifts
        `(b, 2)` `(dy, dx)` coarse alignment shifts in input pixels, in
        `tiltxcorr`'s contract (moving view i's content by `+shifts[i]` aligns
        it), e.g. from `align_tilt_series`. They steer the search; the views
        are never resampled with them. None: the views are taken as aligned.
    size_of_patches, overlap_of_patches, number_of_patches, borders
        Patch layout; see `FineOptions`. Sizes are in input pixels.
    iterations
        Correlations per patch and view pair (IMOD IterateCorrelations).
    length_and_overlap, min_contour_length
        Contour pieces; see `FineOptions` and `chop_contours`.
    min_relative_score, max_jump, min_contrast
        When a track ends; see `FineOptions`.
    low_pass_cutoff, low_pass_sigma, high_pass_sigma, taper_fraction, pad_fraction
        Correlation filter (cycles per binned pixel) and patch edges.
    binning, interpolation
        Working resolution and resampling; see `FineOptions`.

    Returns
    -------
    PatchTracks
        Contours of patch centres in raw input pixels, with scores.

    Raises
    ------
    ValueError
        For input the coarse engine refuses (see `align_tilt_series`), shifts
        that are not `(b, 2)` finite numbers (naming the view), and options out
        of range (patches larger than the views, overlap outside [0, 1), ...).
    """
    n_views, h, w = check_stack(tilt_series)
    if min(h, w) < MIN_PATCH_SIZE:
        raise ValueError(f"views of {h} x {w} pixels are too small for patch tracking: at least "
                         f"{MIN_PATCH_SIZE} pixels on each side are needed")
    angles = check_angles(tilt_angles, n_views, tilt_axis_angle)
    shifts = check_shifts(shifts, n_views)
    _check_tracking_options(overlap_of_patches, iterations, length_and_overlap,
                            min_contour_length, min_relative_score, max_jump, min_contrast,
                            borders, interpolation)
    for name, value in (("low_pass_cutoff", low_pass_cutoff), ("low_pass_sigma", low_pass_sigma),
                        ("high_pass_sigma", high_pass_sigma)):
        check_option(name, value)
    correlation_filter = CorrelationFilter(high_pass_sigma, 0.0, low_pass_cutoff, low_pass_sigma)
    factor = tracking_binning(binning, (h, w))
    binned = bin_stack(tilt_series.detach(), factor)
    views = binned.views  # (b, hb, wb) float32
    hb, wb = views.shape[-2:]
    if size_of_patches is None:
        side = max(AUTO_PATCH_MIN, min(hb, wb) // AUTO_PATCH_FRACTION)
        size = (side, side)
    else:
        rows, cols = _pair_of_ints(size_of_patches, "size_of_patches")
        size = (max(1, round(rows / factor)), max(1, round(cols / factor)))
    border = round(borders / factor)
    if min(size) < MIN_PATCH_SIZE or size[0] > hb - 2 * border or size[1] > wb - 2 * border:
        raise ValueError(f"patches of {size[0] * factor} x {size[1] * factor} input pixels do not "
                         f"fit views of {h} x {w} with borders of {borders}: use patches of at "
                         f"least {MIN_PATCH_SIZE * factor} pixels and at most the view size")
    counts = (None, None) if number_of_patches is None else _pair_of_ints(
        number_of_patches, "number_of_patches")
    row_centres = grid_centres(hb, size[0], border, overlap=overlap_of_patches, number=counts[0])
    col_centres = grid_centres(wb, size[1], border, overlap=overlap_of_patches, number=counts[1])
    grid = torch.cartesian_prod(row_centres, col_centres)  # (n_patches, 2) binned pixels

    centre = binned.centre.cpu()
    _, across = axis_directions(tilt_axis_angle)
    steps = shifts / factor  # binned pixels
    reference, branches = _branches(angles)
    correlator = PairCorrelator(size, correlation_filter, taper_fraction=taper_fraction,
                                pad_fraction=pad_fraction, device=views.device)
    half = (torch.tensor(size, dtype=torch.float64) - 1) / 2  # patch centre from its corner
    offsets = (torch.arange(size[0], dtype=torch.float64) - half[0],
               torch.arange(size[1], dtype=torch.float64) - half[1])  # the patch grid
    corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]],
                           dtype=torch.float64) * half
    limits = dict(min_relative_score=min_relative_score, jump=max_jump * min(size))
    cut_counts = dict.fromkeys(CUT_REASONS, 0)

    n_patches = grid.shape[0]
    positions = torch.full((n_patches, n_views, 2), float("nan"), dtype=torch.float64)
    scores = torch.full((n_patches, n_views), float("nan"), dtype=torch.float32)
    reference_energy = correlator.energy(correlator.spectra(_cut_patches(
        views, torch.full((n_patches,), reference), torch.round(grid - half).long(), size)))
    contrast_floor = min_contrast ** 2 * float(torch.quantile(reference_energy, 0.9))
    started = reference_energy > contrast_floor
    cut_counts["blank_start"] = int((~started).sum())
    positions[started, reference] = grid[started]

    alive = [started.clone() for _ in branches]  # per branch: patches still tracked
    for step in range(1, max(len(b) for b in branches)):
        # one batch: every live patch of the view pairs this far from the reference
        entries = [(k, branch[step - 1], branch[step]) for k, branch in enumerate(branches)
                   if step < len(branch)]
        batch = [(torch.nonzero(alive[k]).flatten(), k, i, o) for k, i, o in entries]
        ids = torch.cat([live for live, _, _, _ in batch])
        inner = torch.cat([torch.full_like(live, i) for live, _, i, _ in batch])
        outer = torch.cat([torch.full_like(live, o) for live, _, _, o in batch])
        branch_of = torch.cat([torch.full_like(live, k) for live, k, _, _ in batch])
        if ids.numel() == 0:
            break
        point = positions[ids, inner]  # (n, 2) tracked points in the inner views
        corner = torch.round(point - half).long()
        corner[:, 0].clamp_(0, hb - size[0])
        corner[:, 1].clamp_(0, wb - size[1])
        patch_centre = corner.double() + half
        carry = _carry_matrices(angles[inner], angles[outer], across)  # (n, 2, 2)
        # a point x of view j lies at c + K (x - c + s_j) - s_k in view k
        translation = centre + _apply(carry, steps[inner] - centre) - steps[outer]
        moved, ncc, energy = _correlate_outwards(
            views, correlator, _cut_patches(views, inner, corner, size), outer, patch_centre,
            carry, translation, offsets, iterations=iterations, search=0.25 * min(size),
            interpolation=interpolation)
        landing = _apply(carry, patch_centre - moved) + translation  # the outer patch's centre
        reach = _apply(carry[:, None], corners[None]).abs().amax(dim=1)  # (n, 2) half extent
        inside = ((landing - reach >= 0).all(dim=1) & (landing[:, 0] + reach[:, 0] <= hb - 1)
                  & (landing[:, 1] + reach[:, 1] <= wb - 1))
        reasons = _end_reasons(inside, energy <= contrast_floor, ncc, moved, branch_of, **limits)
        ended = torch.zeros_like(inside)
        for reason, mask in reasons.items():
            cut_counts[reason] += int(mask.sum())
            ended |= mask
        keep = ~ended
        positions[ids[keep], outer[keep]] = (_apply(carry, point - moved) + translation)[keep]
        scores[ids[keep], outer[keep]] = ncc[keep].to(torch.float32)
        for k, _, _ in entries:
            alive[k][ids[ended & (branch_of == k)]] = False

    present = torch.isfinite(positions[..., 0])
    view_order = torch.argsort(angles, stable=True)
    length, overlap = _pieces(length_and_overlap)
    patch_of, piece_present = chop_contours(present, view_order, length, overlap,
                                            min_contour_length)
    raw_positions = positions[patch_of] * factor + (factor - 1) / 2  # binned -> input pixels
    raw_positions[~piece_present] = float("nan")
    piece_scores = scores[patch_of]
    piece_scores[~piece_present] = float("nan")
    return PatchTracks(
        positions=raw_positions,
        scores=piece_scores,
        patch_index=patch_of,
        patch_centres=grid * factor + (factor - 1) / 2,
        reference_view=reference,
        view_order=view_order,
        patch_size=(size[0] * factor, size[1] * factor),
        image_shape=(h, w),
        binning=factor,
        cut_counts=cut_counts,
    )


def _check_tracking_options(overlap, iterations, length_and_overlap, min_contour_length,
                            min_relative_score, max_jump, min_contrast, borders,
                            interpolation) -> None:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap_of_patches is a fraction in [0, 1), got {overlap}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    _pieces(length_and_overlap)
    if isinstance(min_contour_length, bool) or not isinstance(min_contour_length, int) \
            or min_contour_length < 2:
        raise ValueError(f"min_contour_length must be an integer >= 2, got {min_contour_length!r}")
    if not 0.0 <= min_relative_score < 1.0:
        raise ValueError(f"min_relative_score is a fraction in [0, 1), got {min_relative_score}")
    if not max_jump > 0.0:
        raise ValueError(f"max_jump is a positive fraction of the patch size, got {max_jump}")
    if not 0.0 <= min_contrast < 1.0:
        raise ValueError(f"min_contrast is a fraction in [0, 1), got {min_contrast}")
    if isinstance(borders, bool) or not isinstance(borders, int) or borders < 0:
        raise ValueError(f"borders must be a non-negative number of pixels, got {borders!r}")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")


def _pieces(length_and_overlap) -> tuple[int | None, int]:
    """`(length, overlap)` of contour pieces; `(None, 0)` for whole contours."""
    if length_and_overlap is None:
        return None, 0
    message = (f"length_and_overlap must be None or a (length, overlap) pair of integers with "
               f"0 <= overlap < length, got {length_and_overlap!r}")
    try:
        length, overlap = length_and_overlap
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (length, overlap)) \
            or not 0 <= overlap < length:
        raise ValueError(message)
    return length, overlap
