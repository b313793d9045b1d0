"""The fine alignment's standard errors: present, and calibrated on small known cases.

A standard error is honest when the true error lies within about one of them as often as a
normal deviate does: over many cases the errors divided by their standard errors have an RMS
near 1, and none is far beyond 3. Checked where the truth is exact (tracks projected from
known points with Gaussian measurement noise; slab features drawn from the slab model), over
tilt axes all round the circle and non-square views; end to end, their presence and size.
"""

from __future__ import annotations

import math

import pytest
import torch

from tiltxcorr_scipion.alignment import fiducialless_alignment, solve_geometry
from tiltxcorr_scipion.alignment.projection import _first_positions, error_blocks
from tiltxcorr_scipion.alignment.slab import _fit
from tiltxcorr_scipion.options import uncertainty_warning
from tiltxcorr_scipion.simulate import simulate_tilt_series

ORIENTATIONS = (-95.0, -10.0, 0.0, 45.0, 85.0, 176.0)


def projected_tracks(axis: float, offset: float, shape: tuple[int, int], seed: int,
                     noise: float = 0.3, n_points: int = 120, n_views: int = 41,
                     upper_axis_error: float = 0.0):
    """Raw `(n, b, 2)` positions of points in a level slab seen at nominal tilts + `offset`,
    measured with Gaussian noise of `noise` px; tracks of 16 views overlapping by 4.
    `upper_axis_error` degrees: the points of the slab's upper half (z > 0) are seen about an
    axis turned by that much (a tracking error that depends on height)."""
    generator = torch.Generator().manual_seed(seed)
    h, w = shape
    half = 0.35 * min(h, w)
    x = (2 * torch.rand(n_points, generator=generator, dtype=torch.float64) - 1) * half
    y = (2 * torch.rand(n_points, generator=generator, dtype=torch.float64) - 1) * half
    z = (torch.rand(n_points, generator=generator, dtype=torch.float64) - 0.5) * 40.0
    nominal = torch.linspace(-60.0, 60.0, n_views, dtype=torch.float64)
    tilt = torch.deg2rad(nominal + offset)
    a = math.radians(axis) + (z > 0).to(torch.float64)[:, None, None] \
        * math.radians(upper_axis_error)  # (n, 1, 1)
    along = torch.cat([torch.cos(a), -torch.sin(a)], dim=-1)
    across = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    shifts = torch.randn(n_views, 2, generator=generator, dtype=torch.float64) * 5.0
    shifts[int(nominal.abs().argmin())] = 0.0
    height = x[:, None] * torch.cos(tilt) + z[:, None] * torch.sin(tilt)  # (n, b)
    positions = (centre + y[:, None, None] * along + height[..., None] * across - shifts
                 + noise * torch.randn(n_points, n_views, 2, generator=generator,
                                       dtype=torch.float64))
    start = torch.randint(0, n_views - 15, (n_points,), generator=generator)
    view = torch.arange(n_views)[None, :]
    inside = (view >= start[:, None]) & (view < start[:, None] + 16)
    positions[~inside] = float("nan")
    return positions, nominal


@pytest.mark.parametrize("shape", [(512, 512), (384, 640)])
def test_axis_and_offset_errors_are_calibrated_at_every_orientation(shape):
    ratios_axis, ratios_offset = [], []
    for seed, axis in enumerate(ORIENTATIONS):
        offset = (-1) ** seed * 3.0
        positions, nominal = projected_tracks(axis, offset, shape, seed)
        solution = solve_geometry(positions, nominal, axis + (-1) ** seed * 4.0,
                                  image_shape=shape, robust=False)
        assert solution.tilt_axis_angle_error > 0 and solution.tilt_angle_offset_error > 0
        # the axis is found at every orientation, from 4 degrees off
        assert abs(solution.tilt_axis_angle - axis) < 0.05, (axis, solution.tilt_axis_angle)
        ratios_axis.append((solution.tilt_axis_angle - axis) / solution.tilt_axis_angle_error)
        ratios_offset.append((solution.tilt_angle_offset - offset)
                             / solution.tilt_angle_offset_error)
    for name, ratios in (("axis", ratios_axis), ("offset", ratios_offset)):
        ratios = torch.tensor(ratios)
        assert ratios.abs().max() < 3.0, (name, ratios)
        assert 0.3 < float(ratios.square().mean().sqrt()) < 1.7, (name, ratios)


