"""Helpers for tests that run real Scipion projects.

Shared by every Scipion test module (protocol, streaming, queue, templates,
GUI): keep these names and signatures stable.

Typical use::

    project = create_project("align_basic")
    sims = write_simulated_tilt_series(data_dir, "TS_01", n_views=21, shape=(128, 128))
    imp = import_tilt_series(project, data_dir, "*.mrc", tilt_axis_angle=sims.tilt_axis_angle)
    prot = new_prealignment(project, imp)
    prot = launch_and_wait(project, prot)
    records = read_tilt_series_set(project, prot, "TiltSeries")

The environment (SCIPION_HOME, SCIPION_USER_DATA, hosts.conf...) is set by
``tests/conftest.py`` before pyworkflow is imported; this module imports
pyworkflow lazily inside functions only where that matters, at module level
otherwise (pytest imports conftest first).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np

# Order matters: the plugin import installs the sqlite fix in this process.
import tiltxcorr_scipion  # noqa: F401
from tiltxcorr_scipion.simulate import SimulatedTiltSeries, simulate_tilt_series

DEFAULT_TIMEOUT_S = 240.0
"""Default limit for one protocol run in a test, in seconds."""


# --------------------------------------------------------------------------- projects
def create_project(name: str | None = None):
    """Create a fresh Scipion project and ``chdir`` into it.

    Scipion stores relative paths in the project database, so the working
    directory must be the project folder while the test talks to it.

    Parameters
    ----------
    name
        Project name; a unique suffix is always appended so tests can reuse names.

    Returns
    -------
    pyworkflow.project.Project
    """
    from pyworkflow.project import Manager

    base = name or "tiltxcorr"
    project = Manager().createProject(f"{base}_{uuid.uuid4().hex[:8]}")
    os.chdir(project.getPath())
    return project


# --------------------------------------------------------------------------- data on disk
def write_stack(path: str | os.PathLike, images: np.ndarray, pixel_size: float = 1.0) -> Path:
    """Write a `(n, h, w)` float32 stack as MRC (any extension: .mrc, .st, .mrcs).

    The header's voxel size is set to ``pixel_size`` (angstroms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel_size
    return path


def write_tlt(path: str | os.PathLike, tilt_angles: np.ndarray) -> Path:
    """Write IMOD ``.tlt`` text: one tilt angle (degrees) per line, in stack order."""
    path = Path(path)
    path.write_text("".join(f"{float(a):.2f}\n" for a in np.asarray(tilt_angles)))
    return path


def write_simulated_tilt_series(folder: str | os.PathLike, ts_id: str, *,
                                ext: str = ".mrc", pixel_size: float = 1.0,
                                sim: SimulatedTiltSeries | None = None,
                                **simulate_kwargs) -> SimulatedTiltSeries:
    """Simulate a tilt series (unless ``sim`` is given) and write ``<ts_id><ext>`` + ``<ts_id>.tlt``.

    ``simulate_kwargs`` go to `tiltxcorr_scipion.simulate.simulate_tilt_series`
    (``shape``, ``n_views``, ``tilt_range``, ``tilt_axis_angle``, ``max_shift``,
    ``thickness``, ``noise``, ``order``, ``seed``). The ``.tlt`` angles are
    rounded to 0.01 degree; the returned object is the exact simulation, whose
    ``shifts`` `(n, 2)` `(dy, dx)` are the truth in stack order.
    """
    if sim is None:
        sim = simulate_tilt_series(**simulate_kwargs)
    folder = Path(folder)
    write_stack(folder / f"{ts_id}{ext}", sim.images.numpy(), pixel_size)
    write_tlt(folder / f"{ts_id}.tlt", sim.tilt_angles.numpy())
    return sim


