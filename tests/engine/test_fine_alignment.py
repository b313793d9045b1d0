"""Fiducial-less fine alignment (patch tracking + geometry solve) against known geometry."""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment import (
    FiducialLessResult,
    PatchTracks,
    fiducialless_alignment,
    solve_geometry,
    track_patches,
)
from tiltxcorr_scipion.alignment.geometry import axis_directions
from tiltxcorr_scipion.alignment.patches import chop_contours
from tiltxcorr_scipion.alignment.projection import rotation_matrices
from tiltxcorr_scipion.simulate import alignment_error as fair_rms
from tiltxcorr_scipion.simulate import simulate_tilt_series


@pytest.mark.parametrize(
    "shape, axis, axis_error, offset, order, seed",
    [
        ((384, 384), 85.0, 2.5, 2.5, "sorted", 1),
        ((352, 384), -12.0, -2.0, -3.0, "dose-symmetric", 2),  # non-square, acquisition order
    ],
)
def test_thin_series_axis_offset_and_shifts(shape, axis, axis_error, offset, order, seed):
    sim = simulate_tilt_series(shape=shape, n_views=41, tilt_axis_angle=axis, thickness=10.0,
                               noise=1.0, tilt_angle_offset=offset, order=order, seed=seed)
    nominal = axis + axis_error
    result = fiducialless_alignment(sim.images, sim.tilt_angles, nominal)
    assert isinstance(result, FiducialLessResult) and isinstance(result.tracks, PatchTracks)
    assert abs(result.tilt_axis_angle - axis) <= 0.2  # started 2-2.5 degrees off
    assert abs(result.tilt_angle_offset - offset) <= 0.3  # same sign as IMOD's AngleOffset
    torch.testing.assert_close(result.tilt_angles.double(),
                               sim.tilt_angles.double() + result.tilt_angle_offset)
    assert result.shifts.shape == (41, 2) and result.shifts.dtype == torch.float32
    reference = int(torch.argmin(sim.tilt_angles.abs()))
    assert result.shifts[reference].abs().max() == 0.0
    # shifts at least as good as the coarse alignment's, each in its own geometry
    coarse = fair_rms(result.coarse.shifts, sim.shifts, nominal, sim.tilt_angles)
    fine = fair_rms(result.shifts, sim.shifts, result.tilt_axis_angle, result.tilt_angles)
    assert fine <= coarse
    assert result.rotations is None and result.magnifications is None
    assert result.residuals.shape == (41,) and result.mean_residual < 0.5
    assert result.points.shape == (result.n_contours, 3)
    assert result.point_residuals.shape == (result.n_contours, 41, 2)


def _project(points, axis, tilts, shifts, rotations, magnifications, shape):
    """Raw positions `(n, b, 2)` of points `(n, 3)` (x across, y along, z) under the model."""
    along, across = axis_directions(axis)
    t = torch.deg2rad(tilts)
    height = points[:, 0, None] * torch.cos(t) + points[:, 2, None] * torch.sin(t)
    aligned = points[:, 1, None, None] * along + height[..., None] * across - shifts
    backward = magnifications[:, None, None] * rotation_matrices(rotations).transpose(-1, -2)
    centre = torch.tensor([(shape[0] - 1) / 2, (shape[1] - 1) / 2], dtype=torch.float64)
    return centre + (backward @ aligned[..., None])[..., 0]


