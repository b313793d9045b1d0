"""`tiltxcorr` as a drop-in for torch-tiltxcorr: its keywords, its centre, keyword-only options.

torch-tiltxcorr's own shift tests run against it in `make peer-check`
(benchmarks/peer_check.py); these check the contract without the network.
"""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment import OptionError, align_tilt_series, tiltxcorr
from tiltxcorr_scipion.alignment.core import teamtomo_shifts
from tiltxcorr_scipion.alignment.geometry import axis_directions
from tiltxcorr_scipion.simulate import simulate_tilt_series


@pytest.fixture(scope="module")
def even():
    return simulate_tilt_series(shape=(128, 160), n_views=21, max_shift=6.0, thickness=5.0,
                                noise=0.3, tilt_axis_angle=80.0, seed=4)


def test_even_sizes_follow_teamtomos_centre(even):
    result = align_tilt_series(even.images, even.tilt_angles, 80.0, low_pass_cutoff=0.0)
    shifts = tiltxcorr(even.images, even.tilt_angles, 80.0)
    _, across = axis_directions(80.0)
    cosines = torch.cos(torch.deg2rad(even.tilt_angles.double()))
    ratio = cosines / cosines[result.reference_view]
    delta = torch.tensor([0.5, 0.5], dtype=torch.float64)
    expected = result.shifts.double() + ((delta @ across) * (1 - ratio))[:, None] * across
    assert torch.allclose(shifts.double(), expected, atol=1e-5)
    assert float((shifts - result.shifts).norm(dim=1).max()) > 0.1  # the term is there
    assert shifts[result.reference_view].tolist() == [0.0, 0.0]


def test_odd_sizes_keep_the_centre():
    sim = simulate_tilt_series(shape=(127, 127), n_views=15, max_shift=5.0, thickness=0.0,
                               seed=2)
    result = align_tilt_series(sim.images, sim.tilt_angles, 85.0, low_pass_cutoff=0.0)
    assert torch.equal(tiltxcorr(sim.images, sim.tilt_angles, 85.0), result.shifts)
    assert torch.equal(teamtomo_shifts(result, sim.tilt_angles, 85.0, (127, 127)), result.shifts)


def test_released_keywords_set_the_low_pass_in_input_pixels(even):
    # 1 A/px and 8 A: 0.125 cycles per input pixel, 0.25 per pixel once binned by 2
    asked = tiltxcorr(tilt_series=even.images, tilt_angles=even.tilt_angles,
                      tilt_axis_angle=80.0, pixel_spacing_angstroms=1.0, lowpass_angstroms=8.0,
                      binning=2)
    binned = align_tilt_series(even.images, even.tilt_angles, 80.0, low_pass_cutoff=0.25,
                               binning=2)
    assert binned.low_pass_used > 0
    assert torch.allclose(asked, teamtomo_shifts(binned, even.tilt_angles, 80.0, (128, 160)))
    # either keyword missing: no low-pass, as torch-tiltxcorr
    for keywords in ({}, dict(pixel_spacing_angstroms=1.0), dict(lowpass_angstroms=8.0)):
        shifts = tiltxcorr(even.images, even.tilt_angles, 80.0, **keywords)
        none = align_tilt_series(even.images, even.tilt_angles, 80.0, low_pass_cutoff=0.0)
        assert torch.equal(shifts, teamtomo_shifts(none, even.tilt_angles, 80.0, (128, 160)))
    # preprocess is accepted and changes nothing; low_pass_cutoff (the seed's) still works
    assert torch.equal(tiltxcorr(even.images, even.tilt_angles, 80.0, preprocess=False),
                       tiltxcorr(even.images, even.tilt_angles, 80.0))
    own = tiltxcorr(even.images, even.tilt_angles, 80.0, low_pass_cutoff=0.25, binning=2)
    assert torch.equal(own, asked)


def test_options_after_the_data_are_keyword_only(even):
    # torch-tiltxcorr reads a fourth positional argument as the pixel spacing: never misread
    with pytest.raises(TypeError):
        tiltxcorr(even.images, even.tilt_angles, 80.0, 0.4)
    with pytest.raises(OptionError, match="lowpass_angstroms"):
        tiltxcorr(even.images, even.tilt_angles, 80.0, pixel_spacing_angstroms=1.0,
                  lowpass_angstroms=8.0, low_pass_cutoff=0.2)
    with pytest.raises(OptionError, match="pixel_spacing_angstroms"):
        tiltxcorr(even.images, even.tilt_angles, 80.0, pixel_spacing_angstroms=-1.0,
                  lowpass_angstroms=8.0)
    with pytest.raises(OptionError, match="preprocess"):
        tiltxcorr(even.images, even.tilt_angles, 80.0, preprocess="no")


def test_what_we_do_better_holds_for_the_drop_in():
    # odd sizes, float64 input, a NaN view named
    sim = simulate_tilt_series(shape=(127, 127), n_views=21, max_shift=4.0, thickness=0.0,
                               seed=6)
    shifts = tiltxcorr(sim.images.double(), sim.tilt_angles.double(), 85.0)
    error = (shifts.double() - sim.shifts.double()).norm(dim=1)
    assert float(error.max()) < 0.2 and math.isfinite(float(error.max()))
    images = sim.images.clone()
    images[3, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiltxcorr(images, sim.tilt_angles, 85.0)
