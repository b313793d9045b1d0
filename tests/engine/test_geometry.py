"""Stretch, pre-shift and the shift transform, checked on analytic blobs."""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment.geometry import (
    axis_directions,
    stretch_factors,
    stretch_images,
    unstretch_shifts,
)


def gaussian_blob(shape, centre_rc, sigma=2.5):
    rows = torch.arange(shape[0], dtype=torch.float64)[:, None]
    cols = torch.arange(shape[1], dtype=torch.float64)[None, :]
    return torch.exp(-((rows - centre_rc[0]) ** 2 + (cols - centre_rc[1]) ** 2) / (2 * sigma**2))


def image_centre(shape):
    return torch.tensor([(shape[0] - 1) / 2, (shape[1] - 1) / 2], dtype=torch.float64)


def centroid(image, near=None, radius=15.0):
    """Centre of mass of `image`, within `radius` pixels of `near` if given.

    The window leaves out the edges, which the resampler fills with the view's mean.
    """
    image = image.double()
    rows = torch.arange(image.shape[0], dtype=torch.float64)[:, None]
    cols = torch.arange(image.shape[1], dtype=torch.float64)[None, :]
    if near is not None:
        image = image * (((rows - near[0]) ** 2 + (cols - near[1]) ** 2) <= radius ** 2)
    total = image.sum()
    return torch.stack([(image * rows).sum() / total, (image * cols).sum() / total])


def test_axis_direction_follows_imod_convention():
    along, across = axis_directions(0.0)
    assert torch.allclose(along, torch.tensor([1.0, 0.0], dtype=torch.float64))  # the Y axis
    along, across = axis_directions(90.0)
    assert torch.allclose(along, torch.tensor([0.0, -1.0], dtype=torch.float64), atol=1e-12)
    assert abs(float(along @ across)) < 1e-12


@pytest.mark.parametrize("shape", [(64, 64), (65, 63), (80, 96)])
@pytest.mark.parametrize("axis_angle", [0.0, 85.0, -30.0])
def test_stretch_moves_points_away_from_the_centre_across_the_axis(shape, axis_angle):
    centre = image_centre(shape)
    offset = torch.tensor([6.0, -9.0], dtype=torch.float64)
    image = gaussian_blob(shape, centre + offset).float()[None]
    factor = torch.tensor([1.5], dtype=torch.float64)
    _, across = axis_directions(axis_angle)
    stretched = stretch_images(image, factor, across, centre, mode="bilinear")[0]
    stretch = torch.eye(2, dtype=torch.float64) + 0.5 * torch.outer(across, across)
    expected = centre + stretch @ offset
    assert torch.allclose(centroid(stretched, near=expected), expected, atol=0.05)


def test_pre_shift_moves_content_by_plus_shift():
    shape = (64, 72)
    centre = image_centre(shape)
    image = gaussian_blob(shape, centre).float()[None]
    _, across = axis_directions(10.0)
    pre = torch.tensor([[3.25, -4.5]], dtype=torch.float64)
    moved = stretch_images(image, torch.ones(1, dtype=torch.float64), across, centre,
                           pre_shifts=pre, mode="bilinear")[0]
    assert torch.allclose(centroid(moved, near=centre + pre[0]), centre + pre[0], atol=0.02)


def test_stretch_factor_and_its_inverse_on_shifts():
    factors = stretch_factors(torch.tensor([0.0, 30.0], dtype=torch.float64),
                              torch.tensor([60.0, 60.0], dtype=torch.float64))
    assert factors[0].item() == pytest.approx(2.0)
    assert factors[1].item() == pytest.approx(math.cos(math.radians(30)) / 0.5)
    _, across = axis_directions(85.0)
    shifts = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    back = unstretch_shifts(shifts, factors, across)
    # K (K^-1 s) = s, and the component along the axis is untouched
    stretch = [torch.eye(2, dtype=torch.float64) + (f - 1) * torch.outer(across, across)
               for f in factors]
    for k in range(2):
        assert torch.allclose(stretch[k] @ back[k], shifts[k])
