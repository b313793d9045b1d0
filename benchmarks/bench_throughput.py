"""Throughput of the protocol in a real Scipion project: tilt series per minute.

Simulates N tilt series (default 8 of 41 x 512 x 512), imports them once with
tomo's ``ProtImportTs``, then runs ``ProtTiltxcorrPrealignment`` on that input
once per thread setting (default 1 and 2) in the same project, and prints a
table. "Threads" here are the alignment threads: how many tilt series are
aligned at a time. The form's "Scipion threads" value is that plus one (one
executor thread hands out the steps) except for 1, which runs the steps
serially; the protocol divides the cores among the parallel steps for torch.

Two rates are given: end to end (launch to finished, as a facility sees it,
including the ~2-10 s of protocol process start-up and stream polling) and
over the alignment steps only (first step start to last step end).

Usage::

    .venv/bin/python benchmarks/bench_throughput.py [--n-ts 8] [--views 41]
        [--size 512] [--threads 1 2] [--keep]

Everything Scipion writes goes to a temporary folder (removed unless --keep).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def _isolate_scipion(root: Path) -> None:
    """Point Scipion at `root` (must run before pyworkflow is imported)."""
    env = {
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": str(root / "scipion-home"),
        "SCIPION_USER_DATA": str(root / "user-data"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_NOTIFY": "False",
        "SCIPION_TEST_NOSYNC": "1",
        "MPLCONFIGDIR": str(root / "matplotlib"),
        "MPLBACKEND": "Agg",
    }
    os.environ.update(env)
    for name in ("SCIPION_HOME", "SCIPION_USER_DATA", "MPLCONFIGDIR"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    import pyworkflow as pw
    from pyworkflow.protocol import HostConfig

    hosts = Path(pw.Config.SCIPION_HOSTS)
    hosts.parent.mkdir(parents=True, exist_ok=True)
    HostConfig.writeBasic(str(hosts))


@dataclass
class Row:
    """One measured configuration."""

    threads: int
    form_threads: int
    torch_threads: int
    wall_s: float
    steps_s: float
    n_ts: int

    @property
    def per_minute(self) -> float:
        return 60.0 * self.n_ts / self.wall_s

    @property
    def per_minute_steps(self) -> float:
        return 60.0 * self.n_ts / self.steps_s


def _write_data(folder: Path, n_ts: int, n_views: int, size: int) -> None:
    from scipion_helpers import write_simulated_tilt_series

    from tiltxcorr_scipion.simulate import simulate_tilt_series

    for k in range(n_ts):
        sim = simulate_tilt_series(shape=(size, size), n_views=n_views, tilt_axis_angle=85.0,
                                   max_shift=20.0, thickness=20.0, noise=0.5, seed=1000 + k)
        write_simulated_tilt_series(folder, f"TS_{k + 1:02d}", sim=sim)


def _steps_span_s(prot) -> float:
    """Seconds from the first alignment step's start to the last one's end."""
    steps = [s for s in prot.loadSteps() if s.funcName.get() == "alignTiltSeriesStep"]
    starts = [s.initTime.datetime() for s in steps if s.initTime.hasValue()]
    ends = [s.endTime.datetime() for s in steps if s.endTime.hasValue()]
    return (max(ends) - min(starts)).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-ts", type=int, default=8, help="tilt series (default 8)")
    parser.add_argument("--views", type=int, default=41, help="views per tilt series (41)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="alignment threads to measure (default: 1 2)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="limit per protocol run, seconds (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="tiltxcorr-bench-")).resolve()
    _isolate_scipion(root)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from scipion_helpers import (
        create_project,
        import_tilt_series,
        launch_and_wait,
        new_prealignment,
    )
    from tiltxcorr_scipion.convert.engine_args import torch_threads_per_step

    load_start = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        data = root / "data"
        _write_data(data, args.n_ts, args.views, args.size)
        print(f"simulated {args.n_ts} tilt series of {args.views} x {args.size} x {args.size} "
              f"in {time.perf_counter() - t0:.1f} s")
        project = create_project("throughput")
        imported = import_tilt_series(project, data, "{TS}.mrc", tilt_axis_angle=85.0,
                                      timeout=args.timeout)
        rows = []
        for threads in args.threads:
            form_threads = 1 if threads == 1 else threads + 1
            prot = new_prealignment(project, imported, numberOfThreads=form_threads,
                                    objLabel=f"tiltxcorr {threads} thread(s)")
            start = time.perf_counter()
            prot = launch_and_wait(project, prot, timeout=args.timeout)
            wall = time.perf_counter() - start
            n_out = prot.TiltSeries.getSize()
            if n_out != args.n_ts:
                raise RuntimeError(f"{n_out} of {args.n_ts} tilt series aligned with "
                                   f"{threads} thread(s)")
            rows.append(Row(threads, form_threads, torch_threads_per_step(threads), wall,
                            _steps_span_s(prot), args.n_ts))
            print(f"  {threads} thread(s): {wall:.1f} s end to end")
    finally:
        os.chdir(root.parent)
        if args.keep:
            print(f"project kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{args.n_ts} tilt series of {args.views} x {args.size} x {args.size}, "
          f"{cpus} CPU cores, CPU engine; load average at the start {load_start:.1f}, "
          f"at the end {os.getloadavg()[0]:.1f} (other work on the machine slows every row)")
    header = ("| align threads | Scipion threads | torch threads/step | wall (s) | TS/min "
              "| TS/min (steps only) |")
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for r in rows:
        print(f"| {r.threads} | {r.form_threads} | {r.torch_threads} | {r.wall_s:.1f} "
              f"| {r.per_minute:.1f} | {r.per_minute_steps:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