# --------------------------------------------------------------------------- protocols
def import_tilt_series(project, folder: str | os.PathLike, pattern: str = "*.mrc", *,
                       sampling_rate: float = 1.0, tilt_axis_angle: float = 0.0,
                       voltage: float = 300.0, dose_per_tilt: float = 3.0,
                       timeout: float = DEFAULT_TIMEOUT_S, wait: bool = True,
                       **extra_params):
    """Import every stack matching ``folder/pattern`` with tomo's ``ProtImportTs``.

    Angles come from the ``.tlt`` beside each stack (``anglesFrom=2``). The tsId is
    the file's base name when ``pattern`` contains ``{TS}`` (e.g. ``"{TS}.mrc"``) or
    when a single file matches; a ``*`` pattern with several files is turned into
    ``{TS}`` + extension automatically. ``extra_params`` are more form values of
    ProtImportTs (e.g. ``ctfCorrected=True``). With ``wait`` the run must finish, and
    the protocol is returned (output ``outputTiltSeries``).
    """
    from tomo.protocols import ProtImportTs

    folder = Path(folder).resolve()
    if pattern.startswith("*") and "{TS}" not in pattern:
        pattern = "{TS}" + pattern[1:]
    prot = project.newProtocol(
        ProtImportTs,
        objLabel="import tilt series",
        filesPath=str(folder),
        filesPattern=pattern,
        anglesFrom=2,  # .tlt file
        voltage=voltage,
        magnification=50000,
        samplingRate=sampling_rate,
        tiltAxisAngle=tilt_axis_angle,
        dosePerFrame=dose_per_tilt,
        **extra_params,
    )
    if not wait:
        project.launchProtocol(prot, wait=False)
        return prot
    return launch_and_wait(project, prot, timeout=timeout)


def new_prealignment(project, input_source, *, output_name: str = "outputTiltSeries",
                     **params):
    """A new (not launched) `ProtTiltxcorrPrealignment` pointing at ``input_source``.

    ``input_source`` is the producing protocol (then ``output_name`` names its
    output attribute) or a SetOfTiltSeries already stored in the project.
    ``params`` are form values (``tiltAxisAngle=85.0``, ``numberOfThreads=2``...).
    """
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment

    params.setdefault("objLabel", "tiltxcorr prealignment")
    prot = project.newProtocol(ProtTiltxcorrPrealignment, **params)
    prot.inputSetOfTiltSeries.set(input_source)
    if hasattr(input_source, "getRunName"):  # a protocol: point at its output
        prot.inputSetOfTiltSeries.setExtended(output_name)
    return prot


def reload_protocol(project, prot):
    """Refresh ``prot`` in place from its run.db (status, outputs) and return it.

    Always keep using the object that was launched: ``project.getProtocol(id)``
    returns the project mapper's cached copy, which goes stale while the
    protocol runs.
    """
    project._updateProtocol(prot)
    project.mapper.commit()
    return prot


def wait_for_protocol(project, prot, *, timeout: float = DEFAULT_TIMEOUT_S,
                      poll: float = 0.5, until: Callable | None = None):
    """Poll until ``prot`` is no longer active (or ``until(prot)`` is true).

    On timeout the protocol is stopped (no process outlives the test) and
    `TimeoutError` is raised. Returns ``prot``, refreshed in place.
    """
    deadline = time.monotonic() + timeout
    while True:
        reload_protocol(project, prot)
        if (until is not None and until(prot)) or (until is None and not prot.isActive()):
            return _trust_run_db(project, prot)
        if time.monotonic() > deadline:
            try:
                project.stopProtocol(prot)
            finally:
                raise TimeoutError(
                    f"protocol {prot.getRunName()!r} still {prot.getStatus()} after "
                    f"{timeout:.0f} s; stopped. Log tail:\n{read_log(prot)}")
        time.sleep(poll)


