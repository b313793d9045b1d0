"""Fiducial-less fine alignment against the simulator's truth, with the coarse engine and
torch-refine-tilt-axis-angle 0.6.0 as anchors.

Run from the repository root, in one command (about 12 minutes on 2 cores):

    python benchmarks/bench_fine.py --threads 1

Every case simulates a 61 x 1024 x 1024 series (tiltxcorr_scipion.simulate) whose
true tilt axis is `axis`, whose specimen slab is level at the nominal tilts plus
`offset`, and hands the aligners a nominal axis `axis + axis error`. Printed per
seed, as a markdown table:

- axis error of the fine alignment, and of torch-refine-tilt-axis-angle 0.6.0
  given the PERFECTLY aligned stack (each view moved by its true shift) and
  the same nominal axis (it runs in its own virtual environment, see --venv);
- tilt angle offset error of the fine alignment, against the simulated slab's:
  levelled by the slab's surfaces (the default, `find_slab`), and by the plane
  of the solved points (tiltalign's, the same solve);
- shift errors on the fair measure: after removing by least squares one
  constant offset of the series, a constant along the tilt axis and
  `X cos t + Z sin t` across it (a 3-D translation of the specimen, which no
  tilt series determines), RMS over views. Each estimate is measured in the
  geometry it assumes: the coarse alignment with the nominal axis and
  tilts, the fine one with its refined axis and tilts (the basis of the
  removed terms uses that axis and those tilts). The coarse engine given the
  TRUE axis and tilts is printed too: the best the coarse method can do; and
  the geometry solve's own shifts, before the fine alignment averages them
  with a whole-view correlation run with the solved geometry (`solve_shifts`,
  `FineOptions.whole_view_weight`);
- wall time of the coarse engine alone and of the whole fine alignment
  (coarse + tracking + solve), in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tiltxcorr_scipion.alignment import align_tilt_series, fiducialless_alignment
from tiltxcorr_scipion.simulate import alignment_error as fair_rms
from tiltxcorr_scipion.simulate import simulate_tilt_series

CASES = {
    # name: (simulation keywords, nominal axis error in degrees)
    "thin 10 px, noise 1, sorted": (dict(thickness=10.0, noise=1.0, tilt_angle_offset=2.0,
                                         tilt_axis_angle=85.0), 2.5),
    "thick 120 px, noise 1, sorted": (dict(thickness=120.0, noise=1.0, tilt_angle_offset=4.0,
                                           tilt_axis_angle=85.0), -3.0),
    "thick 80 px, noise 3, dose-symmetric": (dict(thickness=80.0, noise=3.0,
                                                  tilt_angle_offset=-3.0, tilt_axis_angle=-12.0,
                                                  order="dose-symmetric"), 1.5),
    "thin 10 px, clean, dose-symmetric": (dict(thickness=10.0, noise=0.0,
                                               tilt_angle_offset=-1.0, tilt_axis_angle=-12.0,
                                               order="dose-symmetric"), -2.0),
}
SIMULATION = dict(shape=(1024, 1024), n_views=61, tilt_range=(-60.0, 60.0), blob_density=1 / 600)
ANCHOR_CHILD = """
import json, sys, torch
from torch_refine_tilt_axis_angle import refine_tilt_axis_angle
stack = torch.load(sys.argv[1])
print(json.dumps({"angle": float(refine_tilt_axis_angle(stack, tilt_axis_angle=float(sys.argv[2])))}))
"""


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move the content of each view `(b, h, w)` by `shifts` `(b, 2)` `(dy, dx)` (Fourier)."""
    h, w = images.shape[-2:]
    ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    phase = torch.exp(-2j * torch.pi * (shifts[:, 0, None, None].double() * ky
                                        + shifts[:, 1, None, None].double() * kx))
    return torch.fft.irfft2(torch.fft.rfft2(images.double()) * phase, s=(h, w)).float()


def nearest_turn(angle: float, reference: float) -> float:
    """`angle` plus a multiple of 180 degrees, nearest to `reference` (axis is a line)."""
    return angle + 180.0 * round((reference - angle) / 180.0)


