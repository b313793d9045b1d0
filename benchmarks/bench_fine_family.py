"""Fine alignment on a family of geometries, with the reported uncertainty beside the truth.

Run from the repository root, in one command (about 15-25 minutes on 2 cores):

    python benchmarks/bench_fine_family.py --threads 1

Every case simulates a series with a known tilt axis (anywhere on the circle), a known
pre-tilt of the specimen (the tilt angle offset: the slab is level at the nominal tilts plus
it), and hands `fiducialless_alignment` (default settings) the nominal tilts and a nominal
axis off the truth by up to 5 degrees. Two image models, so that no result holds for one
simulator only:

- ``blobs``: `tiltxcorr_scipion.simulate` (Gaussian blobs in a slab, Gaussian noise);
- ``volume``: `tiltxcorr_scipion.simulate_volume` (a "cell" voxel volume: filaments,
  membranes, particles, projected by line integrals, cryo contrast with a CTF-like
  transfer), pre-tilted by projecting it at the nominal tilts plus the offset.

Printed per case and seed, as a markdown table: the axis error and the offset error of the
fine alignment with its reported one standard error (`tilt_axis_angle_error`,
`tilt_angle_offset_error`) and their ratio; the shift errors (the project's fair measure,
`simulate.alignment_error`: after removing what no tilt series fixes) of the coarse engine
with the nominal geometry and of the fine alignment with its own; the wall time of the
coarse engine and of the fine alignment, and within the latter the time the uncertainty
estimates took (measured in the same call: "before" = total minus that). Then the targets:
axis within 0.1 degree and offset within 0.3 degree where noise <= 3x; the true error within
2 reported standard errors in >= 90% of the cases and within 3 in all; fine shifts no worse
than the coarse ones.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time

import torch

import tiltxcorr_scipion.alignment.projection as projection
import tiltxcorr_scipion.alignment.slab as slab
from tiltxcorr_scipion.alignment import align_tilt_series, fiducialless_alignment
from tiltxcorr_scipion.simulate import alignment_error, simulate_tilt_series, tilt_scheme
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

AXIS_TARGET, OFFSET_TARGET = 0.1, 0.3

# name: model, (h, w), views, axis, nominal axis error, pre-tilt, thickness, noise, order
CASES = [
    ("blobs", (512, 512), 41, -95.0, 2.0, 3.0, 40.0, 1.0, "sorted"),
    ("blobs", (384, 512), 41, -10.5, -1.5, -3.0, 80.0, 3.0, "sorted"),
    ("blobs", (512, 512), 41, 0.0, 5.0, 6.0, 120.0, 1.0, "dose-symmetric"),
    ("blobs", (512, 384), 41, 45.0, -5.0, -6.0, 10.0, 2.0, "sorted"),
    ("blobs", (512, 512), 41, 85.0, 3.2, 4.0, 120.0, 1.0, "sorted"),
    ("blobs", (384, 512), 41, 176.0, -2.0, 2.5, 60.0, 3.0, "dose-symmetric"),
    ("blobs", (512, 512), 41, -10.5, 1.5, -3.0, 80.0, 5.0, "sorted"),
    ("volume", (384, 384), 41, 0.0, 2.0, 4.0, 60.0, 1.0, "sorted"),
    ("volume", (384, 512), 41, 85.0, -3.0, -5.0, 100.0, 3.0, "dose-symmetric"),
    ("volume", (512, 384), 41, -95.0, 4.0, 2.0, 30.0, 2.0, "sorted"),
    ("volume", (384, 384), 41, 176.0, -1.5, -6.0, 120.0, 5.0, "sorted"),
    ("volume", (384, 512), 41, 45.0, 2.5, 1.0, 20.0, 3.0, "dose-symmetric"),
]


def case_name(case) -> str:
    model, (h, w), views, axis, error, pretilt, thickness, noise, order = case
    return (f"{model} {views}x{h}x{w} axis {axis:g} ({error:+g}) pre-tilt {pretilt:+g} "
            f"{thickness:g} px noise {noise:g} {order}")


def simulate(case, seed: int):
    """`(views, nominal tilts, true axis, true shifts, true offset)` of one case."""
    model, shape, views, axis, _, pretilt, thickness, noise, order = case
    if model == "blobs":
        sim = simulate_tilt_series(shape=shape, n_views=views, tilt_axis_angle=axis,
                                   thickness=thickness, noise=noise, tilt_angle_offset=pretilt,
                                   order=order, seed=seed)
        return sim.images, sim.tilt_angles, axis, sim.shifts, pretilt
    nominal = tilt_scheme((-60.0, 60.0), views, order, torch.Generator().manual_seed(seed))
    sim = simulate_volume_series(shape=shape, tilt_angles=nominal + pretilt, tilt_axis_angle=axis,
                                 thickness=thickness, noise=noise, seed=seed)
    return sim.views, nominal.to(torch.float32), axis, sim.shifts, pretilt


class Stopwatch:
    """Seconds spent in the uncertainty estimates, wrapped around their functions."""

    def __init__(self):
        self.seconds = 0.0
        for module, name in ((projection, "_axis_error"), (slab, "_sandwich_error")):
            setattr(module, name, self._timed(getattr(module, name)))

    def _timed(self, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", type=int, nargs="*", help="case numbers (1-based; default all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [(i + 1, c) for i, c in enumerate(CASES) if not args.cases or i + 1 in args.cases]
    watch = Stopwatch()

    print(f"# tiltxcorr-scipion fine alignment family, {datetime.date.today()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}, torch {torch.__version__}\n")
    print("| # | case | seed | axis err +- SE (deg) | ratio | offset err +- SE (deg) | ratio "
          "| levelled by | shifts coarse / fine (px) | time coarse / fine (uncertainty) (s) | CPU fine (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for number, case in chosen:
        for seed in args.seeds:
            views, tilts, axis, true_shifts, offset = simulate(case, seed)
            nominal = axis + case[4]
            start = time.perf_counter()
            coarse = align_tilt_series(views, tilts, nominal)
            coarse_seconds = time.perf_counter() - start
            watch.seconds = 0.0
            start, cpu_start = time.perf_counter(), time.process_time()
            fine = fiducialless_alignment(views, tilts, nominal)
            fine_seconds = time.perf_counter() - start
            fine_cpu = time.process_time() - cpu_start
            axis_error = fine.tilt_axis_angle - axis
            offset_error = fine.tilt_angle_offset - offset
            row = dict(number=number, noise=case[7], axis=axis_error, offset=offset_error,
                       axis_se=fine.tilt_axis_angle_error, offset_se=fine.tilt_angle_offset_error,
                       coarse=alignment_error(coarse.shifts, true_shifts, nominal, tilts),
                       fine=alignment_error(fine.shifts, true_shifts, fine.tilt_axis_angle,
                                            fine.tilt_angles),
                       t_coarse=coarse_seconds, t_fine=fine_seconds, t_se=watch.seconds, cpu_fine=fine_cpu)
            rows.append(row)
            print(f"| {number} | {case_name(case)} | {seed} | {axis_error:+.3f} +- "
                  f"{row['axis_se']:.3f} | {abs(axis_error) / row['axis_se']:.1f} | "
                  f"{offset_error:+.3f} +- {row['offset_se']:.3f} | "
                  f"{abs(offset_error) / row['offset_se']:.1f} | {fine.levelled_by} | "
                  f"{row['coarse']:.3f} / {row['fine']:.3f} | {coarse_seconds:.1f} / "
                  f"{fine_seconds:.1f} ({watch.seconds:.2f}) | {fine_cpu:.1f} |", flush=True)

    ratios = [abs(r[k]) / r[k + "_se"] for r in rows for k in ("axis", "offset")
              if math.isfinite(r[k + "_se"]) and r[k + "_se"] > 0]
    moderate = [r for r in rows if r["noise"] <= 3]
    axis_hits = sum(abs(r["axis"]) <= AXIS_TARGET for r in moderate)
    offset_hits = sum(abs(r["offset"]) <= OFFSET_TARGET for r in moderate)
    print(f"\nnoise <= 3x: axis within {AXIS_TARGET} deg in {axis_hits} of {len(moderate)}, "
          f"offset within {OFFSET_TARGET} deg in {offset_hits} of {len(moderate)}")
    print(f"true error within 2 reported SE: {sum(q <= 2 for q in ratios)} of {len(ratios)} "
          f"estimates ({100 * sum(q <= 2 for q in ratios) / max(len(ratios), 1):.0f}%, target "
          f">= 90%), within 3: {sum(q <= 3 for q in ratios)} of {len(ratios)} (target all); "
          f"largest ratio {max(ratios, default=float('nan')):.1f}")
    flagged = sum((r["axis_se"] > AXIS_TARGET) or (r["offset_se"] > OFFSET_TARGET) for r in rows)
    missed = [r for r in rows if abs(r["axis"]) > AXIS_TARGET or abs(r["offset"]) > OFFSET_TARGET]
    told = sum((r["axis_se"] > AXIS_TARGET) or (r["offset_se"] > OFFSET_TARGET) for r in missed)
    print(f"flagged as less certain than the targets: {flagged} of {len(rows)}; of the "
          f"{len(missed)} that miss a target, {told} are flagged")
    print(f"fine shifts <= coarse in {sum(r['fine'] <= r['coarse'] for r in rows)} of "
          f"{len(rows)}; fine alignment {min(r['t_fine'] for r in rows):.1f}-"
          f"{max(r['t_fine'] for r in rows):.1f} s, of which the uncertainty "
          f"{min(r['t_se'] for r in rows):.2f}-{max(r['t_se'] for r in rows):.2f} s; CPU time of "
          f"the fine alignment {sum(r['cpu_fine'] for r in rows):.1f} s in all")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
