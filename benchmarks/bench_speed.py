"""Speed of the coarse alignment by CPU time, one thread, in one process: the issue-16 figures.

Run from the repository root (the benchmark extra installs torch-tiltxcorr 0.6.0):

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py

Times, by `time.process_time` (CPU time, so that other work on a shared machine
counts less than in wall time), best of `--repeats`:
- the 61 x 1024 x 1024 series of the self-check's timing family (the project's
  simulator): the defaults, the plain path (`adaptive=False, fixed_pattern="off"`)
  and torch-tiltxcorr 0.6.0 (once: it takes about 25 s), and the ratio;
- the 83 x 64 x 64 pre-aligned STEM needle of the same family: the defaults
  against the plain path.
Targets (issue 16): >= 15x faster than torch-tiltxcorr; the small series'
defaults within 3x of the plain path's time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_selfcheck  # noqa: E402  (the benchmarks are scripts, not a package)

from tiltxcorr_scipion.alignment import align_tilt_series  # noqa: E402


def cpu_seconds(function, repeats: int) -> float:
    """Least CPU time of `repeats` calls of `function()`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (ours)")
    parser.add_argument("--no-theirs", action="store_true", help="skip torch-tiltxcorr")
    args = parser.parse_args()
    torch.set_num_threads(1)
    large, small = bench_selfcheck.fam_timing([1], quick=False)
    warm = small.views[:9], small.tilt_angles[:9], small.tilt_axis_angle
    align_tilt_series(*warm)  # thread pools and lazy initialisation, before timing
    figures = {}
    for world in (large, small):
        data = world.views, world.tilt_angles, world.tilt_axis_angle
        for label, options in (("defaults", {}), ("plain", bench_selfcheck.PLAIN)):
            figures[world.name, label] = cpu_seconds(
                lambda data=data, options=options: align_tilt_series(*data, **options),
                args.repeats)
        print(f"- {world.name}: defaults {figures[world.name, 'defaults']:.2f} s, plain "
              f"{figures[world.name, 'plain']:.2f} s CPU: defaults "
              f"{figures[world.name, 'defaults'] / figures[world.name, 'plain']:.2f}x the plain "
              "path's time", flush=True)
    if not args.no_theirs:
        data = large.views, large.tilt_angles, large.tilt_axis_angle
        theirs = cpu_seconds(lambda: bench_selfcheck.bench_conditions.torch_tiltxcorr(*data), 1)
        print(f"- {large.name}: torch-tiltxcorr 0.6.0 {theirs:.2f} s CPU: defaults "
              f"{theirs / figures[large.name, 'defaults']:.1f}x faster, plain "
              f"{theirs / figures[large.name, 'plain']:.1f}x (target >= 15x)")


if __name__ == "__main__":
    main()