def run_anchor(images: torch.Tensor, nominal: float, venv: Path) -> float | None:
    """torch-refine-tilt-axis-angle 0.6.0 in its own environment; None if unavailable."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "aligned.pt"
        torch.save(images, path)
        child = subprocess.run([str(python), "-c", ANCHOR_CHILD, str(path), str(nominal)],
                               capture_output=True, text=True, env={**os.environ,
                                                                    "PYTHONPATH": ""})
    if child.returncode != 0:
        print(f"<!-- torch-refine-tilt-axis-angle failed: {child.stderr.strip()[-300:]} -->")
        return None
    return nearest_turn(json.loads(child.stdout.strip().splitlines()[-1])["angle"], nominal)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", nargs="*", help="substrings of case names to run (default all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--venv", type=Path, default=Path("/work/bench-venv"),
                        help="virtual environment holding torch-refine-tilt-axis-angle 0.6.0")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {k: v for k, v in CASES.items()
             if not args.cases or any(s in k for s in args.cases)}

    print(f"# tiltxcorr-scipion fine alignment benchmark, {datetime.date.today()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}, torch {torch.__version__}, "
          f"series {SIMULATION['n_views']} x {SIMULATION['shape'][0]} x "
          f"{SIMULATION['shape'][1]}\n")
    print("| case | seed | axis err fine (deg) | axis err refine-tilt-axis 0.6.0, aligned stack "
          "(deg) | offset err fine: surfaces / points' plane (deg) | shifts coarse / coarse given true axis / solve's own / fine (px) "
          "| time coarse / fine total (s) | contours (rejected) | mean residual (px) |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for name, (kwargs, axis_error) in cases.items():
        for seed in args.seeds:
            sim = simulate_tilt_series(seed=seed, **SIMULATION, **kwargs)
            nominal = sim.tilt_axis_angle + axis_error
            true_tilts = sim.tilt_angles.double() + sim.tilt_angle_offset
            coarse, coarse_seconds = timed(align_tilt_series, sim.images, sim.tilt_angles,
                                           nominal)
            fine, fine_seconds = timed(fiducialless_alignment, sim.images, sim.tilt_angles,
                                       nominal)
            best_coarse = align_tilt_series(sim.images, true_tilts, sim.tilt_axis_angle)
            anchor = run_anchor(shift_images(sim.images, sim.shifts), nominal, args.venv)
            row = {
                "axis": fine.tilt_axis_angle - sim.tilt_axis_angle,
                "anchor": None if anchor is None else anchor - sim.tilt_axis_angle,
                "offset": fine.tilt_angle_offset - sim.tilt_angle_offset,
                "points_offset": fine.points_offset - sim.tilt_angle_offset,
                "coarse": fair_rms(coarse.shifts, sim.shifts, nominal, sim.tilt_angles),
                "best_coarse": fair_rms(best_coarse.shifts, sim.shifts, sim.tilt_axis_angle,
                                        true_tilts),
                "fine": fair_rms(fine.shifts, sim.shifts, fine.tilt_axis_angle,
                                 fine.tilt_angles),
                "solve": fair_rms(fine.solve_shifts, sim.shifts, fine.tilt_axis_angle,
                                  fine.tilt_angles),
                "t_coarse": coarse_seconds, "t_fine": fine_seconds,
            }
            summary.append(row)
            anchor_text = "n/a" if row["anchor"] is None else f"{row['anchor']:+.2f}"
            print(f"| {name} | {seed} | {row['axis']:+.3f} | {anchor_text} | {row['offset']:+.2f} / {row['points_offset']:+.2f} "
                  f"| {row['coarse']:.3f} / {row['best_coarse']:.3f} / {row['solve']:.3f} / "
                  f"{row['fine']:.3f} "
                  f"| {coarse_seconds:.1f} / {fine_seconds:.1f} "
                  f"| {fine.n_contours} ({fine.n_rejected_contours}) "
                  f"| {fine.mean_residual:.3f} |", flush=True)

    worst = {key: max(abs(r[key]) for r in summary) for key in ("axis", "offset", "points_offset")}
    better = sum(r["fine"] <= r["coarse"] for r in summary)
    solve_better = sum(r["solve"] <= r["coarse"] for r in summary)
    anchors = [abs(r["anchor"]) for r in summary if r["anchor"] is not None]
    print(f"\nworst |axis error| {worst['axis']:.3f} deg (target 0.1), worst |offset error| "
          f"{worst['offset']:.2f} deg (target 0.3; points' plane {worst['points_offset']:.2f}), fine shifts <= coarse in {better} of "
          f"{len(summary)} (the solve's own: {solve_better}), slowest fine alignment {max(r['t_fine'] for r in summary):.1f} s "
          f"(target 15 s)" + (f"; refine-tilt-axis-angle worst |axis error| {max(anchors):.2f} deg"
                              if anchors else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
