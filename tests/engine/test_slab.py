"""Levelling the specimen by its slab's surfaces (`find_slab`, `relevel`) against simulated truth."""

import pytest
import torch

from tiltxcorr_scipion.alignment import (
    OptionError,
    SlabNotFound,
    fiducialless_alignment,
    find_slab,
    relevel,
)
from tiltxcorr_scipion.simulate import simulate_tilt_series

THICKNESS = 60.0
OFFSET = 3.0
NOMINAL_AXIS = 87.0  # the truth is 85


@pytest.fixture(scope="module")
def thick_series():
    """A slab thick enough that the plane of its points tilts by tenths of a degree."""
    sim = simulate_tilt_series(shape=(384, 384), n_views=41, tilt_axis_angle=85.0,
                               thickness=THICKNESS, noise=1.0, tilt_angle_offset=OFFSET, seed=5)
    return sim, fiducialless_alignment(sim.images, sim.tilt_angles, NOMINAL_AXIS)


def test_the_slab_surfaces_level_a_thick_specimen(thick_series):
    sim, result = thick_series
    assert result.levelled_by == "surfaces" and result.levelling_note is None
    slab = result.slab
    assert abs(slab.thickness - THICKNESS) < 5.0  # what the simulator made
    assert slab.n_features >= 100 and slab.outlier_fraction < 0.1
    assert abs(result.tilt_angle_offset - OFFSET) <= 0.15
    # the surfaces turned the points' level by the slab's tilt, and nothing else
    assert result.tilt_angle_offset == pytest.approx(result.points_offset - slab.tilt)
    torch.testing.assert_close(result.tilt_angles.double(),
                               sim.tilt_angles.double() + result.tilt_angle_offset)
    assert result.geometry.tilt_angle_offset == pytest.approx(result.tilt_angle_offset)


def test_levelling_by_the_points_is_tiltaligns_plane(thick_series):
    sim, surfaces = thick_series
    points = fiducialless_alignment(sim.images, sim.tilt_angles, NOMINAL_AXIS, level_by="points")
    assert points.levelled_by == "points" and points.slab is None
    assert points.tilt_angle_offset == points.points_offset
    assert points.tilt_angle_offset == pytest.approx(surfaces.points_offset)
    torch.testing.assert_close(points.shifts, surfaces.shifts)  # levelling moves no view


def test_relevel_changes_what_is_level_and_no_projection(thick_series):
    _, result = thick_series
    geometry = result.geometry
    turned = relevel(geometry, 1.7)
    assert turned.tilt_angle_offset == pytest.approx(geometry.tilt_angle_offset + 1.7)
    torch.testing.assert_close(turned.tilt_angles, geometry.tilt_angles + 1.7)
    torch.testing.assert_close(turned.project(), geometry.project())
    assert not torch.allclose(turned.points, geometry.points)


def test_no_slab_in_featureless_views_says_why(thick_series):
    sim, result = thick_series
    with pytest.raises(SlabNotFound, match="only 0 features stand out"):
        find_slab(torch.ones_like(sim.images), result.geometry)


def test_unknown_levelling_is_refused(thick_series):
    sim, _ = thick_series
    with pytest.raises(OptionError, match="level_by"):
        fiducialless_alignment(sim.images, sim.tilt_angles, NOMINAL_AXIS, level_by="ice")
