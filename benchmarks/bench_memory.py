"""Peak memory, time and accuracy of ``tiltxcorr-scipion align`` on a large int16 stack.

    .venv/bin/python benchmarks/bench_memory.py [--baseline SOURCE_TREE] [--views 61 --size 4096]

Writes (once, then reuses) a simulated tilt series of 61 x 4096 x 4096 int16
views (1952 MiB): a 1024 px simulation upsampled 4x, so the true shifts are
known (4x the simulated ones). Then runs the command line on it in a child
process, as a user would, and reports the child's peak resident memory (its
``VmHWM``, read from ``/proc`` every 20 ms while it runs: resident pages of
memory-mapped files count too; ``wait4``'s ``ru_maxrss`` would also count the
pages this benchmark process held when it forked the child), its wall time, and the RMS error of the ``.prexg`` shifts against the truth after
removing their mean (the ``.prexg`` is centred). With ``--baseline`` the same
is measured for another source tree of the package (e.g. a ``git worktree``
of an older commit), in the same run. Target: peak RSS <= 0.75 x the file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

from tiltxcorr_scipion.convert.imod import read_xf
from tiltxcorr_scipion.simulate import simulate_tilt_series

AXIS = 85.0
UPSAMPLE = 4


def make_stack(folder: Path, views: int, size: int, seed: int) -> tuple[Path, np.ndarray]:
    """The int16 stack (written once) and its true `(n, 2)` `(dy, dx)` shifts in its pixels."""
    stack = folder / f"large_{views}x{size}_seed{seed}.mrc"
    truth_file = stack.with_suffix(".truth.npy")
    if stack.exists() and truth_file.exists():
        return stack, np.load(truth_file)
    folder.mkdir(parents=True, exist_ok=True)
    small = size // UPSAMPLE
    sim = simulate_tilt_series(shape=(small, small), n_views=views, tilt_axis_angle=AXIS,
                               max_shift=20.0, thickness=10.0, noise=1.0, seed=seed,
                               blob_density=1 / 600)
    images = sim.images
    scale = 3000.0 / float(images.std())
    offset = -float(images.mean()) * scale
    temporary = stack.with_suffix(".partial")
    with mrcfile.new_mmap(str(temporary), shape=(views, size, size), mrc_mode=1,
                          overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 1.0
        for i in range(views):
            # Upsampling by 4 about pixel centres keeps the image centre where it was.
            big = torch.nn.functional.interpolate(images[i][None, None], scale_factor=UPSAMPLE,
                                                  mode="bicubic", align_corners=False)[0, 0]
            mrc.data[i] = np.clip(big.numpy() * scale + offset, -32000, 32000).astype(np.int16)
    os.replace(temporary, stack)
    np.savetxt(stack.with_suffix(".tlt"), sim.tilt_angles.numpy(), fmt="%.2f")
    truth = sim.shifts.numpy().astype(np.float64) * UPSAMPLE
    np.save(truth_file, truth)
    return stack, truth


def run_command(stack: Path, out: Path, source_tree: str | None) -> dict:
    """Run the CLI in a child process; its peak RSS (MiB), wall time (s) and exit status."""
    env = dict(os.environ)
    if source_tree:
        env["PYTHONPATH"] = os.path.abspath(source_tree)
    command = [sys.executable, "-m", "tiltxcorr_scipion.cli", "align", str(stack), "--axis",
               str(AXIS), "--out", str(out), "--overwrite", "-q", "--device", "cpu"]
    started = time.monotonic()
    # run outside any source tree: `python -m` puts the working folder first on sys.path
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, cwd=out.parent)
    peak_kib = 0
    while child.poll() is None:
        peak_kib = max(peak_kib, _high_water_kib(child.pid))
        time.sleep(0.02)
    wall = time.monotonic() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n"
                         f"{child.stderr.read().decode()}")
    return {"peak_mib": peak_kib / 1024, "wall_s": wall}


def _high_water_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def prexg_rms(prexg_path: Path, truth: np.ndarray) -> float:
    prexg = read_xf(str(prexg_path))
    shifts = np.stack([prexg[:, 1, 2], prexg[:, 0, 2]], axis=1)
    error = shifts - (truth - truth.mean(axis=0))
    error -= error.mean(axis=0)
    return float(np.sqrt((error ** 2).sum(axis=1).mean()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=61)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/tiltxcorr-bench-memory"))
    parser.add_argument("--baseline", metavar="SOURCE_TREE",
                        help="also measure the package in this source tree (PYTHONPATH)")
    args = parser.parse_args()

    stack, truth = make_stack(args.folder, args.views, args.size, args.seed)
    file_mib = stack.stat().st_size / 2**20
    runs = [("this tree", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"# Memory: `tiltxcorr-scipion align` on {args.views} x {args.size} x {args.size} "
          f"int16 ({file_mib:.0f} MiB)")
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}\n")
    print("| package | peak RSS (MiB) | peak / file | wall (s) | RMS error (px) |")
    print("|---|---|---|---|---|")
    for label, tree in runs:
        out = args.folder / f"out_{label.replace(' ', '_')}"
        figures = run_command(stack, out, tree)
        rms = prexg_rms(out.with_suffix(".prexg"), truth)
        print(f"| {label}{'' if tree is None else f' ({tree})'} | {figures['peak_mib']:.0f} | "
              f"{figures['peak_mib'] / file_mib:.2f} | {figures['wall_s']:.1f} | {rms:.3f} |",
              flush=True)
    print("\nTarget: peak / file <= 0.75.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
