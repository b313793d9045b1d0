"""The engine on a CUDA GPU: tests, speed, memory and accuracy, against torch-tiltxcorr 0.6.0.

Prepared for one call on a GPU machine (its python3 has torch + CUDA, numpy, scipy,
pandas and pytest, no network): carry the wheels of torch-tiltxcorr and its small
dependencies (``scripts/gpu_wheels.sh`` puts them in ``.whl/``), then run::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \\
        PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --out $OUT

In order, within about 8 minutes on an H200:

1. the engine's CUDA tests (``tests/engine/test_cuda.py``: coarse and fine results on
   CUDA equal the CPU's within 0.01 px), with pytest, without the Scipion conftest;
2. per size (61 x 1024^2, 61 x 4096^2 and 121 x 4096^2 float32), this engine and
   torch-tiltxcorr on the same GPU and the same simulated series: the host-to-device
   copy timed apart, then a warm-up, then the fastest of ``--repeats`` timed runs
   (``torch.cuda.synchronize`` around each), peak GPU memory above the input
   (``torch.cuda.max_memory_allocated``) and RMS error against the truth after
   removing one constant offset;
3. CPU against CUDA on the same 61 x 1024^2 series (max difference, px), and the fine
   alignment on CUDA (time, axis and offset errors).

Prints a markdown table (date, GPU, torch and CUDA versions) and writes it to
``OUT/gpu_report.md``. Targets: 61 x 4096^2 in <= 1.0 s, >= 20x faster than
torch-tiltxcorr, peak GPU memory <= 2x the input, CPU and CUDA within 0.01 px.
``--device cpu --quick`` runs the same steps small on a CPU, to check the script.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_engine import shift_errors  # benchmarks/ is on the path of a script run

from tiltxcorr_scipion.alignment import align_tilt_series, fiducialless_alignment
from tiltxcorr_scipion.simulate import simulate_tilt_series

SIZES = [(61, 1024), (61, 4096), (121, 4096)]
QUICK_SIZES = [(21, 256), (21, 512)]


def simulated(n_views: int, size: int, device: torch.device, seed: int = 1):
    """A series of `n_views` x `size`^2 on the host: a simulation of at most 1024 px, upsampled
    4x (on `device`, a few views at a time) with its shifts (simulating 4096^2 views directly
    takes too long). Upsampling by 4 about pixel centres keeps the image centre in place."""
    small = min(size, 1024)
    sim = simulate_tilt_series(shape=(small, small), n_views=n_views, max_shift=20.0,
                               thickness=10.0, noise=1.0, seed=seed, blob_density=1 / 600)
    factor = size // small
    images = sim.images
    if factor > 1:
        images = torch.empty(n_views, size, size, dtype=torch.float32)
        for start in range(0, n_views, 8):
            chunk = sim.images[start:start + 8, None].to(device)
            images[start:start + 8] = torch.nn.functional.interpolate(
                chunk, scale_factor=factor, mode="bicubic", align_corners=False)[:, 0].cpu()
    return images.contiguous(), sim.tilt_angles, sim.tilt_axis_angle, sim.shifts * factor


def rms(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """RMS error (px) after removing one constant offset, as `bench_engine` measures it."""
    return shift_errors(estimate, truth)[0]


def timed(run, device: torch.device, repeats: int):
    """Warm up once, then the fastest of `repeats` runs: (seconds, result, peak bytes)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    result = run()  # warm-up: kernels, cuFFT plans, allocator
    sync()
    best = float("inf")
    peak = 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sync()
        started = time.perf_counter()
        result = run()
        sync()
        best = min(best, time.perf_counter() - started)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) - base)
    return best, result, peak


