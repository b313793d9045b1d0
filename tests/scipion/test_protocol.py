"""ProtTiltxcorrPrealignment in real Scipion projects: import simulated stacks, run, read back.

Every run goes through ``project.launchProtocol`` (a separate protocol
process, as in the GUI) and is polled with a time limit. Data are small
(128-256 px, 21-31 views) so the module stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipion_helpers import (
    continue_protocol,
    corrupt_file,
    create_project,
    derive_tilt_series_set,
    disable_views,
    edit_tilt_series_set,
    import_tilt_series,
    launch_and_wait,
    new_prealignment,
    output_stream_state,
    read_log,
    read_tilt_series_set,
    reload_protocol,
    set_previous_shifts,
    shift_errors_px,
    write_simulated_tilt_series,
    write_stack,
    write_tlt,
)

from tiltxcorr_scipion import constants as cts

AXIS = 85.0
# Thin specimens: cosine stretching is then exact enough for 0.5 px (thick
# slabs break it, in IMOD as here).
SIM = dict(tilt_range=(-60.0, 60.0), tilt_axis_angle=AXIS, max_shift=6.0, thickness=5.0)
TOL_PX = 0.5


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory):
    """Three tilt series (.mrc; dose-symmetric, sorted, random stacks), 4 threads: all at once."""
    data = tmp_path_factory.mktemp("data")
    sims = {
        "TS_01": write_simulated_tilt_series(data, "TS_01", shape=(192, 192), n_views=31,
                                             order="dose-symmetric", seed=1, **SIM),
        "TS_02": write_simulated_tilt_series(data, "TS_02", shape=(192, 192), n_views=31,
                                             order="sorted", seed=2, **SIM),
        "TS_03": write_simulated_tilt_series(data, "TS_03", shape=(192, 192), n_views=31,
                                             order="random", seed=3, **SIM),
    }
    project = create_project("aligned")
    imp = import_tilt_series(project, data, "*.mrc", tilt_axis_angle=AXIS, sampling_rate=2.5,
                             dose_per_tilt=3.0)
    prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=4))
    return project, imp, prot, sims


def test_shifts_match_the_simulation(aligned_run):
    project, _, prot, sims = aligned_run
    records = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert sorted(records) == sorted(sims)
    for ts_id, record in records.items():
        errors = shift_errors_px(record, sims[ts_id])
        assert errors.shape == (31, 2)
        assert np.abs(errors).max() < TOL_PX, f"{ts_id}: max error {np.abs(errors).max():.2f} px"
        # Pure shifts in IMOD's forward convention.
        np.testing.assert_allclose(record.transforms[:, :2, :2], np.tile(np.eye(2), (31, 1, 1)))
        np.testing.assert_allclose(record.transforms[:, 2], np.tile([0, 0, 1.0], (31, 1)))


def test_output_metadata_is_carried_over(aligned_run):
    project, imp, prot, _ = aligned_run
    inputs = read_tilt_series_set(project, imp, "outputTiltSeries")
    outputs = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    for ts_id, out in outputs.items():
        inp = inputs[ts_id]
        assert out.has_alignment and not inp.has_alignment
        assert out.has_transform.all()
        assert not out.interpolated
        assert out.sampling_rate == pytest.approx(2.5)
        assert out.tilt_axis_angle == pytest.approx(AXIS)
        np.testing.assert_array_equal(out.tilt_angles, inp.tilt_angles)
        np.testing.assert_array_equal(out.stack_indices, inp.stack_indices)
        np.testing.assert_array_equal(out.acq_orders, inp.acq_orders)
        np.testing.assert_allclose(out.accum_dose, inp.accum_dose)
        assert out.file_names == inp.file_names
        assert out.ctf_corrected == inp.ctf_corrected and out.has_odd_even == inp.has_odd_even
    assert output_stream_state(project, prot, cts.OUTPUT_TILT_SERIES) == "closed"
    prot = reload_protocol(project, prot)
    assert getattr(prot, cts.OUTPUT_FAILED_TILT_SERIES, None) is None
    assert prot.getOutputsSize() == 1
    # The output is related to the input in the project graph.
    relations = project.mapper.getRelationsByCreator(prot)
    assert relations, "no source relation registered"


def test_correlation_score_on_each_tilt_image(aligned_run):
    project, _, prot, sims = aligned_run
    for record in read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES).values():
        reference = np.argmin(np.abs(record.tilt_angles))
        assert np.isnan(record.correlation[reference])
        others = np.delete(record.correlation, reference)
        assert np.isfinite(others).all()
        assert (others > 0.5).all() and (others <= 1.0).all()
        # The reference view is the one the engine left in place.
        np.testing.assert_allclose(record.shifts_dy_dx()[reference], [0, 0], atol=1e-6)


def test_log_reports_time_split_and_extra_files(aligned_run):
    project, _, prot, sims = aligned_run
    log = read_log(prot, n_chars=200_000)
    for ts_id in sims:
        lines = [ln for ln in log.splitlines() if f"Tilt series {ts_id}: aligned" in ln]
        assert len(lines) == 1, lines
        assert "read" in lines[0] and "alignment engine" in lines[0] and "registration" in lines[0]
    extra = Path(project.getPath(), prot._getExtraPath())
    for ts_id in sims:
        png = extra / f"{ts_id}{cts.PLOT_SUFFIX}"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (extra / f"{ts_id}.prexg").exists() and (extra / f"{ts_id}.tlt").exists()


def test_tilt_series_were_aligned_in_parallel(aligned_run):
    """Registration from parallel steps (under the protocol lock) lost nothing."""
    import datetime
    import re

    project, _, prot, sims = aligned_run
    spans = {}
    for line in read_log(prot, n_chars=200_000).splitlines():
        m = re.search(r"(STARTED|FINISHED)\S*: alignTiltSeriesStep, step (\d+), time (\S+ \S+)", line)
        if m:
            spans.setdefault(m.group(2), {})[m.group(1)] = datetime.datetime.fromisoformat(m.group(3))
    assert len(spans) == len(sims)
    starts = sorted(s["STARTED"] for s in spans.values())
    first_end = min(s["FINISHED"] for s in spans.values())
    assert starts[1] < first_end, "alignment steps did not overlap"
    assert len(read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)) == len(sims)


def test_continue_after_finish_does_not_duplicate(aligned_run):
    project, _, prot, sims = aligned_run
    before = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    prot = continue_protocol(project, prot)
    after = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert sorted(after) == sorted(sims)
    prot = reload_protocol(project, prot)
    assert getattr(prot, cts.OUTPUT_TILT_SERIES).getSize() == len(sims)
    for ts_id in sims:
        assert after[ts_id].size == 31
        np.testing.assert_array_equal(after[ts_id].transforms, before[ts_id].transforms)
    assert "already in the outputs are skipped" in read_log(prot, n_chars=200_000)


def test_info_methods_and_citations(aligned_run):
    project, _, prot, _ = aligned_run
    prot = reload_protocol(project, prot)
    summary = " ".join(prot.summary())
    assert "Aligned tilt series: 3" in summary
    methods = " ".join(prot.methods())
    assert "tiltxcorr" in methods and "0.25" in methods and "0.03" in methods
    citations = prot.citations()
    assert any("Kremer" in c for c in citations) and any("Mastronarde" in c for c in citations)
    assert prot.validate() == []


def test_disabled_views_st_non_square_and_axis_override(tmp_path):
    """.st stacks, 160 x 224 views, 3 views excluded, acquisition axis wrong but form right."""
    sim = write_simulated_tilt_series(tmp_path, "TS_st", ext=".st", shape=(160, 224), n_views=25,
                                      order="dose-symmetric", seed=4, **SIM)
    project = create_project("st_disabled")
    imp = import_tilt_series(project, tmp_path, "{TS}.st", tilt_axis_angle=0.0,  # wrong axis
                             ctfCorrected=True)
    order = np.argsort(sim.tilt_angles.numpy())
    # Stack positions of the most negative tilt, one between it and 0, the most positive.
    disabled = sorted([int(order[0]) + 1, int(order[8]) + 1, int(order[-1]) + 1])
    edit_tilt_series_set(project, imp, disable_views({"TS_st": disabled}))
    prot = launch_and_wait(project, new_prealignment(project, imp, tiltAxisAngle=AXIS,
                                                     numberOfThreads=1))
    record = read_tilt_series_set(project, prot)["TS_st"]
    assert record.size == 25  # disabled views are kept
    off = np.isin(record.stack_indices, disabled)
    assert off.sum() == len(disabled)
    assert not record.enabled[off].any() and record.enabled[~off].all()
    np.testing.assert_allclose(record.transforms[off], np.tile(np.eye(3), (off.sum(), 1, 1)))
    assert np.isnan(record.correlation[off]).all()
    errors = shift_errors_px(record, sim)
    assert errors.shape == (25 - len(disabled), 2)
    assert np.abs(errors).max() < TOL_PX
    assert record.tilt_axis_angle == pytest.approx(AXIS)  # the axis used, not the acquisition's
    assert record.file_names[0].endswith(".st")
    assert record.ctf_corrected  # flag carried over


def test_axis_from_acquisition_when_form_empty(tmp_path):
    """Same data, once with the acquisition's (right) axis and once overridden by a wrong one."""
    sim = write_simulated_tilt_series(tmp_path, "TS_ax", shape=(128, 192), n_views=21,
                                      seed=5, **{**SIM, "tilt_axis_angle": 10.0})
    project = create_project("axis")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=10.0)
    good = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=1))
    wrong = launch_and_wait(project, new_prealignment(project, imp, tiltAxisAngle=100.0,
                                                      numberOfThreads=1))
    good_rec = read_tilt_series_set(project, good)["TS_ax"]
    wrong_rec = read_tilt_series_set(project, wrong)["TS_ax"]
    assert good_rec.tilt_axis_angle == pytest.approx(10.0)
    assert wrong_rec.tilt_axis_angle == pytest.approx(100.0)
    assert np.abs(shift_errors_px(good_rec, sim)).max() < TOL_PX
    # Stretching along the wrong direction must show: larger errors, lower scores.
    assert np.abs(shift_errors_px(wrong_rec, sim)).max() > np.abs(shift_errors_px(good_rec, sim)).max()
    assert np.nanmedian(wrong_rec.correlation) < np.nanmedian(good_rec.correlation)