def thread_stack(thread) -> str:
    """Where `thread` is now (its stack, innermost last), for a failure message."""
    frame = sys._current_frames().get(thread.ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(thread ended)"


def sqlite_lock_holders(folder: str | os.PathLike) -> str:
    """Which processes hold POSIX locks on the ``.sqlite`` files under `folder` (Linux).

    SQLite locks byte ranges of the file with fcntl; /proc/locks lists them by
    inode and process. For a failure message: who stops a writer.
    """
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError as exc:
        return f"(no /proc/locks: {exc})"
    files = {p.stat().st_ino: p for p in Path(folder).rglob("*.sqlite") if p.exists()}
    found = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiting request: "1: -> POSIX ..."
            parts.remove("->")
        try:
            kind, pid, inode = parts[3], parts[4], int(parts[5].split(":")[-1])
        except (IndexError, ValueError):
            continue
        if inode in files:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                cmd = "?"
            me = " (this test process)" if int(pid) == os.getpid() else ""
            found.append(f"{files[inode].name}: {kind} {' '.join(parts[6:8])} by pid {pid}{me}: {cmd}"
                         + ("  [waiting]" if "->" in line else ""))
    return "\n".join(found) or "(no locks)"


def wait_with_producer(project, prot, thread, errors: list, *, timeout: float = 600,
                       producer_timeout: float = 150):
    """`wait_for_protocol` for a streaming test whose `thread` feeds the input.

    Fails at once when the producer failed (`errors`), and after
    `producer_timeout` s when it is still running (a stuck write would leave
    the input open and the protocol waiting for ever), showing where it is.
    """
    started = time.monotonic()

    def stuck() -> bool:
        return thread.is_alive() and time.monotonic() - started > producer_timeout

    prot = wait_for_protocol(project, prot, timeout=timeout,
                             until=lambda p: bool(errors) or stuck() or not p.isActive())
    if errors or stuck():
        if prot.isActive():
            project.stopProtocol(prot)
        raise AssertionError(f"the producer failed: {errors!r}" if errors else
                             f"the producer is stuck after {producer_timeout:.0f} s at:\n"
                             + thread_stack(thread)
                             + f"\nsqlite locks:\n{sqlite_lock_holders(project.path)}"
                             + f"\nprotocol log:\n{read_log(prot)}")
    thread.join(timeout=30)
    return prot


def _process_alive(pid) -> bool:
    """Whether a process with this PID still runs (False for None or 0)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _trust_run_db(project, prot):
    """Correct a status the project set by itself.

    When ``project._updateProtocol`` cannot read a busy run.db three times in a row
    it marks the protocol failed in the project, although the run goes on. The
    protocol's own run.db has the truth: use its status if they disagree.
    """
    from pyworkflow.protocol import getProtocolFromDb

    if not prot.isFailed():
        return prot
    try:
        own = getProtocolFromDb(project.path, prot.getDbPath(), prot.getObjId())
        status = own.getStatus()
        own.getProject().closeMapper()
        own.closeMappers()
    except Exception:
        return prot
    if status != prot.getStatus():
        print(f"[scipion_helpers] project said {prot.getStatus()!r}, run.db says {status!r}")
        if own.isActive() and not _process_alive(prot.getPid()):
            # the run could not write its own end (a full disk): it is over
            print("[scipion_helpers] ...but its process is gone: trusting the project")
            return prot
        if own.isActive():
            return wait_for_protocol(project, prot)
        prot.setStatus(status)
        project.mapper.store(prot)
        project.mapper.commit()
    return prot


def _wait_until_stopped(project, prot, timeout: float, expect_finished: bool):
    """Wait for a launched run; unless it finished, with ``expect_finished``, raise with its log."""
    prot = wait_for_protocol(project, prot, timeout=timeout)
    if expect_finished and not prot.isFinished():
        raise AssertionError(
            f"protocol {prot.getRunName()!r} ended {prot.getStatus()}: "
            f"{prot.getErrorMessage()}\nLog tail:\n{read_log(prot)}")
    return prot


def launch_and_wait(project, prot, *, timeout: float = DEFAULT_TIMEOUT_S,
                    expect_finished: bool = True):
    """Launch ``prot`` (a new run or a "continue") and wait for it to stop.

    With ``expect_finished`` an `AssertionError` carrying the log tail is raised
    unless the run ends in status finished. Returns ``prot``, refreshed in place.
    """
    project.launchProtocol(prot, wait=False)
    return _wait_until_stopped(project, prot, timeout, expect_finished)


def continue_protocol(project, prot, *, timeout: float = DEFAULT_TIMEOUT_S,
                      expect_finished: bool = True):
    """Scipion "continue" (resume mode) of an existing run, then wait for it."""
    from pyworkflow.protocol.constants import MODE_RESUME

    reload_protocol(project, prot)
    prot.runMode.set(MODE_RESUME)
    old_pid = prot.getPid()
    project.launchProtocol(prot, wait=False)
    # Until the new process has written its PID, the project may judge the run by the old
    # (dead) one and call it failed: wait for the new PID first.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reload_protocol(project, prot)
        if prot.getPid() and prot.getPid() != old_pid:
            break
        time.sleep(0.2)
    return _wait_until_stopped(project, prot, timeout, expect_finished)


def launch_until_paused(project, prot, point: str, ts_id: str, marker: Path, *,
                        resume: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> int:
    """Launch (or, with ``resume``, continue) ``prot`` so that it pauses at a point of a tilt series.

    The protocol process stops at `tiltxcorr_scipion.faults.pause_point(point, ts_id)`
    and writes its PID to ``marker``; returns that PID (the Python process that
    runs the steps, not the shell wrapper Scipion records). The pause request
    is taken out of this process's environment again at once, so later runs
    are not paused.
    """
    from pyworkflow.protocol.constants import MODE_RESUME

    from tiltxcorr_scipion.faults import PAUSE_ENV

    if resume:
        reload_protocol(project, prot)
        prot.runMode.set(MODE_RESUME)
    marker = Path(marker)
    marker.unlink(missing_ok=True)
    os.environ[PAUSE_ENV] = f"{point}:{ts_id}:{marker}"
    try:
        project.launchProtocol(prot, wait=False)
        deadline = time.monotonic() + timeout
        while not (marker.exists() and marker.read_text().strip()):
            if time.monotonic() > deadline:
                project.stopProtocol(prot)
                raise TimeoutError(f"{prot.getRunName()!r} never paused at {point!r} of "
                                   f"{ts_id}. Log tail:\n{read_log(prot)}")
            time.sleep(0.1)
    finally:
        os.environ.pop(PAUSE_ENV, None)
    return int(marker.read_text())


def kill_protocol_process(project, prot, pid: int, timeout: float = 30.0) -> None:
    """SIGKILL the protocol's Python process, wait until it is gone, mark the run aborted."""
    import signal

    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
        f"/proc/{pid}/status").read_text().lower(), f"process {pid} survived SIGKILL"
    import psutil

    # What Scipion's GUI does, so the run is aborted, not running. It also tries to kill
    # the process it recorded, which is gone; it marks the run aborted all the same.
    reload_protocol(project, prot)
    try:
        project.stopProtocol(prot)
    except psutil.NoSuchProcess:
        pass
    reload_protocol(project, prot)


