"""The working-memory budget (`alignment.memory`): chunk sizes come from it, results do not."""

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series, memory, reconstruct
from tiltxcorr_scipion.alignment.binning import bin_stack
from tiltxcorr_scipion.simulate import simulate_tilt_series


def test_chunks_hold_what_the_budget_allows_and_at_least_one_item():
    cpu = memory.working_bytes("cpu")
    assert memory.working_bytes(torch.device("cuda", 0)) == memory.GPU_WORKING_BYTES > cpu
    assert memory.items_per_chunk(cpu // 10, "cpu") == 10
    assert memory.items_per_chunk(cpu // 10 + 1, "cpu") == 9
    assert memory.items_per_chunk(4 * cpu, "cpu") == 1  # an item larger than the budget
    assert memory.items_per_chunk(0, "cpu") == cpu


@pytest.fixture(scope="module")
def pattern_series():
    """A fixed pattern strong enough to be removed: every chunked loop of the alignment runs."""
    return simulate_tilt_series(shape=(256, 256), n_views=41, seed=3, fixed_pattern=2.0,
                                noise=1.0)


def test_one_item_per_chunk_gives_the_same_alignment(pattern_series, monkeypatch):
    sim = pattern_series
    whole = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    monkeypatch.setattr(memory, "CPU_WORKING_BYTES", 1)  # every loop: one item at a time
    monkeypatch.setattr(memory, "CPU_CACHE_BYTES", 1)
    single = align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle)
    assert whole.fixed_pattern_removed and single.fixed_pattern_removed
    assert whole.unusable.tolist() == single.unusable.tolist()
    # only the order of float32 sums differs
    torch.testing.assert_close(single.shifts, whole.shifts, rtol=0.0, atol=1e-5)


def test_the_tomogram_does_not_depend_on_the_slab_size(monkeypatch):
    sim = simulate_tilt_series(shape=(256, 240), n_views=21, seed=2, noise=1.0)
    transforms = torch.eye(3, dtype=torch.float64).repeat(21, 1, 1)
    whole = reconstruct(sim.images, transforms, sim.tilt_angles, sim.tilt_axis_angle,
                        thickness=30.0, noise_filter="none")
    monkeypatch.setattr(memory, "CPU_WORKING_BYTES", 1)  # slabs of the fewest rows
    rows = reconstruct(sim.images, transforms, sim.tilt_angles, sim.tilt_axis_angle,
                       thickness=30.0, noise_filter="none")
    # each row is sampled as in one piece: what is left is the matrix products' rounding
    # (2e-7 of the largest voxel; 3e-5 when slabs after the first sampled their rows apart)
    scale = float(whole.abs().max())
    torch.testing.assert_close(rows, whole, rtol=0.0, atol=2e-6 * scale)


def test_binning_a_stack_does_not_depend_on_the_chunk_size(monkeypatch):
    """`bin_stack` copies a few views at a time into float32 (an int16 stack, binned 2x)."""
    stack = (torch.randn(7, 96, 80, generator=torch.Generator().manual_seed(1)) * 300).to(
        torch.int16)
    whole = bin_stack(stack, 2)
    monkeypatch.setattr(memory, "CPU_WORKING_BYTES", 1)  # one view at a time
    single = bin_stack(stack, 2)
    assert whole.views.shape == single.views.shape == (7, 48, 40)
    assert torch.equal(whole.views, single.views)
    assert torch.equal(single.views[3], bin_stack(stack[3:4], 2).views[0])