def test_previous_alignment_is_applied_and_composed(tmp_path):
    sim = write_simulated_tilt_series(tmp_path, "TS_prev", shape=(192, 192), n_views=25,
                                      order="dose-symmetric", seed=6, **SIM)
    project = create_project("previous")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    rng = np.random.default_rng(7)
    previous = rng.uniform(-7.0, 7.0, size=(25, 2))  # (dy, dx), stack order
    previous[int(np.argmin(np.abs(sim.tilt_angles.numpy())))] = 0.0  # axis stays centred
    shift_items = set_previous_shifts({"TS_prev": previous})

    def edit(ts_id, items):  # previous alignment + odd/even halves, as after motion correction
        shift_items(ts_id, items)
        for ti in items:
            ti.setOddEven([f"{ti.getIndex()}@odd.mrc", f"{ti.getIndex()}@even.mrc"])

    name = derive_tilt_series_set(project, imp, edit)
    prot = new_prealignment(project, imp, output_name=name, numberOfThreads=1)
    assert any("already have an alignment" in w for w in prot.warnings())
    prot = launch_and_wait(project, prot)
    record = read_tilt_series_set(project, prot)["TS_prev"]
    assert record.has_odd_even  # carried over
    assert record.odd_even == [(f"{i}@odd.mrc", f"{i}@even.mrc") for i in record.stack_indices]
    total = record.by_stack_index(record.shifts_dy_dx())
    truth = sim.shifts.numpy().astype(float)
    # Ignoring the previous alignment would give truth + previous, not composing it truth - previous.
    assert np.abs(total - truth).max() < TOL_PX
    assert np.abs(total - previous - truth).max() > 3.0
    # The new part (total - previous) is what remained after applying the previous shifts.
    new_part = total - previous
    assert np.abs(new_part - (truth - previous)).max() < TOL_PX


