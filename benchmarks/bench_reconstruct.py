"""Tomograms: quality against the known specimen, the reprojection check, speed and memory.

    .venv/bin/python benchmarks/bench_reconstruct.py [--seeds 0 1 2] [--skip-speed]
        [--anchor-tiles 2]

Anchor, in the same run: teamtomo's torch-tomogram 0.0.2 (Fourier-slice insertion of
padded sub-tilt-series, tile by tile; `pip install torch-tomogram==0.0.2`).

- Quality: `simulate_volume` cell slabs (STEM contrast: the image is linear in the density,
  so the rendered volume is the truth to compare with), 41 views +-60 degrees, 255 x 255 px,
  tilt axis 0 (both reconstructions in the same frame), noise 1x; each reconstruction from
  the true alignment, and ours also from the alignment with a 1 px RMS error added, and
  without its noise filter (`noise_filter="none"`), that also times torch-tomogram's
  implicit roll-off (`rolled_off`). Figure:
  the correlation with the true volume over the slab's inner region, both low-passed by the
  same Gaussian (sd 1 voxel). Per seed.
- Reprojection check (cryo contrast, 61 views, 512 px, noise 1x, axis 85): the largest
  residual and the flagged views with the true alignment; one view displaced by 2 px in a
  random direction (its residual's error, the flagged views); the coarse alignment's output
  (`align_tilt_series`) against its true per-view errors (what no series fixes removed):
  the correlation of the residuals with those errors.
- Speed (random views, 61 x 1024 x 1024, axis 85): the preview (binned 2, 128 sections,
  512 px wide) and the full tomogram (1024 x 1024 x 256), wall and process time (the
  machine is shared: process time is the work, wall time what a user waits), the peak
  resident memory of a child process above what it held with its views loaded (its
  high-water mark minus its resident size before the reconstruction); torch-tomogram's time per 128^3 tile,
  measured on `--anchor-tiles` tiles and multiplied by the tiles a full tomogram needs
  (measuring all 128 of them takes tens of minutes).
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import platform
import resource
import sys
import time

import numpy as np
import torch

from tiltxcorr_scipion.alignment import align_tilt_series, reconstruct, reprojection_check
from tiltxcorr_scipion.alignment.fourier import frequency_radius
from tiltxcorr_scipion.alignment.geometry import unfixed_motions
from tiltxcorr_scipion.simulate_volume import simulate_volume_series


def shift_transforms(shifts: torch.Tensor) -> torch.Tensor:
    t = torch.eye(3, dtype=torch.float64).repeat(len(shifts), 1, 1)
    t[:, 0, 2] = shifts[:, 1].double()
    t[:, 1, 2] = shifts[:, 0].double()
    return t


def lowpass(volume: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian low-pass (sd `sigma` voxels), in Fourier space."""
    spectrum = torch.fft.rfftn(volume.double())
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64)
                             for n in volume.shape[:-1]],
                           torch.fft.rfftfreq(volume.shape[-1], dtype=torch.float64),
                           indexing="ij")
    f2 = sum(g * g for g in grids)
    return torch.fft.irfftn(spectrum * torch.exp(-2 * math.pi ** 2 * sigma ** 2 * f2),
                            s=volume.shape)


def rolled_off(volume: torch.Tensor, knee: float) -> torch.Tensor:
    """`volume` times `min(1, knee / |k|)` (k in cycles/voxel): the roll-off torch-tomogram's
    gridding gives without saying so. It divides each Fourier voxel by the weight the
    slices put there only where that weight exceeds 1 (`clamp(weights, min=1)`), i.e. where
    neighbouring slices overlap in its padded box (2 x 128 voxels): below
    `1 / (256 dt)`; above, the slices are summed as they are, an unweighted back-projection,
    whose amplitude falls as one over the frequency."""
    spectrum = torch.fft.rfftn(volume.double())
    radius = frequency_radius(tuple(volume.shape), dtype=torch.float64)
    gain = (knee / radius.clamp(min=1e-12)).clamp(max=1.0)
    return torch.fft.irfftn(spectrum * gain, s=volume.shape).float()


