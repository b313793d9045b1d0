"""Filtered cross-correlation of image pairs, batched, with exact sub-pixel peaks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fourier import (
    filter_support,
    frequency_grid,
    imod_filter,
    padded_size,
    taper_mask,
    taper_profile,
    taper_width,
)
from .memory import items_per_chunk
from .peak import coarse_peak, crop_half_spectrum, hermitian_weights, refine_peak


@dataclass(frozen=True)
class CorrelationFilter:
    """IMOD's correlation filter, in cycles per (binned) pixel."""

    high_pass_sigma: float = 0.03
    high_pass_radius: float = 0.0
    low_pass_cutoff: float = 0.25
    low_pass_sigma: float = 0.05

    def coarser(self, factor: int) -> CorrelationFilter:
        """The same filter for images binned `factor` times more (frequencies scale up)."""
        return CorrelationFilter(
            high_pass_sigma=self.high_pass_sigma * factor,
            high_pass_radius=min(0.5, self.high_pass_radius * factor),
            low_pass_cutoff=0.0 if self.low_pass_cutoff * factor >= 0.5
            else self.low_pass_cutoff * factor,
            low_pass_sigma=self.low_pass_sigma * factor,
        )


class PairCorrelator:
    """Everything that depends only on the image size, built once per alignment.

    Holds the taper mask `(h, w)`, the padded FFT size, and the filter and
    frequencies cropped to the band where the filter is not negligible.
    """

    def __init__(self, shape: tuple[int, int], correlation_filter: CorrelationFilter, *,
                 taper_fraction: float, pad_fraction: float, device: torch.device):
        self.shape = shape
        self.fft_shape = (padded_size(shape[0], pad_fraction), padded_size(shape[1], pad_fraction))
        self.mask = taper_mask(shape, taper_fraction, device=device)
        self.taper_fraction = taper_fraction
        self.taper_rows = taper_width(shape[0], taper_fraction)
        self.taper_cols = taper_width(shape[1], taper_fraction)
        big_h, big_w = self.fft_shape
        ky, kx = frequency_grid(self.fft_shape, device=device)
        support = filter_support(correlation_filter.low_pass_cutoff,
                                 correlation_filter.low_pass_sigma)
        self.band_rows = min(big_h, 2 * math.ceil(support * big_h) + 1)
        self.band_cols = min(big_w // 2 + 1, math.ceil(support * big_w) + 1)
        self.ky = crop_half_spectrum(ky[:, None].expand(-1, kx.numel()), self.band_rows,
                                     self.band_cols)[:, 0].contiguous()
        self.kx = kx[: self.band_cols]
        self.col_weights = hermitian_weights(big_w, device=device)[: self.band_cols]
        self.filter = imod_filter(
            self.ky, self.kx,
            high_pass_sigma=correlation_filter.high_pass_sigma,
            high_pass_radius=correlation_filter.high_pass_radius,
            low_pass_cutoff=correlation_filter.low_pass_cutoff,
            low_pass_sigma=correlation_filter.low_pass_sigma,
        ).to(torch.float32)
        self.filter[(self.ky[:, None] ** 2 + self.kx[None, :] ** 2) > support ** 2] = 0.0
        self.energy_weights = (self.filter * self.col_weights.to(torch.float32))[:, :, None].expand(
            -1, -1, 2).reshape(-1).contiguous()

    def reweight(self, radial) -> None:
        """Multiply the filter by `radial(frequency)` (cycles per pixel), e.g. a measured SNR."""
        frequency = torch.sqrt(self.ky[:, None].to(torch.float64) ** 2
                               + self.kx[None, :].to(torch.float64) ** 2)
        self.filter = (self.filter * radial(frequency.cpu()).to(self.filter.device)).to(
            torch.float32)
        self.energy_weights = (self.filter * self.col_weights.to(torch.float32))[:, :, None].expand(
            -1, -1, 2).reshape(-1).contiguous()

    def windows(self, window_shifts: torch.Tensor, boxes: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Taper windows `(n, h, w)`: `w(r) * w(r - shift)` for window shifts `(n, 2)`.

        Correlating two views whose content is displaced by `d` with one fixed
        window biases the peak towards zero (the overlap of the windows falls
        off with `d`). Giving the reference the window `w(r) w(r - d)` and the
        moving view `w(r) w(r + d)` makes the two windowed images exact
        translates of each other, so the peak sits at `d` without bias.
        With `boxes` `(n, 4)` (see `box_profiles`), `w` is each box's taper
        instead of the whole view's.
        """
        shifts = window_shifts.to(device=self.mask.device, dtype=torch.float64)
        row_window, col_window = self.box_profiles(boxes, len(shifts), shifts)
        row_base, col_base = self.box_profiles(boxes, len(shifts))
        row_window = row_window * row_base
        col_window = col_window * col_base
        return (row_window[:, :, None] * col_window[:, None, :]).to(torch.float32)

    def box_profiles(self, boxes: torch.Tensor | None, n: int,
                     shifts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Row `(n, h)` and column `(n, w)` tapers of boxes, moved by `shifts` `(n, 2)`.

        `boxes` `(n, 4)`: `(top, left, height, width)` in pixels, `top` and
        `left` the continuous coordinates of the box's first edge (pixel `j`
        spans `j - 0.5 .. j + 0.5`); None: the whole view. The taper is
        `taper_fraction` of each box side (at least 5 px), as the whole view's.
        """
        h, w = self.shape
        device = self.mask.device
        rows = torch.arange(h, dtype=torch.float64, device=device)
        cols = torch.arange(w, dtype=torch.float64, device=device)
        if shifts is None:
            shifts = torch.zeros(n, 2, dtype=torch.float64, device=device)
        if boxes is None:
            return (taper_profile(rows[None] - shifts[:, 0:1], h, self.taper_rows),
                    taper_profile(cols[None] - shifts[:, 1:2], w, self.taper_cols))
        boxes = boxes.to(device=device, dtype=torch.float64)
        # Boxes differ only in position (an area keeps its size through the series).
        height, width = float(boxes[0, 2]), float(boxes[0, 3])
        rows_in = rows[None] - boxes[:, 0:1] - 0.5 - shifts[:, 0:1]  # (n, h)
        cols_in = cols[None] - boxes[:, 1:2] - 0.5 - shifts[:, 1:2]  # (n, w)
        return (taper_profile(rows_in, height, taper_width(round(height), self.taper_fraction)),
                taper_profile(cols_in, width, taper_width(round(width), self.taper_fraction)))

    def box_mask(self, box: torch.Tensor) -> torch.Tensor:
        """Taper window `(h, w)` of one box `(4,)` (see `box_profiles`)."""
        rows, cols = self.box_profiles(box[None], 1)
        return (rows[0][:, None] * cols[0][None, :]).to(torch.float32)

    def inset_mask(self, margin: float) -> torch.Tensor:
        """Taper mask `(h, w)` that is zero within `margin` pixels of every edge.

        For views moved by up to `margin` pixels before correlating: the
        window then covers only pixels that hold data in every view.
        """
        h, w = self.shape
        m = min(margin, 0.25 * min(h, w))
        device = self.mask.device
        rows = taper_profile(torch.arange(h, dtype=torch.float64, device=device) - m,
                             max(1, round(h - 2 * m)), self.taper_rows)
        cols = taper_profile(torch.arange(w, dtype=torch.float64, device=device) - m,
                             max(1, round(w - 2 * m)), self.taper_cols)
        return (rows[:, None] * cols[None, :]).to(torch.float32)

    def spectra(self, images: torch.Tensor, window_shifts: torch.Tensor | None = None,
                window: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Band of the spectra `(n, band_rows, band_cols)` of windowed, padded images `(n, h, w)`.

        Each view is brought to zero weighted mean and multiplied by its taper
        window (the fixed mask, `window`, or `windows(window_shifts, boxes)`),
        so it falls smoothly to zero at the edges and the padding joins it
        without a step.
        """
        images = images.to(torch.float32)
        if boxes is not None and window_shifts is None:
            window_shifts = torch.zeros(images.shape[0], 2, dtype=torch.float64)
        if window_shifts is not None:
            window = self.windows(window_shifts, boxes)  # (n, h, w)
            mean = torch.einsum("nhw,nhw->n", images, window) / window.sum(dim=(-2, -1))
        else:
            window = self.mask if window is None else window  # (h, w), or (n, h, w) per view
            if window.ndim == 3:
                mean = torch.einsum("nhw,nhw->n", images, window) / window.sum(dim=(-2, -1))
            else:
                mean = torch.einsum("nhw,hw->n", images, window) / window.sum()
        prepared = (images - mean[:, None, None]).mul_(window)
        spectrum = torch.fft.rfft2(prepared, s=self.fft_shape)
        return crop_half_spectrum(spectrum, self.band_rows, self.band_cols)

    def energy(self, spectra: torch.Tensor) -> torch.Tensor:
        """Filtered energy `(n,)` of band spectra: the NCC normalisation (full-spectrum sum).

        `sum |F|^2 * filter * hermitian weight`, as one matrix-vector product
        over the real and imaginary parts (much faster than a complex norm), a
        few spectra at a time (a squared copy of them all would be a fresh
        block of memory, several times slower to fill than a reused one).
        """
        return self.overlap(spectra)

    def overlap(self, spectra: torch.Tensor, first: torch.Tensor | None = None,
                second: torch.Tensor | None = None) -> torch.Tensor:
        """Filtered overlap `(n,)` at zero shift of band spectra `first` and `second` (indices
        `(n,)` into `spectra`): `sum Re(a conj(b)) * filter * hermitian weight`, the
        correlation at zero shift. Without indices: each spectrum's own (`energy`)."""
        parts = torch.view_as_real(spectra).flatten(1)  # (b, rows * cols * 2)
        n = parts.shape[0] if first is None else first.numel()
        out = torch.empty(n, dtype=torch.float32, device=parts.device)
        # per spectrum: the product, and with indices the two gathered spectra (float32)
        step = items_per_chunk((1 if first is None else 3) * 4 * parts.shape[1], parts.device,
                               cached=True)
        for start in range(0, n, step):
            if first is None:
                product = parts[start:start + step].square()
            else:
                product = (parts[first[start:start + step].to(parts.device)]
                           * parts[second[start:start + step].to(parts.device)])
            out[start:start + step] = product @ self.energy_weights
        return out.to(torch.float64)

    def correlate(self, reference: torch.Tensor, moving: torch.Tensor, *, refine: bool = True,
                  max_shift: float | torch.Tensor | None = None,
                  start: torch.Tensor | None = None,
                  coarse_band: float | None = None, moving_energy: torch.Tensor | None = None,
                  significance: bool = False):
        """Shift that lays each moving view on its reference.

        Parameters
        ----------
        reference, moving
            `(n, band_rows, band_cols)` band spectra from `spectra()`.
        refine
            Climb to the exact maximum of the correlation (else: the parabolic
            estimate on the coarse grid).
        max_shift
            Search radius in pixels (None: the whole correlation), or one per
            pair `(n,)`.
        start
            `(n, 2)` known approximate shifts: skips the coarse search.
        coarse_band
            Run the coarse search on frequencies up to this many cycles per
            pixel only (a smaller, cheaper grid; enough for short searches).
        moving_energy
            `(n,)` precomputed `energy(moving)`, when the caller has it.
        significance
            Also return each coarse peak's height over the root mean square of
            its correlation map `(n,)` (NaN where `start` skipped the search).

        Returns
        -------
        `shifts (n, 2)` float64 `(dy, dx)` pixels (moving content by `+shift`
        lays it on the reference), `ncc (n,)` normalised cross-correlation at
        the peak, `peak (n,)` correlation value at the peak per pixel (and
        the significance, if asked).
        """
        cross = torch.mul(reference, moving.conj()).mul_(self.filter)  # (n, rows, cols)
        z = torch.full((cross.shape[0],), float("nan"), dtype=torch.float64)
        if start is None:
            search = cross
            if coarse_band is not None:
                rows = min(cross.shape[-2], 2 * math.ceil(coarse_band * self.fft_shape[0]) + 1)
                cols = min(cross.shape[-1], math.ceil(coarse_band * self.fft_shape[1]) + 1)
                search = crop_half_spectrum(cross, rows, cols)
            start, z = coarse_peak(search, self.fft_shape, max_shift=max_shift,
                                   significance=True)
        if refine:
            shifts, value = refine_peak(cross, self.ky, self.kx, self.col_weights, start)
        else:
            shifts = start
            value = _value_at(cross, self.ky, self.kx, self.col_weights, shifts)
        if moving_energy is None:
            moving_energy = self.energy(moving)
        norm = torch.sqrt(self.energy(reference) * moving_energy).clamp_min(1e-300)
        ncc = (value / norm).clamp(-1.0, 1.0)  # float32 spectra can overshoot by 1e-6
        peak = value / (self.fft_shape[0] * self.fft_shape[1])
        if significance:
            return shifts, ncc, peak, z.cpu()
        return shifts, ncc, peak


def pairs_per_chunk(shape: tuple[int, int], fft_shape: tuple[int, int],
                    device: torch.device) -> int:
    """How many views or pairs of `shape` (FFT size `fft_shape`) one chunk works on."""
    h, w = shape
    fh, fw = fft_shape
    per_pair = 4 * (6 * h * w + 6 * fh * (fw // 2 + 1))  # stretched view, grid, spectra
    return items_per_chunk(per_pair, device)


def _value_at(cross, ky, kx, col_weights, shifts) -> torch.Tensor:
    phase_y = torch.exp(2j * math.pi * shifts[:, 0:1] * ky[None, :].to(torch.float64))
    phase_x = torch.exp(2j * math.pi * shifts[:, 1:2] * kx[None, :].to(torch.float64))
    weighted = cross.to(torch.complex128) * col_weights.to(torch.float64)
    return torch.einsum("nh,nhw,nw->n", phase_y, weighted, phase_x).real