def read_log(prot, n_chars: int = 6000) -> str:
    """The tail of a protocol's stdout + stderr logs (for failure messages)."""
    parts = []
    for name in (prot.getStdoutLog(), prot.getStderrLog()):
        try:
            parts.append(Path(name).read_text(errors="replace")[-n_chars:])
        except OSError:
            pass
    return "\n".join(parts)


# --------------------------------------------------------------------------- reading outputs
@dataclass
class TiltSeriesRecord:
    """One registered tilt series, read back from the project (items in set order).

    Arrays are per tilt image, in the order the set iterates them (tomo sorts
    by tilt angle), ``n`` = number of tilt images, enabled or not.
    """

    ts_id: str
    tilt_angles: np.ndarray  # (n,) degrees
    stack_indices: np.ndarray  # (n,) 1-based position in the stack file
    file_names: list[str]
    transforms: np.ndarray  # (n, 3, 3); identity where the item had none
    has_transform: np.ndarray  # (n,) bool
    enabled: np.ndarray  # (n,) bool
    correlation: np.ndarray  # (n,) float, NaN where _tiltxcorrCorrelation is unset
    acq_orders: np.ndarray  # (n,) int
    sampling_rate: float
    tilt_axis_angle: float | None
    has_alignment: bool
    interpolated: bool
    ctf_corrected: bool
    has_odd_even: bool
    dose_per_frame: np.ndarray  # (n,)
    accum_dose: np.ndarray  # (n,)
    size: int
    extra: dict = field(default_factory=dict)
    #: the fine alignment's notes on the acquisition: tiltAxisAngleError, tiltAngleOffsetError,
    #: tiltAngleOffset, alignmentNote (values None where unset)
    acquisition_notes: dict = field(default_factory=dict)
    odd_even: list = field(default_factory=list)  # (odd, even) file names per item, or None

    def shifts_dy_dx(self) -> np.ndarray:
        """`(n, 2)` `(dy, dx)` = `(DY, DX)` of the transforms (IMOD forward convention)."""
        return self.transforms[:, [1, 0], 2].copy()

    def by_stack_index(self, values: np.ndarray) -> np.ndarray:
        """Reorder a per-item array into stack order (1-based index 1 first)."""
        return np.asarray(values)[np.argsort(self.stack_indices, kind="stable")]


