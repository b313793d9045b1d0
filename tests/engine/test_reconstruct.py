"""Weighted back-projection (`reconstruct`) and the reprojection check against simulated truth.

Beads at known 3-D positions must appear in the tomogram at the voxel the documented
orientation gives (docs/reconstruction.md): x across the tilt axis, y along it, z the
height with `x cos t + z sin t` the projection, whatever the transforms (shifts only with
the acquisition's axis, or a tiltalign-style rotation with the axis on Y).
"""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment import ViewError, reconstruct, reprojection_check
from tiltxcorr_scipion.alignment.reconstruct import (
    CHECK_GHOST_PX,
    RADIAL,
    ZERO_WEIGHT,
    check_thickness,
    exact_weights,
    filter_views,
    radial_weights,
)
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

BEADS = torch.tensor([[30.0, -20.0, 15.0], [-40.0, 35.0, -10.0], [10.0, 5.0, -22.0]])  # x, y, z
THICKNESS = 64


def shift_transforms(shifts: torch.Tensor) -> torch.Tensor:
    """IMOD forward transforms `(b, 3, 3)` of `(dy, dx)` shifts (DX = dx, DY = dy)."""
    t = torch.eye(3, dtype=torch.float64).repeat(len(shifts), 1, 1)
    t[:, 0, 2] = shifts[:, 1].double()
    t[:, 1, 2] = shifts[:, 0].double()
    return t


def axis_to_y(transforms: torch.Tensor, axis: float, shape=(128, 128)) -> torch.Tensor:
    """The transforms followed by the rotation that turns the tilt axis onto Y (tiltalign).

    The rotation is about the point the tomogram is centred on, IMOD tilt's
    ``(w - 1) / 2`` (0-based), written as a transform about newstack's
    ``w / 2``: `(I - R)` times the half-pixel between the two centres.
    """
    a = math.radians(axis)
    rotation = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]],
                            dtype=torch.float64)
    h, w = shape
    between = torch.tensor([(w - 1) / 2 - w / 2, (h - 1) / 2 - h / 2], dtype=torch.float64)
    turn = torch.eye(3, dtype=torch.float64)
    turn[:2, :2] = rotation
    turn[:2, 2] = (torch.eye(2, dtype=torch.float64) - rotation) @ between
    return turn @ transforms


def bead_series(axis: float, **kwargs):
    return simulate_volume_series(shape=(128, 128), n_views=41, tilt_axis_angle=axis,
                                  specimen="beads", bead_positions=BEADS, contrast="stem",
                                  jumps="walk", jump_size=2.0, seed=1, **kwargs)