def test_corrupt_tilt_series_fail_alone(tmp_path):
    """Truncated stack, NaN pixels, deleted stack, 2 enabled views: each fails alone."""
    bad = ["TS_trunc", "TS_nan", "TS_gone", "TS_few"]
    # TS_nan's stack is in acquisition order: its 8th view is not the 8th in tilt order
    sims = {ts: write_simulated_tilt_series(tmp_path, ts, shape=(128, 128), n_views=21,
                                            seed=i, **SIM, order="dose-symmetric"
                                            if ts == "TS_nan" else "sorted")
            for i, ts in enumerate(["TS_good", *bad])}
    project = create_project("corrupt")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    corrupt_file(tmp_path / "TS_trunc.mrc", "truncate")
    import mrcfile

    with mrcfile.open(tmp_path / "TS_nan.mrc", mode="r+") as mrc:
        mrc.data[7, 20:40, 20:40] = np.nan
    (tmp_path / "TS_gone.mrc").unlink()
    edit_tilt_series_set(project, imp, disable_views({"TS_few": list(range(3, 22))}))
    prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=3))
    aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    failed = read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(aligned) == ["TS_good"]
    assert sorted(failed) == sorted(bad)
    # Small views: accuracy is tested elsewhere; here the good one must simply be aligned.
    assert np.abs(shift_errors_px(aligned["TS_good"], sims["TS_good"])).max() < 1.0
    for ts_id in bad:  # the input tilt series, unchanged
        assert failed[ts_id].size == 21 and not failed[ts_id].has_alignment
    assert failed["TS_few"].enabled.sum() == 2
    prot = reload_protocol(project, prot)
    reasons = json.loads(prot.failureReasons.get())
    assert set(reasons) == set(bad)
    assert all(reason.startswith(f"tilt series {ts_id}:") for ts_id, reason in reasons.items())
    assert "NaN" in reasons["TS_nan"] and "view 8:" in reasons["TS_nan"]  # stack position
    assert "does not exist" in reasons["TS_gone"]
    assert "only 2 enabled view(s)" in reasons["TS_few"]
    log = read_log(prot, n_chars=200_000)
    for ts_id in bad:
        assert f"FAILED tilt series {ts_id}:" in log
    assert "Failed tilt series: 4" in " ".join(prot.summary())
    assert output_stream_state(project, prot, cts.OUTPUT_FAILED_TILT_SERIES) == "closed"


