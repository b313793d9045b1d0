"""The independent image model (`simulate_volume`): geometry and shift convention.

A bead in the volume must appear where the projection formula of docs/conventions.md puts
it, at any tilt up to 90 degrees and any tilt-axis angle; and the shifts must follow the
engine's convention (moving view i's content by `+shifts[i]` aligns it), which the plain
IMOD path confirms on a noiseless series.
"""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.alignment.geometry import axis_directions
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

BEADS = torch.tensor([[20.0, -15.0, 10.0], [-30.0, 25.0, -20.0], [5.0, 40.0, 25.0]])  # (x, y, z)
TILTS = [-88.0, -70.0, -40.0, -3.0, 0.0, 10.0, 50.0, 70.0, 90.0]


def bead_centroid(view: torch.Tensor, near: torch.Tensor, background: float) -> torch.Tensor:
    """Intensity-weighted centre `(row, col)` of the bright spot within 6 px of `near`."""
    r0, c0 = (int(round(v)) for v in near.tolist())
    window = (view[r0 - 6:r0 + 7, c0 - 6:c0 + 7].double() - background).clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(r0 - 6, r0 + 7).double(),
                                torch.arange(c0 - 6, c0 + 7).double(), indexing="ij")
    return torch.stack([(window * rows).sum(), (window * cols).sum()]) / window.sum()


@pytest.mark.parametrize("axis", [0.0, 85.0, -7.0])
def test_beads_project_where_the_formula_says(axis):
    sim = simulate_volume_series(shape=(128, 144), tilt_angles=TILTS, tilt_axis_angle=axis,
                                 specimen="beads", bead_positions=BEADS, contrast="stem",
                                 jumps="walk", jump_size=3.0, seed=1)
    along, across = axis_directions(axis)
    h, w = sim.views.shape[1:]
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    assert sim.shifts[sim.reference_view].abs().max() == 0  # the axis through the centre there
    assert sim.shifts.abs().max() > 1.0  # and the others really moved
    for i, tilt in enumerate(sim.tilt_angles.tolist()):
        t = math.radians(tilt)
        for x, y, z in BEADS.double().tolist():
            # aligned position, then the content moved by -shift in the raw view
            expected = centre + y * along + (x * math.cos(t) + z * math.sin(t)) * across \
                - sim.shifts[i].double()
            found = bead_centroid(sim.views[i], expected, background=0.02)
            assert (found - expected).norm() < 0.1, (axis, tilt, (x, y, z), found, expected)


def test_plain_path_recovers_the_true_shifts():
    """Noiseless thin cell: the plain IMOD path finds the shifts; the opposite sign is far off."""
    sim = simulate_volume_series(shape=(160, 128), n_views=31, thickness=8.0, tilt_axis_angle=-7.0,
                                 jumps="walk", jump_size=3.0, seed=2)
    result = align_tilt_series(sim.views, sim.tilt_angles, sim.tilt_axis_angle, adaptive=False,
                               fixed_pattern="off")
    assert sim.alignment_error(result.shifts) < 0.15
    assert sim.alignment_error(-sim.shifts) > 5.0
    assert sim.alignment_error(torch.zeros_like(sim.shifts)) > 3.0


def test_jumps_full_range_and_limits():
    small = dict(shape=(64, 64), specimen="needle", contrast="stem", seed=3)
    pre = simulate_volume_series(tilt_range=(-90.0, 90.0), n_views=91, jumps="pre-aligned",
                                 **small)
    assert torch.isfinite(pre.views).all() and pre.views.std(dim=(1, 2)).min() > 0
    assert torch.cdist(pre.shifts.double(), pre.shifts.double()).max() <= 1.0
    inside = pre.within(82.0)
    assert len(inside.tilt_angles) == 83 and inside.tilt_angles.abs().max() <= 82.0
    assert inside.alignment_error(inside.shifts) < 1e-6
    large = simulate_volume_series(n_views=41, jumps="large", **small)
    assert large.shifts.diff(dim=0).norm(dim=1).max() > 20.0  # neighbours far apart
    assert simulate_volume_series(n_views=11, jumps="none", **small).shifts.abs().max() == 0
    with pytest.raises(ValueError, match="compact specimen"):
        simulate_volume_series(shape=(64, 64), tilt_range=(-90.0, 90.0), n_views=5)
