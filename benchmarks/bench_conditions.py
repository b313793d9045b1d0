"""Hard data with default settings: this engine and torch-tiltxcorr 0.6.0, side by side.

Run from the repository root (the benchmark extra installs torch-tiltxcorr):

    python benchmarks/bench_conditions.py [--seeds 1 2 3] [--conditions noise] [--no-speed]

Every condition simulates 41-view 512 px tilt series (`tiltxcorr_scipion.simulate`, one
per seed) and aligns each with both programs in this process, one after the other, with
default settings (torch-tiltxcorr's low-pass at 0.25 cycles/pixel, as ours). It prints a
markdown table (the figures of docs/benchmarks-hard-data.md).

Error measure: a tilt series cannot determine a 3-D translation of the specimen (a
constant along the tilt axis; across it `X cos t + Z sin t`, `Z` the height of the axis in
the specimen), nor one offset of the whole series. These are removed from the shift errors
by least squares (one constant vector, then `a cos t + b sin t` across the axis) before the
RMS over views is taken. For conditions with a blocked view, the RMS is over the other views.

The speed line aligns a 61 x 1024 x 1024 series with this engine, with the engine before
the hard-data work (commit 7b17781, checked out into a temporary git worktree and run in a
child process) and with torch-tiltxcorr, each in its own child process, interleaved and
repeated; it reports the fastest run of each (the machine may be shared).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.simulate import simulate_tilt_series

BASE = dict(shape=(512, 512), n_views=41)
#: name: (simulation keywords, tilt of the blocked view or None, what it is)
CONDITIONS = {
    "clean, thin": (dict(thickness=10.0, noise=1.0), None,
                    "10 px thick slab, Gaussian noise 1x the signal's std"),
    "fixed pattern 1x": (dict(fixed_pattern=1.0, noise=1.0), None,
                         "camera pattern (pixel gains + column offsets) as strong as the signal"),
    "fixed pattern 2x": (dict(fixed_pattern=2.0, noise=1.0), None,
                         "the same pattern, twice the signal"),
    "noise 10x": (dict(noise=10.0), None, "Gaussian noise 10x the signal's std"),
    "noise 15x": (dict(noise=15.0), None, "Gaussian noise 15x the signal's std"),
    "one blocked view at +54": (dict(noise=1.0), 54.0,
                                "the +54 deg view opaque (blank + noise), noise 1x"),
    "blocked + gold + grid bar + 40 px thick, dose-symmetric": (
        dict(order="dose-symmetric", gold_beads=10, grid_bar=(300.0, 250.0), thickness=40.0,
             noise=1.0), 54.0,
        "the combined target case: +54 deg view blocked, 10 gold beads per field, a grid "
        "bar's shadow entering at about +35 deg, 40 px thick, acquisition order"),
    "gold beads": (dict(gold_beads=10, noise=1.0), None, "10 gold beads per field, noise 1x"),
    "thick ice, counting noise": (dict(thickness=120.0, ice_thickness=600.0, dose=3.0), None,
                                  "120 px thick specimen in 600 px of ice, 3 e/A^2 per view "
                                  "at 4 A/px (Poisson)"),
    "grid-bar shadow": (dict(grid_bar=(300.0, 250.0), noise=1.0), None,
                        "a grid bar's shadow moving with the specimen and advancing with tilt"),
    "CTF + counting noise": (dict(ctf_defocus=3.0, dose=3.0), None,
                             "3 um underfocus at 300 kV, 3 e/A^2 per view at 4 A/px"),
}
OLD_COMMIT = "7b17781"


def fair_rms(shifts: torch.Tensor, sim, exclude=()) -> float:
    """RMS error (px) after removing what no tilt series determines (`alignment_error`)."""
    return sim.alignment_error(shifts, exclude=exclude)


def simulate(name: str, seed: int):
    """The series of a condition and seed, and the stack indices of its blocked views."""
    kwargs, blocked_tilt, _ = CONDITIONS[name]
    kwargs = {**BASE, **kwargs}
    blocked = ()
    if blocked_tilt is not None:
        from tiltxcorr_scipion.simulate import tilt_scheme

        angles = tilt_scheme((-60.0, 60.0), kwargs["n_views"], kwargs.get("order", "sorted"),
                             torch.Generator().manual_seed(seed))
        blocked = (int(torch.argmin((angles - blocked_tilt).abs())),)
    return simulate_tilt_series(seed=seed, blocked_views=blocked, **kwargs), blocked


def torch_tiltxcorr(images, angles, axis):
    from torch_tiltxcorr import tiltxcorr as theirs

    return theirs(images, angles, axis, pixel_spacing_angstroms=1.0, lowpass_angstroms=4.0)


def compare(name: str, seeds: list[int]) -> dict:
    rows = []
    for seed in seeds:
        sim, blocked = simulate(name, seed)
        start = time.perf_counter()
        ours = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = torch_tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
        t_theirs = time.perf_counter() - start
        flagged = set(ours.unusable_views())
        rows.append(dict(seed=seed, ours=fair_rms(ours.shifts, sim, blocked),
                         theirs=fair_rms(theirs, sim, blocked), t_ours=t_ours, t_theirs=t_theirs,
                         blocked_flagged=all(v in flagged for v in blocked),
                         others_flagged=len(flagged - set(blocked)), has_blocked=bool(blocked)))
    return dict(name=name, rows=rows)


# ---- speed: 61 x 1024 x 1024, this engine, the engine before, torch-tiltxcorr -----------

SPEED_CHILD = r"""
import json, sys, time, torch
images, angles = torch.load(sys.argv[1])
which = sys.argv[2]
if which == "theirs":
    from torch_tiltxcorr import tiltxcorr as run
    go = lambda: run(images, angles, 85.0, pixel_spacing_angstroms=1.0, lowpass_angstroms=4.0)