@pytest.mark.parametrize("axis", [-95.0, 45.0])
def test_axis_error_matches_solving_without_each_block(axis):
    """The by-block term is a jackknife: the spread of the axes solved with each block of the
    view left out. Done explicitly here, it must agree with the reported standard error
    (which adds the views' clustering, so it may be a little larger)."""
    shape = (512, 512)
    positions, nominal = projected_tracks(axis, 2.0, shape, 11, n_points=240)
    solution = solve_geometry(positions, nominal, axis + 2.0, image_shape=shape, robust=False)
    blocks = error_blocks(_first_positions(positions), shape)
    axes = torch.tensor([solve_geometry(positions[blocks != block], nominal, axis + 2.0,
                                        image_shape=shape, robust=False,
                                        estimate_errors=False).tilt_axis_angle
                         for block in blocks.unique().tolist()], dtype=torch.float64)
    count = len(axes)
    jackknife = math.sqrt((count - 1) / count * float((axes - axes.mean()).square().sum()))
    assert 0.85 < solution.tilt_axis_angle_error / jackknife < 1.5, \
        (solution.tilt_axis_angle_error, jackknife)


def test_robust_axis_error_is_calibrated_with_heavy_tailed_errors():
    """Robust fitting on measurement errors with heavy tails (Student's t, 3 degrees of
    freedom, and its outliers): the standard error, from the robust fit's own curvature,
    still holds the truth."""
    ratios = []
    for seed in range(12):
        axis = ORIENTATIONS[seed % len(ORIENTATIONS)]
        positions, nominal = projected_tracks(axis, 2.0, (512, 512), seed, noise=0.0)
        generator = torch.Generator().manual_seed(1000 + seed)
        normal = torch.randn(positions.shape, generator=generator, dtype=torch.float64)
        chi = torch.randn(positions.shape[:2] + (3,), generator=generator,
                          dtype=torch.float64).square().mean(dim=-1, keepdim=True)
        solution = solve_geometry(positions + 0.3 * normal / chi.sqrt(), nominal, axis + 2.0,
                                  image_shape=(512, 512))
        ratios.append((solution.tilt_axis_angle - axis) / solution.tilt_axis_angle_error)
    ratios = torch.tensor(ratios)
    assert ratios.abs().max() < 3.0, ratios
    assert 0.4 < float(ratios.square().mean().sqrt()) < 1.6, ratios


def test_axis_error_grows_with_the_measurement_noise():
    errors = [solve_geometry(*projected_tracks(30.0, 0.0, (512, 512), 7, noise=noise)[:1],
                             torch.linspace(-60.0, 60.0, 41), 31.0, image_shape=(512, 512),
                             robust=False).tilt_axis_angle_error for noise in (0.2, 0.8)]
    assert errors[1] == pytest.approx(4 * errors[0], rel=0.25)


def test_slab_tilt_error_is_calibrated():
    ratios = []
    for seed in range(12):
        generator = torch.Generator().manual_seed(100 + seed)
        n = 400
        x = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * 200.0
        u = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * 150.0
        tilt = math.radians(1.5)
        z = (math.tan(tilt) * x + (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)
             * 60.0 + 1.5 * torch.randn(n, generator=generator, dtype=torch.float64))
        outliers = torch.rand(n, generator=generator) < 0.03
        z[outliers] = (torch.rand(int(outliers.sum()), generator=generator,
                                  dtype=torch.float64) - 0.5) * 120.0
        fit = _fit(u, x, z, span=120.0, height_limit=60.0 * 1.2, min_blur=0.5)
        assert fit.tilt_error > 0
        ratios.append((fit.tilt - 1.5) / fit.tilt_error)
    ratios = torch.tensor(ratios)
    assert ratios.abs().max() < 3.0, ratios
    assert 0.4 < float(ratios.square().mean().sqrt()) < 1.6, ratios