def torch_tiltxcorr():
    try:
        from torch_tiltxcorr import tiltxcorr as theirs
    except ImportError as error:
        print(f"torch-tiltxcorr not importable ({error}): its columns stay empty", flush=True)
        return None
    return theirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes (to check the script)")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"# The engine on {name}")
    say(f"{datetime.date.today()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{os.cpu_count()} CPUs")

    if not args.no_tests:
        env = {**os.environ, "TILTXCORR_TEST_DEVICE": args.device}
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--confcutdir=tests/engine", "tests/engine/test_cuda.py"],
            capture_output=True, text=True, env=env)
        say("\n## Engine tests on this device (tests/engine/test_cuda.py)\n")
        say("```\n" + "\n".join((tests.stdout + tests.stderr).strip().splitlines()[-15:])
            + "\n```")

    theirs = torch_tiltxcorr()
    say("\n## Speed, memory and accuracy, same series, same device\n")
    say("| views x size | copy to device (s) | ours (s) | torch-tiltxcorr (s) | speed-up | "
        "ours peak memory / input | theirs peak memory / input | RMS ours / theirs (px) |")
    say("|---|---|---|---|---|---|---|---|")
    for n_views, size in (QUICK_SIZES if args.quick else SIZES):
        images, angles, axis, truth = simulated(n_views, size, device)
        input_bytes = images.numel() * 4
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        on_device = images.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        copy = time.perf_counter() - started
        del images
        ours_s, ours, ours_peak = timed(
            lambda d=on_device, t=angles, a=axis: align_tilt_series(d, t, a).shifts, device,
            args.repeats)
        row = (f"| {n_views} x {size}^2 | {copy:.2f} | {ours_s:.3f} | ")
        if theirs is not None:
            try:
                theirs_s, their_shifts, theirs_peak = timed(
                    lambda d=on_device, t=angles, a=axis: theirs(
                        d, t.to(device), a, pixel_spacing_angstroms=1.0, lowpass_angstroms=4.0),
                    device, 1 if size > 1024 else args.repeats)
                row += (f"{theirs_s:.2f} | {theirs_s / ours_s:.1f}x | "
                        f"{ours_peak / input_bytes:.2f} | {theirs_peak / input_bytes:.2f} | "
                        f"{rms(ours, truth):.3f} / {rms(their_shifts, truth):.3f} |")
            except RuntimeError as error:  # e.g. out of memory at 121 x 4096^2
                row += (f"failed: {str(error).splitlines()[0][:60]} | - | "
                        f"{ours_peak / input_bytes:.2f} | - | {rms(ours, truth):.3f} / - |")
        else:
            row += f"- | - | {ours_peak / input_bytes:.2f} | - | {rms(ours, truth):.3f} / - |"
        say(row)
        del on_device
        if device.type == "cuda":
            torch.cuda.empty_cache()

    say("\n## The same series on the CPU and on this device\n")
    n_views, size = QUICK_SIZES[-1] if args.quick else SIZES[0]
    images, angles, axis, truth = simulated(n_views, size, device, seed=2)
    cpu = align_tilt_series(images, angles, axis).shifts
    dev = align_tilt_series(images.to(device), angles, axis).shifts.cpu()
    say(f"coarse, {n_views} x {size}^2: max |CUDA - CPU| = {float((dev - cpu).abs().max()):.4f} px "
        f"(RMS against the truth: {rms(dev, truth):.3f} px)")
    sim = simulate_tilt_series(shape=(min(size, 1024),) * 2, n_views=n_views, max_shift=10.0,
                               thickness=10.0, noise=1.0, seed=3, tilt_angle_offset=2.0)
    fine_s, fine, _ = timed(lambda: fiducialless_alignment(sim.images.to(device),
                                                           sim.tilt_angles, 87.0),
                            device, 1)
    fine_cpu = fiducialless_alignment(sim.images, sim.tilt_angles, 87.0)
    say(f"fine, {n_views} x {min(size, 1024)}^2 on this device: {fine_s:.2f} s, axis error "
        f"{fine.tilt_axis_angle - 85.0:+.3f} deg (nominal 2 deg off), offset error "
        f"{fine.tilt_angle_offset - 2.0:+.3f} deg; max |CUDA - CPU| shifts "
        f"{float((fine.shifts - fine_cpu.shifts).abs().max()):.4f} px, axis "
        f"{abs(fine.tilt_axis_angle - fine_cpu.tilt_axis_angle):.4f} deg")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
