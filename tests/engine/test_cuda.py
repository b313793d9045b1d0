"""The engine on CUDA gives the CPU's results (within 0.01 px).

Skipped, and so not counted as passing, where torch sees no CUDA device: run
on a GPU machine (``benchmarks/bench_gpu.py`` runs these first).
``TILTXCORR_TEST_DEVICE`` names the device to test (default ``cuda``).
"""

from __future__ import annotations

import os

import pytest
import torch

from tiltxcorr_scipion.alignment import (
    align_binned_views,
    align_tilt_series,
    bin_chunks,
    fiducialless_alignment,
)
from tiltxcorr_scipion.alignment.resample import fourier_shift_image, warp_images
from tiltxcorr_scipion.options import CoarseOptions
from tiltxcorr_scipion.simulate import simulate_tilt_series

DEVICE = torch.device(os.environ.get("TILTXCORR_TEST_DEVICE", "cuda"))

pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="torch sees no CUDA device here: run on a GPU machine (benchmarks/bench_gpu.py)")


@pytest.mark.parametrize("case", [
    dict(shape=(256, 256), order="sorted", noise=1.0),
    dict(shape=(240, 320), order="dose-symmetric", noise=3.0, tilt_axis_angle=-12.0),
    dict(shape=(256, 256), order="sorted", noise=1.0, blocked_views=(30,)),
    dict(shape=(256, 256), order="sorted", noise=1.0, fixed_pattern=1.0),
])
def test_coarse_alignment_equals_the_cpus(case):
    sim = simulate_tilt_series(n_views=41, max_shift=15.0, thickness=10.0, seed=5,
                               **{"tilt_axis_angle": 85.0, **case})
    on_cpu = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    on_device = align_tilt_series(sim.images.to(DEVICE), sim.tilt_angles, sim.tilt_axis_angle)
    assert on_device.shifts.device.type == DEVICE.type
    difference = (on_device.shifts.cpu() - on_cpu.shifts).abs().max()
    assert float(difference) < 0.01, float(difference)
    assert torch.equal(on_device.unusable.cpu(), on_cpu.unusable.cpu())


def test_views_binned_as_they_arrive_on_the_device():
    sim = simulate_tilt_series(shape=(512, 512), n_views=31, max_shift=10.0, seed=6)
    binned = bin_chunks(sim.images.split(4), 31, (512, 512), 2, device=DEVICE)
    assert binned.views.device.type == DEVICE.type
    on_device = align_binned_views(binned, sim.tilt_angles, 85.0, CoarseOptions())
    on_cpu = align_tilt_series(sim.images, sim.tilt_angles, 85.0, binning=2)
    assert float((on_device.shifts.cpu() - on_cpu.shifts).abs().max()) < 0.01


def test_fine_alignment_equals_the_cpus():
    sim = simulate_tilt_series(shape=(320, 320), n_views=41, max_shift=8.0, thickness=10.0,
                               noise=1.0, seed=7, tilt_angle_offset=2.0)
    on_cpu = fiducialless_alignment(sim.images, sim.tilt_angles, 87.0)
    on_device = fiducialless_alignment(sim.images.to(DEVICE), sim.tilt_angles, 87.0)
    assert abs(on_device.tilt_axis_angle - on_cpu.tilt_axis_angle) < 0.005
    assert abs(on_device.tilt_angle_offset - on_cpu.tilt_angle_offset) < 0.01
    assert float((on_device.shifts - on_cpu.shifts).abs().max()) < 0.01


def test_resampling_equals_the_cpus():
    images = torch.randn(3, 96, 128)
    maps = torch.tensor([[[0.9, 0.1, 3.0], [-0.1, 1.1, -2.0]]] * 3, dtype=torch.float64)
    torch.testing.assert_close(warp_images(images.to(DEVICE), maps).cpu(),
                               warp_images(images, maps), atol=1e-4, rtol=0)
    torch.testing.assert_close(fourier_shift_image(images[0].to(DEVICE), 2.3, -4.6).cpu(),
                               fourier_shift_image(images[0], 2.3, -4.6), atol=1e-4, rtol=0)