def slab_features(seed: int, n: int = 400, tilt_deg: float = 1.5):
    """`(u, x, z)` features of a slab 60 px thick tilted by `tilt_deg` across the axis."""
    generator = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * 200.0
    u = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * 150.0
    z = (math.tan(math.radians(tilt_deg)) * x
         + (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 60.0
         + 1.5 * torch.randn(n, generator=generator, dtype=torch.float64))
    return u, x, z


def test_slab_tilt_error_counts_features_that_err_together_once():
    """The maxima along one filament, the blobs of one particle: features of one object lie
    at one height and err together. Here every feature is repeated 4 times at its place:
    the fit is the same, and so is its standard error (clustered by block of the slab);
    counted one by one, it would halve."""
    u, x, z = slab_features(7)
    once = _fit(u, x, z, span=120.0, height_limit=72.0, min_blur=0.5)
    repeated = _fit(u.repeat(4), x.repeat(4), z.repeat(4), span=120.0, height_limit=72.0,
                    min_blur=0.5)
    assert repeated.tilt == pytest.approx(once.tilt, abs=1e-3)
    assert repeated.tilt_error == pytest.approx(once.tilt_error, rel=0.05)


@pytest.mark.parametrize("axis", [-95.0, 45.0, 176.0])
def test_fine_alignment_reports_its_uncertainty_at_any_orientation(axis):
    """End to end, a small series (256 px): the errors are there and of the right size.

    Not a calibration: at this size the tracks' errors can exceed what their spread shows
    (docs/fine-alignment.md, how certain, and the family benchmark)."""
    sim = simulate_tilt_series(shape=(256, 320), n_views=41, tilt_axis_angle=axis,
                               thickness=20.0, noise=1.0, tilt_angle_offset=-2.0, seed=3)
    fine = fiducialless_alignment(sim.images, sim.tilt_angles, axis - 2.0)
    assert abs(fine.tilt_axis_angle - axis) < 0.7, fine.tilt_axis_angle
    assert abs(fine.tilt_angle_offset - sim.tilt_angle_offset) < 1.0, fine.tilt_angle_offset
    assert 0.02 < fine.tilt_axis_angle_error < 0.5
    assert 0.02 < fine.tilt_angle_offset_error < 2.0
    assert fine.tilt_angle_offset_error == (fine.slab.tilt_error if fine.levelled_by == "surfaces"
                                            else fine.points_offset_error)
    assert fine.geometry.tilt_axis_angle_error == fine.tilt_axis_angle_error
    assert 0.02 < fine.points_offset_error < 2.0


def test_uncertainty_warning_names_what_exceeds_its_target():
    assert uncertainty_warning(0.05, 0.2) is None
    assert uncertainty_warning(float("nan"), float("nan")) is None
    assert uncertainty_warning(0.15, 0.2) == "tilt axis uncertainty 0.15 deg exceeds the 0.1 deg target"
    assert "tilt angle offset uncertainty 0.45 deg exceeds the 0.3 deg target" in \
        uncertainty_warning(0.05, 0.45)


def test_misfit_term_sees_a_height_dependent_error_and_not_noise():
    """The points of the upper half seen about an axis turned by 0.4 degree: the solved
    axis errs by about 0.2 degree, far beyond the noise's standard error, and the halves
    disagree by far more than their noise. The misfit term grows and the true axis (that of
    the lower half's points) lies within 2 total standard errors. A consistent specimen: the
    halves agree within their noise, the misfit term is about 0."""
    shape, axis = (512, 512), 45.0
    consistent, turned = [], []
    for seed in range(6):
        for error, found in ((0.0, consistent), (0.4, turned)):
            positions, nominal = projected_tracks(axis, 2.0, shape, seed, n_points=240,
                                                  upper_axis_error=error)
            solution = solve_geometry(positions, nominal, axis + 2.0, image_shape=shape,
                                      robust=False)
            noise = math.sqrt(solution.tilt_axis_angle_error ** 2
                              - solution.tilt_axis_angle_misfit ** 2)
            error = solution.tilt_axis_angle - axis
            found.append((solution.tilt_axis_angle_misfit / noise, error / noise,
                          error / solution.tilt_axis_angle_error))
    misfit = torch.tensor([m for m, _, _ in consistent])
    assert float(misfit.square().mean()) < 1.0, misfit  # max(0, chi2(1) - 1): mean ~0.3
    assert float(misfit.median()) < 0.5, misfit
    misfit, noise_only, total = (torch.tensor(v) for v in zip(*turned, strict=True))
    assert float(noise_only.abs().min()) > 3.0, noise_only  # the noise alone misses it
    assert float(misfit.min()) > 2.0, misfit
    assert float(total.abs().max()) < 2.0, total