def read_tilt_series_set(project, prot, output_name: str = "TiltSeries") -> dict[str, TiltSeriesRecord]:
    """Read an output SetOfTiltSeries of ``prot`` from the project, keyed by tsId.

    Returns an empty dict when the output does not exist. Reads clones, so no
    cursor stays open after the call.
    """
    reload_protocol(project, prot)
    out_set = getattr(prot, output_name, None)
    if out_set is None:
        return {}
    records = {}
    for ts in out_set.iterItems():
        items = [ti.clone() for ti in ts.iterItems()]
        records[ts.getTsId()] = _record_from(ts, items)
    out_set.close()
    return records


def output_stream_state(project, prot, output_name: str = "TiltSeries") -> str | None:
    """``"open"``, ``"closed"`` or None (no such output) for an output set of ``prot``."""
    reload_protocol(project, prot)
    out_set = getattr(prot, output_name, None)
    if out_set is None:
        return None
    out_set.loadAllProperties()
    state = "closed" if out_set.isStreamClosed() else "open"
    out_set.close()
    return state


def _record_from(ts, items) -> TiltSeriesRecord:
    n = len(items)
    transforms = np.tile(np.eye(3), (n, 1, 1))
    has_t = np.zeros(n, bool)
    corr = np.full(n, np.nan)
    for i, ti in enumerate(items):
        if ti.hasTransform():
            transforms[i] = np.asarray(ti.getTransform().getMatrix(), dtype=float)
            has_t[i] = True
        value = getattr(ti, "_tiltxcorrCorrelation", None)
        if value is not None and value.get() is not None:
            corr[i] = float(value.get())
    acq = ts.getAcquisition()
    axis = acq.getTiltAxisAngle() if acq is not None else None

    def _dose(ti, getter):
        a = ti.getAcquisition()
        v = getattr(a, getter)() if a is not None else None
        return np.nan if v is None else float(v)

    return TiltSeriesRecord(
        ts_id=ts.getTsId(),
        tilt_angles=np.array([ti.getTiltAngle() for ti in items], dtype=float),
        stack_indices=np.array([ti.getIndex() for ti in items], dtype=int),
        file_names=[ti.getFileName() for ti in items],
        transforms=transforms,
        has_transform=has_t,
        enabled=np.array([bool(ti.isEnabled()) for ti in items]),
        correlation=corr,
        acq_orders=np.array([ti.getAcquisitionOrder() or 0 for ti in items], dtype=int),
        sampling_rate=float(ts.getSamplingRate()),
        tilt_axis_angle=None if axis is None else float(axis),
        has_alignment=bool(ts.hasAlignment()),
        interpolated=bool(ts.interpolated()),
        ctf_corrected=bool(ts.ctfCorrected()),
        has_odd_even=bool(ts.hasOddEven()),
        dose_per_frame=np.array([_dose(ti, "getDosePerFrame") for ti in items]),
        accum_dose=np.array([_dose(ti, "getAccumDose") for ti in items]),
        size=int(ts.getSize()),
        odd_even=[(ti.getOdd(), ti.getEven()) if ti.hasOddEven() else None for ti in items],
        acquisition_notes={name: getattr(acq, name).get() for name in
                           ("tiltAxisAngleError", "tiltAngleOffsetError", "tiltAngleOffset",
                            "alignmentNote") if acq is not None and hasattr(acq, name)},
    )


# --------------------------------------------------------------------------- comparisons
def shift_errors_px(record: TiltSeriesRecord, sim: SimulatedTiltSeries) -> np.ndarray:
    """`(n_enabled, 2)` registered minus true `(dy, dx)`, over enabled views, in pixels.

    Both in stack order; the simulator's shifts and the registered (DY, DX) use
    the same convention (content moves by +shift to align).
    """
    order = np.argsort(record.stack_indices, kind="stable")
    idx = record.stack_indices[order] - 1
    registered = record.shifts_dy_dx()[order]
    truth = sim.shifts.numpy().astype(float)[idx]
    keep = record.enabled[order]
    return registered[keep] - truth[keep]


