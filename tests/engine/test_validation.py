"""Bad input raises a ValueError that says what is wrong and what to do."""

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series, tiltxcorr
from tiltxcorr_scipion.simulate import simulate_tilt_series


@pytest.fixture(scope="module")
def series():
    return simulate_tilt_series(shape=(96, 96), n_views=7, max_shift=4.0, seed=2)


def test_too_few_views(series):
    with pytest.raises(ValueError, match="at least 2 views"):
        tiltxcorr(series.images[:1], series.tilt_angles[:1], 85.0)


def test_angle_count_mismatch(series):
    with pytest.raises(ValueError, match="6 tilt angles for 7 views"):
        tiltxcorr(series.images, series.tilt_angles[:6], 85.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_name_the_view(series, bad):
    images = series.images.clone()
    images[4, 10, 10] = bad
    with pytest.raises(ValueError, match=r"view 4 \(0-based\): NaN or infinite"):
        tiltxcorr(images, series.tilt_angles, 85.0)


def test_constant_views_are_flagged_until_too_few_remain(series):
    # A constant view (an empty frame) is aligned around and flagged, not an error...
    images = series.images.clone()
    images[2] = 3.0
    result = align_tilt_series(images, series.tilt_angles, 85.0)
    assert result.unusable_views() == [2]
    assert result.reasons[2].startswith("blank: constant image")
    # ...until fewer than two views are left to correlate.
    images[:] = 3.0
    images[4] = series.images[4]
    with pytest.raises(ValueError, match=r"fewer than 2 usable views"):
        tiltxcorr(images, series.tilt_angles, 85.0)


def test_angle_offset_counts_against_the_tilt_limit(series):
    with pytest.raises(ValueError, match="once the angle offset of 30 is added"):
        tiltxcorr(series.images, series.tilt_angles * 1.2, 85.0, angle_offset=30.0)


def test_impossible_angles(series):
    angles = series.tilt_angles.clone()
    angles[-1] = 85.0
    with pytest.raises(ValueError, match="tilted beyond"):
        tiltxcorr(series.images, angles, 85.0)
    angles[-1] = float("nan")
    with pytest.raises(ValueError, match="not a finite number"):
        tiltxcorr(series.images, angles, 85.0)
    with pytest.raises(ValueError, match="tilt axis angle"):
        tiltxcorr(series.images, series.tilt_angles, float("nan"))


def test_wrong_shapes_and_types(series):
    with pytest.raises(ValueError, match=r"shape \(b, h, w\)"):
        tiltxcorr(series.images[0], series.tilt_angles, 85.0)
    with pytest.raises(ValueError, match="floating-point"):
        tiltxcorr(series.images.to(torch.int16), series.tilt_angles, 85.0)
    with pytest.raises(ValueError, match="torch.Tensor"):
        tiltxcorr(series.images.numpy(), series.tilt_angles, 85.0)


def test_too_small_for_the_taper(series):
    with pytest.raises(ValueError, match="too small|at least 24 pixels"):
        tiltxcorr(series.images[:, :16, :16], series.tilt_angles, 85.0)
    with pytest.raises(ValueError, match="smaller binning"):
        tiltxcorr(series.images, series.tilt_angles, 85.0, binning=8)


@pytest.mark.parametrize("option", [dict(low_pass_cutoff=0.7), dict(high_pass_sigma=-0.1),
                                    dict(taper_fraction=0.6), dict(binning=-1),
                                    dict(max_shift=0.0), dict(interpolation="nearest"),
                                    dict(fixed_pattern="yes"), dict(borders=(-2, 0)),
                                    dict(x_min_max=(10, 20)), dict(y_min_max=(0, 200)),
                                    dict(angle_offset=90.0), dict(absolute_cosine_stretch="no"),
                                    dict(adaptive=None)])
def test_parameters_out_of_range(series, option):
    with pytest.raises(ValueError):
        tiltxcorr(series.images, series.tilt_angles, 85.0, **option)
