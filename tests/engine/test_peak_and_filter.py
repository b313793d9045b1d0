"""Peak finding and IMOD's filter, on known shifts and frequencies."""

import math

import pytest
import torch

from tiltxcorr_scipion.alignment.correlate import CorrelationFilter, PairCorrelator
from tiltxcorr_scipion.alignment.fourier import imod_filter, next_fast_size, taper_ramp
from tiltxcorr_scipion.simulate import simulate_tilt_series


def fourier_shift(image: torch.Tensor, shift) -> torch.Tensor:
    """Move the content of `(h, w)` by `shift` = (dy, dx), exactly (periodic)."""
    h, w = image.shape
    ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    phase = torch.exp(-2j * math.pi * (ky * shift[0] + kx * shift[1]))
    return torch.fft.ifft2(torch.fft.fft2(image.double()) * phase).real.float()


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.7), (7.25, 3.5), (-12.6, 9.1)])
def test_pair_shift_recovered_exactly(shift):
    image = simulate_tilt_series(shape=(128, 160), n_views=2, tilt_range=(0, 0), max_shift=0,
                                 seed=4).images[0]
    moved = fourier_shift(image, shift)
    correlator = PairCorrelator((128, 160), CorrelationFilter(), taper_fraction=0.1,
                                pad_fraction=0.05, device=torch.device("cpu"))
    reference = correlator.spectra(image[None])
    start, _, _ = correlator.correlate(reference, correlator.spectra(moved[None]))
    # matched windows remove the taper's pull towards zero
    found, ncc, _ = correlator.correlate(
        correlator.spectra(image[None], start), correlator.spectra(moved[None], -start),
        start=start)
    # `found` moves `moved` back onto `image`: minus the applied shift
    assert found[0].tolist() == pytest.approx([-shift[0], -shift[1]], abs=0.01)
    assert 0.9 < float(ncc[0]) <= 1.0 + 1e-6


def test_max_shift_limits_the_search():
    image = simulate_tilt_series(shape=(96, 96), n_views=2, tilt_range=(0, 0), max_shift=0,
                                 seed=2).images[0]
    moved = fourier_shift(image, (0.0, 20.0))
    correlator = PairCorrelator((96, 96), CorrelationFilter(), taper_fraction=0.1,
                                pad_fraction=0.05, device=torch.device("cpu"))
    found, _, _ = correlator.correlate(correlator.spectra(image[None]),
                                       correlator.spectra(moved[None]), max_shift=5.0)
    assert float(found[0].norm()) <= 5.0 + 1.0  # the true peak at 20 px is out of reach
    found, _, _ = correlator.correlate(correlator.spectra(image[None]),
                                       correlator.spectra(moved[None]))
    # the fixed taper pulls a 20 px peak of a 96 px view towards zero by ~0.6 px;
    # the matched windows of the final pass remove that (test above)
    assert found[0].tolist() == pytest.approx([0.0, -20.0], abs=0.8)


def test_imod_filter_values():
    ky = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    kx = torch.tensor([0.0, 0.03, 0.25, 0.30, 0.45], dtype=torch.float64)
    response = imod_filter(ky[:1], kx, high_pass_sigma=0.03, high_pass_radius=0.0,
                           low_pass_cutoff=0.25, low_pass_sigma=0.05)[0]
    assert response[0] == 0.0  # no mean
    assert response[1].item() == pytest.approx(1 - math.exp(-0.5))  # inverted Gaussian at sigma1
    assert response[2].item() == pytest.approx(1 - math.exp(-0.25**2 / (2 * 0.03**2)))
    assert response[3].item() == pytest.approx(math.exp(-0.5), rel=1e-3)  # one sigma2 past r2
    assert response[4].item() < 1e-3
    with_radius = imod_filter(ky[:1], kx, high_pass_sigma=0.03, high_pass_radius=0.1,
                              low_pass_cutoff=0.0, low_pass_sigma=0.0)[0]
    assert with_radius[2].item() == 1.0  # above radius1, no low-pass
    assert with_radius[1].item() == pytest.approx(math.exp(-(0.07**2) / (2 * 0.03**2)))


def test_fast_sizes_and_taper():
    assert next_fast_size(1064) == 1080
    assert next_fast_size(1024) == 1024
    assert next_fast_size(97) == 100
    ramp = taper_ramp(40, 5)
    assert ramp[0] < 0.05 and ramp[-1] < 0.05 and torch.all(ramp[5:35] == 1)
    assert torch.allclose(ramp, ramp.flip(0))
