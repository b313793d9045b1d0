"""Accuracy, speed and memory of the engine, side by side with torch-tiltxcorr 0.6.0.

Run from the repository root (installs the benchmark extra first):

    make bench

Every case simulates one tilt series with known shifts (tiltxcorr_scipion.simulate),
then runs this engine and torch-tiltxcorr on the same tensor in this process, one
after the other, and prints a markdown table: RMS and max error of the shifts (after
removing one constant offset, in pixels) and wall time. The memory case runs in a
child process and reports its peak resident set size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.simulate import simulate_tilt_series

CASES = {
    # name: (simulation keywords, what it tests)
    "thin, noise 1x": dict(shape=(512, 512), n_views=61, noise=1.0, thickness=10.0),
    "thin, noise 3x": dict(shape=(512, 512), n_views=61, noise=3.0, thickness=10.0),
    "thick 120 px, noise 1x": dict(shape=(512, 512), n_views=61, noise=1.0, thickness=120.0),
    "thin, 41 views, dose-symmetric, 480x640": dict(
        shape=(480, 640), n_views=41, noise=1.0, thickness=10.0, order="dose-symmetric",
        tilt_axis_angle=-7.0),
    "speed: 61 x 1024 x 1024": dict(shape=(1024, 1024), n_views=61, noise=1.0, thickness=10.0,
                                    blob_density=1 / 600),
}


def shift_errors(estimate: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """RMS and max length of the error vectors `(b, 2)` after removing their mean."""
    error = estimate.double().cpu() - truth.double().cpu()
    error = error - error.mean(dim=0)
    length = error.norm(dim=1)
    return float(length.pow(2).mean().sqrt()), float(length.max())


def height_free_rms(estimate: torch.Tensor, sim) -> float:
    """RMS error after removing a constant offset and a tilt-axis height term.

    A tilt axis at height Z above the slab's mid-plane changes the shifts by
    `Z sin(tilt)` across the axis. Stretching correlation cannot see where the
    mid-plane is, only where the specimen's mass is; in a thick simulated slab
    the two differ by a few pixels, by chance. This figure leaves that out.
    """
    from tiltxcorr_scipion.alignment.geometry import axis_directions

    error = estimate.double().cpu() - sim.shifts.double()
    error = error - error.mean(dim=0)
    _, across = axis_directions(sim.tilt_axis_angle)
    sines = torch.sin(torch.deg2rad(sim.tilt_angles.double()))
    model = (sines - sines.mean())[:, None] * across[None]
    height = (model * error).sum() / (model * model).sum()
    return float((error - height * model).norm(dim=1).pow(2).mean().sqrt())


def run_torch_tiltxcorr(sim, device):
    from torch_tiltxcorr import tiltxcorr as seed_tiltxcorr

    # 0.25 cycles/pixel low-pass, as our default
    return seed_tiltxcorr(sim.images.to(device), sim.tilt_angles.to(device), sim.tilt_axis_angle,
                          pixel_spacing_angstroms=1.0, lowpass_angstroms=4.0)


def run_ours(sim, device):
    # align_tilt_series: IMOD's centre, the simulator's (tiltxcorr uses teamtomo's DFT centre)
    return align_tilt_series(sim.images.to(device), sim.tilt_angles.to(device),
                             sim.tilt_axis_angle).shifts


def timed(function, *args):
    if args[-1].type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args)
    if args[-1].type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def compare(name: str, sim_kwargs: dict, device: torch.device, seeds: list[int]) -> dict:
    rows = {"case": name, "ours": [], "seed": []}
    for seed in seeds:
        sim = simulate_tilt_series(seed=seed, **sim_kwargs)
        ours, t_ours = timed(run_ours, sim, device)
        theirs, t_theirs = timed(run_torch_tiltxcorr, sim, device)
        rows["ours"].append((*shift_errors(ours, sim.shifts), t_ours, height_free_rms(ours, sim)))
        rows["seed"].append((*shift_errors(theirs, sim.shifts), t_theirs,
                             height_free_rms(theirs, sim)))
    return rows


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), in MiB.

    Not getrusage's ru_maxrss: Linux carries that over from the parent across
    fork and exec, so a child would report the benchmark's own peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def memory_child(size: int, n_views: int) -> None:
    """Align an `(n_views, size, size)` float32 stack and print the peak RSS (MiB) as JSON."""
    base = simulate_tilt_series(shape=(512, 512), n_views=n_views, noise=1.0, thickness=10.0,
                                seed=5)
    factor = size // 512
    stack = torch.empty(n_views, size, size, dtype=torch.float32)
    for i in range(n_views):  # upsample view by view: no large temporary
        stack[i] = torch.nn.functional.interpolate(base.images[i][None, None], scale_factor=factor,
                                                   mode="bilinear", align_corners=False)[0, 0]
    before = peak_rss_mib()
    start = time.perf_counter()
    shifts = align_tilt_series(stack, base.tilt_angles, base.tilt_axis_angle).shifts
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    rms, worst = shift_errors(shifts, base.shifts * factor)
    print(json.dumps({"peak_rss_mib": peak, "rss_before_mib": before, "seconds": seconds,
                      "rms": rms, "max": worst, "input_mib": stack.numel() * 4 / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cases", nargs="*", help="substrings of case names to run (default all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 2048 px memory case")
    parser.add_argument("--memory-child", nargs=2, type=int, metavar=("SIZE", "VIEWS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return

    device = torch.device("cpu")
    cases = dict(CASES)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        cases["GPU: 61 x 4096 x 4096"] = dict(shape=(4096, 4096), n_views=61, noise=1.0,
                                              thickness=10.0, blob_density=1 / 2400)
    if args.cases:
        cases = {k: v for k, v in cases.items() if any(s in k for s in args.cases)}

    import torch_tiltxcorr  # noqa: F401  (fail early if the benchmark extra is missing)

    print(f"# tiltxcorr-scipion engine benchmark, {datetime.date.today()}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, device {device}, torch {torch.__version__}, seeds {args.seeds}\n")
    print("| case | ours RMS / max (px) | torch-tiltxcorr RMS / max (px) | ours time (s) "
          "| torch-tiltxcorr time (s) | speed-up | RMS without axis height, ours / theirs (px) |")
    print("|---|---|---|---|---|---|---|")
    for name, kwargs in cases.items():
        seeds = args.seeds if "1024" not in name and "4096" not in name else args.seeds[:1]
        rows = compare(name, kwargs, device, seeds)
        ours = torch.tensor(rows["ours"]).mean(0).tolist()
        seed = torch.tensor(rows["seed"]).mean(0).tolist()
        print(f"| {name} | {ours[0]:.3f} / {ours[1]:.3f} | {seed[0]:.3f} / {seed[1]:.3f} "
              f"| {ours[2]:.2f} | {seed[2]:.2f} | {seed[2] / ours[2]:.1f}x "
              f"| {ours[3]:.3f} / {seed[3]:.3f} |", flush=True)
        if len(seeds) > 1:
            per_seed = ", ".join(f"{o[0]:.2f} vs {t[0]:.2f}"
                                 for o, t in zip(rows["ours"], rows["seed"], strict=True))
            print(f"|  ↳ per seed, RMS ours vs torch-tiltxcorr | {per_seed} | | | | | |")
    print("\nRMS and max: means over seeds of the per-series figures, errors after removing one "
          "constant offset. Last column: also without the tilt-axis height term Z sin(tilt).")

    if not args.no_memory:
        child = subprocess.run([sys.executable, __file__, "--memory-child", "2048", "61"],
                               capture_output=True, text=True, check=True)
        memory = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"\nmemory: 61 x 2048 x 2048 float32 ({memory['input_mib']:.0f} MiB input): peak RSS "
              f"{memory['peak_rss_mib']:.0f} MiB ({memory['rss_before_mib']:.0f} MiB before "
              f"aligning), {memory['seconds']:.1f} s, RMS {memory['rms']:.3f} px")


if __name__ == "__main__":
    main()
