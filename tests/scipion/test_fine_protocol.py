"""ProtTiltxcorrFineAlignment in a real project: streaming input, a failing tilt series,
refined geometry registered, landmark models read back by tomo and by imodmodel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imodmodel
import numpy as np
import pytest
from scipion_helpers import (
    corrupt_file,
    create_project,
    feed_stream,
    import_tilt_series,
    launch_and_wait,
    output_stream_state,
    read_log,
    read_tilt_series_set,
    reload_protocol,
    reopen_for_streaming,
    wait_with_producer,
    write_simulated_tilt_series,
)

from tiltxcorr_scipion import constants as cts
from tiltxcorr_scipion.convert.imod import read_tlt, read_xf
from tiltxcorr_scipion.convert.transforms import rotation_angles_deg

TRUE_AXIS = 85.0
NOMINAL_AXIS = 87.0  # what the microscope said: 2 degrees off
SIM = dict(shape=(320, 320), n_views=41, tilt_range=(-60.0, 60.0), tilt_axis_angle=TRUE_AXIS,
           max_shift=8.0, thickness=10.0, noise=1.0)


def new_fine_alignment(project, input_source, **params):
    from tiltxcorr_scipion.protocols import ProtTiltxcorrFineAlignment

    prot = project.newProtocol(ProtTiltxcorrFineAlignment, objLabel="tiltxcorr fine", **params)
    prot.inputSetOfTiltSeries.set(input_source)
    prot.inputSetOfTiltSeries.setExtended("outputTiltSeries")
    return prot


@pytest.fixture(scope="module")
def fine_run(tmp_path_factory):
    """TS_1 imported; TS_2 (pre-tilted by 3 degrees) and TS_bad arrive while the protocol runs."""
    first = tmp_path_factory.mktemp("first")
    later = tmp_path_factory.mktemp("later")
    sims = {"TS_1": write_simulated_tilt_series(first, "TS_1", seed=61, **SIM),
            "TS_2": write_simulated_tilt_series(later, "TS_2", seed=62, tilt_angle_offset=3.0,
                                                **SIM),
            "TS_bad": write_simulated_tilt_series(later, "TS_bad", seed=63, **SIM)}
    corrupt_file(later / "TS_bad.mrc", "truncate")
    project = create_project("fine")
    imp = import_tilt_series(project, first, "*.mrc", tilt_axis_angle=NOMINAL_AXIS,
                             sampling_rate=2.0)
    stream = reopen_for_streaming(project, imp)
    template = stream.getFirstItem().clone()
    stream.close()
    prot = new_fine_alignment(project, imp, numberOfThreads=3)
    project.launchProtocol(prot, wait=False)
    thread, errors = feed_stream(project, stream, [
        dict(ts_id=ts_id, stack_path=later / f"{ts_id}.mrc",
             tilt_angles=sims[ts_id].tilt_angles.numpy(), tilt_axis_angle=NOMINAL_AXIS,
             sampling_rate=2.0, template=template) for ts_id in ("TS_2", "TS_bad")],
        close_delay=5.0)
    prot = wait_with_producer(project, prot, thread, errors)
    assert prot.isFinished(), f"{prot.getStatus()}: {prot.getErrorMessage()}\n{read_log(prot)}"
    return project, prot, sims


def test_geometry_is_refined_and_registered(fine_run):
    project, prot, sims = fine_run
    records = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert sorted(records) == ["TS_1", "TS_2"]
    results = json.loads(reload_protocol(project, prot).fineResults.get())
    for ts_id, record in records.items():
        sim = sims[ts_id]
        axis = record.tilt_axis_angle
        assert abs(axis - TRUE_AXIS) < 0.2, (ts_id, axis)  # from 2 degrees off
        assert results[ts_id]["axis"] == pytest.approx(axis)
        assert abs(results[ts_id]["offset"] - sim.tilt_angle_offset) < 0.5, results[ts_id]
        assert results[ts_id]["residual"] < 1.0
        # a 10 px slab in 320 px views shows no distinct surfaces: what levelled it is told
        assert results[ts_id]["offsetText"].startswith(
            f"tilt angle offset {results[ts_id]['offset']:+.2f} +- "
            f"{results[ts_id]['offsetError']:.2f} deg (levels the plane of the points; "), \
            results[ts_id]
        assert "no distinct surfaces" in results[ts_id]["offsetText"]
        # tiltalign-style transforms: every view's rotation turns the axis onto Y
        np.testing.assert_allclose(rotation_angles_deg(record.transforms), -axis, atol=1e-6)
        # refined tilt angles: nominal + the offset (no per-view changes solved)
        order = np.argsort(record.stack_indices)
        nominal = sim.tilt_angles.numpy().astype(float)[record.stack_indices[order] - 1]
        np.testing.assert_allclose(record.tilt_angles[order] - nominal,
                                   results[ts_id]["offset"], atol=0.02)
        assert record.has_alignment and record.size == 41
        # the registered transforms are the .xf's; the .tlt holds the refined angles
        extra = Path(project.getPath(), prot._getExtraPath())
        np.testing.assert_allclose(read_xf(str(extra / f"{ts_id}.xf")),
                                   record.transforms[order], atol=2e-3)
        np.testing.assert_allclose(read_tlt(str(extra / f"{ts_id}.tlt")),
                                   record.tilt_angles[order], atol=0.006)
        for name in (f"{ts_id}_residuals.txt", f"{ts_id}_alignment.png", f"{ts_id}.fid",
                     f"{ts_id}_preview.mrc"):
            assert (extra / name).stat().st_size > 0, name


def test_a_broken_tilt_series_fails_alone(fine_run):
    project, prot, _ = fine_run
    failed = read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(failed) == ["TS_bad"]
    reasons = json.loads(reload_protocol(project, prot).failureReasons.get())
    assert reasons["TS_bad"].startswith("tilt series TS_bad:") and "truncated" in reasons["TS_bad"]
    for name in (cts.OUTPUT_TILT_SERIES, cts.OUTPUT_FAILED_TILT_SERIES,
                 cts.OUTPUT_LANDMARK_MODELS):
        assert output_stream_state(project, prot, name) == "closed", name
    summary = " ".join(prot.summary())
    assert "TS_1: tilt axis" in summary and "mean residual" in summary
    assert "(levels the plane of the points; " in summary  # and why not the surfaces
    # the preview tomogram (default Yes): its file and the worst reprojection residual
    for ts_id in ("TS_1", "TS_2"):
        assert (f"{ts_id}: preview tomogram {prot._getExtraPath(ts_id + '_preview.mrc')} "
                "(binning 1); reprojection check: worst view ") in summary
    methods = " ".join(prot.methods())
    assert "the specimen slab's surfaces" in methods
    assert "whole-view cross-correlation run with the solved geometry (weight 0.5)" in methods


def test_landmark_models_read_back_by_tomo_and_imodmodel(fine_run):
    project, prot, _ = fine_run
    models = getattr(reload_protocol(project, prot), cts.OUTPUT_LANDMARK_MODELS)
    assert models.getSize() == 2 and bool(models.hasResidualInfo())
    assert models.getSetOfTiltSeries() is not None
    for ts_id in ("TS_1", "TS_2"):
        model = models.getLandmarkModelFromTsId(ts_id).clone()
        table = np.array(model.retrieveInfoTable(), dtype=float)  # tomo's own reader
        assert table.shape[1] == 6 and len(table) > 1000
        assert model.getCount() == len(np.unique(table[:, 3]))  # chains
        assert set(table[:, 2].astype(int)) <= set(range(1, 42))  # views by stack position
        assert np.isfinite(table[:, 4:6]).all() and np.abs(table[:, 4:6]).mean() < 1.0
        fid = model.getModelName()
        assert os.path.isabs(fid) or Path(project.getPath(), fid).exists()
        frame = imodmodel.read(str(Path(project.getPath(), fid)))  # a third-party reader
        assert len(frame) == len(table)
        # the same points, contour by contour, in IMOD model coordinates
        by_model = sorted(zip(frame["contour_id"] + 1, frame["z"] + 1, frame["x"].round(3),
                              frame["y"].round(3), strict=True))
        by_table = sorted(zip(table[:, 3], table[:, 2], table[:, 0].round(3),
                              table[:, 1].round(3), strict=True))
        np.testing.assert_allclose(np.array(by_model), np.array(by_table), atol=2e-3)
    models.close()


def test_viewer_shows_plot_table_and_geometry(fine_run):
    import pyworkflow as pw
    from pyworkflow.viewer import DESKTOP_TKINTER

    from tiltxcorr_scipion.viewers import TiltxcorrFineAlignmentViewer
    from tiltxcorr_scipion.viewers.viewer_fine import FinePlotter, read_residual_table

    project, prot, _ = fine_run
    prot = reload_protocol(project, prot)
    assert TiltxcorrFineAlignmentViewer in pw.Config.getDomain().findViewers(prot,
                                                                             DESKTOP_TKINTER)
    viewer = TiltxcorrFineAlignmentViewer(project=project, protocol=prot)
    viewer.setProtocol(prot)
    assert viewer._choices == ["TS_1", "TS_2"]  # the failed one is not offered
    viewer.tiltSeriesChoice.set(1)
    (plot,) = viewer._showFinePlot()
    assert isinstance(plot, FinePlotter)
    image = plot.getFigure().axes[0].get_images()[0].get_array()
    assert image.shape[:2] == (850, 1000) and np.asarray(image)[..., :3].std() > 0.05
    plot.close()
    (preview,) = viewer._showPreview()  # the preview's slices and reprojection check
    slices = [im.get_array().shape for a in preview.getFigure().axes for im in a.get_images()]
    assert len(slices) == 2 and slices[0] == (320, 320), slices
    preview.close()
    (table,) = viewer._showResidualTable()
    rows = table.getMessage().splitlines()
    assert rows[0].startswith("# view") and len(rows) == 1 + 41
    (geometry,) = viewer._showGeometry()
    text = geometry.getMessage()
    results = json.loads(prot.fineResults.get())
    for ts_id in ("TS_1", "TS_2"):
        assert (f"{ts_id}: tilt axis {results[ts_id]['axis']:.2f} +- "
                f"{results[ts_id]['axisError']:.2f} deg, {results[ts_id]['offsetText']}, ") in text
        residuals = read_residual_table(str(Path(project.getPath(), prot._getExtraPath(),
                                                 f"{ts_id}_residuals.txt")))
        worst = residuals[np.nanargmax(residuals[:, 3])]
        assert f"view {int(worst[0])} ({worst[1]:+.1f} deg) {worst[3]:.2f} px" in text
    assert "TS_bad" not in text


def test_standard_errors_are_registered_with_the_geometry(fine_run):
    project, prot, _ = fine_run
    records = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    results = json.loads(reload_protocol(project, prot).fineResults.get())
    for ts_id, record in records.items():
        result = results[ts_id]
        assert 0 < result["axisError"] < 1.0 and 0 < result["offsetError"] < 2.0, result
        notes = record.acquisition_notes
        assert notes["tiltAxisAngleError"] == pytest.approx(result["axisError"])
        assert notes["tiltAngleOffsetError"] == pytest.approx(result["offsetError"])
        assert notes["tiltAngleOffset"] == pytest.approx(result["offset"])
        assert f"+- {result['axisError']:.2f} deg" in notes["alignmentNote"]
        # flagged exactly when a standard error exceeds its target
        uncertain = result["axisError"] > 0.1 or result["offsetError"] > 0.3
        assert bool(result["uncertain"]) == uncertain, result
        assert ("UNCERTAIN" in notes["alignmentNote"]) == uncertain
    methods = " ".join(prot.methods())
    assert "One-standard-error estimates of the tilt axis angle" in methods
    assert "the upper and the lower half of the points" in methods
    assert "shifts were then chosen by a reprojection check" in methods
    assert f"TS_1 tilt axis {results['TS_1']['axis']:.2f} +- " in methods


def test_summary_flags_a_tilt_series_less_certain_than_the_targets(tmp_path):
    """A very noisy series: its tilt axis cannot be had within 0.1 degree, and it says so."""
    write_simulated_tilt_series(tmp_path, "TS_noisy", seed=64,
                                **{**SIM, "shape": (256, 256), "noise": 8.0})
    project = create_project("fine_uncertain")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=NOMINAL_AXIS,
                             sampling_rate=2.0)
    prot = launch_and_wait(project, new_fine_alignment(project, imp))
    result = json.loads(prot.fineResults.get())["TS_noisy"]
    assert result["axisError"] > 0.1, result
    assert result["uncertain"].startswith(f"tilt axis uncertainty {result['axisError']:.2f} deg "
                                          "exceeds the 0.1 deg target"), result
    summary = prot.summary()
    assert any(line.startswith("Less certain than the targets (tilt axis 0.1 deg, offset 0.3 "
                               "deg, one standard error): 1 tilt series (TS_noisy)")
               for line in summary), summary
    assert any(line.startswith(f"UNCERTAIN ({result['uncertain']}): TS_noisy: tilt axis ")
               for line in summary), summary
    notes = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)["TS_noisy"] \
        .acquisition_notes
    assert "UNCERTAIN: tilt axis uncertainty" in notes["alignmentNote"]
    assert "UNCERTAIN" in read_log(prot)
def test_imod_fiducial_alignment_finishes_on_our_landmark_models(fine_run, tmp_path,
                                                                 monkeypatch):
    """The models' tilt series are exactly the described ones (TS_bad failed: not there), so
    scipion-em-imod's fiducial alignment, which waits for every one of them, finishes. IMOD
    itself is absent: a stub etomo passes its check, its first IMOD program (tiltalign) fails."""
    from imod.protocols import ProtImodFiducialAlignment
    from scipion_helpers import wait_for_protocol

    project, prot, _ = fine_run
    # Scipion resolves sets' paths from the current folder: another test's project may own it
    monkeypatch.chdir(project.getPath())
    prot = reload_protocol(project, prot)
    models = getattr(prot, cts.OUTPUT_LANDMARK_MODELS)
    described = models.getSetOfTiltSeries()
    assert sorted(described.getTSIds()) == ["TS_1", "TS_2"]
    assert all(bool(model.applyTSTransformation()) for model in models)
    described.close()
    models.close()
    assert sorted(read_tilt_series_set(project, prot, cts.OUTPUT_LANDMARK_TILT_SERIES)) == [
        "TS_1", "TS_2"]
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "etomo").write_text("#!/bin/sh\nexit 0\n")
    (stub / "etomo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    import imod  # its plugin caches the etomo check: a test that loaded it earlier saw no etomo
    monkeypatch.setattr(imod.Plugin, "_validationMsg", None)
    align = project.newProtocol(ProtImodFiducialAlignment, objLabel="imod fiducial alignment")
    align.inputSetOfLandmarkModels.set(prot)
    align.inputSetOfLandmarkModels.setExtended(cts.OUTPUT_LANDMARK_MODELS)
    assert not align.validate(), align.validate()
    project.launchProtocol(align, wait=False)
    align = wait_for_protocol(project, align, timeout=150)  # it waited forever before
    log = read_log(align, n_chars=200_000)
    for ts_id in ("TS_1", "TS_2"):
        assert f"Steps created for tsId = {ts_id}" in log
    assert "TS_bad" not in log