def test_solve_recovers_an_exact_geometry_with_rotations_and_magnifications():
    gen = torch.Generator().manual_seed(4)
    n_views, shape = 31, (400, 400)
    tilts = torch.linspace(-60.0, 60.0, n_views, dtype=torch.float64)
    reference = n_views // 2
    axis, offset = 84.0, 3.0
    slab = torch.stack([(torch.rand(80, generator=gen, dtype=torch.float64) - 0.5) * 300,
                        (torch.rand(80, generator=gen, dtype=torch.float64) - 0.5) * 300,
                        (torch.rand(80, generator=gen, dtype=torch.float64) - 0.5) * 30], dim=1)
    rotations = 0.3 * torch.randn(n_views, generator=gen, dtype=torch.float64)
    magnifications = 1.0 + 0.01 * torch.randn(n_views, generator=gen, dtype=torch.float64)
    magnifications[reference] = 1.0  # the solve's scale reference
    shifts = 10.0 * torch.randn(n_views, 2, generator=gen, dtype=torch.float64)
    shifts[reference] = 0.0
    # the slab is level at tilts + offset: the same projections as tilted points at tilts
    positions = _project(slab, axis, tilts + offset, shifts, rotations, magnifications, shape)
    # each point seen in 20 views at most, as contour pieces are
    start = torch.randint(0, n_views - 19, (80,), generator=gen)
    present = (torch.arange(n_views)[None] >= start[:, None]) \
        & (torch.arange(n_views)[None] < start[:, None] + 20)
    present[:2] = True  # every view has points
    positions[~present] = float("nan")

    solution = solve_geometry(positions, tilts, axis - 2.0, image_shape=shape,
                              rotation_group_size=1, magnification_group_size=1)
    mean_rotation = float(rotations.mean())  # the solution's rotations have mean zero
    assert solution.tilt_axis_angle == pytest.approx(axis - mean_rotation, abs=1e-6)
    torch.testing.assert_close(solution.rotations, rotations - mean_rotation, atol=1e-6, rtol=0)
    torch.testing.assert_close(solution.magnifications, magnifications, atol=1e-7, rtol=0)
    # The offset levels the plane fitted (z on x, y) to the points as the solve
    # sees them, at the nominal tilts: the slab turned by the offset. The slab
    # of 80 random points is not exactly level, so that is not exactly `offset`.
    turn = math.radians(offset)
    seen = torch.stack([slab[:, 0] * math.cos(turn) + slab[:, 2] * math.sin(turn), slab[:, 1],
                        slab[:, 2] * math.cos(turn) - slab[:, 0] * math.sin(turn)], dim=1)
    design = torch.stack([seen[:, 0], seen[:, 1], torch.ones(80, dtype=torch.float64)], dim=1)
    slope = float(torch.linalg.lstsq(design, seen[:, 2:]).solution[0, 0])
    assert solution.tilt_angle_offset == pytest.approx(math.degrees(math.atan(-slope)), abs=1e-6)
    assert solution.tilt_angle_offset == pytest.approx(offset, abs=0.5)
    assert solution.mean_residual < 1e-6
    # the model reproduces every point, in the reported gauge and levelled frame
    predicted = solution.project()
    torch.testing.assert_close(predicted[present], positions[present], atol=1e-6, rtol=0)
    # shifts: the truth's, turned into the mean-zero rotation gauge, up to a specimen translation
    turned = (rotation_matrices(torch.tensor(-mean_rotation, dtype=torch.float64))
              @ shifts[..., None])[..., 0]
    assert fair_rms(solution.shifts, turned, solution.tilt_axis_angle,
                    solution.tilt_angles) < 1e-5


def test_per_view_rotations_of_a_simulated_series():
    gen = torch.Generator().manual_seed(3)
    rotations = 0.4 * torch.randn(41, generator=gen)
    sim = simulate_tilt_series(shape=(320, 320), n_views=41, thickness=10.0, noise=0.5, seed=5,
                               view_rotations=rotations)
    result = fiducialless_alignment(sim.images, sim.tilt_angles, sim.tilt_axis_angle + 1.5,
                                    rotation_group_size=1, passes=1)
    truth = rotations.double() - rotations.double().mean()
    error = result.rotations.double() - truth
    assert float(error.pow(2).mean().sqrt()) < 0.05  # degrees; the rotations spread 0.4
    assert abs(result.tilt_axis_angle - (sim.tilt_axis_angle - float(rotations.mean()))) < 0.2


@pytest.fixture(scope="module")
def clean_series():
    return simulate_tilt_series(shape=(256, 256), n_views=31, thickness=5.0, noise=0.3,
                                tilt_axis_angle=90.0, seed=6)