# --------------------------------------------------------------------------- editing inputs
def edit_tilt_series_set(project, prot, edit: Callable[[str, list], None], *,
                         output_name: str = "outputTiltSeries") -> None:
    """Edit the tilt images of an output set of ``prot`` in place (e.g. disable views).

    ``edit(ts_id, items)`` receives clones of the tilt images (set order) and
    modifies them (``ti.setEnabled(False)``); each is then written back, in the
    set's sqlite and in the project database. Only for changes that keep the
    stored columns: to add transforms use `derive_tilt_series_set`.
    """
    reload_protocol(project, prot)
    the_set = getattr(prot, output_name)
    the_set.loadAllProperties()
    tilt_series = [ts.clone() for ts in the_set.iterItems()]
    for ts_clone in tilt_series:
        ts = the_set.getTiltSeriesFromTsId(ts_clone.getTsId())
        items = [ti.clone() for ti in ts.iterItems()]
        edit(ts.getTsId(), items)
        for ti in items:
            ts.update(ti)
        ts._hasAlignment.set(any(ti.hasTransform() for ti in items))
        ts.write()
        the_set.update(ts)
    the_set.write()
    project.mapper.store(the_set)
    project.mapper.commit()
    the_set.close()


def derive_tilt_series_set(project, prot, edit: Callable[[str, list], None], *,
                           input_name: str = "outputTiltSeries",
                           output_name: str = "editedTiltSeries") -> str:
    """Copy an output set of ``prot`` with edited tilt images into a new output of ``prot``.

    ``edit(ts_id, items)`` modifies clones of the tilt images (set order), e.g.
    with `set_previous_shifts` or `disable_views`. The new set is written beside
    the original and registered as output ``output_name`` of ``prot`` in the
    project, so a protocol can point at it
    (``new_prealignment(project, prot, output_name=output_name)``). Returns the name.
    """
    from pyworkflow.object import Set
    from tomo.objects import SetOfTiltSeries, TiltSeries

    reload_protocol(project, prot)
    source = getattr(prot, input_name)
    source.loadAllProperties()
    path = os.path.join(prot.getPath(), f"{output_name}.sqlite")
    new_set = SetOfTiltSeries(filename=path)
    new_set.copyInfo(source)
    for ts in [t.clone() for t in source.iterItems()]:
        items = [ti.clone() for ti in source.getTiltSeriesFromTsId(ts.getTsId()).iterItems()]
        edit(ts.getTsId(), items)
        out_ts = TiltSeries()
        out_ts.copyInfo(ts)
        new_set.append(out_ts)
        for ti in items:
            out_ts.append(ti)
        out_ts.write()
        new_set.update(out_ts)
    new_set.setStreamState(Set.STREAM_CLOSED)
    new_set.write()
    source.close()
    prot._defineOutputs(**{output_name: new_set})
    project.mapper.store(prot)
    project.mapper.commit()
    new_set.close()
    return output_name


def set_previous_shifts(previous_by_ts: dict[str, np.ndarray]) -> Callable[[str, list], None]:
    """An `edit_tilt_series_set` callback giving each item a pure-shift transform.

    ``previous_by_ts[ts_id]`` is `(n, 2)` `(dy, dx)` in stack order (index 1 first).
    """
    from pwem.objects import Transform

    def edit(ts_id: str, items: list) -> None:
        shifts = previous_by_ts.get(ts_id)
        if shifts is None:
            return
        for ti in items:
            dy, dx = shifts[ti.getIndex() - 1]
            ti.setTransform(Transform(matrix=np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])))

    return edit


def disable_views(disabled_by_ts: dict[str, list[int]]) -> Callable[[str, list], None]:
    """An `edit_tilt_series_set` callback disabling the given 1-based stack positions."""

    def edit(ts_id: str, items: list) -> None:
        for ti in items:
            if ti.getIndex() in disabled_by_ts.get(ts_id, ()):
                ti.setEnabled(False)

    return edit


