"""Fourier-side pieces: FFT-friendly sizes, the taper, IMOD's correlation filter."""

from __future__ import annotations

import torch

from ..options import filter_response


def next_fast_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    candidate = max(1, int(n))
    while True:
        m = candidate
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return candidate
        candidate += 1


def padded_size(n: int, pad_fraction: float, max_pad: int = 20) -> int:
    """FFT size for an image side of `n` pixels padded on both sides as IMOD does.

    IMOD's tiltxcorr pads each side by `pad_fraction` of the size, at most 20
    pixels; the result is rounded up to a 2-3-5 smooth size for speed.
    """
    pad = min(int(round(pad_fraction * n)), max_pad)
    return next_fast_size(n + 2 * pad)


def taper_profile(positions: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Edge taper of an `n`-pixel side, evaluated at any (fractional) pixel positions.

    A raised-cosine rise over `width` pixels from each end, 1 inside, 0
    outside the side. Fractional positions let a window be moved by a
    sub-pixel shift.
    """
    if width <= 0:
        return ((positions > -0.5) & (positions < n - 0.5)).to(positions.dtype)
    distance = torch.minimum(positions + 0.5, n - 0.5 - positions)  # from the nearest edge
    t = (distance / width).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(torch.pi * t)


def taper_ramp(n: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D edge taper `(n,)` at the pixel centres: `taper_profile` at 0, 1, ..., n - 1."""
    positions = torch.arange(n, dtype=torch.float64, device=device)
    return taper_profile(positions, n, width).to(dtype)


def taper_width(n: int, taper_fraction: float) -> int:
    """Taper width in pixels: `taper_fraction` of the side, at least 5 pixels (IMOD's rule)."""
    if taper_fraction <= 0:
        return 0
    return min(max(int(round(taper_fraction * n)), 5), n // 2)


def taper_mask(shape: tuple[int, int], taper_fraction: float, *, dtype=torch.float32,
               device=None) -> torch.Tensor:
    """Separable edge-taper mask `(h, w)`: 1 in the interior, smoothly 0 at the borders.

    Built once per image size (an outer product of two 1-D ramps), so the
    taper costs one multiplication per view.
    """
    h, w = shape
    rows = taper_ramp(h, taper_width(h, taper_fraction), dtype=dtype, device=device)
    cols = taper_ramp(w, taper_width(w, taper_fraction), dtype=dtype, device=device)
    return rows[:, None] * cols[None, :]


def frequency_grid(shape: tuple[int, int], *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies in cycles per pixel of an rfft2 spectrum of `shape` = `(h, w)`.

    Returns `(ky, kx)` of shapes `(h,)` and `(w // 2 + 1,)`.
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, device=device, dtype=torch.float64)
    return ky, kx


def frequency_radius(shape: tuple[int, ...], *, dtype=None, device=None) -> torch.Tensor:
    """`|k|` in cycles per pixel (voxel) at every point of an rfftn spectrum of `shape`
    (any number of dimensions, the last halved): `shape[:-1] + (shape[-1] // 2 + 1,)`."""
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=dtype, device=device)
                             for n in shape[:-1]],
                           torch.fft.rfftfreq(shape[-1], dtype=dtype, device=device),
                           indexing="ij")
    return sum(g * g for g in grids).sqrt_()


def imod_filter(ky: torch.Tensor, kx: torch.Tensor, *, high_pass_sigma: float,
                high_pass_radius: float, low_pass_cutoff: float, low_pass_sigma: float
                ) -> torch.Tensor:
    """IMOD's cross-correlation filter on an rfft2 grid, `(len(ky), len(kx))` float64.

    `ky`, `kx` in cycles per (binned) pixel; the response is
    `tiltxcorr_scipion.options.filter_response` (IMOD's -sigma1, -radius1,
    -radius2, -sigma2). The zero-frequency term is always removed (the mean
    carries no position).
    """
    frequency = torch.sqrt(ky[:, None].double() ** 2 + kx[None, :].double() ** 2)
    response = torch.from_numpy(filter_response(
        frequency.cpu().numpy(), high_pass_sigma=high_pass_sigma,
        high_pass_radius=high_pass_radius, low_pass_cutoff=low_pass_cutoff,
        low_pass_sigma=low_pass_sigma)).to(ky.device)
    response[0, 0] = 0.0
    return response


def filter_support(low_pass_cutoff: float, low_pass_sigma: float) -> float:
    """Highest frequency (cycles/pixel) the correlation uses: where the roll-off falls to 1%.

    Beyond `r2 + 3 sigma2` the Gaussian roll-off is below 0.011; the band is
    cut there (the filter is zero beyond), which saves a third of the work.
    """
    if low_pass_cutoff <= 0:
        return 0.5
    if low_pass_sigma <= 0:
        return min(0.5, low_pass_cutoff)
    return min(0.5, low_pass_cutoff + 3.0 * low_pass_sigma)
