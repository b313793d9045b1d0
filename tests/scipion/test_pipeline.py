"""The per-tilt-series pipeline and its conversions: no Scipion project, real arrays and files."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from tiltxcorr_scipion.alignment.resample import apply_imod_transforms
from tiltxcorr_scipion.convert.mrc import MrcStack, StackReadError
from tiltxcorr_scipion.convert.transforms import (
    compose_transforms,
    identity_transforms,
    rotation_angles_deg,
    shifts_to_transforms,
)
from tiltxcorr_scipion.options import CoarseOptions
from tiltxcorr_scipion.pipeline import (
    TiltSeriesFailure,
    TiltSeriesViews,
    align_views,
    select_device,
    torch_threads_per_step,
)
from tiltxcorr_scipion.protocols.protocol_prealignment import coarse_options_from_form
from tiltxcorr_scipion.simulate import simulate_tilt_series


def apply_transforms_2d(images, transforms):
    """Views resampled into their earlier alignment, as the pipeline reads them."""
    return apply_imod_transforms(images, transforms, mode="bilinear")


def transforms_to_shifts(transforms: np.ndarray) -> np.ndarray:
    """`(n, 2)` `(dy, dx)` = the `(DY, DX)` translation columns of `(n, 3, 3)` transforms."""
    return np.stack([transforms[:, 1, 2], transforms[:, 0, 2]], axis=1)


def read_stack_views(path, positions):
    return MrcStack.open(path).read(positions)


# --------------------------------------------------------------------------- transforms
def test_shifts_to_transforms_puts_dx_in_first_row():
    t = shifts_to_transforms(np.array([[2.5, -1.0], [0.0, 3.0]]))  # (dy, dx)
    assert t.shape == (2, 3, 3)
    np.testing.assert_array_equal(t[0], [[1, 0, -1.0], [0, 1, 2.5], [0, 0, 1]])
    np.testing.assert_array_equal(transforms_to_shifts(t), [[2.5, -1.0], [0.0, 3.0]])


def test_shifts_to_transforms_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        shifts_to_transforms(np.zeros((3, 3)))


def test_compose_is_new_after_previous():
    theta = math.radians(30)
    rot = np.array([[math.cos(theta), -math.sin(theta), 4.0],
                    [math.sin(theta), math.cos(theta), -2.0],
                    [0, 0, 1]])[None]
    shift = shifts_to_transforms(np.array([[1.0, 3.0]]))
    out = compose_transforms(shift, rot)
    # Linear part from the rotation, translation = previous + new.
    np.testing.assert_allclose(out[0, :2, :2], rot[0, :2, :2])
    np.testing.assert_allclose(out[0, :2, 2], [4.0 + 3.0, -2.0 + 1.0])
    # A point goes through the rotation first, then the shift.
    p = np.array([5.0, 7.0, 1.0])
    np.testing.assert_allclose(out[0] @ p, shift[0] @ (rot[0] @ p))
    np.testing.assert_allclose(rotation_angles_deg(rot), [30.0])
    assert compose_transforms(shift, None) is not shift


def test_apply_transforms_moves_content_by_plus_shift():
    img = torch.zeros(1, 32, 40)
    img[0, 10, 12] = 1.0
    t = shifts_to_transforms(np.array([[3.0, -5.0]]))  # dy=3, dx=-5
    out = apply_transforms_2d(img, t)
    peak = np.unravel_index(int(torch.argmax(out[0])), (32, 40))
    assert peak == (13, 7)
    assert float(out[0, 13, 7]) == pytest.approx(1.0, abs=1e-4)


def test_apply_transforms_rotates_about_centre():
    h, w = 32, 32  # IMOD's centre (w / 2, h / 2) is pixel (16, 16)
    img = torch.zeros(1, h, w)
    img[0, 16, 26] = 1.0  # 10 px right of the centre (16, 16)
    theta = math.radians(90)
    t = np.array([[[math.cos(theta), -math.sin(theta), 0],
                   [math.sin(theta), math.cos(theta), 0], [0, 0, 1]]])
    out = apply_transforms_2d(img, t)
    peak = np.unravel_index(int(torch.argmax(out[0])), (h, w))
    assert peak == (26, 16)  # X -> Y: counter-clockwise with Y up


def test_apply_identity_is_lossless():
    img = torch.randn(3, 20, 24)
    out = apply_transforms_2d(img, identity_transforms(3))
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- stacks
def _write(path, data):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
    return str(path)


def test_read_stack_views_by_position_any_extension(tmp_path):
    data = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    path = _write(tmp_path / "ts.st", data)
    views = read_stack_views(path, [3, 1, 5])
    np.testing.assert_array_equal(views, data[[2, 0, 4]])
    assert views.dtype == np.float32
    assert MrcStack.open(path).shape == (5, 4, 6)


def test_read_stack_views_int16_becomes_float32(tmp_path):
    path = str(tmp_path / "ts.mrc")
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.full((2, 3, 3), 7, dtype=np.int16))
    assert read_stack_views(path, [2]).dtype == np.float32


def test_read_stack_views_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nothere.mrc")
    with pytest.raises(StackReadError, match="nothere.mrc: no such file"):
        read_stack_views(missing, [1])
    path = _write(tmp_path / "ts.mrc", np.zeros((3, 4, 4)))
    with pytest.raises(StackReadError, match=r"has 3 views.*\[4\]"):
        read_stack_views(path, [1, 4])
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not an mrc file" * 10)
    with pytest.raises(StackReadError, match="garbage.mrc"):
        read_stack_views(str(garbage), [1])


def test_truncated_stack_is_reported(tmp_path):
    path = _write(tmp_path / "ts.mrc", np.ones((4, 16, 16)))
    size = (tmp_path / "ts.mrc").stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 2 * 16 * 16 * 4)
    with pytest.raises(StackReadError, match="ts.mrc"):
        read_stack_views(path, [1, 2, 3, 4])


# --------------------------------------------------------------------------- form values
def test_form_values_become_engine_options():
    assert coarse_options_from_form({}) == CoarseOptions()
    assert vars(CoarseOptions()) == {
        "low_pass_cutoff": 0.25, "low_pass_sigma": 0.05, "high_pass_sigma": 0.03,
        "high_pass_radius": 0.0, "taper_fraction": 0.1, "pad_fraction": 0.05,
        "binning": "auto", "cumulative": False, "reference_memory": 0.75, "refine": True,
        "max_shift": None, "interpolation": "bilinear", "fixed_pattern": "auto",
        "x_min_max": None, "y_min_max": None, "borders": (0, 0), "angle_offset": 0.0,
        "absolute_cosine_stretch": True, "adaptive": True,
    }
    kw = coarse_options_from_form({"binning": 2, "maxShift": 12.5,
                                   "cumulativeCorrelation": True, "subpixelRefinement": False,
                                   "lowPassCutoff": 0.15})
    assert kw.binning == 2 and kw.max_shift == 12.5
    assert kw.cumulative is True and kw.refine is False and kw.low_pass_cutoff == 0.15
    assert coarse_options_from_form({"maxShift": 0}).max_shift is None
    assert coarse_options_from_form({"binning": 0}).binning == "auto"
    with pytest.raises(ValueError, match="binning"):
        coarse_options_from_form({"binning": -1})


def test_tilt_axis_prefers_the_form():
    views = TiltSeriesViews(ts_id="TS_1", stack_positions=np.arange(1, 4), file_names=["a"] * 3,
                            tilt_angles=np.zeros(3), enabled=np.ones(3, bool), previous=None,
                            acquisition_axis=10.0, sampling_rate=1.0)
    assert views.tilt_axis(85.0) == 85.0
    assert views.tilt_axis(None) == 10.0
    no_axis = TiltSeriesViews(**{**vars(views), "ts_id": "TS_7", "acquisition_axis": None})
    with pytest.raises(TiltSeriesFailure, match="TS_7.*tilt axis"):
        no_axis.tilt_axis(None)


def test_torch_threads_do_not_oversubscribe():
    assert torch_threads_per_step(1, cpus=8) == 8
    assert torch_threads_per_step(3, cpus=8) == 2
    assert torch_threads_per_step(4, cpus=2) == 1


def test_select_device_falls_back_to_cpu_with_a_reason():
    device, message = select_device(False, [0])
    assert device.type == "cpu" and "not requested" in message
    device, message = select_device(True, [0])
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type == "cpu" and "CUDA is not available" in message


def test_views_from_real_tomo_objects():
    from pwem.objects import Transform
    from tomo.objects import TiltImage, TiltSeries

    ts = TiltSeries(tsId="TS_9")
    ts.setSamplingRate(2.5)
    ts.getAcquisition().setTiltAxisAngle(84.0)
    items = []
    for i, angle in enumerate([-3.0, 0.0, 3.0]):
        ti = TiltImage(location=(3 - i, "stack.mrc"), tiltAngle=angle, acquisitionOrder=i + 1)
        ti.setEnabled(i != 2)
        items.append(ti)
    items[0].setTransform(Transform(matrix=shifts_to_transforms(np.array([[1.0, 2.0]]))[0]))
    table = TiltSeriesViews.from_tilt_series(ts, items)
    assert table.ts_id == "TS_9" and table.sampling_rate == 2.5
    assert table.acquisition_axis == 84.0
    np.testing.assert_array_equal(table.stack_positions, [3, 2, 1])
    np.testing.assert_array_equal(table.enabled, [True, True, False])
    assert table.previous is not None
    np.testing.assert_allclose(table.previous[0, :2, 2], [2.0, 1.0])
    np.testing.assert_allclose(table.previous[1], np.eye(3))


# --------------------------------------------------------------------------- reading + aligning
def _table(path, sim, order, enabled=None, previous=None):
    n = len(order)
    return TiltSeriesViews(
        ts_id="TS_T", stack_positions=np.asarray(order) + 1, file_names=[path] * n,
        tilt_angles=sim.tilt_angles.numpy().astype(float)[order],
        enabled=np.ones(n, bool) if enabled is None else enabled,
        previous=previous, acquisition_axis=sim.tilt_axis_angle, sampling_rate=1.0)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    sim = simulate_tilt_series(shape=(192, 192), n_views=31, tilt_range=(-60, 60),
                               tilt_axis_angle=85.0, max_shift=6, thickness=5.0,
                               order="dose-symmetric", seed=11)
    path = _write(tmp_path_factory.mktemp("stack") / "ts.mrc", sim.images.numpy())
    order = np.argsort(sim.tilt_angles.numpy(), kind="stable")  # item order = sorted by tilt
    return sim, path, order


def test_alignment_needs_three_enabled_views(simulated):
    sim, path, order = simulated
    enabled = np.zeros(len(order), bool)
    enabled[:2] = True
    with pytest.raises(TiltSeriesFailure, match="TS_T: only 2 enabled"):
        align_views(_table(path, sim, order, enabled), CoarseOptions(), 85.0)


def test_align_views_recovers_shifts_with_disabled_views(simulated):
    sim, path, order = simulated
    enabled = np.ones(len(order), bool)
    enabled[[0, 5, 30]] = False  # the most tilted view, one inside, the other end
    out = align_views(_table(path, sim, order, enabled), CoarseOptions(), 85.0)
    truth = sim.shifts.numpy().astype(float)[order]
    assert np.abs(out.shifts[enabled] - truth[enabled]).max() < 0.5
    np.testing.assert_allclose(out.transforms[~enabled], np.tile(np.eye(3), (3, 1, 1)))
    assert np.isnan(out.correlation[~enabled]).all()
    assert np.isnan(out.correlation[out.reference_position])
    angles = sim.tilt_angles.numpy()[order]
    assert out.reference_position == int(np.argmin(np.where(enabled, np.abs(angles), np.inf)))
    assert np.isfinite(out.correlation[enabled]).sum() == enabled.sum() - 1
    assert set(out.timings) == {"read", "engine"}


def test_align_views_applies_and_composes_previous(simulated):
    sim, path, order = simulated
    n = len(order)
    rng = np.random.default_rng(5)
    prev_shifts = rng.uniform(-8, 8, size=(n, 2))
    ref = int(np.argmin(np.abs(sim.tilt_angles.numpy()[order])))
    prev_shifts[ref] = 0  # the previous alignment keeps the reference (axis) in place
    previous = shifts_to_transforms(prev_shifts)
    out = align_views(_table(path, sim, order, previous=previous), CoarseOptions(), 85.0)
    truth = sim.shifts.numpy().astype(float)[order]
    total = transforms_to_shifts(out.transforms)
    assert np.abs(total - truth).max() < 0.5  # the previous alignment was applied and composed
    np.testing.assert_allclose(total, out.shifts + prev_shifts, atol=1e-9)  # new @ previous


def test_align_views_reports_engine_refusals_with_ts_id(tmp_path, simulated):
    sim, _, order = simulated
    data = sim.images.numpy().copy()
    data[4, 10:20, 10:20] = np.nan
    path = _write(tmp_path / "nan.mrc", data)
    with pytest.raises(TiltSeriesFailure, match="TS_T.*NaN"):
        align_views(_table(path, sim, order), CoarseOptions(), 85.0)


def test_fine_mode_keeps_disabled_views_previous_transforms(simulated):
    """Fine alignment: enabled views get ``Q R @ previous`` (their rotation turns the axis
    onto Y); disabled views, not in the solve, keep their previous transform."""
    from tiltxcorr_scipion.options import FineOptions

    sim, path, order = simulated
    n = len(order)
    rng = np.random.default_rng(6)
    prev_shifts = rng.uniform(-4, 4, size=(n, 2))
    ref = int(np.argmin(np.abs(sim.tilt_angles.numpy()[order])))
    prev_shifts[ref] = 0
    previous = shifts_to_transforms(prev_shifts)
    enabled = np.ones(n, bool)
    enabled[[2, 20]] = False
    out = align_views(_table(path, sim, order, enabled, previous=previous),
                      FineOptions(), 85.0)
    np.testing.assert_allclose(out.transforms[~enabled], previous[~enabled])
    turned = rotation_angles_deg(out.transforms[enabled])
    np.testing.assert_allclose(turned, -out.tilt_axis_angle, atol=1e-6)