# --------------------------------------------------------------------------- streaming inputs
def reopen_for_streaming(project, prot, output_name: str = "outputTiltSeries"):
    """Mark an output set of ``prot`` open (streaming) and return it for appending.

    The state is written to the set's sqlite and to the project database (the
    protocol process starts from a copy of the latter). Use the returned object,
    with the working directory left at the project, for `append_tilt_series`
    and `close_streaming_set`: one path spelling, one sqlite connection.
    """
    from pyworkflow.object import Set

    reload_protocol(project, prot)
    the_set = getattr(prot, output_name)
    the_set.loadAllProperties()
    the_set.setStreamState(Set.STREAM_OPEN)
    the_set.write()
    project.mapper.store(the_set)
    project.mapper.commit()
    return the_set


def append_tilt_series(the_set, ts_id: str, stack_path: str | os.PathLike, tilt_angles: np.ndarray,
                       *, sampling_rate: float = 1.0, tilt_axis_angle: float = 0.0,
                       dose_per_tilt: float = 3.0, views: slice | None = None,
                       template=None):
    """Append a tilt series (or more views of one) to an open set, as a producer would.

    The first call for ``ts_id`` creates it; later calls with another ``views``
    slice (stack positions, 0-based slice) add views to it, so a test can make a
    tilt series whose views arrive in several writes. ``template`` (a tilt series
    of the set) supplies acquisition values. Returns the tilt series.
    """
    from tomo.objects import TiltImage, TiltSeries, TomoAcquisition

    angles = np.asarray(tilt_angles, dtype=float)
    sel = range(len(angles))[views or slice(None)]
    the_set.enableAppend()
    existing = the_set.getTiltSeriesFromTsId(ts_id) if ts_id in set(the_set.getTSIds() or []) else None
    if existing is None:
        ts = TiltSeries(tsId=ts_id)
        if template is not None:
            ts.copyInfo(template)
            ts.setTsId(ts_id)
        ts.setSamplingRate(sampling_rate)
        acq = ts.getAcquisition() if template is not None else TomoAcquisition()
        acq.setTiltAxisAngle(tilt_axis_angle)
        acq.setVoltage(300)
        acq.setMagnification(50000)
        acq.setAngleMin(float(angles.min()))
        acq.setAngleMax(float(angles.max()))
        ts.setAcquisition(acq)
        the_set.append(ts)
    else:
        ts = existing
        ts.enableAppend()
    for i in sel:
        ti = TiltImage(location=(i + 1, str(Path(stack_path).resolve())), tiltAngle=float(angles[i]),
                       acquisitionOrder=i + 1)
        ti.setSamplingRate(sampling_rate)
        ti_acq = ts.getAcquisition().clone()
        ti_acq.setDosePerFrame(dose_per_tilt)
        ti_acq.setAccumDose(dose_per_tilt * (i + 1))
        ti.setAcquisition(ti_acq)
        ts.append(ti)
    ts.write()
    the_set.update(ts)
    the_set.write()
    return ts


def close_streaming_set(project, the_set) -> None:
    """Close a streaming set (its sqlite; the protocol reads the state from there)."""
    from pyworkflow.object import Set

    the_set.setStreamState(Set.STREAM_CLOSED)
    the_set.write()
    the_set.close()


def feed_stream(project, the_set, arrivals: list[dict], *, first_delay: float = 2.0,
                gap: float = 1.0, close_delay: float = 4.0):
    """Start a producer thread that appends tilt series to an open set, then closes it.

    After `first_delay` s, each entry of `arrivals` (keyword arguments of
    `append_tilt_series`: ``ts_id``, ``stack_path``, ``tilt_angles``...) is appended, `gap` s
    apart; `close_delay` s after the last, the set is closed. Returns ``(thread, errors)``
    for `wait_with_producer`: what the producer raised lands in ``errors``.
    """
    import threading

    errors: list[BaseException] = []

    def producer():
        try:
            time.sleep(first_delay)
            for k, arrival in enumerate(arrivals):
                if k:
                    time.sleep(gap)
                append_tilt_series(the_set, **arrival)
            time.sleep(close_delay)
            close_streaming_set(project, the_set)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    return thread, errors


def corrupt_file(path: str | os.PathLike, how: str = "truncate") -> None:
    """Damage a stack after import: ``"truncate"`` (cut to half) or ``"garbage"`` (not MRC)."""
    path = Path(path).resolve()
    if how == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 64)
    else:
        raise ValueError(f"unknown corruption {how!r}: use 'truncate' or 'garbage'")
