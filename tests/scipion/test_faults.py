"""Nothing lost, nothing half-written: kills at every point, full disks, bad stacks, in real projects.

Kills are real: the protocol's Python process (not the shell wrapper Scipion
records) gets SIGKILL while it is held at a named point
(`tiltxcorr_scipion.faults`), then Scipion's Continue runs. Full disks are a
small tmpfs mounted on the run's ``extra/`` folder (root only, as on CI).
"""

from __future__ import annotations

import json
import os
import subprocess

import mrcfile
import numpy as np
import pytest
from scipion_helpers import (
    continue_protocol,
    create_project,
    import_tilt_series,
    kill_protocol_process,
    launch_and_wait,
    launch_until_paused,
    new_prealignment,
    output_stream_state,
    read_log,
    read_tilt_series_set,
    reload_protocol,
    shift_errors_px,
    write_simulated_tilt_series,
)

from tiltxcorr_scipion import constants as cts
from tiltxcorr_scipion.convert.files import TEMPORARY_MARK
from tiltxcorr_scipion.convert.imod import read_tlt, read_xf

AXIS = 85.0
SIM = dict(shape=(128, 128), n_views=17, tilt_range=(-48.0, 48.0), tilt_axis_angle=AXIS,
           max_shift=5.0, thickness=5.0, noise=0.3)


def _extra_files(prot) -> list[str]:
    return sorted(os.listdir(prot._getExtraPath()))


def test_a_kill_at_any_point_then_continue_gives_complete_outputs(tmp_path):
    """Kill after aligning, while writing the aligned stack, after writing the files, and
    between the two registrations; one Continue after each. Every tilt series ends up
    registered once in both outputs, with all its files and no partial one."""
    ts_ids = ["TS_1", "TS_2", "TS_3", "TS_4"]
    sims = {ts: write_simulated_tilt_series(tmp_path, ts, seed=10 + i, **SIM)
            for i, ts in enumerate(ts_ids)}
    project = create_project("kills")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    # one tilt series at a time, in import order: each kill lands where it is meant to
    prot = new_prealignment(project, imp, numberOfThreads=1, writeAlignedStacks=True,
                            alignedBinning=2)
    marker = tmp_path / "paused"
    points = [("aligned", "TS_1"), ("writing aligned stack", "TS_2"),
              ("files written", "TS_3"), ("interpolated registered", "TS_4")]
    for k, (point, ts_id) in enumerate(points):
        pid = launch_until_paused(project, prot, point, ts_id, marker, resume=k > 0)
        kill_protocol_process(project, prot, pid)
        assert prot.isAborted(), prot.getStatus()
        files = _extra_files(prot)
        if point == "writing aligned stack":  # only temporaries of TS_2, nothing final
            assert any(name.startswith("TS_2") and TEMPORARY_MARK in name for name in files)
            assert not any(name.startswith("TS_2") and TEMPORARY_MARK not in name
                           for name in files), files
        if point == "files written":  # complete files, but not registered: not done
            assert "TS_3.ali" in files
            assert "TS_3" not in read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
        if point == "interpolated registered":
            assert "TS_4" in read_tilt_series_set(project, prot,
                                                  cts.OUTPUT_INTERPOLATED_TILT_SERIES)
            assert "TS_4" not in read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)

    prot = continue_protocol(project, prot)
    aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    interpolated = read_tilt_series_set(project, prot, cts.OUTPUT_INTERPOLATED_TILT_SERIES)
    assert sorted(aligned) == sorted(interpolated) == ts_ids
    prot = reload_protocol(project, prot)
    assert getattr(prot, cts.OUTPUT_TILT_SERIES).getSize() == len(ts_ids)  # no duplicates
    assert getattr(prot, cts.OUTPUT_INTERPOLATED_TILT_SERIES).getSize() == len(ts_ids)
    files = _extra_files(prot)
    assert not any(TEMPORARY_MARK in name for name in files), files
    for ts_id in ts_ids:
        record = aligned[ts_id]
        assert np.abs(shift_errors_px(record, sims[ts_id])).max() < 0.5, ts_id
        for suffix in (".prexf", ".prexg", ".tlt", ".ali", "_alignment.png"):
            assert f"{ts_id}{suffix}" in files, (ts_id, suffix)
        extra = prot._getExtraPath()
        assert read_xf(os.path.join(extra, f"{ts_id}.prexg")).shape == (17, 3, 3)
        assert read_tlt(os.path.join(extra, f"{ts_id}.tlt")).shape == (17,)
        with mrcfile.open(os.path.join(extra, f"{ts_id}.ali"), permissive=True) as mrc:
            assert mrc.data.shape == (17, 64, 64) and np.isfinite(mrc.data).all()
    log = read_log(prot, n_chars=400_000)
    assert "partial file(s) left by an interrupted run" in log
    assert output_stream_state(project, prot, cts.OUTPUT_TILT_SERIES) == "closed"
    assert output_stream_state(project, prot, cts.OUTPUT_INTERPOLATED_TILT_SERIES) == "closed"