def test_views_beyond_the_stretch_limit_are_excluded_and_impossible_angles_fail(tmp_path):
    """A full +-88 series is aligned without its two views beyond +-82 (disabled, the reason in
    the log); angles all 0, or in radians, fail that series alone with the likely cause."""
    from tiltxcorr_scipion.simulate import simulate_tilt_series

    stem = simulate_tilt_series(shape=(96, 96), n_views=23, tilt_range=(-88.0, 88.0),
                                tilt_axis_angle=AXIS, max_shift=4.0, thickness=5.0, seed=8)
    write_simulated_tilt_series(tmp_path, "TS_stem", sim=stem)
    for ts_id, seed in (("TS_flat", 9), ("TS_rad", 10)):
        sim = write_simulated_tilt_series(tmp_path, ts_id, shape=(96, 96), n_views=11,
                                          seed=seed, **SIM)
        angles = sim.tilt_angles.numpy()
        write_tlt(tmp_path / f"{ts_id}.tlt", np.zeros(11) if ts_id == "TS_flat"
                  else np.radians(angles))
    project = create_project("steep")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    prot = new_prealignment(project, imp, numberOfThreads=2)
    assert not prot.validate()  # no longer refused as a whole
    warnings = " ".join(prot.warnings())
    assert "TS_stem" in warnings and "excluded automatically" in warnings
    assert "TS_flat: all 11 tilt angles are 0 degrees" in warnings
    assert "TS_rad" in warnings and "radians" in warnings
    prot = launch_and_wait(project, prot)
    aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    failed = read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(aligned) == ["TS_stem"] and sorted(failed) == ["TS_flat", "TS_rad"]
    record = aligned["TS_stem"]
    beyond = np.abs(record.tilt_angles) > 82
    assert beyond.sum() == 2 and np.array_equal(record.enabled, ~beyond)
    assert np.allclose(record.transforms[beyond], np.eye(3))
    errors = shift_errors_px(record, stem)
    assert np.abs(errors - errors.mean(axis=0)).max() < 1.0
    reasons = json.loads(reload_protocol(project, prot).failureReasons.get())
    assert "all 11 tilt angles are 0 degrees" in reasons["TS_flat"]
    assert "radians" in reasons["TS_rad"] and "degrees" in reasons["TS_rad"]
    log = read_log(prot, n_chars=200_000)
    assert "Tilt series TS_stem: view 1 tilted -88.0 degrees, beyond the +-82" in log
    assert "Tilt series TS_stem: view 23 tilted +88.0 degrees" in log


def test_validation_errors_and_warnings(tmp_path):
    from tiltxcorr_scipion.simulate import simulate_tilt_series

    sim = simulate_tilt_series(shape=(64, 64), n_views=7, tilt_range=(-60.0, 60.0), seed=8)
    write_simulated_tilt_series(tmp_path, "TS_few", sim=sim)
    project = create_project("validate")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    prot = new_prealignment(project, imp)
    assert not prot.validate()
    assert any("fewer than" in w for w in prot.warnings())
    empty = new_prealignment(project, imp)
    empty.inputSetOfTiltSeries.set(None)
    assert empty.validate()


