"""The plugin's fixes to pyworkflow's sqlite layer (`tiltxcorr_scipion._sqlite_fix`), on real set files.

Each case is a deadlock: without the fix the writer waits out pyworkflow's
1000 s sqlite timeout, so each runs the writer in a thread and fails when it
has not finished in `WRITE_LIMIT_S`.
"""

from __future__ import annotations

import gc
import threading

import tiltxcorr_scipion  # noqa: F401  (installs the fix in this process)

WRITE_LIMIT_S = 20.0


def _add_tilt_series(the_set, ts_id: str, n_views: int = 3) -> None:
    """Append a tilt series and its views the way a producer does (set row first, then images)."""
    from tomo.objects import TiltImage, TiltSeries

    ts = TiltSeries(tsId=ts_id)
    ts.setSamplingRate(1.0)
    the_set.append(ts)
    for i in range(n_views):
        ti = TiltImage(location=(i + 1, f"{ts_id}.mrc"), tiltAngle=float(i), acquisitionOrder=i + 1)
        ti.setSamplingRate(1.0)
        ts.append(ti)
    ts.write()
    the_set.update(ts)
    the_set.write()


def _finishes(write) -> bool:
    errors: list[BaseException] = []

    def run():
        try:
            write()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WRITE_LIMIT_S)
    assert not errors, errors
    return not thread.is_alive()


def _set_file(tmp_path, monkeypatch, ts_ids: list[str]) -> str:
    """A SetOfTiltSeries sqlite named by a relative path, as in a project."""
    from tomo.objects import SetOfTiltSeries

    monkeypatch.chdir(tmp_path)
    name = "TiltSeries.sqlite"
    the_set = SetOfTiltSeries(filename=name)
    the_set.setSamplingRate(1.0)
    for ts_id in ts_ids:
        _add_tilt_series(the_set, ts_id)
    the_set.close()
    return name


def test_a_collected_set_leaves_a_producers_connection_cached(tmp_path, monkeypatch):
    from tomo.objects import SetOfTiltSeries

    name = _set_file(tmp_path, monkeypatch, ["TS_1"])
    reader = SetOfTiltSeries(filename=name)  # a stale object on the same file, e.g. a poller's
    assert [ts.getTsId() for ts in reader.iterItems()] == ["TS_1"]
    producer = SetOfTiltSeries(filename=name)
    producer.enableAppend()
    del reader
    gc.collect()  # Set.__del__ closes the reader's connection
    assert _finishes(lambda: _add_tilt_series(producer, "TS_2")), \
        "the producer's new tilt series waits on the producer's own uncommitted insert"
    producer.close()
    assert sorted(ts.getTsId() for ts in SetOfTiltSeries(filename=name).iterItems()) == ["TS_1", "TS_2"]


def test_closing_a_set_in_the_middle_of_a_read_releases_its_lock(tmp_path, monkeypatch):
    from tomo.objects import SetOfTiltSeries

    name = _set_file(tmp_path, monkeypatch, ["TS_1", "TS_2", "TS_3"])
    reader = SetOfTiltSeries(filename=name)
    items = reader.iterItems()
    assert next(items).getTsId() == "TS_1"  # the SELECT is left unfinished
    reader.close()
    producer = SetOfTiltSeries(filename=name)
    producer.enableAppend()
    assert _finishes(lambda: _add_tilt_series(producer, "TS_4")), \
        "the closed reader still holds its read lock"
    producer.close()
    del items