def test_a_full_disk_fails_one_tilt_series_and_the_others_go_on(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    small = write_simulated_tilt_series(tmp_path, "TS_small", seed=21, **SIM)
    big = write_simulated_tilt_series(tmp_path, "TS_big", seed=22,
                                      **{**SIM, "shape": (256, 256), "n_views": 21})
    project = create_project("fulldisk")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    # aligned stacks: TS_small's 17 x 128 x 128 (1.1 MB) fits, TS_big's 21 x 256 x 256 does not
    # (no preview tomogram: its 2 MB would not fit beside TS_small's stack either)
    prot = new_prealignment(project, imp, numberOfThreads=1, writeAlignedStacks=True,
                            previewTomogram=False)
    project.saveProtocol(prot)
    extra = prot._getExtraPath()
    os.makedirs(extra, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", extra], check=True)
    try:
        prot = launch_and_wait(project, prot)  # one tilt series failing does not fail the run
        files = _extra_files(prot)
    finally:
        subprocess.run(["umount", "-l", extra], check=False)
    aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    failed = read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(aligned) == ["TS_small"] and sorted(failed) == ["TS_big"]
    assert np.abs(shift_errors_px(aligned["TS_small"], small)).max() < 0.5
    assert big.images.shape == (21, 256, 256)
    reason = json.loads(reload_protocol(project, prot).failureReasons.get())["TS_big"]
    assert "TS_big.ali" in reason and "disk is full" in reason
    assert TEMPORARY_MARK not in reason
    # TS_small's files all there; none of TS_big's, not even its IMOD files; no partial file
    assert [name for name in files if name.startswith("TS_small")] == [
        "TS_small.ali", "TS_small.prexf", "TS_small.prexg", "TS_small.tlt",
        "TS_small_alignment.png"]
    assert not any(name.startswith("TS_big") for name in files), files


def test_complex_stacks_fail_with_a_clear_reason(tmp_path):
    write_simulated_tilt_series(tmp_path, "TS_ok", seed=31, **SIM)
    fft = write_simulated_tilt_series(tmp_path, "TS_fft", seed=32, **SIM)
    project = create_project("complex")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    with mrcfile.new(str(tmp_path / "TS_fft.mrc"), overwrite=True) as mrc:  # after import
        mrc.set_data(fft.images.numpy().astype(np.complex64))
    prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=1))
    assert sorted(read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)) == ["TS_ok"]
    reason = json.loads(reload_protocol(project, prot).failureReasons.get())["TS_fft"]
    assert "complex" in reason and "mode 4" in reason


def test_form_refuses_what_cannot_work_before_any_step(tmp_path):
    write_simulated_tilt_series(tmp_path, "TS_v", seed=41, **SIM)  # 128 x 128 views
    project = create_project("validate_form")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    cases = [
        (dict(highPassRadius=0.3), ["High-pass radius", "low-pass cutoff"]),
        (dict(taperFraction=0.5), ["Edge taper", "[0, 0.5)"]),
        (dict(binning=8), ["TS_v", "smaller binning"]),
        (dict(writeAlignedStacks=True, alignedBinning=500), ["TS_v", "larger than"]),
    ]
    for params, fragments in cases:
        errors = " ".join(new_prealignment(project, imp, **params).validate())
        for fragment in fragments:
            assert fragment in errors, (params, errors)
    assert new_prealignment(project, imp, binning=2, writeAlignedStacks=True,
                            alignedBinning=4).validate() == []


#: TILTXCORR_DISK_REPEATS=N runs every size N times (races between the threads differ per run).
DISK_REPEATS = int(os.environ.get("TILTXCORR_DISK_REPEATS", "1"))


@pytest.mark.parametrize("repeat", range(DISK_REPEATS))
@pytest.mark.parametrize("disk, files", [("6m", None), ("10m", None), ("200k", "100m"),
                                         ("300k", "100m"), ("500k", "100m")])