#: Frequency bands (cycles/voxel) of the shell correlation with the truth.
BANDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4)


def common_boxes(reconstruction: torch.Tensor, truth: torch.Tensor, margin: int = 24):
    """The reconstruction and the truth over their common centred box (odd sizes: the voxel
    centres coincide), `margin` voxels in from the sides in x and y."""
    recon_box, truth_box = [], []
    for axis, (n_r, n_t) in enumerate(zip(reconstruction.shape, truth.shape, strict=True)):
        half = min(n_r, n_t) // 2 - (margin if axis else 0)
        recon_box.append(slice((n_r - 1) // 2 - half, (n_r - 1) // 2 + half + 1))
        truth_box.append(slice((n_t - 1) // 2 - half, (n_t - 1) // 2 + half + 1))
    return reconstruction[tuple(recon_box)].double(), truth[tuple(truth_box)].double()


def score(reconstruction: torch.Tensor, sim) -> tuple[float, list[float]]:
    """Correlation with the true volume after the same low-pass (Gaussian, sd 1 voxel), and
    the correlation in each frequency band of `BANDS` (Fourier shell correlation with the
    truth)."""
    a, b = common_boxes(reconstruction, sim.volume)
    low = float(torch.corrcoef(torch.stack([lowpass(a).flatten(), lowpass(b).flatten()]))[0, 1])
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)
    radius = frequency_radius(tuple(a.shape), dtype=torch.float64)
    bands = []
    for lo, hi in zip(BANDS[:-1], BANDS[1:], strict=True):
        m = (radius >= lo) & (radius < hi)
        bands.append(float((fa[m] * fb[m].conj()).real.sum()
                           / ((fa[m].abs() ** 2).sum() * (fb[m].abs() ** 2).sum()).sqrt()))
    return low, bands


def torch_tomogram(views, angles, shifts, shape, sidelength=128):
    from torch_tomogram import Tomogram

    tomogram = Tomogram(tilt_angles=angles, tilt_axis_angle=torch.tensor(0.0),
                        sample_translations=-shifts, images=views - views.mean())
    return tomogram.reconstruct_tomogram(shape, sidelength=sidelength)


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def quality(seeds) -> None:
    bands = "  ".join(f"{lo:g}-{hi:g}" for lo, hi in zip(BANDS[:-1], BANDS[1:], strict=True))
    print("\n## Quality against the true volume: 41 views +-60 deg, 255 x 255, slab 50 px, "
          "STEM, tomogram 63 thick")
    print("lowpass: correlation after a Gaussian low-pass (sd 1 voxel); then the correlation "
          f"in frequency bands (cycles/voxel): {bands}")
    thickness = 63
    for seed in seeds:
        for noise in (0.0, 1.0):
            sim = simulate_volume_series(shape=(255, 255), n_views=41, tilt_axis_angle=0.0,
                                         specimen="cell", thickness=50.0, contrast="stem",
                                         jumps="walk", jump_size=2.0, noise=noise, seed=seed,
                                         keep_volume=True)
            transforms = shift_transforms(sim.shifts)
            ours, t_ours, c_ours = timed(reconstruct, sim.views, transforms, sim.tilt_angles,
                                         0.0, thickness=thickness)
            plain, t_plain, c_plain = timed(reconstruct, sim.views, transforms,
                                            sim.tilt_angles, 0.0, thickness=thickness,
                                            noise_filter="none")
            anchor, t_anchor, c_anchor = timed(torch_tomogram, sim.views, sim.tilt_angles,
                                               sim.shifts, tuple(ours.shape))
            error = torch.randn(sim.shifts.shape, generator=torch.Generator().manual_seed(seed))
            error = error / error.norm(dim=1).square().mean().sqrt()  # 1 px RMS
            off = reconstruct(sim.views, shift_transforms(sim.shifts + error), sim.tilt_angles,
                              0.0, thickness=thickness)
            step = math.radians(float(sim.tilt_angles.diff().abs().mean()))
            rolled = rolled_off(plain, 1 / (2 * 128 * step))
            for name, volume, seconds in (("ours", ours, (t_ours, c_ours)),
                                          ("torch-tomogram", anchor, (t_anchor, c_anchor)),
                                          ("ours, 1 px RMS misaligned", off, None),
                                          ("ours, no noise filter", plain, (t_plain, c_plain)),
                                          ("  the same, tt's roll-off", rolled, None)):
                low, per_band = score(volume, sim)
                timing = (f"   {seconds[0]:6.2f} s wall {seconds[1]:6.2f} s process"
                          if seconds else "")
                print(f"seed {seed} noise {noise:g}  {name:>26}  lowpass {low:.3f}  bands "
                      + " ".join(f"{v:.3f}" for v in per_band) + timing, flush=True)


def true_errors(shifts: torch.Tensor, sim) -> np.ndarray:
    motions = unfixed_motions(sim.tilt_angles, sim.tilt_axis_angle).numpy().reshape(-1, 4)
    difference = (shifts.double() - sim.shifts.double()).numpy().reshape(-1)
    fit = np.linalg.lstsq(motions, difference, rcond=None)[0]
    return (difference - motions @ fit).reshape(-1, 2)


def check(seeds) -> None:
    print("\n## Reprojection check: 61 views +-60 deg, 512 x 512, cryo, noise 1x, axis 85, "
          "thickness 128 (binned to 256 px for the check)")
    print(f"{'seed':>4} {'truth: max px':>13} {'flagged':>8} | {'2 px view':>9} "
          f"{'|res - 2px|':>11} {'flagged':>12} | {'coarse rms':>10} {'max err':>8} "
          f"{'corr(res, err)':>14} {'flagged':>8} {'s':>6}")
    for seed in seeds:
        sim = simulate_volume_series(shape=(512, 512), n_views=61, tilt_axis_angle=85.0,
                                     specimen="cell", thickness=60.0, contrast="cryo",
                                     jumps="walk", jump_size=2.0, noise=1.0, gold_beads=4,
                                     seed=seed)
        transforms = shift_transforms(sim.shifts)
        good, seconds, _ = timed(reprojection_check, sim.views, transforms, sim.tilt_angles,
                                 85.0, thickness=128)
        generator = torch.Generator().manual_seed(100 + seed)
        view = int(torch.randint(0, 61, (1,), generator=generator))
        angle = float(torch.rand((), generator=generator)) * 2 * math.pi
        moved = transforms.clone()
        displacement = torch.tensor([2 * math.sin(angle), 2 * math.cos(angle)],
                                    dtype=torch.float64)  # (dy, dx)
        moved[view, 0, 2] += displacement[1]
        moved[view, 1, 2] += displacement[0]
        bad = reprojection_check(sim.views, moved, sim.tilt_angles, 85.0, thickness=128)
        miss = float((bad.residual[view] - displacement).norm())
        flagged_bad = [int(v) + 1 for v in bad.flagged.nonzero()[:, 0]]
        coarse = align_tilt_series(sim.views, sim.tilt_angles, 85.0)
        errors = true_errors(coarse.shifts, sim)
        found = reprojection_check(sim.views, shift_transforms(coarse.shifts.double()),
                                   sim.tilt_angles, 85.0, thickness=128)
        agreement = np.corrcoef(errors.reshape(-1), found.residual.numpy().reshape(-1))[0, 1]
        lengths = np.linalg.norm(errors, axis=1)
        print(f"{seed:4d} {float(good.residual_px.max()):13.2f} {int(good.flagged.sum()):8d} | "
              f"{view + 1:9d} {miss:11.2f} {str(flagged_bad):>12} | "
              f"{math.sqrt(float(np.mean(lengths ** 2))):10.2f} {lengths.max():8.2f} "
              f"{agreement:14.2f} {int(found.flagged.sum()):8d} {seconds:6.2f}", flush=True)


def _high_water_kib() -> float:
    """This process's peak resident memory (KiB): Linux's VmHWM, which an exec starts anew
    (`ru_maxrss` keeps the parent's size at the fork, so a child spawned late in a run
    would report the parent's memory)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _speed_child(kind: str, noise_filter: str, queue) -> None:
    torch.manual_seed(0)
    views = torch.randn(61, 1024, 1024)
    angles = torch.linspace(-60, 60, 61)
    transforms = shift_transforms(torch.randn(61, 2) * 3)
    import psutil

    before = psutil.Process().memory_info().rss / 2 ** 10  # KiB now, views in memory
    volume, wall, cpu = timed(reconstruct, views, transforms, angles, 85.0, thickness=256,
                              binning=2 if kind == "preview" else 1, noise_filter=noise_filter)
    peak = _high_water_kib()
    queue.put((tuple(volume.shape), wall, cpu, (peak - before) / 2 ** 20,
               volume.numel() * 4 / 2 ** 30))


def _anchor_child(tiles: int, queue) -> None:
    from torch_tomogram import Tomogram

    torch.manual_seed(0)
    views = torch.randn(61, 1024, 1024)
    tomogram = Tomogram(tilt_angles=torch.linspace(-60, 60, 61),
                        tilt_axis_angle=torch.tensor(0.0),
                        sample_translations=torch.zeros(61, 2), images=views)
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(tiles):
        tomogram.reconstruct_subvolume(torch.tensor([0.0, 0.0, 128.0 * k - 64.0]), 128)
    queue.put(((time.perf_counter() - wall) / tiles, (time.process_time() - cpu) / tiles))


def _in_child(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def speed(anchor_tiles: int) -> None:
    print(f"\n## Speed: 61 x 1024 x 1024 views, {torch.get_num_threads()} threads "
          "(a shared machine: process time is the work)")
    print(f"{'run':>36} {'shape':>16} {'wall s':>8} {'process s':>10} {'peak GiB':>9} "
          f"{'volume GiB':>10}   (peak: above the views)")
    for kind in ("preview", "full"):
        for noise_filter in ("fsc", "none"):
            shape, wall, cpu, peak, size = _in_child(_speed_child, kind, noise_filter)
            name = f"ours, {kind}" + (", no noise filter" if noise_filter == "none" else "")
            print(f"{name:>36} {str(shape):>16} {wall:8.2f} {cpu:10.2f} {peak:9.2f} "
                  f"{size:10.2f}", flush=True)
    if anchor_tiles > 0:
        wall, cpu = _in_child(_anchor_child, anchor_tiles)
        tiles = (1024 // 128) ** 2 * (256 // 128)
        print(f"{'torch-tomogram, one 128^3 tile':>36} {'':>16} {wall:8.2f} {cpu:10.2f}")
        print(f"{'torch-tomogram, full (x' + str(tiles) + ')':>36} {'(256, 1024, 1024)':>16} "
              f"{wall * tiles:8.0f} {cpu * tiles:10.0f}   (tiles measured: {anchor_tiles})")


def figures(folder: str) -> None:
    """docs/reconstruction*.png: XZ and XY slices of the truth, ours, torch-tomogram and ours
    misaligned by 1 px RMS (seed 0, noise 1x); and the per-series plot with a preview."""
    import os
    import tempfile

    import mrcfile
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tiltxcorr_scipion.convert.mrc import MrcStack
    from tiltxcorr_scipion.options import CoarseOptions
    from tiltxcorr_scipion.pipeline import (
        TiltSeriesViews,
        align_views,
        output_paths,
        write_outputs,
    )

    sim = simulate_volume_series(shape=(255, 255), n_views=41, tilt_axis_angle=0.0,
                                 specimen="cell", thickness=50.0, contrast="stem", jumps="walk",
                                 jump_size=2.0, noise=1.0, seed=0, keep_volume=True)
    ours = reconstruct(sim.views, shift_transforms(sim.shifts), sim.tilt_angles, 0.0,
                       thickness=63)
    anchor = torch_tomogram(sim.views, sim.tilt_angles, sim.shifts, tuple(ours.shape))
    error = torch.randn(sim.shifts.shape, generator=torch.Generator().manual_seed(0))
    error = error / error.norm(dim=1).square().mean().sqrt()
    off = reconstruct(sim.views, shift_transforms(sim.shifts + error), sim.tilt_angles, 0.0,
                      thickness=63)
    figure = Figure(figsize=(10, 5.2), dpi=100)
    axes = figure.subplots(2, 4, gridspec_kw={"height_ratios": [1, 2.2]})
    truth = common_boxes(ours, sim.volume, margin=0)[1]
    for column, (title, volume) in enumerate((("truth", None), ("ours", ours),
                                             ("torch-tomogram 0.0.2", anchor),
                                             ("ours, 1 px RMS misaligned", off))):
        a = truth if volume is None else common_boxes(volume, sim.volume, margin=0)[0]
        a = lowpass(a, 1.0)
        xz, xy = a[:, a.shape[1] // 2, :], a[a.shape[0] // 2]
        for row, image in enumerate((xz, xy)):
            low, high = np.percentile(image.numpy(), [0.5, 99.5])
            axes[row, column].imshow(image.numpy(), cmap="gray", vmin=low, vmax=high,
                                     origin="lower", interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(title, fontsize=10)
    axes[0, 0].set_ylabel("XZ", fontsize=9)
    axes[1, 0].set_ylabel("XY (central section)", fontsize=9)
    figure.suptitle("41 views +-60 deg, noise 1x, low-passed (sd 1 voxel); the slab's "
                    "central 51 sections", fontsize=10)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(os.path.join(folder, "reconstruction_slices.png"), dpi=100)

    cryo = simulate_volume_series(shape=(512, 512), n_views=61, tilt_axis_angle=85.0,
                                  specimen="cell", thickness=60.0, contrast="cryo",
                                  jumps="walk", jump_size=2.0, noise=1.0, gold_beads=4, seed=0)
    with tempfile.TemporaryDirectory() as work:
        stack = os.path.join(work, "TS_01.st")
        with mrcfile.new(stack) as mrc:
            mrc.set_data(cryo.views.numpy())
            mrc.set_image_stack()
        views = TiltSeriesViews.from_stack(MrcStack.open(stack), cryo.tilt_angles.numpy())
        outcome = align_views(views, CoarseOptions(), 85.0)
        outcome.transforms[40, 0, 2] += 2.0  # view 41 moved by 2 px, for the figure
        paths = output_paths(work, "TS_01", imod=False, preview=True)
        write_outputs(outcome, paths, preview_thickness=128)
        os.replace(paths["png"], os.path.join(folder, "reconstruction_plot.png"))
    print(f"wrote {folder}/reconstruction_slices.png, {folder}/reconstruction_plot.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--anchor-tiles", type=int, default=2)
    parser.add_argument("--figures", metavar="FOLDER",
                        help="only draw the figures of docs/reconstruction.md into FOLDER")
    args = parser.parse_args()
    import torch_tomogram  # noqa: F401  (the anchor must be there: fail before any work)

    print(f"# bench_reconstruct {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    if args.figures:
        figures(args.figures)
        return
    if not args.skip_quality:
        quality(args.seeds)
    if not args.skip_check:
        check(args.seeds)
    if not args.skip_speed:
        speed(args.anchor_tiles)


if __name__ == "__main__":
    main()
