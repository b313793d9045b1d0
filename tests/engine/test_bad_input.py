"""Bad input that nothing misreads: a flagged view moves no other view."""

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.simulate import simulate_tilt_series


@pytest.mark.parametrize("hot_pixel", [False, True])
def test_a_flagged_blank_view_does_not_move_the_others(hot_pixel):
    sim = simulate_tilt_series(shape=(128, 128), n_views=21, max_shift=8.0, thickness=5.0,
                               noise=1.0, seed=2)
    keep = torch.ones(21, dtype=torch.bool)
    keep[7] = False
    images = sim.images.clone()
    images[7] = 5.0  # a constant view (a shutter that did not open)...
    if hot_pixel:
        images[7, 40, 40] = 1000.0  # ...with one hot pixel
    flagged = align_tilt_series(images, sim.tilt_angles, 85.0)
    assert flagged.unusable_views() == [7]
    left_out = align_tilt_series(sim.images[keep], sim.tilt_angles[keep], 85.0)
    # the other views come out as if the view had been excluded (0.65 px apart before)
    assert float((flagged.shifts[keep] - left_out.shifts).abs().max()) < 1e-3


def test_a_view_rejected_by_max_shift_is_said_to_be_so():
    shifts = torch.zeros(21, 2)
    shifts[14] = torch.tensor([0.0, 30.0])  # one view jumped 30 px
    sim = simulate_tilt_series(shape=(160, 160), n_views=21, thickness=5.0, noise=0.5, seed=8,
                               shifts=shifts)
    free = align_tilt_series(sim.images, sim.tilt_angles, 85.0)
    assert free.unusable_views() == []
    limited = align_tilt_series(sim.images, sim.tilt_angles, 85.0, max_shift=10.0)
    assert 14 in limited.unusable_views()
    reason = limited.reasons[14]
    assert reason.startswith("rejected by the maximum shift") and "10 px" in reason
    assert "--max-shift" in reason and "blank" not in reason