def test_aligned_stacks_and_gpu_fallback(tmp_path):
    """writeAlignedStacks with binning 2 -> InterpolatedTiltSeries; USE_GPU without CUDA -> CPU."""
    import mrcfile
    import torch

    sims = {ts: write_simulated_tilt_series(tmp_path, ts, shape=(128, 160), n_views=21,
                                            seed=40 + i, **SIM)
            for i, ts in enumerate(["TS_a", "TS_b"])}
    project = create_project("interpolated")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS, sampling_rate=1.5)
    prot = new_prealignment(project, imp, numberOfThreads=3, writeAlignedStacks=True,
                            alignedBinning=2, useGpu=True, gpuList="0")
    prot = launch_and_wait(project, prot)
    aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    interp = read_tilt_series_set(project, prot, cts.OUTPUT_INTERPOLATED_TILT_SERIES)
    assert sorted(interp) == sorted(sims) == sorted(aligned)
    log = read_log(prot, n_chars=200_000)
    if not torch.cuda.is_available():
        assert log.count("GPU requested but CUDA is not available") == len(sims)
    # Each step booked the one GPU of the list through Scipion's executor, so with one
    # GPU the two alignment steps ran one after the other despite 2 free threads.
    assert log.count("GPUs [0] assigned to step") == len(sims)
    started = [ln for ln in log.splitlines() if "alignTiltSeriesStep" in ln
               and ("STARTED" in ln or "FINISHED" in ln)]
    assert ["STARTED" in ln for ln in started] == [True, False, True, False]
    for ts_id, rec in interp.items():
        assert rec.interpolated and not rec.has_alignment and not rec.has_transform.any()
        assert rec.sampling_rate == pytest.approx(3.0)
        assert rec.size == 21
        np.testing.assert_array_equal(rec.tilt_angles, aligned[ts_id].tilt_angles)
        path = Path(project.getPath(), rec.file_names[0])
        assert path.name == f"{ts_id}{cts.ALIGNED_STACK_SUFFIX}"
        with mrcfile.open(path, permissive=True) as mrc:
            assert mrc.data.shape == (21, 64, 80)
            assert float(mrc.voxel_size.x) == pytest.approx(3.0)
            stack = np.asarray(mrc.data, dtype=np.float64)
        # Aligned views agree better with their neighbours than the raw ones do.
        raw = sims[ts_id].images.numpy().astype(np.float64)
        raw = raw.reshape(21, 64, 2, 80, 2).mean(axis=(2, 4))
        order = np.argsort(sims[ts_id].tilt_angles.numpy())
        assert _neighbour_ncc(stack, order) > _neighbour_ncc(raw, order) + 0.05


def _neighbour_ncc(views: np.ndarray, order: np.ndarray) -> float:
    """Mean normalised correlation of the central parts of consecutive low-tilt views."""
    scores = []
    for a, b in zip(order[5:15], order[6:16], strict=True):
        x, y = views[a][12:-12, 12:-12], views[b][12:-12, 12:-12]
        x, y = x - x.mean(), y - y.mean()
        scores.append((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))
    return float(np.mean(scores))


def test_run_fails_when_nothing_could_be_aligned(tmp_path):
    write_simulated_tilt_series(tmp_path, "TS_only", shape=(96, 96), n_views=15, seed=9, **SIM)
    project = create_project("allfailed")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    corrupt_file(tmp_path / "TS_only.mrc", "garbage")
    prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=1),
                           expect_finished=False)
    assert prot.isFailed()
    assert "No tilt series could be aligned" in prot.getErrorMessage()
    assert sorted(read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)) == ["TS_only"]
    assert read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES) == {}


