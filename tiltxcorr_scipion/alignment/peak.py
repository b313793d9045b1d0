"""Locate the cross-correlation peak: coarse search, then an exact sub-pixel maximum.

The filtered cross-correlation of two images is a trigonometric polynomial,
`c(d) = (1/N) sum_k P(k) exp(2 pi i k.d)`, with `P` the filtered cross-power
spectrum. The coarse search takes the maximum of `c` on a pixel grid; the
refinement then climbs `c` itself with Newton's method, using its exact
gradient and Hessian from the spectrum. This has none of the bias of fitting a
parabola to three samples of a peak that is not a parabola.

Shifts are `(dy, dx)`: the correlation `c(d) = sum_r a(r) b(r - d)` peaks where
moving `b` by `+d` lays it on `a`.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def hermitian_weights(width: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Weights `(width // 2 + 1,)` that turn half-spectrum sums into full-spectrum sums."""
    weights = torch.full((width // 2 + 1,), 2.0, dtype=dtype, device=device)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights


def crop_half_spectrum(spectrum: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Keep the `rows` lowest row frequencies and `cols` lowest column ones of an rfft2 spectrum.

    `spectrum` is `(..., h, w // 2 + 1)`; `rows` counts both signs, `cols` the
    non-negative column frequencies. Returns `(..., rows, cols)`.
    """
    h = spectrum.shape[-2]
    if rows >= h:
        return spectrum[..., :cols]
    positive = (rows + 1) // 2
    negative = rows - positive
    top = spectrum[..., :positive, :cols]
    bottom = spectrum[..., h - negative:, :cols]
    return torch.cat([top, bottom], dim=-2)


def coarse_peak(band: torch.Tensor, full_shape: tuple[int, int], *,
                max_shift: float | torch.Tensor | None = None, significance: bool = False):
    """Peak of the correlation on a coarse grid, with a parabolic estimate in between.

    Parameters
    ----------
    band
        `(n, rows, cols)` filtered cross-power spectra, cropped to the band
        where the filter is not negligible (see `crop_half_spectrum`).
    full_shape
        `(H, W)`, the size of the uncropped correlation. The search grid is
        the smallest fast size that holds the band, so its spacing is
        `H / grid_rows` pixels: much cheaper than a full inverse FFT when the
        filter removes high frequencies; `refine_peak` restores full precision.
    max_shift
        Only peaks within this distance (pixels) of zero are considered; a
        tensor `(n,)` gives each correlation its own.
    significance
        Also return each peak's height over the root mean square of its
        whole correlation map, `(n,)` float64: about 4 to 5 for the highest
        peak of pure noise, tens for a clear match.

    Returns
    -------
    `(n, 2)` float64 peak positions `(dy, dx)` in pixels (and the
    significance, if asked).
    """
    from .fourier import next_fast_size

    big_h, big_w = full_shape
    n, rows, cols = band.shape
    h = min(big_h, next_fast_size(max(rows, 16)))
    w = min(big_w, next_fast_size(max(2 * (cols - 1), 16)))
    spectrum = torch.zeros(n, h, w // 2 + 1, dtype=band.dtype, device=band.device)
    positive = (rows + 1) // 2
    negative = rows - positive
    use_cols = min(cols, w // 2 + 1)
    spectrum[:, :positive, :use_cols] = band[:, :positive, :use_cols]
    if negative:
        spectrum[:, h - negative:, :use_cols] = band[:, rows - negative:, :use_cols]
    corr = torch.fft.irfft2(spectrum, s=(h, w))  # (n, h, w)
    step_y, step_x = big_h / h, big_w / w
    dy = torch.fft.fftfreq(h, d=1.0 / h, device=corr.device).to(torch.float64) * step_y
    dx = torch.fft.fftfreq(w, d=1.0 / w, device=corr.device).to(torch.float64) * step_x
    mean_square = corr.flatten(1).square().mean(dim=1).to(torch.float64).cpu()
    if max_shift is not None:
        radius = torch.as_tensor(max_shift, dtype=torch.float64, device=corr.device)
        distance = dy[:, None] ** 2 + dx[None, :] ** 2
        if radius.ndim == 0:
            allowed = (distance <= radius ** 2)[None]
        else:
            allowed = distance[None] <= radius[:, None, None] ** 2
        allowed[:, 0, 0] = True
        corr = torch.where(allowed, corr, torch.full_like(corr, -torch.inf))
    flat = corr.reshape(n, -1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    batch = torch.arange(n, device=corr.device)

    def parabola(minus, centre, plus):
        denom = minus - 2 * centre + plus
        ok = torch.isfinite(minus) & torch.isfinite(plus) & (denom < 0)
        offset = torch.where(ok, 0.5 * (minus - plus) / torch.where(ok, denom, -1.0),
                             torch.zeros_like(centre))
        return offset.clamp(-0.5, 0.5)

    c0 = corr[batch, iy, ix]
    oy = parabola(corr[batch, (iy - 1) % h, ix], c0, corr[batch, (iy + 1) % h, ix])
    ox = parabola(corr[batch, iy, (ix - 1) % w], c0, corr[batch, iy, (ix + 1) % w])
    peaks = torch.stack([dy[iy] + oy.to(torch.float64) * step_y,
                         dx[ix] + ox.to(torch.float64) * step_x], dim=1)
    if significance:
        # numpy's sqrt: a torch one on a few numbers costs a thread-pool round trip
        rms = torch.from_numpy(np.sqrt(mean_square.clamp_min(1e-300).numpy()))
        return peaks, c0.to(torch.float64).cpu() / rms
    return peaks


def _correlation_derivatives(spectrum: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor,
                             col_weights: torch.Tensor, shift: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value `(n,)`, gradient `(n, 2)` and Hessian `(n, 2, 2)` of the correlation at `shift`.

    `spectrum` `(n, hk, wk)` complex64 or complex128, `ky` `(hk,)`, `kx` `(wk,)` in cycles
    per pixel, `col_weights` `(wk,)` Hermitian weights, `shift` `(n, 2)`.
    Values are sums over the full spectrum (not divided by its size).
    """
    two_pi = 2.0 * math.pi
    ey = torch.exp(1j * two_pi * shift[:, 0:1] * ky[None, :])  # (n, hk)
    ex = torch.exp(1j * two_pi * shift[:, 1:2] * kx[None, :])  # (n, wk)
    powers_x = torch.stack([torch.ones_like(kx), kx, kx * kx], dim=1)  # (wk, 3)
    powers_y = torch.stack([torch.ones_like(ky), ky, ky * ky], dim=1)  # (hk, 3)
    # Phases in double precision; the big sum runs in the spectrum's precision.
    mx = (ex[:, :, None] * (col_weights[:, None] * powers_x)[None]).to(spectrum.dtype)
    my = (ey[:, :, None] * powers_y[None]).to(spectrum.dtype)  # (n, hk, 3)
    # (n, 3, hk): sum over kx, as (3, wk) @ (wk, hk) on the spectrum's transposed view
    # (no copy): a wide product, several times faster on CPU than (hk, wk) @ (wk, 3)
    partial = torch.bmm(mx.transpose(1, 2), spectrum.transpose(1, 2))
    t = torch.einsum("nhi,njh->nij", my, partial).to(torch.complex128)  # [ky power, kx power]
    value = t[:, 0, 0].real
    gradient = torch.stack([-two_pi * t[:, 1, 0].imag, -two_pi * t[:, 0, 1].imag], dim=1)
    hyy = -(two_pi ** 2) * t[:, 2, 0].real
    hxx = -(two_pi ** 2) * t[:, 0, 2].real
    hxy = -(two_pi ** 2) * t[:, 1, 1].real
    hessian = torch.stack([torch.stack([hyy, hxy], 1), torch.stack([hxy, hxx], 1)], 1)
    return value, gradient, hessian


def refine_peak(spectrum: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor,
                col_weights: torch.Tensor, start: torch.Tensor, *, max_iterations: int = 10,
                tolerance: float = 1e-4, max_step: float = 0.5
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Climb to the exact maximum of the band-limited correlation with Newton's method.

    Parameters
    ----------
    spectrum
        `(n, hk, wk)` filtered cross-power spectra (any band-limited crop of an
        rfft2 spectrum, with its frequencies `ky` `(hk,)` and `kx` `(wk,)` in
        cycles per pixel and Hermitian `col_weights` `(wk,)`).
    start
        `(n, 2)` starting positions `(dy, dx)`, within about a pixel of the peak.

    Returns
    -------
    `(peak (n, 2) float64, value (n,) float64)`: the maximum and the
    correlation there, as a full-spectrum sum (divide by the number of pixels
    for the circular correlation value). Once the last step is below
    `tolerance`, the value is the one where that step began: at the top the
    correlation is flat to second order (a relative change of about 1e-8),
    and one evaluation less is one pass less over every spectrum.
    """
    ky, kx, col_weights = (v.to(torch.float64) for v in (ky, kx, col_weights))
    shift = start.to(torch.float64).clone()
    value = None
    for _ in range(max_iterations):
        value, gradient, hessian = _correlation_derivatives(spectrum, ky, kx, col_weights, shift)
        det = hessian[:, 0, 0] * hessian[:, 1, 1] - hessian[:, 0, 1] ** 2
        concave = (hessian[:, 0, 0] < 0) & (det > 0)
        inverse = torch.stack([
            torch.stack([hessian[:, 1, 1], -hessian[:, 0, 1]], 1),
            torch.stack([-hessian[:, 1, 0], hessian[:, 0, 0]], 1)], 1) / torch.where(
                concave, det, torch.ones_like(det))[:, None, None]
        newton = -(inverse @ gradient[:, :, None])[:, :, 0]
        # Where the surface is not concave, go uphill along the gradient instead.
        norm = gradient.norm(dim=1, keepdim=True).clamp_min(1e-300)
        uphill = gradient / norm * max_step
        step = torch.where(concave[:, None], newton, uphill)
        length = step.norm(dim=1, keepdim=True)
        step = step * torch.clamp(max_step / length.clamp_min(1e-300), max=1.0)
        shift = shift + step
        if float(step.abs().max()) < tolerance:
            return shift, value
    value, _, _ = _correlation_derivatives(spectrum, ky, kx, col_weights, shift)
    return shift, value
