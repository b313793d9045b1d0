"""Facility life: streaming input, kill then continue (real projects, real protocol processes)."""

from __future__ import annotations

import threading
import time

import numpy as np
from scipion_helpers import (
    append_tilt_series,
    close_streaming_set,
    continue_protocol,
    create_project,
    import_tilt_series,
    kill_protocol_process,
    launch_until_paused,
    new_prealignment,
    output_stream_state,
    read_log,
    read_tilt_series_set,
    reload_protocol,
    reopen_for_streaming,
    shift_errors_px,
    thread_stack,
    wait_for_protocol,
    write_simulated_tilt_series,
)

from tiltxcorr_scipion import constants as cts

AXIS = 85.0
SIM = dict(tilt_range=(-60.0, 60.0), tilt_axis_angle=AXIS, max_shift=6.0, thickness=5.0)


def _output_size(prot) -> int:
    out = getattr(prot, cts.OUTPUT_TILT_SERIES, None)
    return 0 if out is None else int(out.getSize() or 0)


def test_streaming_input_is_followed_until_closed(tmp_path):
    """A producer thread appends tilt series to an open set, one in two writes, then closes it."""
    n_views = 21
    first = tmp_path / "first"
    later = tmp_path / "later"
    sims = {"TS_1": write_simulated_tilt_series(first, "TS_1", shape=(160, 160), n_views=n_views,
                                                seed=21, **SIM)}
    for i in (2, 3, 4):
        sims[f"TS_{i}"] = write_simulated_tilt_series(later, f"TS_{i}", shape=(160, 160),
                                                      n_views=n_views, seed=20 + i, **SIM)
    project = create_project("streaming")
    imp = import_tilt_series(project, first, "*.mrc", tilt_axis_angle=AXIS)
    stream = reopen_for_streaming(project, imp)
    template = stream.getFirstItem().clone()
    stream.close()

    prot = new_prealignment(project, imp, numberOfThreads=3)
    project.launchProtocol(prot, wait=False)

    events: dict[str, float] = {}
    errors: list[BaseException] = []
    first_output = threading.Event()

    def producer():
        try:
            def add(ts_id, views=None):
                append_tilt_series(stream, ts_id, later / f"{ts_id}.mrc",
                                   sims[ts_id].tilt_angles.numpy(), tilt_axis_angle=AXIS,
                                   template=template, views=views)

            time.sleep(2.0)
            add("TS_2")
            time.sleep(2.0)
            # TS_3's views arrive in two writes, closer together than the protocol's
            # polling: it must not be aligned with half its views.
            add("TS_3", slice(0, n_views // 2))
            time.sleep(1.0)
            add("TS_3", slice(n_views // 2, None))
            time.sleep(2.0)
            add("TS_4")
            # Keep the input open until results show up (a protocol that waited for
            # the input to close would make this time out, and the test fail below).
            first_output.wait(timeout=90)
            time.sleep(1.0)
            events["closed"] = time.monotonic()
            close_streaming_set(project, stream)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while True:
        project._updateProtocol(prot)
        if _output_size(prot) >= 1 and "first_output" not in events:
            events["first_output"] = time.monotonic()
            events["open_while_first_output"] = output_stream_state(
                project, prot, cts.OUTPUT_TILT_SERIES) == "open"
            first_output.set()
        if errors or time.monotonic() > deadline:
            project.stopProtocol(prot)
            break
        if not prot.isActive():
            break
        time.sleep(0.3)
    thread.join(timeout=30)
    assert not thread.is_alive(), f"the producer is stuck at:\n{thread_stack(thread)}"
    prot = wait_for_protocol(project, prot, timeout=5)
    assert not errors, errors
    assert prot.isFinished(), f"status {prot.getStatus()}: {prot.getErrorMessage()}\n{read_log(prot)}"

    records = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert sorted(records) == sorted(sims)  # each exactly once (keys of a dict)
    prot = reload_protocol(project, prot)
    assert getattr(prot, cts.OUTPUT_TILT_SERIES).getSize() == len(sims)
    for ts_id, record in records.items():
        assert record.size == n_views, f"{ts_id} aligned with {record.size} views"
        assert record.has_alignment
        assert np.abs(shift_errors_px(record, sims[ts_id])).max() < 1.0, ts_id
    assert output_stream_state(project, prot, cts.OUTPUT_TILT_SERIES) == "closed"
    # Streaming really happened: results appeared while the input was still open.
    assert events["first_output"] < events["closed"]
    assert events["open_while_first_output"]
    log = read_log(prot, n_chars=300_000)
    assert f"Tilt series TS_3: {n_views} views, alignment step queued" in log


def test_kill_then_continue_processes_only_the_rest(tmp_path):
    sims = {f"TS_{i}": write_simulated_tilt_series(tmp_path, f"TS_{i}", shape=(192, 192),
                                                   n_views=25, seed=30 + i, **SIM)
            for i in range(1, 5)}
    project = create_project("kill")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=AXIS)
    prot = new_prealignment(project, imp, numberOfThreads=1)  # one at a time
    # Held once TS_3 is aligned (TS_1 and TS_2 registered), then killed for real.
    pid = launch_until_paused(project, prot, "aligned", "TS_3", tmp_path / "paused")
    kill_protocol_process(project, prot, pid)
    prot = reload_protocol(project, prot)
    assert prot.isAborted()
    done = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert 1 <= len(done) < len(sims)
    before = {ts_id: rec.transforms for ts_id, rec in done.items()}

    prot = continue_protocol(project, prot, timeout=180)
    records = read_tilt_series_set(project, prot, cts.OUTPUT_TILT_SERIES)
    assert sorted(records) == sorted(sims)
    prot = reload_protocol(project, prot)
    assert getattr(prot, cts.OUTPUT_TILT_SERIES).getSize() == len(sims)
    for ts_id, transforms in before.items():  # kept, not redone
        np.testing.assert_array_equal(records[ts_id].transforms, transforms)
    for ts_id, record in records.items():
        assert record.size == 25
        assert np.abs(shift_errors_px(record, sims[ts_id])).max() < 0.5, ts_id
    log = read_log(prot, n_chars=300_000)
    assert f"{len(done)} tilt series already in the outputs are skipped: {sorted(done)}" in log
    for ts_id in done:  # aligned once, in the first run
        assert log.count(f"Tilt series {ts_id}: aligned") <= 1
    assert output_stream_state(project, prot, cts.OUTPUT_TILT_SERIES) == "closed"