else:
    from tiltxcorr_scipion.alignment import tiltxcorr as run
    go = lambda: run(images, angles, 85.0)
go_small = (lambda: run(images[:5], angles[:5], 85.0, pixel_spacing_angstroms=1.0,
            lowpass_angstroms=4.0)) if which == "theirs" else (lambda: run(images[:5], angles[:5], 85.0))
go_small()  # warm up: imports, first allocations
start = time.perf_counter()
go()
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def speed(repeats: int) -> dict:
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        sim = simulate_tilt_series(shape=(1024, 1024), n_views=61, noise=1.0, thickness=10.0,
                                   blob_density=1 / 600, seed=1)
        data = Path(tmp) / "series.pt"
        torch.save((sim.images, sim.tilt_angles), data)
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(old),
                        OLD_COMMIT], check=True, capture_output=True)
        try:
            paths = {"ours": str(repo), "before": str(old), "theirs": str(repo)}
            best = {key: math.inf for key in paths}
            for _ in range(repeats):
                for key, path in paths.items():
                    env = {**os.environ, "PYTHONPATH": path}
                    child = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(data), key],
                                           env=env, capture_output=True, text=True, check=True)
                    seconds = json.loads(child.stdout.strip().splitlines()[-1])["seconds"]
                    best[key] = min(best[key], seconds)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(old)],
                           capture_output=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--conditions", nargs="*",
                        help="substrings of condition names to run (default all)")
    parser.add_argument("--no-speed", action="store_true", help="skip the 61 x 1024^2 speed line")
    parser.add_argument("--speed-repeats", type=int, default=3)
    args = parser.parse_args()
    from importlib.metadata import version

    import torch_tiltxcorr  # noqa: F401  (fail early if the benchmark extra is missing)

    names = [n for n in CONDITIONS if not args.conditions or any(s in n for s in args.conditions)]
    started = time.perf_counter()
    print(f"# Hard data, default settings: tiltxcorr-scipion vs torch-tiltxcorr "
          f"{version('torch-tiltxcorr')}, {datetime.date.today()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, torch "
          f"{torch.__version__}; series 41 x 512 x 512, seeds {args.seeds}\n")
    print("| condition | ours, RMS px (per seed) | torch-tiltxcorr, RMS px (per seed) "
          "| ours / theirs | blocked view flagged | other views flagged | time ours / theirs (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        result = compare(name, args.seeds)
        rows = result["rows"]
        ours = [r["ours"] for r in rows]
        theirs = [r["theirs"] for r in rows]
        mean_ours, mean_theirs = sum(ours) / len(ours), sum(theirs) / len(theirs)
        flagged = ("yes" if all(r["blocked_flagged"] for r in rows) else
                   f"{sum(r['blocked_flagged'] for r in rows)}/{len(rows)}") \
            if rows[0]["has_blocked"] else "–"
        print(f"| {name} | **{mean_ours:.2f}** ({', '.join(f'{v:.2f}' for v in ours)}) "
              f"| {mean_theirs:.2f} ({', '.join(f'{v:.2f}' for v in theirs)}) "
              f"| {mean_ours / mean_theirs:.2f} | {flagged} "
              f"| {sum(r['others_flagged'] for r in rows)} "
              f"| {sum(r['t_ours'] for r in rows) / len(rows):.1f} / "
              f"{sum(r['t_theirs'] for r in rows) / len(rows):.1f} |", flush=True)
    print("\nRMS: per series after removing one constant and `X cos t + Z sin t` across the "
          "axis; bold: mean over seeds. Blocked-view conditions: RMS over the other views.")
    if not args.no_speed:
        best = speed(args.speed_repeats)
        print(f"\nspeed, 61 x 1024 x 1024 (fastest of {args.speed_repeats} interleaved runs, "
              f"each in a child process): this engine {best['ours']:.2f} s, before the "
              f"hard-data work ({OLD_COMMIT}) {best['before']:.2f} s "
              f"({100 * (best['ours'] / best['before'] - 1):+.0f}%), torch-tiltxcorr "
              f"{best['theirs']:.2f} s")
    print(f"\nbenchmark run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