def centroid(volume: torch.Tensor, near: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Centre of mass `(z, y, x)` (voxel indices) of the bright blob nearest `near`."""
    index = [int(round(v)) for v in near.tolist()]
    box = tuple(slice(i - radius, i + radius + 1) for i in index)
    window = volume[box].double()
    window = (window - 0.3 * window.max()).clamp(min=0)
    grids = torch.meshgrid(*[torch.arange(i - radius, i + radius + 1).double() for i in index],
                           indexing="ij")
    return torch.stack([(window * g).sum() for g in grids]) / window.sum()


def expected_voxel(volume: torch.Tensor, bead: torch.Tensor, binning: int = 1,
                   z_shift: float = 0.0) -> torch.Tensor:
    nz, ny, nx = volume.shape
    x, y, z = bead.double().tolist()
    return torch.tensor([(z + z_shift) / binning + (nz - 1) / 2, y / binning + (ny - 1) / 2,
                         x / binning + (nx - 1) / 2], dtype=torch.float64)


@pytest.mark.parametrize("axis", [0.0, 85.0, -7.0])
def test_beads_appear_where_the_documented_orientation_puts_them(axis):
    sim = bead_series(axis)
    volume = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, axis,
                         thickness=THICKNESS)
    assert volume.shape == (THICKNESS, 128, 128) and volume.dtype == torch.float32
    for bead in BEADS:
        where = expected_voxel(volume, bead)
        found = centroid(volume, where)
        assert (found - where).abs().max() < 0.35, (bead, found, where)


def test_a_tiltalign_style_rotation_gives_the_same_tomogram():
    axis = 85.0
    sim = bead_series(axis)
    shifts_only = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, axis,
                              thickness=THICKNESS)
    rotated = reconstruct(sim.views, axis_to_y(shift_transforms(sim.shifts), axis),
                          sim.tilt_angles, 0.0, thickness=THICKNESS)
    for bead in BEADS:
        where = expected_voxel(rotated, bead)
        assert (centroid(rotated, where) - where).abs().max() < 0.35
    inner = (slice(8, -8), slice(16, -16), slice(16, -16))
    correlation = torch.corrcoef(torch.stack([shifts_only[inner].flatten(),
                                              rotated[inner].flatten()]))[0, 1]
    assert correlation > 0.99


def test_binning_and_z_shift_move_the_voxels_as_documented():
    sim = bead_series(0.0)
    volume = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                         thickness=THICKNESS, binning=2, z_shift=6.0)
    assert volume.shape == (THICKNESS // 2, 64, 64)
    for bead in BEADS:
        where = expected_voxel(volume, bead, binning=2, z_shift=6.0)
        assert (centroid(volume, where, radius=3) - where).abs().max() < 0.35


def test_the_tilt_angle_offset_is_added_to_every_angle():
    sim = bead_series(0.0)
    transforms = shift_transforms(sim.shifts)
    truth = reconstruct(sim.views, transforms, sim.tilt_angles, 0.0, thickness=THICKNESS)
    offset = reconstruct(sim.views, transforms, sim.tilt_angles - 4.0, 0.0, thickness=THICKNESS,
                         tilt_angle_offset=4.0)
    torch.testing.assert_close(offset, truth, atol=1e-5 * float(truth.abs().max()), rtol=0)
    wrong = reconstruct(sim.views, transforms, sim.tilt_angles - 4.0, 0.0, thickness=THICKNESS)
    assert (wrong - truth).abs().max() > 0.1 * truth.abs().max()


def test_disabled_views_are_left_out_and_never_read():
    sim = bead_series(0.0)
    transforms = shift_transforms(sim.shifts)
    views = sim.views.clone()
    views[3] = math.nan  # a view that must not be read
    transforms[3] = 0.0  # nor its transform used
    enabled = torch.ones(len(views), dtype=torch.bool)
    enabled[3] = False
    with_flag = reconstruct(views, transforms, sim.tilt_angles, 0.0, thickness=THICKNESS,
                            enabled=enabled)
    keep = torch.arange(len(views)) != 3
    without = reconstruct(sim.views[keep], transforms[keep], sim.tilt_angles[keep], 0.0,
                          thickness=THICKNESS)
    torch.testing.assert_close(with_flag, without)
    assert torch.isfinite(with_flag).all()


def test_a_misalignment_blurs_the_beads():
    # IMOD's ramp: a bead's peak is its high frequencies; the exact weighting adds broad
    # density under it (its 0.2-0.3 cycles/voxel band drops as clearly: the benchmark)
    sim = bead_series(0.0)
    good = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                       thickness=THICKNESS, weighting="ramp")
    noise = torch.randn(sim.shifts.shape, generator=torch.Generator().manual_seed(3))
    noise = noise / noise.norm(dim=1).square().mean().sqrt()  # 1 px RMS
    bad = reconstruct(sim.views, shift_transforms(sim.shifts + noise), sim.tilt_angles, 0.0,
                      thickness=THICKNESS, weighting="ramp")
    for bead in BEADS:
        where = expected_voxel(good, bead).round().long()
        box = tuple(slice(int(i) - 2, int(i) + 3) for i in where)
        assert bad[box].max() < 0.92 * good[box].max()


def test_radial_weighting_is_imods():
    f = torch.linspace(0, 0.5, 501, dtype=torch.float64)
    step = 1 / 1000
    w = radial_weights(f, step, radial=RADIAL, line_pixels=1000)
    cutoff, sigma = RADIAL
    assert w[0] == pytest.approx(ZERO_WEIGHT * step)
    inside = (f > step) & (f <= cutoff)
    torch.testing.assert_close(w[inside], f[inside])
    beyond = f > cutoff
    torch.testing.assert_close(w[beyond], cutoff * torch.exp(-(f[beyond] - cutoff) ** 2
                                                             / (2 * sigma ** 2)))
    # in Fourier pixels when above 1, as IMOD reads RADIAL
    torch.testing.assert_close(radial_weights(f, step, radial=(350, 35), line_pixels=1000), w)
    sirt = radial_weights(f, step, radial=RADIAL, line_pixels=1000, fake_sirt_iterations=10)
    assert (sirt[1:] <= w[1:] + 1e-12).all()
    assert sirt[-100:].max() < 0.05 * w[-100:].max()  # SIRT-like: flat, low at high frequency


def test_exact_weights_are_the_ramp_at_high_frequency_and_level_off_at_low():
    tilts = torch.deg2rad(torch.linspace(-60.0, 60.0, 41, dtype=torch.float64))
    step = float(tilts[1] - tilts[0])
    thickness = 63.0
    f = torch.linspace(0.0, 0.5, 251, dtype=torch.float64)[None, :].expand(41, -1)
    w = exact_weights(f, tilts, thickness)
    assert w.shape == (41, 251)
    # zero frequency: every view's line meets every other: one over n T
    torch.testing.assert_close(w[:, 0], torch.full((41,), 1 / (41 * thickness),
                                                   dtype=torch.float64))
    # well above 1 / (T dt), where neighbouring lines no longer overlap: the ramp f dt
    # (the central views; the range's ends have neighbours on one side only)
    high = f[0] > 4 / (thickness * step)
    ratio = w[15:26][:, high] / (f[15:26][:, high] * step)
    assert ((ratio - 1).abs() < 0.1).all(), ratio
    # low frequencies, where a ramp falls to zero: level
    assert (w[:, 1] > 0.9 * w[:, 0]).all()


def test_the_exact_weighting_keeps_a_slabs_broad_density():
    """The same views, both weightings, against the volume they were projected from: the
    lowest frequencies (what a low-passed slice shows) are kept better by the exact one
    (docs/reconstruction.md, Benchmark, has the figures against torch-tomogram)."""
    sim = simulate_volume_series(shape=(127, 127), n_views=41, tilt_axis_angle=0.0,
                                 specimen="cell", thickness=30.0, contrast="stem", seed=2,
                                 keep_volume=True)
    nz, margin = 39, 16
    truth = sim.volume.double()
    shape = (nz, 127, 127)

    def centred(n_here: int, n_other: int, inset: int) -> slice:  # odd sizes: centres meet
        half = min(n_here, n_other) // 2 - inset
        return slice((n_here - 1) // 2 - half, (n_here - 1) // 2 + half + 1)

    insets = (0, margin, margin)
    box_t = tuple(centred(t, r, m) for t, r, m in zip(truth.shape, shape, insets, strict=True))
    box_r = tuple(centred(r, t, m) for t, r, m in zip(truth.shape, shape, insets, strict=True))
    b = torch.fft.rfftn(truth[box_t] - truth[box_t].mean())
    grid = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in b.shape[:2]],
                          torch.fft.rfftfreq(truth[box_t].shape[2], dtype=torch.float64),
                          indexing="ij")
    radius = sum(g ** 2 for g in grid).sqrt()
    low = (radius > 0) & (radius < 0.05)
    scores = {}
    for weighting in ("exact", "ramp"):
        volume = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                             thickness=nz, weighting=weighting)[box_r].double()
        a = torch.fft.rfftn(volume - volume.mean())
        scores[weighting] = float((a[low] * b[low].conj()).real.sum() / (
            (a[low].abs() ** 2).sum() * (b[low].abs() ** 2).sum()).sqrt())
    assert scores["exact"] > scores["ramp"] + 0.01, scores
    with pytest.raises(ValueError, match="weighting must be one of exact, ramp"):
        reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                    thickness=nz, weighting="sirt")


def lowpass_correlation(volume: torch.Tensor, truth: torch.Tensor, margin: int = 16) -> float:
    """Correlation with the truth over their common centred box (odd sizes), `margin` in
    from the sides in x and y, both low-passed by a Gaussian of sd 1 voxel."""
    boxes = []
    for a, b in ((volume, truth), (truth, volume)):
        box = []
        for axis, (n_a, n_b) in enumerate(zip(a.shape, b.shape, strict=True)):
            half = min(n_a, n_b) // 2 - (margin if axis else 0)
            box.append(slice((n_a - 1) // 2 - half, (n_a - 1) // 2 + half + 1))
        boxes.append(a[tuple(box)].double())
    spectra = [torch.fft.rfftn(v - v.mean()) for v in boxes]
    grid = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64)
                            for n in boxes[0].shape[:2]],
                          torch.fft.rfftfreq(boxes[0].shape[2], dtype=torch.float64),
                          indexing="ij")
    gauss = torch.exp(-2 * math.pi ** 2 * sum(g ** 2 for g in grid))
    a, b = (torch.fft.irfftn(f * gauss, s=boxes[0].shape).flatten() for f in spectra)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_the_noise_filter_helps_with_noise_and_leaves_a_clean_series(noise):
    """The half-set filter (`noise_filter="fsc"`) against the plain back-projection, both
    against the volume the views were projected from: with noise it is clearly closer;
    without, the same (its gain is 1 where the halves agree)."""
    sim = simulate_volume_series(shape=(127, 127), n_views=41, tilt_axis_angle=0.0,
                                 specimen="cell", thickness=30.0, contrast="stem", seed=2,
                                 noise=noise, keep_volume=True)
    scores = {}
    for noise_filter in ("fsc", "none"):
        volume = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                             thickness=39, noise_filter=noise_filter)
        scores[noise_filter] = lowpass_correlation(volume, sim.volume)
    if noise:
        assert scores["fsc"] > scores["none"] + 0.01, scores
    else:
        assert abs(scores["fsc"] - scores["none"]) < 0.002, scores
    with pytest.raises(ValueError, match="noise_filter must be one of fsc, none"):
        reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                    thickness=39, noise_filter="wiener")


def test_filtering_the_views_filters_the_tomogram():
    """By the central slice theorem a radial filter on the views is the same radial filter
    on their back-projection; gain 1 leaves the views as they are."""
    sim = simulate_volume_series(shape=(127, 127), n_views=41, tilt_axis_angle=0.0,
                                 specimen="cell", thickness=30.0, contrast="stem", seed=1,
                                 noise=1.0)
    radii = torch.tensor([0.0, 0.05, 0.15, 0.5], dtype=torch.float64)
    torch.testing.assert_close(filter_views(sim.views, radii, torch.ones(4, dtype=torch.float64)),
                               sim.views.float(), atol=1e-4, rtol=1e-4)
    gain = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    t = shift_transforms(sim.shifts)
    from_filtered = reconstruct(filter_views(sim.views, radii, gain), t, sim.tilt_angles, 0.0,
                                thickness=39, noise_filter="none")
    plain = reconstruct(sim.views, t, sim.tilt_angles, 0.0, thickness=39, noise_filter="none")
    spectrum = torch.fft.rfftn(plain.double())
    grid = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in plain.shape[:2]],
                          torch.fft.rfftfreq(plain.shape[2], dtype=torch.float64), indexing="ij")
    radius = sum(g ** 2 for g in grid).sqrt()
    response = torch.clamp((0.15 - radius) / 0.1, 0.0, 1.0)
    filtered = torch.fft.irfftn(spectrum * response, s=plain.shape)
    inner = (slice(4, -4), slice(16, -16), slice(16, -16))  # away from the views' edges
    c = torch.corrcoef(torch.stack([from_filtered[inner].double().flatten(),
                                    filtered[inner].flatten()]))[0, 1]
    assert c > 0.98, c


def test_bad_geometry_names_the_view():
    sim = bead_series(0.0)
    transforms = shift_transforms(sim.shifts)
    angles = sim.tilt_angles.clone()
    angles[5] = math.nan
    with pytest.raises(ViewError) as info:
        reconstruct(sim.views, transforms, angles, 0.0, thickness=THICKNESS)
    assert info.value.views == [5]
    transforms[7, :2, :2] = 0.0
    with pytest.raises(ViewError) as info:
        reconstruct(sim.views, transforms, sim.tilt_angles, 0.0, thickness=THICKNESS)
    assert info.value.views == [7] and "invertible" in str(info.value)
    views = sim.views.clone()
    views[9, 3, 3] = math.inf
    with pytest.raises(ViewError) as info:
        reconstruct(views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                    thickness=THICKNESS)
    assert info.value.views == [9]
    with pytest.raises(ValueError, match="transforms must be"):
        reconstruct(sim.views, transforms[:3], sim.tilt_angles, 0.0, thickness=THICKNESS)


@pytest.fixture(scope="module")
def cell_series():
    return simulate_volume_series(shape=(256, 256), n_views=41, tilt_axis_angle=85.0,
                                  specimen="cell", thickness=50.0, contrast="cryo",
                                  jumps="walk", jump_size=2.0, noise=1.0, seed=4)


def test_the_reprojection_check_finds_a_displaced_view(cell_series):
    sim = cell_series
    transforms = shift_transforms(sim.shifts)
    good = reprojection_check(sim.views, transforms, sim.tilt_angles, 85.0, thickness=80)
    assert not good.flagged.any(), good.residual_px
    assert float(good.residual_px.max()) < 0.5
    view = 27
    moved = transforms.clone()
    moved[view, 0, 2] += 2.0 * math.cos(0.3)
    moved[view, 1, 2] += 2.0 * math.sin(0.3)
    check = reprojection_check(sim.views, moved, sim.tilt_angles, 85.0, thickness=80)
    expected = torch.tensor([2.0 * math.sin(0.3), 2.0 * math.cos(0.3)], dtype=torch.float64)
    assert (check.residual[view] - expected).norm() < 0.3, check.residual[view]
    assert check.flagged.nonzero()[:, 0].tolist() == [view]
    assert check.worst_view == view
    assert check.correlation[view] < good.correlation[view]


def test_a_thick_tomogram_does_not_flag_a_true_alignment(cell_series):
    """Asked for a tomogram nearly five times the specimen's thickness (3 degree steps), the
    check keeps its tomograms thin enough that the neighbouring views' ghosts stay narrow:
    made 240 thick, its leave-one-out reprojections put the TRUE alignment's views up to
    12 px off, flagged one and left 26 of 41 unchecked."""
    sim = cell_series
    check = reprojection_check(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 85.0,
                               thickness=240)
    assert check.thickness == pytest.approx(check_thickness(240, sim.tilt_angles))
    assert check.thickness < 120
    assert torch.isfinite(check.residual_px).all()
    assert not check.flagged.any() and float(check.residual_px.max()) < 0.6, check.residual_px


def test_the_checks_thickness_follows_the_tilt_steps():
    three_degrees = torch.linspace(-60.0, 60.0, 41)
    limit = CHECK_GHOST_PX * math.cos(math.radians(60.0)) / math.sin(math.radians(3.0))
    assert check_thickness(300.0, three_degrees) == pytest.approx(limit, rel=1e-6)
    assert check_thickness(80.0, three_degrees) == 80.0  # thin enough already
    one_degree = torch.linspace(-60.0, 60.0, 121)
    assert check_thickness(300.0, one_degree) == 300.0
    # a dropped view leaves one 6 degree gap: the median step still decides
    dropped = torch.cat([three_degrees[:20], three_degrees[21:]])
    assert check_thickness(300.0, dropped) == pytest.approx(limit, rel=1e-6)
    # stack order does not matter, nor a tilt angle offset beyond 60 degrees' cosine
    shuffled = three_degrees[torch.randperm(41, generator=torch.Generator().manual_seed(1))]
    assert check_thickness(300.0, shuffled) == pytest.approx(limit, rel=1e-6)
    assert check_thickness(300.0, three_degrees + 5.0) < limit


def test_the_check_skips_disabled_views(cell_series):
    sim = cell_series
    enabled = torch.ones(len(sim.views), dtype=torch.bool)
    enabled[[0, 12]] = False
    check = reprojection_check(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 85.0,
                               thickness=80, enabled=enabled, binning=2)
    assert check.binning == 2
    assert torch.isnan(check.residual[[0, 12]]).all() and torch.isnan(check.correlation[[0, 12]]).all()
    assert not check.flagged[[0, 12]].any()
    assert torch.isfinite(check.residual_px[enabled]).all()


def test_views_thrown_apart_are_left_unchecked_not_a_crash(cell_series):
    """An alignment that moves views far apart (pure noise aligned to garbage) leaves no
    ray that all other views saw: the check says unchecked (NaN), flags nothing, and the
    caller goes on to mark the series unreliable."""
    sim = cell_series
    transforms = shift_transforms(sim.shifts)
    far = torch.Generator().manual_seed(3)
    transforms[:, :2, 2] += (torch.rand(len(sim.views), 2, generator=far,
                                        dtype=torch.float64) - 0.5) * 600.0
    check = reprojection_check(sim.views, transforms, sim.tilt_angles, 85.0, thickness=80)
    assert torch.isnan(check.residual_px).all() and torch.isnan(check.correlation).all()
    assert not check.flagged.any()
