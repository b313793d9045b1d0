"""Scoreboard for the coarse engine's self-check (issue 16): many worlds, three aligners.

Run from the repository root (the benchmark extra brings torch-tiltxcorr and h5py):

    python benchmarks/bench_selfcheck.py                 # every family, seeds 1 2 3
    python benchmarks/bench_selfcheck.py --quick         # one seed, small sizes: a dry run
    python benchmarks/bench_selfcheck.py --family real-needle --json figures.json

Every series is aligned in this process, side by side, by
- **defaults**: `align_tilt_series` with its default options;
- **plain**: the plain IMOD path, `adaptive=False, fixed_pattern="off"`;
- **torch-tiltxcorr** 0.6.0, called as `bench_conditions.torch_tiltxcorr` (low-pass 0.25
  cycles/px). Its shifts have our sign (content moves by `+shift`) but its image centre is
  `(h // 2, w // 2)`, not IMOD's `((h - 1) / 2, (w - 1) / 2)`: on even sizes that changes
  its shifts by a constant plus a `cos t` term across the axis (facts section 13), a 3-D
  translation of the specimen, which neither figure below sees;
- and, where a family says so, settings chosen by hand (e.g. `binning=4`).

Figures per series (per seed), for each aligner:
- **RMS** (px): the fair error against the truth, after removing what no tilt series fixes
  (one constant and a 3-D translation, `simulate.alignment_error`); for the real needle,
  against etspy's alignment (a reference, not truth); for etspy's aligned needle, against
  zero;
- **NCC**: `adjacent_view_ncc`, truth-free: the mean normalised cross-correlation of
  neighbouring views in tilt order after alignment, band-passed like the correlation, in
  the better of two frames (`best_frame_ncc`: the outer view of each pair stretched by
  `cos` ratios like a slab, or not, like a compact specimen). The input's own figure (shifts
  zero) is given too;
- **time** (s), and for the defaults the self-check's verdict (`result.unreliable`,
  `result.unreliable_reason`) and its truth-free measure, when the engine has them.

Flags (the issue's targets): "SILENT" = defaults' RMS > 3 px without the unreliable flag;
"NCC<input", "NCC<plain" = defaults' NCC below the unaligned input's or the plain path's by
more than 0.0002; "raw NCC<input", "raw NCC<plain" = the same with `raw_ncc` (the raw views,
unstretched: the scale of the issue's own figures); "truth NCC<plain" = on a simulated world, the TRUE shifts' NCC is below
the plain path's too (so no correct alignment meets "NCC<plain" there: the plain chain's
NCC rewards what it locked on). The summary at the end counts them and checks the other
targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.alignment.fourier import imod_filter
from tiltxcorr_scipion.alignment.geometry import axis_directions, stretch_images
from tiltxcorr_scipion.options import CoarseOptions
from tiltxcorr_scipion.simulate import simulate_tilt_series
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_conditions  # noqa: E402  (its torch-tiltxcorr call and its conditions)
import real_data  # noqa: E402

PLAIN = dict(adaptive=False, fixed_pattern="off")
NCC_TOLERANCE = 0.0002
SILENT_RMS = 3.0
MAX_TILT = 82.0
#: The self-check's truth-free measure on a result: each view's held-out residual (px).
MEASURE_FIELDS = ("residual",)


# ---- the truth-free figure -------------------------------------------------------------

def adjacent_view_ncc(views: torch.Tensor, tilt_angles, tilt_axis_angle: float,
                      shifts: torch.Tensor | None = None, *, stretch: bool = True,
                      band_pass: bool = True, chunk: int = 8) -> float:
    """Mean NCC of neighbouring views in tilt order after alignment (truth-free).

    Each view `(b, h, w)` is band-passed with the correlation's default filter
    (`CoarseOptions`: IMOD's sigma1 0.03, radius2 0.25, sigma2 0.05, cycles/px) after
    mirroring 32 px at its edges; each pair of consecutive views in tilt order is moved by
    its `shifts` `(b, 2)` `(dy, dx)` (content moves by `+shift`; None: zero, the unaligned
    input), the higher-|tilt| view of the pair stretched across the tilt axis by
    `cos(inner) / cos(outer)` about the image centre onto the other; their NCC is taken
    over the pixels both views cover (`stretch=False`: no stretch, the frame of a compact
    specimen, which does not foreshorten; `band_pass=False`: the raw views). Returns the mean
    over the `b - 1` pairs.
    """
    views = views.to(torch.float32)
    b, h, w = views.shape
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).flatten()
    shifts = torch.zeros(b, 2) if shifts is None else shifts.detach().cpu().to(torch.float64)
    filtered = _band_pass(views) if band_pass else views
    order = torch.argsort(angles).tolist()
    pairs = [(i, j) if abs(angles[i]) <= abs(angles[j]) else (j, i)
             for i, j in zip(order[:-1], order[1:], strict=True)]  # (inner, outer)
    _, across = axis_directions(tilt_axis_angle)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    scores = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        inner = torch.tensor([p[0] for p in part])
        outer = torch.tensor([p[1] for p in part])
        factors = torch.cos(torch.deg2rad(angles[inner])) / torch.cos(torch.deg2rad(angles[outer]))
        if not stretch:
            factors = torch.ones_like(factors)
        ones = torch.ones(len(part), dtype=torch.float64)
        a = stretch_images(filtered[inner], ones, across, centre, pre_shifts=shifts[inner])
        c = stretch_images(filtered[outer], factors, across, centre, pre_shifts=shifts[outer])
        both = _covered(ones, shifts[inner], across, centre, h, w) \
            & _covered(factors, shifts[outer], across, centre, h, w)
        for k in range(len(part)):
            x, y = a[k][both[k]].double(), c[k][both[k]].double()
            x, y = x - x.mean(), y - y.mean()
            scores.append(float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-30)))
    return sum(scores) / len(scores)


def best_frame_ncc(world, shifts: torch.Tensor | None = None) -> float:
    """`adjacent_view_ncc` in the frame where neighbours look more alike: stretched (a slab,
    which tilting foreshortens across the axis) or not (a compact specimen, which it does not).

    Scored in the stretched frame alone, etspy's catalyst would rate its true alignment 0.498
    and a path 22 px off 0.555 (unstretched: 0.884 and 0.669); every aligner and the input
    are scored the same way.
    """
    return max(adjacent_view_ncc(world.views, world.tilt_angles, world.tilt_axis_angle, shifts,
                                 stretch=stretch) for stretch in (True, False))


def raw_ncc(world, shifts: torch.Tensor | None = None) -> float:
    """The issue's own NCC: `adjacent_view_ncc` of the raw views, unstretched.

    Not band-passed, so on the scale of the issue's figures: it gives etspy's aligned
    needle, unaligned, 0.99864, the issue's figure for its already-aligned STEM series.
    Low frequencies dominate it, so it rewards overlap of the specimen's bulk more than
    of its detail.
    """
    return adjacent_view_ncc(world.views, world.tilt_angles, world.tilt_axis_angle, shifts,
                             stretch=False, band_pass=False)


def _band_pass(views: torch.Tensor, mirror: int = 32) -> torch.Tensor:
    b, h, w = views.shape
    py, px = min(mirror, h - 1), min(mirror, w - 1)
    padded = torch.nn.functional.pad(views[:, None], (px, px, py, py), mode="reflect")[:, 0]
    hp, wp = padded.shape[1:]
    options = CoarseOptions()
    response = imod_filter(torch.fft.fftfreq(hp, dtype=torch.float64),
                           torch.fft.rfftfreq(wp, dtype=torch.float64),
                           high_pass_sigma=options.high_pass_sigma,
                           high_pass_radius=options.high_pass_radius,
                           low_pass_cutoff=options.low_pass_cutoff,
                           low_pass_sigma=options.low_pass_sigma).to(torch.float32)
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * response, s=(hp, wp))
    return out[:, py:py + h, px:px + w].contiguous()


def _covered(factors, shifts, across, centre, h, w) -> torch.Tensor:
    """`(n, h, w)` bool: output pixels whose source (as `stretch_images` maps them) is inside."""
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    rel = torch.stack([rows - centre[0], cols - centre[1]], dim=-1)  # (h, w, 2)
    across_part = rel @ across  # (h, w)
    scale = (1.0 / factors - 1.0)[:, None, None, None]  # (n, 1, 1, 1)
    source = centre + rel[None] + scale * across_part[None, ..., None] * across \
        - shifts[:, None, None, :]
    return ((source[..., 0] >= -1e-6) & (source[..., 0] <= h - 1 + 1e-6)
            & (source[..., 1] >= -1e-6) & (source[..., 1] <= w - 1 + 1e-6))


# ---- worlds ----------------------------------------------------------------------------

@dataclass
class World:
    """One tilt series to align, and how to score shifts found on it."""

    family: str
    name: str
    seed: int | None
    views: torch.Tensor
    tilt_angles: torch.Tensor
    tilt_axis_angle: float
    error: Callable[[torch.Tensor], float]
    truth: str = "truth"
    by_hand: dict = field(default_factory=dict)  # label -> engine options
    repeats: int = 1  # timing cases: best of
    aligners: tuple = ("defaults", "plain", "torch-tiltxcorr")
    true_shifts: torch.Tensor | None = None  # simulated worlds: the NCC the truth scores


def _sized(name: str, views: torch.Tensor) -> str:
    b, h, w = views.shape
    return f"{name}, {b} x {h} x {w}"


def _from_volume(family, name, seed, series, **kw) -> World:
    return World(family, _sized(name, series.views), seed, series.views, series.tilt_angles,
                 series.tilt_axis_angle, series.alignment_error, true_shifts=series.shifts,
                 **kw)


def _from_real(family, name, series, **kw) -> World:
    return World(family, name, None, series.views, series.tilt_angles, series.tilt_axis_angle,
                 series.alignment_error, truth=series.truth, **kw)


def fam_simulator(seeds, quick) -> Iterator[World]:
    """The project's own simulator (tiltxcorr_scipion.simulate), a few hard-data conditions."""
    for name in ("clean, thin", "fixed pattern 1x", "noise 15x", "one blocked view at +54"):
        for seed in seeds:
            sim, blocked = bench_conditions.simulate(name, seed)
            if quick:  # 256 px instead of 512
                sim = simulate_tilt_series(seed=seed, blocked_views=blocked, **{
                    **bench_conditions.BASE, **bench_conditions.CONDITIONS[name][0],
                    "shape": (256, 256)})
            yield World("simulator", _sized(name, sim.images), seed, sim.images,
                        sim.tilt_angles, sim.tilt_axis_angle,
                        lambda s, sim=sim, blocked=blocked: sim.alignment_error(s, exclude=blocked),
                        truth="truth (blocked views left out)" if blocked else "truth",
                        true_shifts=sim.shifts)


def _size(quick, full):
    return (256, 256) if quick else full


VOLUME_VARIANTS = {
    # name: (simulate_volume_series keywords, quick keywords)
    "cryo cell, drift, noise 2x": (
        dict(shape=(512, 512), noise=2.0, jumps="walk"), dict(shape=(256, 256))),
    "cryo cell 60 px thick, dose 30/px, gold, dose-symmetric, axis -7": (
        dict(shape=(384, 512), dose=30.0, gold_beads=8, thickness=60.0, order="dose-symmetric",
             tilt_axis_angle=-7.0), dict(shape=(192, 256))),
    "STEM needle, large jumps (8 px sd), -76..76, axis 90": (
        dict(shape=(256, 256), specimen="needle", contrast="stem", jumps="large", jump_size=8.0,
             n_views=77, tilt_range=(-76.0, 76.0), tilt_axis_angle=90.0, noise=0.3), {}),
    "STEM cluster, large jumps (12 px sd), axis 0": (
        dict(shape=(256, 256), specimen="cluster", contrast="stem", jumps="large", n_views=61,
             tilt_axis_angle=0.0, noise=0.5), {}),
}


def fam_volume(seeds, quick) -> Iterator[World]:
    """The independent image model (tiltxcorr_scipion.simulate_volume), several variants."""
    for name, (kwargs, small) in VOLUME_VARIANTS.items():
        for seed in seeds:
            series = simulate_volume_series(seed=seed, **{**kwargs, **(small if quick else {})})
            yield _from_volume("volume", name, seed, series)


def fam_prealigned(seeds, quick) -> Iterator[World]:
    """Pre-aligned series (neighbours within 1 px) and an aligned stack run again."""
    variants = {
        "cryo cell pre-aligned (within 1 px), noise 1x": dict(
            shape=_size(quick, (512, 512)), jumps="pre-aligned", noise=1.0),
        "STEM needle pre-aligned, -82..82": dict(
            shape=(64, 64), specimen="needle", contrast="stem", jumps="pre-aligned", n_views=83,
            tilt_range=(-82.0, 82.0), tilt_axis_angle=90.0, noise=0.2),
        "cryo cell already aligned (zero shifts), noise 0.5x": dict(
            shape=(256, 256), jumps="none", noise=0.5),
    }
    for name, kwargs in variants.items():
        for seed in seeds:
            yield _from_volume("pre-aligned", name, seed, simulate_volume_series(seed=seed,
                                                                                 **kwargs))


def fam_full_range(seeds, quick) -> Iterator[World]:
    """+-90 series (2-degree steps): views beyond 82 degrees left out, as the CLI does."""
    variants = {
        "STEM cluster -90..90, large jumps": dict(
            specimen="cluster", contrast="stem", jumps="large", noise=0.5),
        "STEM needle -90..90, drift, axis 90": dict(
            specimen="needle", contrast="stem", jumps="walk", jump_size=3.0, noise=0.3,
            tilt_axis_angle=90.0),
    }
    for name, kwargs in variants.items():
        for seed in seeds:
            series = simulate_volume_series(seed=seed, shape=(256, 256), n_views=91,
                                            tilt_range=(-90.0, 90.0), **kwargs)
            yield _from_volume("full-range", name + " (|tilt| <= 82 of 91 views)", seed,
                               series.within(MAX_TILT))


def fam_heavy_noise(seeds, quick) -> Iterator[World]:
    """Heavy noise that a coarse binning set by hand can align."""
    variants = {
        "STEM-contrast cell, noise 15x": dict(contrast="stem", noise=15.0),
        "cryo cell, large defocus (CTF zero 0.06/px), noise 15x": dict(ctf_first_zero=0.06,
                                                                       noise=15.0),
    }
    for name, kwargs in variants.items():
        for seed in seeds:
            series = simulate_volume_series(seed=seed, shape=_size(quick, (512, 512)), **kwargs)
            yield _from_volume("heavy-noise", name, seed, series,
                               by_hand={"binning=4": dict(binning=4)})


def fam_hopeless(seeds, quick) -> Iterator[World]:
    """Noise no setting aligns: it must be flagged unreliable."""
    for seed in seeds:
        series = simulate_volume_series(seed=seed, shape=_size(quick, (512, 512)), noise=50.0)
        yield _from_volume("hopeless-noise", "cryo cell, noise 50x", seed, series,
                           by_hand={"binning=4": dict(binning=4)})


def fam_real_needle(seeds, quick) -> Iterator[World]:
    """The real STEM needle (etspy 1.3.0), raw and as etspy aligned it."""
    yield _from_real("real-needle", "real STEM needle, 77 x 256 (RMS vs etspy)",
                     real_data.load_needle())
    yield _from_real("real-needle", "the needle aligned by etspy, run again (RMS vs 0)",
                     real_data.load_needle_aligned())


def fam_catalyst(seeds, quick) -> Iterator[World]:
    """etspy's simulated catalyst, +-90, views beyond 82 left out (83 of 90)."""
    yield _from_real("catalyst", "catalyst as stored (aligned), 83 x 600", real_data.load_catalyst())
    for seed in seeds[:2]:
        world = _from_real("catalyst", "catalyst, known jitter +-5 px, 83 x 600",
                           real_data.load_catalyst(jitter=5.0, seed=seed))
        world.seed = seed
        yield world


def fam_timing(seeds, quick) -> Iterator[World]:
    """Time: 61 x 1024 x 1024 (the project's simulator, as bench_conditions' speed line) and
    a small 83 x 64 x 64 series (best of 3)."""
    side = 512 if quick else 1024
    sim = simulate_tilt_series(shape=(side, side), n_views=61, noise=1.0, thickness=10.0,
                               blob_density=1 / 600, seed=1)
    yield World("timing", f"61 x {side} x {side}, project's simulator", 1, sim.images,
                sim.tilt_angles, sim.tilt_axis_angle, sim.alignment_error)
    series = simulate_volume_series(shape=(64, 64), specimen="needle", contrast="stem",
                                    jumps="pre-aligned", n_views=83, tilt_range=(-82.0, 82.0),
                                    tilt_axis_angle=90.0, noise=0.2, seed=1)
    yield _from_volume("timing", "pre-aligned STEM needle (best of 3)", 1, series, repeats=3)


FAMILIES = {
    "simulator": fam_simulator,
    "volume": fam_volume,
    "pre-aligned": fam_prealigned,
    "full-range": fam_full_range,
    "heavy-noise": fam_heavy_noise,
    "hopeless-noise": fam_hopeless,
    "real-needle": fam_real_needle,
    "catalyst": fam_catalyst,
    "timing": fam_timing,
}


# ---- running and scoring ----------------------------------------------------------------

def _run(world: World, label: str):
    """(shifts, seconds, result or None, error text) of one aligner on one world."""
    views, angles, axis = world.views, world.tilt_angles, world.tilt_axis_angle
    if label == "torch-tiltxcorr":
        def call():
            return None, bench_conditions.torch_tiltxcorr(views, angles, axis)
    else:
        options = {"defaults": {}, "plain": PLAIN}.get(label, world.by_hand.get(label))

        def call():
            result = align_tilt_series(views, angles, axis, **options)
            return result, result.shifts
    best, out = math.inf, (None, None)
    for _ in range(world.repeats):
        start = time.perf_counter()
        try:
            out = call()
        except Exception as error:  # a refusal is a figure too
            return None, time.perf_counter() - start, None, f"{type(error).__name__}: {error}"
        best = min(best, time.perf_counter() - start)
    result, shifts = out
    return shifts, best, result, ""


def self_check(result) -> tuple[bool | None, str, str]:
    """The self-check's verdict, its reason and its measure (and the path it kept)."""
    if result is None:
        return None, "", ""
    unreliable = getattr(result, "unreliable", None)
    reason = getattr(result, "unreliable_reason", "") or ""
    if getattr(result, "path", ""):
        reason = f"kept {result.path}" + (f"; {reason}" if reason else "")
    measure = ""
    for name in MEASURE_FIELDS:
        value = getattr(result, name, None)
        if value is None:
            continue
        if torch.is_tensor(value) and value.numel() > 1:
            finite = value[torch.isfinite(value)].double()
            if finite.numel():
                measure = f"{name} median {finite.median():.2f} / max {finite.max():.2f} px"
        else:
            measure = f"{name} {float(value):.3g}"
        break
    return (None if unreliable is None else bool(unreliable)), str(reason), measure


def score(world: World) -> dict:
    row = dict(family=world.family, world=world.name, seed=world.seed, truth=world.truth,
               n_views=len(world.views), shape=list(world.views.shape[1:]),
               ncc_input=best_frame_ncc(world), raw_input=raw_ncc(world), runs={},
               ncc_truth=None if world.true_shifts is None
               else best_frame_ncc(world, world.true_shifts.detach().cpu()),
               raw_truth=None if world.true_shifts is None
               else raw_ncc(world, world.true_shifts.detach().cpu()))
    for label in (*world.aligners, *world.by_hand):
        shifts, seconds, result, failed = _run(world, label)
        run = dict(seconds=seconds, failed=failed)
        if shifts is not None:
            run["rms"] = float(world.error(shifts.detach().cpu()))
            run["ncc"] = best_frame_ncc(world, shifts.detach().cpu())
            run["raw_ncc"] = raw_ncc(world, shifts.detach().cpu())
        unreliable, reason, measure = self_check(result)
        run.update(unreliable=unreliable, reason=reason, measure=measure)
        if result is not None:
            run["notes"] = list(result.series_notes)
        row["runs"][label] = run
    row["flags"] = flags(row)
    return row


def flags(row: dict) -> list[str]:
    out = []
    defaults, plain = row["runs"].get("defaults", {}), row["runs"].get("plain", {})
    if defaults.get("failed"):
        out.append("defaults refused")
        return out
    if defaults.get("rms", 0.0) > SILENT_RMS and not defaults.get("unreliable"):
        out.append("SILENT")
    if "ncc" in defaults:
        if defaults["ncc"] < row["ncc_input"] - NCC_TOLERANCE:
            out.append("NCC<input")
        if "ncc" in plain and defaults["ncc"] < plain["ncc"] - NCC_TOLERANCE:
            out.append("NCC<plain")
    if "raw_ncc" in defaults:
        if defaults["raw_ncc"] < row["raw_input"] - NCC_TOLERANCE:
            out.append("raw NCC<input")
        if "raw_ncc" in plain and defaults["raw_ncc"] < plain["raw_ncc"] - NCC_TOLERANCE:
            out.append("raw NCC<plain")
    truth = row.get("ncc_truth")
    if truth is not None and "ncc" in plain and truth < plain["ncc"] - NCC_TOLERANCE:
        # no figure the views confirm rewards this: the true shifts score below plain too
        out.append("truth NCC<plain")
    return out


# ---- printing -----------------------------------------------------------------------------

def _rms(value) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _cell(run: dict) -> str:
    if run.get("failed"):
        return f"refused ({run['failed'][:60]})"
    return f"{_rms(run['rms'])} / {run['ncc']:.5f} / {run['raw_ncc']:.5f} / {run['seconds']:.2f}"


def _verdict(run: dict) -> str:
    if run.get("failed") or run.get("unreliable") is None:
        return "–" + (f"; {run['measure']}" if run.get("measure") else "")
    text = (f"**unreliable**: {run['reason'][:100]}" if run["unreliable"]
            else "reliable" + (f" ({run['reason']})" if run.get("reason") else ""))
    return text + (f"; {run['measure']}" if run.get("measure") else "")


def print_family(name: str, rows: list[dict]) -> None:
    labels = list(dict.fromkeys(label for row in rows for label in row["runs"]))
    print(f"\n### {name}: {FAMILIES[name].__doc__.splitlines()[0]}\n")
    print("| world | seed | NCC / raw NCC unaligned | NCC / raw NCC true shifts | " + " | ".join(
        f"{label}: RMS px / NCC / raw NCC / s" for label in labels) + " | self-check (defaults) | flags |")
    print("|---" * (len(labels) + 6) + "|")
    for row in rows:
        cells = [_cell(row["runs"][label]) if label in row["runs"] else "" for label in labels]
        seed = "–" if row["seed"] is None else str(row["seed"])
        truth = ("–" if row.get("ncc_truth") is None
                 else f"{row['ncc_truth']:.5f} / {row['raw_truth']:.5f}")
        print(f"| {row['world']} | {seed} | {row['ncc_input']:.5f} / {row['raw_input']:.5f} | "
              f"{truth} | "
              + " | ".join(cells)
              + f" | {_verdict(row['runs'].get('defaults', {}))} | "
              + (", ".join(row["flags"]) or "ok") + " |", flush=True)
    truths = sorted({row["truth"] for row in rows})
    print(f"\nRMS against: {'; '.join(truths)}.")


def _print_ncc_misses(rows: list[dict], prefix: str, key: str, input_key: str,
                      truth_key: str, title: str) -> None:
    """The series whose defaults' NCC (`key` of a run) misses the target, and how many of
    them the true shifts miss too (their NCC below the plain path's)."""
    misses = [r for r in rows if {f"{prefix}NCC<input", f"{prefix}NCC<plain"} & set(r["flags"])]
    plain_ncc = [r["runs"]["plain"].get(key, math.nan) for r in misses]
    truth_too = sum(1 for r, plain in zip(misses, plain_ncc, strict=True)
                    if r.get(truth_key) is not None and r[truth_key] < plain - NCC_TOLERANCE)
    print(f"{title}: {len(misses)} of {len(rows)}" + "".join(
        f"\n  - {r['world']} seed {r['seed']}: defaults {r['runs']['defaults'][key]:.5f}, "
        f"input {r[input_key]:.5f}, plain {plain:.5f}"
        + ("" if r.get(truth_key) is None else f", true shifts {r[truth_key]:.5f}")
        + f"; RMS defaults {_rms(r['runs']['defaults'].get('rms', math.nan))}, plain "
        f"{_rms(r['runs']['plain'].get('rms', math.nan))} px"
        for r, plain in zip(misses, plain_ncc, strict=True)))
    print(f"  - of these, the true shifts' NCC is below the plain path's too: {truth_too}")


def print_summary(rows: list[dict]) -> None:
    print("\n### Against the issue's targets\n")
    silent = [r for r in rows if "SILENT" in r["flags"]]
    print(f"- silent failures (defaults RMS > {SILENT_RMS:g} px, not flagged): {len(silent)} of "
          f"{len(rows)} series" + "".join(f"\n  - {r['world']} seed {r['seed']}: "
                                          f"{_rms(r['runs']['defaults']['rms'])} px"
                                          for r in silent))
    _print_ncc_misses(rows, "", "ncc", "ncc_input", "ncc_truth",
                      f"- defaults' NCC below the input's or the plain path's by > {NCC_TOLERANCE}")
    _print_ncc_misses(rows, "raw ", "raw_ncc", "raw_input", "raw_truth",
                      "- the same on the raw views (the issue's own scale, `raw_ncc`)")
    for r in rows:
        d = r["runs"].get("defaults", {})
        if r["family"] == "real-needle" and "rms" in d and r["seed"] is None \
                and "etspy" in r["truth"] and "reference" in r["truth"]:
            print(f"- real needle: defaults {_rms(d['rms'])} px vs etspy (target <= 0.75), "
                  f"NCC {d['ncc']:.5f}, raw {d['raw_ncc']:.5f} (target >= 0.9995 raw); plain "
                  f"{_rms(r['runs']['plain']['rms'])} px, {r['runs']['plain']['ncc']:.5f}, raw "
                  f"{r['runs']['plain']['raw_ncc']:.5f} (target: defaults at least as good on "
                  "both)")
        if r["family"] == "heavy-noise" and "rms" in d and "rms" in r["runs"]["binning=4"]:
            ratio = d["rms"] / max(r["runs"]["binning=4"]["rms"], 1e-9)
            print(f"- heavy noise, {r['world']} seed {r['seed']}: defaults {_rms(d['rms'])} px, "
                  f"binning=4 {_rms(r['runs']['binning=4']['rms'])} px: ratio {ratio:.2f} "
                  f"(target <= 1.5)")
        if r["family"] == "hopeless-noise":
            print(f"- hopeless noise seed {r['seed']}: defaults flagged unreliable: "
                  f"{d.get('unreliable')}")
        if r["family"] == "timing" and "seconds" in d:
            t = {k: v["seconds"] for k, v in r["runs"].items()}
            if r["world"].startswith("61 x"):
                print(f"- speed, {r['world']}: defaults {t['defaults']:.2f} s, plain "
                      f"{t['plain']:.2f} s, torch-tiltxcorr {t['torch-tiltxcorr']:.2f} s: "
                      f"{t['torch-tiltxcorr'] / t['defaults']:.1f}x faster (target >= 15x)")
            else:
                print(f"- speed, {r['world']}: defaults {t['defaults']:.2f} s, plain "
                      f"{t['plain']:.2f} s: {t['defaults'] / t['plain']:.1f}x the plain path's "
                      f"time (target <= 3x)")


def _warm_up() -> None:
    """First calls pay for thread pools and lazy initialisation: pay it before timing."""
    series = simulate_volume_series(shape=(64, 64), n_views=9, thickness=8.0, seed=0)
    world = _from_volume("warm-up", "", 0, series)
    for label in world.aligners:
        _run(world, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, small sizes: a dry run of every family")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help="run this family only (may be repeated)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    names = args.family or list(FAMILIES)
    from importlib.metadata import version

    started = time.perf_counter()
    print(f"# Self-check scoreboard, {datetime.date.today()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, "
          f"torch {torch.__version__}, torch-tiltxcorr {version('torch-tiltxcorr')}; seeds "
          f"{seeds}{'; --quick (small sizes)' if args.quick else ''}")
    print("Cells: RMS px (fair, see each table's note) / mean adjacent-view NCC after alignment"
          " / seconds.")
    _warm_up()
    rows = []
    for name in names:
        family_rows = [score(world) for world in FAMILIES[name](seeds, args.quick)]
        print_family(name, family_rows)
        rows.extend(family_rows)
    print_summary(rows)
    print(f"\nbenchmark run time {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
