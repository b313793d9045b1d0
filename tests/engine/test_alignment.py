"""Whole tilt series with known shifts: the engine against the simulator's truth."""

import pytest
import torch

from tiltxcorr_scipion.alignment import TiltxcorrResult, align_tilt_series
from tiltxcorr_scipion.simulate import simulate_tilt_series


def tiltxcorr(images, angles, axis, **options) -> torch.Tensor:
    """The engine's shifts with IMOD's centre, the simulator's convention (the drop-in
    `tiltxcorr` uses teamtomo's: tests/engine/test_drop_in.py)."""
    return align_tilt_series(images, angles, axis, **options).shifts


def rms_error(estimate: torch.Tensor, truth: torch.Tensor, *, remove_offset: bool = True) -> float:
    error = estimate.double() - truth.double()
    if remove_offset:
        error = error - error.mean(dim=0)
    return float(error.norm(dim=1).pow(2).mean().sqrt())


@pytest.mark.parametrize(
    "axis_angle, order, shape",
    [
        (85.0, "sorted", (256, 256)),
        (-12.0, "dose-symmetric", (240, 320)),  # non-square, acquisition order
        (170.0, "random", (320, 224)),
        (0.0, "sorted", (201, 257)),  # odd sizes: the centre is a half-integer
    ],
)
def test_recovers_shifts_of_a_thin_specimen(axis_angle, order, shape):
    sim = simulate_tilt_series(shape=shape, n_views=41, tilt_axis_angle=axis_angle, order=order,
                               max_shift=20.0, thickness=5.0, noise=1.0, seed=7)
    shifts = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    assert shifts.shape == (41, 2) and shifts.dtype == torch.float32
    reference = int(torch.argmin(sim.tilt_angles.abs()))
    assert shifts[reference].tolist() == [0.0, 0.0]
    # The axis is centred in the reference view, so no offset needs removing:
    # an aligner without IMOD's axis-centring correction fails this by pixels.
    assert rms_error(shifts, sim.shifts, remove_offset=False) < 0.2


def test_noiseless_series_is_aligned_to_a_few_hundredths():
    sim = simulate_tilt_series(shape=(256, 288), n_views=41, tilt_axis_angle=-30.0,
                               max_shift=25.0, thickness=0.0, noise=0.0, seed=3)
    shifts = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    assert rms_error(shifts, sim.shifts, remove_offset=False) < 0.05


def test_thick_specimen_and_heavy_noise_stay_within_a_pixel():
    thick = simulate_tilt_series(shape=(256, 256), n_views=41, max_shift=20.0, thickness=60.0,
                                 noise=1.0, seed=11)
    assert rms_error(tiltxcorr(thick.images, thick.tilt_angles, 85.0), thick.shifts) < 1.0
    noisy = simulate_tilt_series(shape=(256, 256), n_views=41, max_shift=20.0, thickness=5.0,
                                 noise=3.0, seed=12)
    assert rms_error(tiltxcorr(noisy.images, noisy.tilt_angles, 85.0), noisy.shifts) < 1.0


def test_detailed_result_and_options():
    sim = simulate_tilt_series(shape=(192, 224), n_views=21, max_shift=10.0, thickness=5.0,
                               noise=0.5, order="random", seed=5)
    calls = []
    result = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle,
                               progress=lambda done, total: calls.append((done, total)))
    assert isinstance(result, TiltxcorrResult)
    reference = int(torch.argmin(sim.tilt_angles.abs()))
    assert result.reference_view == reference and result.binning == 1
    assert int(result.paired_with[reference]) == -1
    assert torch.isnan(result.correlation[reference])
    others = torch.arange(21) != reference
    assert torch.all((result.correlation[others] > 0.3) & (result.correlation[others] <= 1.0))
    # each view is paired with a view of lower |tilt| on the same side
    for view in torch.nonzero(others).flatten().tolist():
        partner = int(result.paired_with[view])
        assert abs(float(sim.tilt_angles[partner])) <= abs(float(sim.tilt_angles[view]))
    assert calls and calls[-1] == (20, 20)

    binned = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle, binning=2)
    assert binned.binning == 2
    assert rms_error(binned.shifts, sim.shifts) < 0.4  # still in input pixels
    for option in (dict(cumulative=True), dict(refine=False), dict(reference_memory=0.0),
                   dict(interpolation="bicubic"), dict(low_pass_cutoff=0.15, high_pass_sigma=0.0)):
        shifts = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle, **option)
        assert rms_error(shifts, sim.shifts) < 0.4, option


def test_max_shift_rejects_a_far_peak():
    shifts = torch.zeros(11, 2)
    shifts[-1] = torch.tensor([0.0, -30.0])  # the last view jumped 30 px
    sim = simulate_tilt_series(shape=(192, 192), n_views=11, tilt_range=(-30, 30),
                               thickness=0.0, seed=8, shifts=shifts)
    free = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    limited = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle, max_shift=10.0)
    assert rms_error(free, sim.shifts, remove_offset=False) < 0.1  # found the jump
    assert float((limited[-1] - sim.shifts[-1]).norm()) > 10.0  # not allowed to


def test_auto_binning_keeps_input_pixels():
    sim = simulate_tilt_series(shape=(320, 320), n_views=11, max_shift=8.0, thickness=0.0,
                               seed=9)
    large = torch.nn.functional.interpolate(sim.images[:, None], scale_factor=4, mode="bilinear",
                                            align_corners=False)[:, 0]  # 1280 px: auto bins by 2
    result = align_tilt_series(large, sim.tilt_angles, sim.tilt_axis_angle)
    assert result.binning == 2
    assert rms_error(result.shifts, sim.shifts * 4) < 0.6


def test_runs_on_the_input_device_and_dtype():
    sim = simulate_tilt_series(shape=(128, 128), n_views=9, max_shift=5.0, seed=1)
    shifts = tiltxcorr(sim.images.double(), sim.tilt_angles.double(), 85.0)
    assert shifts.dtype == torch.float32 and shifts.device == sim.images.device