def test_unusable_views_are_disabled_with_their_reason(tmp_path):
    """A blocked view: disabled in the output (default), the reason on the tilt image, in the
    summary, the log and the viewer's report; with the option off it stays enabled, flagged."""
    from tiltxcorr_scipion.viewers.viewer_prealignment import alignment_data, low_correlation_report

    sim = write_simulated_tilt_series(tmp_path, "TS_blk", shape=(160, 160), n_views=31, seed=71,
                                      blocked_views=(24,), **SIM)  # stack position 25
    project = create_project("unusable")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    runs = {}
    for disable in (True, False):
        prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=1,
                                                         disableUnusableViews=disable))
        runs[disable] = prot
        record = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)["TS_blk"]
        blocked = int(np.flatnonzero(record.stack_indices == 25)[0])
        others = record.stack_indices != 25
        assert record.enabled[blocked] is not disable and bool(record.enabled[others].all())
        out_set = getattr(reload_protocol(project, prot), cts.OUTPUT_TILT_SERIES)
        ts = out_set.getFirstItem()
        data = alignment_data(ts)
        out_set.close()
        reason = data.unusable[int(np.flatnonzero(data.view_numbers == 25)[0])]
        assert reason and ("bright" in reason or "dark" in reason or "blank" in reason), reason
        assert sum(bool(r) for r in data.unusable) == 1
        assert "view 25 unusable" in low_correlation_report([data])
        summary = " ".join(prot.summary())
        assert "TS_blk: unusable views " + ("disabled" if disable else "flagged") in summary
        assert "25 (" in summary
        assert "view 25 is unusable" in read_log(prot, n_chars=200_000)
        # the other views stay aligned (accuracy with blocked views: the hard-data benchmark)
        errors = shift_errors_px(record, sim)[np.delete(np.arange(31), 24)] if not disable \
            else shift_errors_px(record, sim)
        assert np.abs(errors).max() < 1.0
    # disabled: the identity, as views excluded from the start; flagged: its best estimate
    disabled = read_tilt_series_set(project, runs[True], cts.OUTPUT_TILT_SERIES)["TS_blk"]
    flagged = read_tilt_series_set(project, runs[False], cts.OUTPUT_TILT_SERIES)["TS_blk"]
    index = int(np.flatnonzero(disabled.stack_indices == 25)[0])
    np.testing.assert_allclose(disabled.transforms[index], np.eye(3))
    assert np.abs(flagged.transforms[index, :2, 2]).max() > 0


def test_an_unreliable_alignment_fails_or_stays_flagged(tmp_path):
    """Pure noise: no path is self-consistent. By default the tilt series goes to
    FailedTiltSeries with the self-check's reason (its plot still written); with "Keep
    unreliable tilt series" it stays in the output, flagged on the tilt series and in the
    summary. A good tilt series beside it is aligned either way."""
    sim = write_simulated_tilt_series(tmp_path, "TS_good", shape=(128, 128), n_views=21, seed=3,
                                      **SIM)
    noise = np.random.default_rng(5).standard_normal((21, 128, 128)).astype(np.float32)
    write_stack(tmp_path / "TS_noise.mrc", noise)
    write_tlt(tmp_path / "TS_noise.tlt", sim.tilt_angles.numpy())
    project = create_project("unreliable")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    failing = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=2))
    aligned = read_tilt_series_set(project, failing, cts.OUTPUT_TILT_SERIES)
    failed = read_tilt_series_set(project, failing, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(aligned) == ["TS_good"] and sorted(failed) == ["TS_noise"]
    assert np.abs(shift_errors_px(aligned["TS_good"], sim)).max() < 1.0
    reason = json.loads(reload_protocol(project, failing).failureReasons.get())["TS_noise"]
    assert reason.startswith("tilt series TS_noise: unreliable alignment:") and "agree" in reason
    assert Path(failing._getExtraPath("TS_noise" + cts.PLOT_SUFFIX)).stat().st_size > 10_000

    kept = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=2,
                                                     keepUnreliable=True))
    assert sorted(read_tilt_series_set(project, kept, cts.OUTPUT_TILT_SERIES)) == [
        "TS_good", "TS_noise"]
    kept = reload_protocol(project, kept)
    assert getattr(kept, cts.OUTPUT_FAILED_TILT_SERIES, None) is None
    flags, residuals = {}, {}
    out_set = getattr(kept, cts.OUTPUT_TILT_SERIES)
    for ts in out_set.iterItems():
        flag = getattr(ts, cts.UNRELIABLE_ATTR, None)
        flags[ts.getTsId()] = (flag.get() if flag is not None else None) or ""
        residuals[ts.getTsId()] = [getattr(ti, cts.RESIDUAL_ATTR).get() for ti in ts.iterItems()]
    out_set.close()
    assert flags["TS_good"] == "" and "agree" in flags["TS_noise"]
    assert "TS_noise: UNRELIABLE alignment, kept as asked:" in " ".join(kept.summary())
    good = [r for r in residuals["TS_good"] if r is not None]
    assert len(good) == 21 and max(good) < 0.5  # the held-out residual of every view