def test_a_full_disk_under_the_whole_run_loses_nothing(tmp_path, disk, files, repeat):
    """The run's whole folder (its database, output sets and files) on a small tmpfs, four
    tilt series with aligned stacks, three threads: each tilt series ends in exactly one of
    TiltSeries (with its aligned stack) or FailedTiltSeries (the file and "full" named), or
    the run fails saying the database cannot be written; after the disk is enlarged,
    Continue completes every tilt series exactly once. Three disk sizes put the failure at
    different points: the files; with `files`, extra/ on a disk of its own that fits them
    all, so that the database fills (registration, the failed set, the run's own state)."""
    import re

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    ts_ids = ["TS_1", "TS_2", "TS_3", "TS_4"]
    for i, ts_id in enumerate(ts_ids):  # 21 x 192 x 192 float32: 3.1 MB per aligned stack
        write_simulated_tilt_series(tmp_path, ts_id, seed=30 + i,
                                    **{**SIM, "shape": (192, 192), "n_views": 21})
    project = create_project("fullrun")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    # no preview tomogram: the disk sizes put the failure at the stacks and the database
    # (a preview that does not fit fails its tilt series naming the .mrc, as a stack does)
    prot = new_prealignment(project, imp, numberOfThreads=3, writeAlignedStacks=True,
                            previewTomogram=False)
    project.saveProtocol(prot)
    run_folder = os.path.abspath(prot._getPath())  # absolute: the test changes folder later
    os.makedirs(run_folder, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk}", "tmpfs", run_folder],
                   check=True)
    extra = os.path.abspath(prot._getExtraPath())
    if files:
        os.makedirs(extra, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={files}", "tmpfs", extra],
                       check=True)
    try:
        prot = launch_and_wait(project, prot, expect_finished=False)

        def outcome():
            aligned = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
            interpolated = read_tilt_series_set(project, prot,
                                                cts.OUTPUT_INTERPOLATED_TILT_SERIES)
            failed = read_tilt_series_set(project, prot, cts.OUTPUT_FAILED_TILT_SERIES)
            assert not set(aligned) & set(failed), (aligned.keys(), failed.keys())
            assert sorted(interpolated) == sorted(aligned)  # all of its outputs, or none
            reload_protocol(project, prot)
            for name in (cts.OUTPUT_TILT_SERIES, cts.OUTPUT_FAILED_TILT_SERIES):
                out_set = getattr(prot, name, None)
                if out_set is not None:  # readable, no duplicates
                    assert out_set.getSize() == len({ts.getTsId() for ts in out_set}), name
                    out_set.close()
            reasons = json.loads(prot.failureReasons.get() or "{}")
            for ts_id in failed:
                assert "full" in reasons[ts_id], reasons[ts_id]
                assert re.search(r"\S+\.(ali|prexf|prexg|tlt|png|mrc|sqlite|db)\b", reasons[ts_id])
            return aligned, failed

        aligned, failed = outcome()
        print(f"\nfull disk {disk}/{files}: {prot.getStatus()}, aligned {sorted(aligned)}, "
              f"failed {sorted(failed)}; {prot.getErrorMessage() or ''}")
        if prot.isFailed():  # the database itself could not be written: said so, by us
            # or, when not even the run's status fits on the disk, by Scipion
            message = prot.getErrorMessage() or ""
            assert ("cannot be written" in message or "full" in message
                    or "without reporting the status" in message), message
        else:
            assert sorted([*aligned, *failed]) == ts_ids
        subprocess.run(["mount", "-o", "remount,size=200m", run_folder], check=True)
        prot = continue_protocol(project, prot)
        aligned, failed = outcome()
        assert sorted([*aligned, *failed]) == ts_ids, (sorted(aligned), sorted(failed))
        assert prot.isFinished(), prot.getStatus()
        for ts_id in aligned:
            assert os.path.getsize(os.path.join(prot._getExtraPath(), f"{ts_id}.ali")) > 3e6
    finally:
        os.chdir(tmp_path)
        if files:
            subprocess.run(["umount", "-l", extra], check=False)
        subprocess.run(["umount", "-l", run_folder], check=False)


def test_an_output_set_is_defined_only_once_its_file_holds_the_tilt_series(tmp_path,
                                                                           monkeypatch):
    """The disk fills while a new output set's file gets its first tilt series, and stays
    full (the undo cannot write either): the run's database must not name that file as an
    output, since its tables were never created and no reader could open it (CI's failure:
    "no such table: Objects" reading InterpolatedTiltSeries)."""
    import sqlite3

    from tomo.objects import SetOfTiltSeries

    from tiltxcorr_scipion.pipeline import TiltSeriesFailure

    write_simulated_tilt_series(tmp_path, "TS_1", seed=31, **SIM)
    project = create_project("setfile")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    prot = new_prealignment(project, imp)
    project.saveProtocol(prot)
    os.makedirs(prot._getExtraPath())
    inTs, items = prot._readInputTiltSeries("TS_1")

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(SetOfTiltSeries, "write", disk_full)
    monkeypatch.setattr(prot.mapper, "commit", disk_full)
    name = cts.OUTPUT_INTERPOLATED_TILT_SERIES
    with pytest.raises(TiltSeriesFailure, match=r"disk full writing \S+interpolated\.sqlite"):
        prot._registerAtomically("TS_1", [(name, lambda: prot._appendTiltSeries(
            name, "interpolated", inTs, items))])
    monkeypatch.undo()
    assert getattr(prot, name, None) is None
    assert not [f for f in os.listdir(prot._getPath()) if f.endswith("interpolated.sqlite")]
    assert getattr(reload_protocol(project, prot), name, None) is None