def test_corrupt_tracks_are_rejected_and_reported(clean_series):
    sim = clean_series
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    clean = solve_geometry(tracks, sim.tilt_angles, 90.0)
    corrupted = tracks.positions.clone()
    bad = torch.arange(0, tracks.n_contours, max(1, tracks.n_contours // 5))[:5]
    for contour in bad.tolist():  # a track that jumps to another feature half way
        views = torch.nonzero(tracks.present[contour]).flatten()
        corrupted[contour, views[views.numel() // 2:]] += torch.tensor([5.0, -4.0],
                                                                       dtype=torch.float64)
    solution = solve_geometry(corrupted, sim.tilt_angles, 90.0, image_shape=tracks.image_shape)
    assert bool(solution.rejected_contours[bad].all())  # reported as rejected
    assert int(solution.rejected_contours.sum()) <= bad.numel() + tracks.n_contours // 10
    assert abs(solution.tilt_axis_angle - clean.tilt_axis_angle) < 0.05
    assert (solution.shifts - clean.shifts).norm(dim=1).max() < 0.1
    plain = solve_geometry(corrupted, sim.tilt_angles, 90.0, image_shape=tracks.image_shape,
                           robust=False)
    assert (plain.shifts - clean.shifts).norm(dim=1).max() > 0.1  # what robustness saved


def test_blank_and_off_image_patches_are_cut(clean_series):
    sim = clean_series
    reference = int(torch.argmin(sim.tilt_angles.abs()))
    images = sim.images.clone()
    images[reference, :100, :100] = images[reference].mean()  # a blank corner
    tracks = track_patches(images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    assert tracks.cut_counts["blank_start"] >= 1
    centres = tracks.patch_centres[tracks.patch_index]
    assert not bool(((centres[:, 0] < 100 - tracks.patch_size[0] / 2)
                     & (centres[:, 1] < 100 - tracks.patch_size[1] / 2)).any())

    # blank the next view on one side where a patch would land: its track ends there
    plain = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts,
                          length_and_overlap=None)
    order = torch.argsort(sim.tilt_angles)
    outer = int(order[int(torch.nonzero(order == reference)) + 3])  # 3 views out
    candidates = torch.nonzero(plain.present[:, outer]).flatten()
    contour = int(candidates[candidates.numel() // 2])
    row, col = plain.positions[contour, outer].round().long().tolist()
    images = sim.images.clone()
    images[outer, max(0, row - 40):row + 40, max(0, col - 40):col + 40] = images[outer].mean()
    cut = track_patches(images, sim.tilt_angles, 90.0, shifts=sim.shifts,
                        length_and_overlap=None)
    assert cut.cut_counts["blank"] >= 1
    same = torch.nonzero(cut.patch_index == plain.patch_index[contour]).flatten()
    assert same.numel() == 1 and not bool(cut.present[same[0], outer])

    # one view moved 45 px along the axis: patches near the edges fall off there
    shifts = sim.shifts.clone()
    shifts[outer] = torch.tensor([0.0, 45.0])
    moved = simulate_tilt_series(shape=(256, 256), n_views=31, thickness=5.0, noise=0.3,
                                 tilt_axis_angle=90.0, seed=6, shifts=shifts)
    tracks = track_patches(moved.images, moved.tilt_angles, 90.0, shifts=shifts,
                           length_and_overlap=None)
    assert tracks.cut_counts["off_image"] >= 1
    assert int(tracks.present[:, outer].sum()) < int(plain.present[:, outer].sum())
    # the axis runs along the columns, so a patch's columns are never stretched; a
    # point lies within half a pixel of its patch's centre
    half = (tracks.patch_size[1] - 1) / 2
    cols = tracks.positions[..., 1][tracks.present]
    assert bool(((cols >= half - 0.5) & (cols <= 255 - half + 0.5)).all())


def test_contours_are_cut_into_overlapping_pieces():
    view_order = torch.arange(41)
    present = torch.zeros(3, 41, dtype=torch.bool)
    present[0] = True  # a whole track
    present[1, 5:15] = True  # shorter than a piece
    present[2, 30:33] = True  # too short to keep
    track_of, pieces = chop_contours(present, view_order, 16, 4, 4)
    assert track_of.tolist() == [0, 0, 0, 0, 1]
    lengths = pieces.sum(dim=1).tolist()
    assert lengths == [16, 16, 16, 16, 10]
    assert torch.equal(pieces[:4].any(dim=0), present[0])  # together they cover the track
    for first, second in zip(pieces[:3], pieces[1:4], strict=True):
        assert int((first & second).sum()) >= 4
    with pytest.raises(ValueError, match="gaps"):
        gapped = present.clone()
        gapped[0, 20] = False
        chop_contours(gapped, view_order, 16, 4, 4)


def test_tracks_follow_length_and_overlap(clean_series):
    sim = clean_series
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts,
                           length_and_overlap=(10, 3))
    counts = tracks.present.sum(dim=1)
    assert int(counts.max()) == 10 and int(counts.min()) >= 4
    for patch in tracks.patch_index.unique().tolist():
        pieces = torch.nonzero(tracks.patch_index == patch).flatten()
        for first, second in zip(pieces[:-1].tolist(), pieces[1:].tolist(), strict=True):
            assert int((tracks.present[first] & tracks.present[second]).sum()) >= 3
    landmarks = tracks.landmarks()
    assert landmarks.shape == (int(tracks.present.sum()), 4)
    contour, view = landmarks[0, :2].long().tolist()
    torch.testing.assert_close(landmarks[0, 2:], tracks.positions[contour, view])


def test_input_errors(clean_series):
    sim = clean_series
    with pytest.raises(ValueError, match=r"shifts must have shape \(31, 2\)"):
        track_patches(sim.images, sim.tilt_angles, 90.0, shifts=torch.zeros(31, 3))
    shifts = sim.shifts.clone()
    shifts[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"view 3 \(0-based\)"):
        track_patches(sim.images, sim.tilt_angles, 90.0, shifts=shifts)
    images = sim.images.clone()
    images[2, 5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"view 2 \(0-based\): NaN or infinite"):
        fiducialless_alignment(images, sim.tilt_angles, 90.0)
    for options, message in [
        (dict(overlap_of_patches=1.0), "overlap_of_patches"),
        (dict(iterations=0), "iterations"),
        (dict(length_and_overlap=(4, 4)), "length_and_overlap"),
        (dict(size_of_patches=300), "do not fit"),
        (dict(binning=-1), "binning"),
        (dict(min_contrast=1.5), "min_contrast"),
        (dict(interpolation="nearest"), "interpolation"),
    ]:
        with pytest.raises(ValueError, match=message):
            track_patches(sim.images, sim.tilt_angles, 90.0, **options)
    with pytest.raises(ValueError, match="passes"):
        fiducialless_alignment(sim.images, sim.tilt_angles, 90.0, passes=0)
    positions = torch.full((4, 31, 2), float("nan"), dtype=torch.float64)
    positions[:, :30] = 100.0
    with pytest.raises(ValueError, match=r"view 30 \(0-based\) has 0 tracked points"):
        solve_geometry(positions, sim.tilt_angles, 90.0, image_shape=(256, 256))
    with pytest.raises(ValueError, match="30 tilt angles for tracks over 31 views"):
        solve_geometry(positions, sim.tilt_angles[:30], 90.0, image_shape=(256, 256))
    with pytest.raises(ValueError, match="rotation_group_size"):
        solve_geometry(positions, sim.tilt_angles, 90.0, image_shape=(256, 256),
                       rotation_group_size=0)


def test_with_shifts_refits_the_points_to_the_tracks(clean_series):
    sim = clean_series
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    solution = solve_geometry(tracks, sim.tilt_angles, 90.0)
    kept = solution.contour_weights > 0
    same = solution.with_shifts(solution.shifts)
    torch.testing.assert_close(same.points[kept], solution.points[kept], atol=1e-3, rtol=0)
    assert same.mean_residual == pytest.approx(solution.mean_residual, abs=1e-4)
    # one view's shift moved by a pixel: its residuals grow, the tracks stay as measured
    view = int(torch.argmax(sim.tilt_angles))
    shifts = solution.shifts.clone()
    shifts[view] += torch.tensor([1.0, 0.0], dtype=torch.float64)
    moved = solution.with_shifts(shifts)
    assert moved.view_residuals[view] > solution.view_residuals[view] + 0.5
    present = torch.isfinite(solution.residuals)
    torch.testing.assert_close((moved.residuals + moved.project())[present],
                               (solution.residuals + solution.project())[present])
    torch.testing.assert_close(moved.shifts, shifts)


def test_whole_view_shifts_are_matched_then_averaged(clean_series):
    from dataclasses import replace

    from tiltxcorr_scipion.alignment.fine import _blended_shifts
    from tiltxcorr_scipion.alignment.geometry import unfixed_motions

    sim = clean_series
    result = fiducialless_alignment(sim.images, sim.tilt_angles, 90.0, passes=1,
                                    whole_view_weight=0.0)
    assert result.whole_view is None
    with pytest.raises(ValueError, match="whole_view_weight: must be in \\[0, 1\\], got 1.5"):
        fiducialless_alignment(sim.images, sim.tilt_angles, 90.0, whole_view_weight=1.5)
    solution = result.geometry
    torch.testing.assert_close(result.shifts.double(), solution.shifts.float().double())
    motions = unfixed_motions(solution.tilt_angles, solution.tilt_axis_angle)  # (b, 2, 4)
    translation = motions @ torch.tensor([0.7, -0.4, 1.5, -2.0], dtype=torch.float64)
    # whole views that differ only by what no series fixes change nothing
    agreeing = replace(result.coarse, shifts=solution.shifts + translation)
    torch.testing.assert_close(_blended_shifts(solution, agreeing, 0.5), solution.shifts)
    # a real difference: weight 1 takes it whole (up to unfixed motions), 0.5 half of it;
    # an unusable view keeps the solve's shift
    gen = torch.Generator().manual_seed(1)
    difference = 0.3 * torch.randn(len(solution.shifts), 2, generator=gen, dtype=torch.float64)
    difference[solution.reference_view] = 0.0
    unusable = torch.zeros(len(solution.shifts), dtype=torch.bool)
    unusable[0] = True
    other = solution.shifts + translation + difference
    other[0] += 40.0
    whole = replace(result.coarse, shifts=other, unusable=unusable)
    full = _blended_shifts(solution, whole, 1.0)
    half = _blended_shifts(solution, whole, 0.5)
    assert full[solution.reference_view].abs().max() == 0.0
    assert fair_rms(full, solution.shifts + difference, solution.tilt_axis_angle,
                    solution.tilt_angles, exclude=[0]) < 1e-9
    torch.testing.assert_close(half - solution.shifts, 0.5 * (full - solution.shifts))
    # the unusable view's 40 px: neither taken nor in the matching (the fit above is exact)
    assert float((full[0] - solution.shifts[0]).norm()) < 1.0


def test_whole_views_share_the_shifts_where_the_patches_saw_coarser_pixels():
    # A thick slab, patches tracked at binning 2 while the coarse engine correlates whole
    # views at binning 1: the patches' chain drifts more than the average of the two.
    sim = simulate_tilt_series(shape=(384, 384), n_views=41, thickness=60.0, noise=1.0,
                               tilt_angle_offset=3.0, tilt_axis_angle=85.0, seed=3)
    nominal = sim.tilt_axis_angle - 2.0
    binned = fiducialless_alignment(sim.images, sim.tilt_angles, nominal, binning=2)
    assert binned.tracks.binning == 2 and binned.whole_view is not None
    assert binned.whole_view.final_binning == 1
    solve = fair_rms(binned.solve_shifts, sim.shifts, binned.tilt_axis_angle,
                     binned.tilt_angles)
    fine = fair_rms(binned.shifts, sim.shifts, binned.tilt_axis_angle, binned.tilt_angles)
    assert fine < 0.85 * solve, (fine, solve)
    # tracked at the coarse engine's own pixels, the solve's shifts stand alone
    own = fiducialless_alignment(sim.images, sim.tilt_angles, nominal, passes=1,
                                 check_shifts=False)
    assert own.tracks.binning == 1 and own.whole_view is None
    torch.testing.assert_close(own.shifts, own.solve_shifts)


def _drift(tilts: torch.Tensor, size: float) -> torch.Tensor:
    """`(b, 2)` a smooth error over the tilts, none of it a motion no series fixes."""
    from tiltxcorr_scipion.alignment.geometry import unfixed_motions

    t = torch.deg2rad(tilts.double())
    drift = size * torch.stack([torch.sin(3 * t), 0.7 * torch.cos(5 * t)], dim=1)
    motions = unfixed_motions(tilts, 90.0).reshape(-1, 4)
    fit = torch.linalg.lstsq(motions, drift.reshape(-1, 1)).solution
    return drift - (motions @ fit).reshape(-1, 2)


def test_the_coarse_shifts_are_moved_into_the_solved_geometry(clean_series):
    from dataclasses import replace

    from tiltxcorr_scipion.alignment import align_tilt_series
    from tiltxcorr_scipion.alignment.fine import coarse_in_solved_frame
    from tiltxcorr_scipion.alignment.geometry import unfixed_motions

    sim = clean_series
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    solution = solve_geometry(tracks, sim.tilt_angles, 90.0).with_shifts(sim.shifts.double())
    coarse = align_tilt_series(sim.images, sim.tilt_angles, 90.0)
    # made with an axis 3 degrees off and tilts 4 degrees off: the coarse shifts hold a
    # translation of the specimen (40 px high) in that geometry
    nominal_axis, nominal_tilts = 93.0, sim.tilt_angles.double() - 4.0
    translation = unfixed_motions(nominal_tilts, nominal_axis) @ torch.tensor(
        [0.5, -0.3, 2.0, 40.0], dtype=torch.float64)
    error = _drift(sim.tilt_angles, 0.4)
    other = replace(coarse, shifts=(sim.shifts.double() + translation + error).float(),
                    unusable=None)
    moved = coarse_in_solved_frame(solution, other, nominal_tilts, nominal_axis)
    assert moved[solution.reference_view].abs().max() == 0.0
    # what is left is the coarse shifts' own error, in the solved geometry
    assert fair_rms(moved, sim.shifts + error, 90.0, sim.tilt_angles) < 0.01
    # matched in the solved geometry only, the translation would leak along the axis
    kept = other.shifts.double()
    motions = unfixed_motions(sim.tilt_angles, 90.0).reshape(-1, 4)
    fit = torch.linalg.lstsq(motions, (kept - solution.shifts).reshape(-1, 1)).solution
    leaky = kept - (motions @ fit).reshape(-1, 2)
    assert fair_rms(leaky, sim.shifts + error, 90.0, sim.tilt_angles) > 0.5


def test_the_views_choose_between_fine_and_coarse_shifts(clean_series):
    from dataclasses import replace

    from tiltxcorr_scipion.alignment import align_tilt_series
    from tiltxcorr_scipion.alignment.fine import choose_shifts

    sim = clean_series
    tilts, truth = sim.tilt_angles.double(), sim.shifts.double()
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    solution = solve_geometry(tracks, sim.tilt_angles, 90.0)
    coarse = align_tilt_series(sim.images, sim.tilt_angles, 90.0)
    drift = _drift(sim.tilt_angles, 1.0)
    # the fine shifts drift, the coarse ones are right: the views say so
    bad_fine = solution.with_shifts(truth + drift)
    good_coarse = replace(coarse, shifts=truth.float(), unusable=None)
    chosen, choice = choose_shifts(sim.images, bad_fine, good_coarse, tilts, 90.0, None)
    assert choice.kept == "coarse", choice  # the average first, then the coarse ones
    assert choice.z["average"] < -2.0 and choice.z["coarse"] < -2.0
    assert choice.rms_px["coarse"] < choice.rms_px["average"] < choice.rms_px["fine"]
    before = fair_rms(bad_fine.shifts, truth, 90.0, tilts)
    after = fair_rms(chosen.shifts, truth, 90.0, tilts)
    assert after <= 0.6 * before, (after, before)
    torch.testing.assert_close(chosen.residuals + chosen.project(),
                               bad_fine.residuals + bad_fine.project(), equal_nan=True)
    # the other way round the fine shifts stay, and the coarse ones are not even checked
    good_fine = solution.with_shifts(truth)
    bad_coarse = replace(coarse, shifts=(truth + drift).float(), unusable=None)
    chosen, choice = choose_shifts(sim.images, good_fine, bad_coarse, tilts, 90.0, None)
    assert choice.kept == "fine" and set(choice.z) == {"average"} and choice.z["average"] > 2.0
    torch.testing.assert_close(chosen.shifts, good_fine.shifts)


def test_imod_transforms_map_raw_points_as_the_solve_does(clean_series):
    from dataclasses import replace

    from tiltxcorr_scipion.alignment.fine import imod_transforms

    sim = clean_series
    tracks = track_patches(sim.images, sim.tilt_angles, 90.0, shifts=sim.shifts)
    solution = solve_geometry(tracks, sim.tilt_angles, 90.0)
    b = len(sim.tilt_angles)
    gen = torch.Generator().manual_seed(2)
    turned = replace(solution, rotations=3.0 * torch.randn(b, generator=gen, dtype=torch.float64),
                     magnifications=1.0 + 0.02 * torch.randn(b, generator=gen,
                                                             dtype=torch.float64))
    shifts = 5.0 * torch.randn(b, 2, generator=gen, dtype=torch.float64)
    transforms = imod_transforms(turned, shifts)  # (b, 3, 3) IMOD (X, Y), about (w/2, h/2)
    h, w = turned.image_shape
    raw = torch.tensor([[10.0, 200.0], [130.5, 7.25]], dtype=torch.float64)  # (row, col)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    engine = torch.einsum("bij,pj->bpi", turned.forward_matrices(), raw - centre) \
        + shifts[:, None] + centre  # (b, p, 2) aligned (row, col)
    imod_centre = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    imod = torch.einsum("bij,pj->bpi", transforms[:, :2, :2], raw.flip(-1) - imod_centre) \
        + transforms[:, None, :2, 2] + imod_centre  # (b, p, 2) aligned (X, Y)
    torch.testing.assert_close(imod.flip(-1), engine)
