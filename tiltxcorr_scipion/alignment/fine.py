"""Fiducial-less fine alignment in one call: coarse alignment, patch tracking, geometry solve.

The steps are IMOD's fiducial-less route (etomo's "patch tracking"):
1. `align_tilt_series`: stretched cross-correlation of neighbouring views
   (tiltxcorr), with the nominal tilt axis and tilt angles;
2. `track_patches`: a grid of patches followed through the raw views, the
   coarse shifts steering the search (tiltxcorr's patch tracking and
   imodchopconts);
3. `solve_geometry`: the projection model fitted to the tracks (tiltalign):
   shifts, tilt axis angle, optionally rotations, magnifications and tilt
   changes, robust weights, and the tilt angle offset that levels the points;
4. with `level_by="surfaces"` (default), `find_slab`: the specimen slab's
   surfaces in a back-projection, and the offset that levels them instead
   (IMOD's tomopitch step, automated);
5. with `whole_view_weight` > 0 (default 0.5), where the patches were
   tracked at coarser pixels than the coarse engine correlates whole views
   at, `align_tilt_series` again with the solved axis and tilt angles: its
   shifts, matched to the solve's on what no series fixes, are averaged
   with the solve's, and the points are re-fitted
   (`GeometrySolution.with_shifts`).
6. with `check_shifts` (default), the shifts the views confirm best
   (`choose_shifts`): the fine alignment's, the first coarse alignment's (put
   into the solved geometry) and their average, each checked by reprojection
   (`reprojection_check`); another replaces the fine alignment's only where
   its squared residuals are smaller view by view (signed ranks).
With `passes` > 1 the patches are tracked again with the refined axis, tilt
angles and shifts, and solved again.

Conventions (sign mapping to IMOD in `projection`'s docstring): a view's
forward transform is `aligned = R_i (raw - c) / m_i + shifts[i] + c` about the
image centre `c = ((h - 1) / 2, (w - 1) / 2)`, `(row, col)` order; without
rotations and magnifications, moving view i's content by `+shifts[i]` aligns
it, as for `tiltxcorr`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..options import (
    FINE_DEFAULTS,
    MAX_TILT_DEG,
    PREVIEW_SLAB_MARGIN,
    PREVIEW_THICKNESS_FRACTION,
    FineOptions,
)
from .core import align_tilt_series
from .geometry import unfixed_motions
from .patches import PatchTracks, track_patches
from .projection import GeometrySolution, relevel, solve_geometry
from .reconstruct import reprojection_check
from .resample import imod_forward_transforms
from .result import TiltxcorrResult
from .selfcheck import SIGNIFICANT, signed_rank_z
from .slab import SlabFit, SlabNotFound, find_slab

#: The shift check bins views to at most this many pixels (`choose_shifts`): its cost is
#: then about the same for any view size (0.2-0.5 s per candidate on 1 CPU thread).
SHIFT_CHECK_SIDE = 256


@dataclass(frozen=True)
class ShiftChoice:
    """Which shifts the reprojection check kept (`choose_shifts`), and its figures.

    Attributes
    ----------
    kept
        ``"fine"`` (the solve's, or its average with the whole views'),
        ``"average"`` (of the fine and the coarse ones) or ``"coarse"``.
    rms_px
        Candidate name -> RMS reprojection residual in input pixels over the
        views checked under every candidate.
    z
        Challenger name -> Wilcoxon signed-rank z of its squared residuals
        minus those of the candidate kept before it (negative: smaller); it
        replaced that one when below `-selfcheck.SIGNIFICANT`. A challenger
        not checked is absent.
    thickness
        Tomogram thickness of the check (input pixels; `reconstruct.check_thickness`).
    """

    kept: str
    rms_px: dict
    z: dict
    thickness: float


@dataclass(frozen=True)
class FiducialLessResult:
    """What `fiducialless_alignment` found, in the input's view order.

    All tensors are on the CPU (the geometry solve runs there, whatever the
    input's device; `coarse` keeps the coarse engine's own devices).

    Attributes
    ----------
    tilt_axis_angle
        Refined tilt axis angle in degrees, same convention as the input
        (IMOD RotationAngle: from the image Y axis, counter-clockwise).
    tilt_angle_offset
        Degrees to ADD to the nominal tilt angles so that the specimen is
        level at tilt 0 (IMOD's AngleOffset): its slab's surfaces, or the
        plane of the solved points (see `levelled_by`).
    tilt_angles
        `(b,)` float32 refined tilt angles in degrees: nominal + per-view
        changes (if solved) + `tilt_angle_offset`.
    shifts
        `(b, 2)` float32 `(dy, dx)` in input pixels, `tiltxcorr`'s contract:
        the forward map is `aligned = R_i (raw - c) / m_i + shifts[i] + c`, so
        without rotation and magnification moving view i's content by
        `+shifts[i]` aligns it. Zero for the reference view. Where
        `whole_view` is not None, the solve's shifts averaged with the whole
        views' (`whole_view_weight`), else the solve's.
    rotations
        `(b,)` float32 in-plane rotations `R_i` in degrees (counter-clockwise
        as IMOD displays images, `[[cos, sin], [-sin, cos]]` in `(row, col)`),
        mean zero over the views, or None when not solved. The tilt axis of
        raw view i lies at `tilt_axis_angle - rotations[i]`.
    magnifications
        `(b,)` float32 image scale of each view relative to the reference
        view, or None when not solved.
    residuals
        `(b,)` float32 RMS residual per view in pixels (points with weight > 0).
    mean_residual
        Mean residual length in pixels.
    point_residuals
        `(n_contours, b, 2)` float32 measured minus modelled positions
        `(row, col)` in raw pixels, NaN where a contour has no point.
    points
        `(n_contours, 3)` float32 solved specimen points `(x, y, z)` in pixels:
        x across the tilt axis, y along it, z height, levelled (tilts
        `tilt_angles`), origin on the tilt axis at the image centre.
    weights
        `(n_contours, b)` float32 robust weights (0 = rejected), NaN where
        there is no point.
    n_contours
        Contours (3-D points) in the solve.
    n_rejected_contours
        Whole contours given zero weight by robust fitting.
    n_rejected_points, n_down_weighted_points
        Points with weight 0, and with weight below 0.5 (rejected included).
    tracks
        The `PatchTracks` of the last pass (positions in raw pixels).
    coarse
        The coarse alignment (`TiltxcorrResult`) the tracking started from.
    solve_shifts
        `(b, 2)` float32 the geometry solve's own shifts, before the average
        with the whole views' and the shift check (equal to `shifts` when
        `whole_view` is None and the check kept the fine shifts).
    whole_view
        The coarse method run again with the solved axis and tilt angles
        (`TiltxcorrResult`, its shifts as it found them), or None when not
        run: `whole_view_weight` 0, patches tracked at the pixels the coarse
        engine works at, or a solved tilt beyond what it takes.
    geometry
        The full `GeometrySolution` of the last pass, levelled as the result.
    levelled_by
        ``"surfaces"`` (the slab, `slab`) or ``"points"`` (their plane).
    points_offset
        The offset that levels the plane of the solved points (tiltalign's),
        whichever levelled the result.
    slab
        The slab found (`SlabFit`, in the frame levelled by the points), or
        None when levelled by the points.
    levelling_note
        Why the points levelled the result although the surfaces were asked
        for (no slab stood out), else None.
    tilt_axis_angle_error
        One standard error of `tilt_axis_angle` in degrees, from the data
        (`GeometrySolution.tilt_axis_angle_error`: the robust solve's own
        curvature and the spread of the measurements' influence, a jackknife
        over blocks of patches and a linearised bootstrap over views, with the
        misfit of the points' upper and lower halves added,
        `GeometrySolution.tilt_axis_angle_misfit`); NaN when the axis was not
        solved.
    tilt_angle_offset_error
        One standard error of `tilt_angle_offset` in degrees: of the slab's
        tilt (`SlabFit.tilt_error`, a linearised bootstrap over blocks of the
        back-projection's features) when levelled by the surfaces, else of
        the plane of the points (`points_offset_error`).
    points_offset_error
        One standard error of `points_offset` in degrees (the points' scatter
        about their plane, clustered by block of the view, `projection.error_blocks`).
    shift_choice
        Which shifts the reprojection check kept (`ShiftChoice`: the fine
        alignment's, the coarse's or their average) with its figures, or
        None when not checked (`check_shifts` False). `shifts`, `residuals`
        and `points` are those of the kept shifts.
    """

    tilt_axis_angle: float
    tilt_angle_offset: float
    tilt_angles: torch.Tensor
    shifts: torch.Tensor
    rotations: torch.Tensor | None
    magnifications: torch.Tensor | None
    residuals: torch.Tensor
    mean_residual: float
    point_residuals: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor
    n_contours: int
    n_rejected_contours: int
    n_rejected_points: int
    n_down_weighted_points: int
    tracks: PatchTracks
    coarse: TiltxcorrResult
    geometry: GeometrySolution
    levelled_by: str = "points"
    points_offset: float = 0.0
    slab: SlabFit | None = None
    levelling_note: str | None = None
    solve_shifts: torch.Tensor | None = None
    whole_view: TiltxcorrResult | None = None
    tilt_axis_angle_error: float = float("nan")
    tilt_angle_offset_error: float = float("nan")
    points_offset_error: float = float("nan")
    shift_choice: ShiftChoice | None = None


def fiducialless_alignment(
    tilt_series: torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    *,
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
    rotation_group_size: int | None = FINE_DEFAULTS.rotation_group_size,
    magnification_group_size: int | None = FINE_DEFAULTS.magnification_group_size,
    tilt_group_size: int | None = FINE_DEFAULTS.tilt_group_size,
    solve_axis: bool = FINE_DEFAULTS.solve_axis,
    robust: bool = FINE_DEFAULTS.robust,
    robust_k: float = FINE_DEFAULTS.robust_k,
    max_iterations: int = FINE_DEFAULTS.max_iterations,
    passes: int = FINE_DEFAULTS.passes,
    level_specimen: bool = FINE_DEFAULTS.level_specimen,
    level_by: str = FINE_DEFAULTS.level_by,
    whole_view_weight: float = FINE_DEFAULTS.whole_view_weight,
    check_shifts: bool = FINE_DEFAULTS.check_shifts,
    coarse_options: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> FiducialLessResult:
    """Align a tilt series without fiducials: coarse, patch tracking, geometry solve.

    Parameters
    ----------
    tilt_series
        `(b, h, w)` float RAW views in any order, on any device.
    tilt_angles
        `(b,)` nominal tilt angles in degrees, stack order; |tilt| <= 82.
    tilt_axis_angle
        Nominal tilt axis angle in degrees (IMOD RotationAngle: from the image
        Y axis, counter-clockwise positive); a few degrees off is fine, it is
        refined (within a few degrees: the angle is only determined modulo
        180 degrees).
    size_of_patches ... interpolation
        Patch tracking; see `track_patches` and `FineOptions`.
    rotation_group_size ... max_iterations
        Geometry solve; see `solve_geometry` and `FineOptions`.
    passes
        Tracking + solve rounds (>= 1); later rounds track with the refined
        axis, tilts and shifts.
    level_specimen
        Include `tilt_angle_offset` in the returned `tilt_angles` (default);
        False: the tilt angles keep their nominal zero, the offset is only
        reported.
    level_by
        ``"surfaces"``: the offset levels the slab's top and bottom found in a
        back-projection (`find_slab`), or the plane of the points when no
        slab stands out (`levelling_note` says why); ``"points"``: the plane
        of the solved points, as tiltalign.
    whole_view_weight
        Weight (0..1) of the shifts of a second coarse alignment, run with the
        solved axis and tilt angles, in the returned shifts, where the patches
        were tracked at coarser pixels; see `FineOptions.whole_view_weight`.
        0: the solve's shifts alone.
    check_shifts
        Keep the shifts the views confirm best by reprojection: the fine
        alignment's, the coarse alignment's or their average
        (`choose_shifts`; `shift_choice` says which and why). False: the
        fine alignment's.
    coarse_options
        Keyword arguments for `align_tilt_series` (filters, binning...).
    progress
        Called with a short description as each stage starts.

    Returns
    -------
    FiducialLessResult
        Refined geometry, shifts in `tiltxcorr`'s contract, residuals, robust
        weights, solved points, the tracks and the coarse result.

    Raises
    ------
    ValueError
        For input the coarse engine refuses (naming the view), bad options,
        or when tracking leaves a view without points (naming the view).
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive integer, got {passes!r}")
    FineOptions(level_by=level_by, whole_view_weight=whole_view_weight)  # checked before any work
    tracking = dict(size_of_patches=size_of_patches, overlap_of_patches=overlap_of_patches,
                    number_of_patches=number_of_patches, borders=borders, iterations=iterations,
                    length_and_overlap=length_and_overlap, min_contour_length=min_contour_length,
                    min_relative_score=min_relative_score, max_jump=max_jump,
                    min_contrast=min_contrast, low_pass_cutoff=low_pass_cutoff,
                    low_pass_sigma=low_pass_sigma, high_pass_sigma=high_pass_sigma,
                    taper_fraction=taper_fraction, pad_fraction=pad_fraction, binning=binning,
                    interpolation=interpolation)
    solving = dict(rotation_group_size=rotation_group_size,
                   magnification_group_size=magnification_group_size,
                   tilt_group_size=tilt_group_size, solve_axis=solve_axis, robust=robust,
                   robust_k=robust_k, max_iterations=max_iterations)
    report = progress or (lambda _: None)

    report("coarse alignment")
    coarse = align_tilt_series(tilt_series, tilt_angles, tilt_axis_angle,
                               **(coarse_options or {}))
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).detach().cpu().reshape(-1)
    axis, steering_angles, steering_shifts = float(tilt_axis_angle), angles, coarse.shifts
    for round_index in range(passes):
        report(f"patch tracking, pass {round_index + 1} of {passes}")
        tracks = track_patches(tilt_series, steering_angles, axis, shifts=steering_shifts,
                               **tracking)
        report(f"geometry solve, pass {round_index + 1} of {passes}")
        geometry = solve_geometry(tracks, angles, axis, initial_shifts=steering_shifts,
                                  estimate_errors=round_index == passes - 1, **solving)
        axis = geometry.tilt_axis_angle
        steering_shifts = geometry.shifts
        if float(geometry.tilt_angles.abs().max()) <= MAX_TILT_DEG:  # else keep nominal
            steering_angles = geometry.tilt_angles
    points_offset, slab, note = geometry.tilt_angle_offset, None, None
    points_offset_error = geometry.tilt_angle_offset_error
    if level_by == "surfaces":
        report("slab surfaces")
        try:
            slab = find_slab(tilt_series, geometry)
            geometry = relevel(geometry, -slab.tilt)
        except SlabNotFound as exc:
            note = f"levelled by the plane of the points: {exc}"
    whole_view, solve_shifts = None, geometry.shifts
    # Only where the whole views are correlated at finer pixels than the patches were tracked
    # at: at the same pixels the patches' chain drifts less than the whole views' one.
    if whole_view_weight > 0 and tracks.binning > coarse.final_binning \
            and float(geometry.tilt_angles.abs().max()) <= MAX_TILT_DEG:
        report("whole-view shifts")
        whole_view = align_tilt_series(tilt_series, geometry.tilt_angles,
                                       geometry.tilt_axis_angle, **(coarse_options or {}))
        geometry = geometry.with_shifts(_blended_shifts(geometry, whole_view, whole_view_weight))
    choice = None
    if check_shifts:
        report("shift check")
        geometry, choice = choose_shifts(tilt_series, geometry, coarse, angles,
                                         float(tilt_axis_angle), slab)
    return _result(geometry, tracks, coarse, rotation_group_size is not None,
                   magnification_group_size is not None, level_specimen,
                   points_offset=points_offset, slab=slab, note=note,
                   solve_shifts=solve_shifts, whole_view=whole_view,
                   points_offset_error=points_offset_error, choice=choice)


def choose_shifts(tilt_series: torch.Tensor, geometry: GeometrySolution,
                  coarse: TiltxcorrResult, nominal_angles: torch.Tensor, nominal_axis: float,
                  slab: SlabFit | None) -> tuple[GeometrySolution, ShiftChoice]:
    """The shifts the views confirm best, in the solved geometry, and the figures.

    Candidates, in order of preference: the fine alignment's shifts
    (`geometry.shifts`), their average with the coarse alignment's, and the
    coarse alignment's (`coarse`, made with `nominal_angles` and
    `nominal_axis`, put into the solved geometry: `coarse_in_solved_frame`).
    Each is judged by the reprojection check in the solved geometry (every
    view against the tomogram made without it, on views binned to at most
    `SHIFT_CHECK_SIDE` pixels; thickness `PREVIEW_SLAB_MARGIN` times the slab
    found, else `PREVIEW_THICKNESS_FRACTION` of the larger side, at most
    `reconstruct.check_thickness`). The next
    candidate replaces the one kept so far only when its squared residuals
    are smaller view by view (Wilcoxon's signed ranks, `z < -SIGNIFICANT`,
    the coarse self-check's test), on the views checked under both; the
    points are then re-fitted to the kept shifts (`GeometrySolution.with_shifts`).
    The coarse shifts are checked only when the average was kept: a view's
    squared residual is about quadratic (convex) in the weight given to the
    coarse shifts, so when halfway is no better than the fine shifts, all
    the way is not either.

    Why these: the two estimates err differently. The patches' solve drifts
    smoothly over the tilts where tracking is poor (high noise), the whole
    views' chain on thick slabs; a view's disagreement with the tomogram of
    the others shows both in part (an error shared by neighbouring views is
    partly absorbed by the tomogram).
    """
    fine = geometry.shifts
    other = coarse_in_solved_frame(geometry, coarse, nominal_angles, nominal_axis)
    candidates = {"fine": fine, "average": 0.5 * (fine + other), "coarse": other}
    h, w = geometry.image_shape
    thickness = PREVIEW_SLAB_MARGIN * slab.thickness if slab is not None \
        else PREVIEW_THICKNESS_FRACTION * max(h, w)
    binning = max(1, math.ceil(max(h, w) / SHIFT_CHECK_SIDE))

    def squares(name: str) -> torch.Tensor:
        nonlocal thickness
        check = reprojection_check(tilt_series, imod_transforms(geometry, candidates[name]),
                                   geometry.tilt_angles, geometry.tilt_axis_angle,
                                   thickness=thickness, binning=binning)
        thickness = check.thickness  # the same for every candidate (the geometry's)
        return check.residual_px.square()  # (b,), NaN where unchecked

    checked = {"fine": squares("fine")}
    kept, rms, z = "fine", {}, {}
    for name in ("average", "coarse"):
        checked[name] = squares(name)
        both = torch.isfinite(checked[name]) & torch.isfinite(checked[kept])
        z[name] = signed_rank_z(checked[name][both] - checked[kept][both])
        if z[name] >= -SIGNIFICANT:
            break
        kept = name
    common = torch.stack([torch.isfinite(v) for v in checked.values()]).all(dim=0)
    rms = {name: float(v[common].mean().sqrt()) if bool(common.any()) else math.nan
           for name, v in checked.items()}
    if kept != "fine":
        geometry = geometry.with_shifts(candidates[kept])
    return geometry, ShiftChoice(kept=kept, rms_px=rms, z=z, thickness=float(thickness))


def coarse_in_solved_frame(geometry: GeometrySolution, coarse: TiltxcorrResult,
                           nominal_angles: torch.Tensor, nominal_axis: float) -> torch.Tensor:
    """`(b, 2)` float64 the coarse alignment's shifts, in the solved geometry.

    The coarse shifts hold a 3-D translation of the specimen in the nominal
    geometry (where the series' centre lies: `unfixed_motions` of the
    nominal tilts and axis, fitted to their difference from the solve's);
    it is moved into the solved geometry (the same translation under the
    solved tilts and axis), and what is left matched to the solve's shifts
    on the solved geometry's unfixed motions. Kept as is, the translation
    leaks along the solved axis by the axis change times its size. Views
    the coarse engine found unusable take the solve's shift; the reference
    view stays at zero.
    """
    solved = geometry.shifts
    other = coarse.shifts.detach().cpu().to(torch.float64)
    usable = torch.ones(len(solved), dtype=torch.bool) if coarse.unusable is None \
        else ~coarse.unusable.cpu()
    nominal = unfixed_motions(nominal_angles, nominal_axis)  # (b, 2, 4)
    motions = unfixed_motions(geometry.tilt_angles, geometry.tilt_axis_angle)
    fit = torch.linalg.lstsq(nominal[usable].reshape(-1, 4),
                             (other - solved)[usable].reshape(-1, 1)).solution
    moved = other - (nominal @ fit)[..., 0] + (motions @ fit)[..., 0]
    rest = torch.linalg.lstsq(motions[usable].reshape(-1, 4),
                              (moved - solved)[usable].reshape(-1, 1)).solution
    matched = torch.where(usable[:, None], moved - (motions @ rest)[..., 0], solved)
    return matched - matched[geometry.reference_view]


def imod_transforms(geometry: GeometrySolution, shifts: torch.Tensor) -> torch.Tensor:
    """`(b, 3, 3)` float64 IMOD forward transforms of `geometry` with `shifts` `(b, 2)`.

    The engine's map `aligned = R_i (raw - c) / m_i + shifts[i] + c` about
    `c = ((h - 1) / 2, (w - 1) / 2)` `(row, col)`, rewritten about IMOD's
    centre `(w / 2, h / 2)` in `(X, Y)` (`resample.imod_forward_transforms`);
    the tilt axis stays where the solve put it (not turned onto Y).
    """
    return imod_forward_transforms(geometry.forward_matrices(), shifts)


def _blended_shifts(geometry: GeometrySolution, whole_view: TiltxcorrResult,
                    weight: float) -> torch.Tensor:
    """`(b, 2)` the solve's shifts moved `weight` of the way to the whole views'.

    The whole views' shifts are first matched to the solve's on the motions
    no tilt series fixes (a 3-D translation of the specimen, where the
    series' centre lies: `unfixed_motions`), fitted over the views the
    coarse engine found usable; a view it found unusable keeps the solve's
    shift. The reference view stays at zero.
    """
    solved = geometry.shifts
    other = whole_view.shifts.detach().cpu().to(torch.float64)
    usable = torch.ones(len(solved), dtype=torch.bool) if whole_view.unusable is None \
        else ~whole_view.unusable.cpu()
    motions = unfixed_motions(geometry.tilt_angles, geometry.tilt_axis_angle)  # (b, 2, 4)
    difference = (other - solved)[usable].reshape(-1, 1)
    fit = torch.linalg.lstsq(motions[usable].reshape(-1, 4), difference).solution
    matched = other - (motions @ fit)[..., 0]
    blended = torch.where(usable[:, None], solved + weight * (matched - solved), solved)
    return blended - blended[geometry.reference_view]


def _result(geometry: GeometrySolution, tracks: PatchTracks, coarse: TiltxcorrResult,
            rotations_solved: bool, magnifications_solved: bool,
            level_specimen: bool, *, points_offset: float, slab: SlabFit | None,
            note: str | None, solve_shifts: torch.Tensor,
            whole_view: TiltxcorrResult | None, points_offset_error: float,
            choice: ShiftChoice | None = None) -> FiducialLessResult:
    weights = geometry.weights
    present = torch.isfinite(weights)
    return FiducialLessResult(
        tilt_axis_angle=geometry.tilt_axis_angle,
        tilt_angle_offset=geometry.tilt_angle_offset,
        tilt_angles=(geometry.tilt_angles if level_specimen
                     else geometry.tilt_angles - geometry.tilt_angle_offset).to(torch.float32),
        shifts=geometry.shifts.to(torch.float32),
        rotations=geometry.rotations.to(torch.float32) if rotations_solved else None,
        magnifications=geometry.magnifications.to(torch.float32) if magnifications_solved
        else None,
        residuals=geometry.view_residuals.to(torch.float32),
        mean_residual=geometry.mean_residual,
        point_residuals=geometry.residuals.to(torch.float32),
        points=geometry.points.to(torch.float32),
        weights=weights.to(torch.float32),
        n_contours=tracks.n_contours,
        n_rejected_contours=int(geometry.rejected_contours.sum()),
        n_rejected_points=int((present & (weights == 0)).sum()),
        n_down_weighted_points=int((present & (weights < 0.5)).sum()),
        tracks=tracks,
        coarse=coarse,
        geometry=geometry,
        levelled_by="points" if slab is None else "surfaces",
        points_offset=points_offset,
        slab=slab,
        levelling_note=note,
        solve_shifts=solve_shifts.to(torch.float32),
        whole_view=whole_view,
        tilt_axis_angle_error=geometry.tilt_axis_angle_error,
        tilt_angle_offset_error=points_offset_error if slab is None else slab.tilt_error,
        points_offset_error=points_offset_error,
        shift_choice=choice,
    )
