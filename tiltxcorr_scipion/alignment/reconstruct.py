"""Tomograms by weighted back-projection (IMOD tilt's method), and the reprojection check.

Geometry (docs/conventions.md, docs/reconstruction.md). The tomogram is a float32 array
`(nz, ny, nx)` (MRC `data[z, y, x]`), voxels `binning` stack pixels wide, centred on the
view centre `((h - 1) / 2, (w - 1) / 2)` as IMOD's tilt is (the transforms rotate about
`(h / 2, w / 2)`, as newstack applies them):

- `x` runs across the tilt axis, along `across = (sin a, cos a)` of the transformed (aligned)
  views, `y` along the axis, `along = (cos a, -sin a)` (row, col), `a` the tilt axis angle in
  the transformed views' frame; with `a = 0` (a tiltalign-style `.xf`) x is the image X
  (columns) and y the image Y (rows). For an axis nearer X than Y the frame's sides swap
  (`nx` from the rows, `ny` from the columns).
- `z` is the beam direction at zero tilt: section index `l` sits at height
  `z = (l - (nz - 1) / 2) * binning - z_shift` (a positive Z shift moves the specimen up,
  as IMOD's SHIFT does). A specimen point `(x, y, z)` lands in aligned view i at
  `centre + y along + (x cos t_i + z sin t_i) across`, `t_i` its tilt plus the tilt angle
  offset: the engine's projection model (alignment.projection, simulate_volume), and what
  IMOD's `tilt -PERPENDICULAR` followed by `trimvol -rx` writes (scipion-em-imod's
  reconstruction runs exactly these two): tilt back-projects with `-sin t` into the slice's
  second axis, and `-rx` (a -90 degree turn about X) flips that axis into Z.

Method. Each view is resampled from the raw stack (its transform applied, no aligned stack
written) onto lines across the tilt axis, stretched by `1 / cos t` (IMOD's cosine
stretch): a voxel's position on its line is then `x + z tan t`, the same for every y.
Each line is weighted by IMOD's radial filter (a ramp out to RADIAL's cutoff, 0.2 of the
first step at zero frequency, a Gaussian fall-off of sd RADIAL's second value as with
FalloffIsTrueSigma 1, optionally a SIRT-like filter as FakeSIRTiterations), and the
back-projection into every height `z` is a shift by `z tan t`: exact in Fourier space,
where the sum over views for all heights is one matrix product per frequency
(`(nz, views) @ (views, rows)`). Rows along the axis are independent, so the views are
streamed through slabs of rows: memory is the output volume plus one slab.

The reprojection check uses linearity: the tomogram without view i is the full one minus
view i's contribution, and reprojecting at view i's own geometry turns that contribution
into `nz` times its filtered line exactly. So the leave-one-out reprojection of every view
comes from one Gram matrix per frequency, for the price of one reconstruction. Without view
i, the streaks its neighbours in tilt leave through the whole thickness no longer cancel:
they reproject as a ghost `T sin(step) / cos t` wide around every feature, so the check's
tomograms are made no thicker than keeps it within `CHECK_GHOST_PX` (`check_thickness`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..options import RECONSTRUCTION_NOISE_FILTERS, RECONSTRUCTION_WEIGHTINGS
from .binning import BinnedViews, bin_stack
from .fourier import frequency_grid, frequency_radius, imod_filter, next_fast_size, taper_mask
from .geometry import axis_directions
from .memory import items_per_chunk
from .peak import coarse_peak, hermitian_weights, refine_peak
from .resample import imod_source_maps, warp_images
from .validation import ViewError, check_stack

__all__ = ["CHECK_GHOST_PX", "CHECK_LIMIT_PX", "CHECK_SIDE", "RADIAL", "ReprojectionCheck",
           "TomogramFrame", "check_thickness", "noise_gain", "reconstruct",
           "reconstruct_binned", "reprojection_check", "tomogram_frame"]

#: IMOD tilt's RADIAL default in scipion-em-imod's form: linear ramp to 0.35 cycles/pixel,
#: then a Gaussian fall-off of sd 0.035 (FalloffIsTrueSigma 1).
RADIAL = (0.35, 0.035)
#: IMOD's weight of the zero frequency, as a fraction of the first step of the ramp (Kak and
#: Slaney's weighting at 0).
ZERO_WEIGHT = 0.2
#: Fewest rows in a slab of the back-projection (the slab's size otherwise comes from
#: `memory.items_per_chunk`): the rows are the columns of its matrix products, and each slab
#: reads the phase matrix `(nk, nz, views)` again. A thick tomogram (61 views of 512 px, 300
#: sections) took 3.8-4.1 s of CPU in 5-row slabs (the 32 MiB budget), 2.3-2.7 s in 16-row
#: slabs. A 16-row slab is small beside the volume it fills.
SLAB_MIN_ROWS = 16
#: The reprojection check bins the views so that their larger side is at most this.
CHECK_SIDE = 384
#: A view whose reprojection residual exceeds this many stack pixels is flagged.
CHECK_LIMIT_PX = 1.0
#: Band-pass of the reprojection check's correlation (cycles per binned pixel, IMOD's
#: correlation filter parameters): the lowest frequencies are left out (a back-projection's
#: missing wedge and fill differ there from the view), the highest too (noise).
CHECK_FILTER = dict(high_pass_sigma=0.03, high_pass_radius=0.0, low_pass_cutoff=0.3,
                    low_pass_sigma=0.05)
#: Largest residual (binned pixels) the check's correlation searches.
CHECK_SEARCH = 12.0
#: Widest ghost (stack pixels) the check's leave-one-out tomograms may leave: the views
#: next in tilt to a left-out view put a feature's streaks across the whole thickness `T`,
#: which reproject onto the left-out view `T sin(step) / cos(tilt)` wide around the feature.
#: Wider than this, the ghost's edges outgrow the view's own peak and the residuals jump by
#: +-(2-8) px with the TRUE alignment (docs/reconstruction.md); the check's tomograms are
#: made no thicker than that (`check_thickness`).
CHECK_GHOST_PX = 12.0
#: The noise filter's Fourier shell correlation is measured on the central rows of the
#: tomogram, reconstructed from the even and from the odd views: enough rows for this many
#: voxels, at least FSC_MIN_ROWS (all rows of a small tomogram).
FSC_VOXELS = 1 << 21
FSC_MIN_ROWS = 16
#: Width of its shells, cycles per voxel.
FSC_SHELL = 1 / 64
#: A shell's correlation counts as signal when above this many standard errors of a
#: correlation of pure noise (1 / sqrt(Fourier voxels in the shell)).
FSC_SIGNIFICANCE = 3.0
#: Views are padded by reflection by this many (binned) pixels before they are filtered, so
#: that the filter does not carry one side of a view onto the other.
FILTER_PAD = 32


@dataclass(frozen=True)
class TomogramFrame:
    """Where the voxels of a tomogram lie, in stack pixels (see the module docstring)."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    binning: int
    z_shift: float

    def heights(self) -> torch.Tensor:
        """`(nz,)` float64 specimen heights of the sections, stack pixels."""
        nz = self.shape[0]
        return (torch.arange(nz, dtype=torch.float64) - (nz - 1) / 2) * self.binning \
            - self.z_shift


def tomogram_frame(view_shape: tuple[int, int], tilt_axis_angle: float, *, thickness: float,
                   binning: int = 1, z_shift: float = 0.0) -> TomogramFrame:
    """The tomogram's shape `(nz, ny, nx)` for views `(h, w)` (see the module docstring)."""
    h, w = view_shape
    a = math.radians(tilt_axis_angle)
    if abs(math.cos(a)) >= abs(math.sin(a)):
        nx, ny = w // binning, h // binning
    else:
        nx, ny = h // binning, w // binning
    nz = int(thickness) // binning
    if nz < 1 or nx < 1 or ny < 1:
        raise ValueError(f"a tomogram {int(thickness)} px thick from {h} x {w} views binned by "
                         f"{binning} has no voxels")
    return TomogramFrame(shape=(nz, ny, nx), binning=int(binning), z_shift=float(z_shift))


def radial_weights(frequency: torch.Tensor, step: torch.Tensor | float, *, radial=RADIAL,
                   line_pixels: int, fake_sirt_iterations: int = 0) -> torch.Tensor:
    """IMOD tilt's radial weighting at `frequency` (cycles per binned pixel of a view line).

    A ramp `|f|` up to `radial[0]` (cycles/pixel; above 1, Fourier pixels of a line of
    `line_pixels`), then that value times a Gaussian of sd `radial[1]` (same units; IMOD's
    FalloffIsTrueSigma 1, as scipion-em-imod runs it); at zero frequency 0.2 of the first
    step `step`. With `fake_sirt_iterations` N > 0 the ramp is multiplied by
    `1 - (1 - 1/i)^N`, `i` the frequency in Fourier pixels of the line: N Landweber (SIRT)
    iterations seen as a filter (Zeng 2012, the filter IMOD's FakeSIRTiterations applies):
    the ramp up to about N pixels, flat above, which smooths as SIRT does.
    """
    cutoff, falloff = (float(v) for v in radial)
    if cutoff > 1:
        cutoff = cutoff / line_pixels
    if falloff > 1:
        falloff = falloff / line_pixels
    f = frequency.abs().to(torch.float64)
    ramp = torch.minimum(f, torch.full_like(f, cutoff))
    if falloff > 0:
        ramp = ramp * torch.exp(-((f - cutoff).clamp(min=0) ** 2) / (2 * falloff ** 2))
    else:
        ramp = torch.where(f > cutoff, torch.zeros_like(f), ramp)
    if fake_sirt_iterations > 0:
        index = (f * line_pixels).clamp(min=1.0)
        ramp = ramp * (1 - (1 - 1 / index) ** int(fake_sirt_iterations))
    step = torch.as_tensor(step, dtype=torch.float64)
    return torch.where(f < 0.5 * step, ZERO_WEIGHT * step * torch.ones_like(f), ramp)


def exact_weights(frequency: torch.Tensor, tilts: torch.Tensor, thickness: float
                  ) -> torch.Tensor:
    """`(b, nk)` exact weights of views at tilts `(b,)` (radians) for an object `thickness`
    binned pixels thick: one over the density of all views' central lines at each view's
    line `frequency` `(b, nk)` (cycles per pixel), each line spread across by the object's
    thickness: `1 / sum_j T sinc(T f sin(t_i - t_j))` (Radermacher's exact filter). At
    high frequency it is the ramp `f dt`; at low ones, where neighbouring lines overlap,
    it levels off at `1 / (n T)` instead of falling to zero, as a ramp does."""
    gaps = torch.sin(tilts[:, None] - tilts[None, :]).to(torch.float64)  # (b, b)
    spread = thickness * frequency.to(torch.float64)[:, None, :] * gaps[:, :, None]
    density = thickness * torch.sinc(spread).sum(dim=1)
    return 1.0 / density.clamp(min=float(thickness))


class _Lines:
    """Every view resampled onto stretched lines across the tilt axis, slab by slab.

    Line sample `j` of view i lies at `u_j = (j - pad - (nx - 1) / 2) * binning` stack
    pixels across the axis in the stretched frame, i.e. at `s = u cos t_i` in the aligned
    view; row `k` at `y_k = (k - (ny - 1) / 2) * binning` along the axis. A voxel at
    `(x, z)` takes line sample `u = x + z tan t_i`.
    """

    def __init__(self, binned: BinnedViews, transforms, tilts_deg: torch.Tensor,
                 tilt_axis_angle: float, frame: TomogramFrame):
        nz, ny, nx = frame.shape
        f = binned.factor
        device = binned.views.device
        self.frame, self.device = frame, device
        tilts = torch.deg2rad(tilts_deg.to(torch.float64))
        self.cos, self.tan = torch.cos(tilts), torch.tan(tilts)
        reach = float(frame.heights().abs().max()) * float(self.tan.abs().max()) / f
        self.pad = math.ceil(reach) + 2
        self.n = next_fast_size(nx + 2 * self.pad)
        # IMOD fills outside the views with their mean; the lines have it removed (so the
        # fill is 0 and only the data ring after filtering)
        self.views = binned.views
        self.means = self.views.mean(dim=(1, 2))
        along, across = axis_directions(tilt_axis_angle)
        h, w = binned.full_shape
        centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
        source = imod_source_maps(transforms, (h, w))  # aligned -> raw, (b, 2, 3)
        linear, offset = source[:, :, :2], source[:, :, 2]
        # aligned = start + along f k + across cos(t) f j
        step_k = along * f
        step_j = across[None, :] * (self.cos[:, None] * f)  # (b, 2)
        start = (centre - along * (ny - 1) / 2 * f)[None, :] \
            - step_j * (self.pad + (nx - 1) / 2)
        raw_k = linear @ step_k  # (b, 2)
        raw_j = (linear @ step_j[:, :, None])[..., 0]
        raw_0 = (linear @ start[:, :, None])[..., 0] + offset
        origin = torch.tensor(binned.origin, dtype=torch.float64)
        # binned coordinate of raw pixel r: (r - origin - (f - 1)/2) / f
        self.maps = torch.stack([raw_k / f, raw_j / f,
                                 (raw_0 - origin - (f - 1) / 2) / f], dim=-1)  # (b, 2, 3)

    def sample(self, rows: slice) -> torch.Tensor:
        """Lines `(b, len(rows), n)` float32 of rows `rows` (of the tomogram's y), each view's
        mean removed (0 outside the view)."""
        lines = warp_images(self.views, self.maps, fill=self.means,
                            out_shape=(rows.stop - rows.start, self.n), first_row=rows.start)
        return lines.sub_(self.means[:, None, None])

    def inside(self, rows: slice) -> torch.Tensor:
        """`(b, len(rows), n)` float32: how much of each line sample comes from inside its view
        (1 inside, 0 outside, bilinear in between)."""
        b, h, w = self.views.shape
        ones = torch.nn.functional.pad(torch.ones(b, h - 2, w - 2, device=self.device),
                                       (1, 1, 1, 1))
        return warp_images(ones, self.maps, fill=torch.zeros(b, device=self.device),
                           out_shape=(rows.stop - rows.start, self.n), first_row=rows.start)


class _Backprojector:
    """The weighted back-projection as matrices in Fourier space along the lines."""

    def __init__(self, lines: _Lines, *, radial, fake_sirt_iterations: int, line_pixels: int,
                 weighting: str = "exact"):
        frame = lines.frame
        nz = frame.shape[0]
        self.lines = lines
        device = lines.device
        n = lines.n
        k = torch.fft.rfftfreq(n, dtype=torch.float64)  # cycles per binned pixel of u
        cos = lines.cos.abs().clamp(min=1e-3)
        # frequency on the unstretched line: the stretched line is the view magnified 1/cos t
        line_freq = k[None, :] / cos[:, None]
        step = 1.0 / (n * cos)
        weights = radial_weights(line_freq, step[:, None], radial=radial,
                                 line_pixels=line_pixels,
                                 fake_sirt_iterations=fake_sirt_iterations)
        tilts = torch.atan(lines.tan)
        if weighting not in RECONSTRUCTION_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(RECONSTRUCTION_WEIGHTINGS)}, "
                             f"not {weighting!r}")
        if weighting == "exact":
            # RADIAL's cutoff and fall-off (and the SIRT-like filter) over the ramp
            f = line_freq.expand_as(weights)
            shape = torch.where(f > 0, weights / f.clamp(min=1e-300), torch.ones_like(weights))
            weights = exact_weights(line_freq, tilts, nz) * shape
        else:
            # the view's share of the angular integral (uniform: IMOD weights views equally)
            spread = float(tilts.max() - tilts.min()) if len(tilts) > 1 else 0.0
            weights = weights * (spread / (len(tilts) - 1) if spread > 0 else 1.0)
        self.weights = weights.to(torch.float32).to(device)  # (b, nk)
        # shift of the line for section l: z_l tan t_i / f samples
        delay = frame.heights()[:, None] * lines.tan[None, :] / frame.binning  # (nz, b)
        index = torch.arange(len(k), dtype=torch.float64)
        # turns, reduced to [0, 1) in double precision, then the complex exponential in single
        turns = torch.frac(index[:, None, None] * (delay / n)[None]).to(torch.float32)
        angle = turns.mul_(2 * math.pi)
        self.phases = torch.polar(torch.ones_like(angle), angle).to(device)  # (nk, nz, b)
        self.nz = nz

    def spectra(self, rows: slice) -> torch.Tensor:
        """Weighted line spectra `(nk, b, rows)` complex64 of a slab of rows."""
        lines = self.lines.sample(rows)
        spectra = torch.fft.rfft(lines, dim=-1) * self.weights[:, None, :]
        return spectra.permute(2, 0, 1).contiguous()

    def slab(self, spectra: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """Sections `(nz, rows, nx)` float32 from weighted spectra `(nk, b, rows)`; with
        `views` (indices), from those views' spectra `(nk, len(views), rows)` only."""
        nx = self.lines.frame.shape[2]
        pad, n = self.lines.pad, self.lines.n
        phases = self.phases if views is None else self.phases[:, :, views]
        summed = torch.bmm(phases, spectra)  # (nk, nz, rows)
        volume = torch.fft.irfft(summed.permute(1, 2, 0), n=n, dim=-1)
        return volume[..., pad:pad + nx]


def shell_correlation(a: torch.Tensor, b: torch.Tensor, width: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier shell correlation of two volumes `(nz, ny, nx)`: shell radii `(m,)` (cycles
    per voxel), their correlations `(m,)` float64 and the Fourier voxels in each `(m,)`
    (of the half transform), shells `width` wide (shell 0 holds the origin only; empty
    shells are left out)."""
    fa, fb = torch.fft.rfftn(a.float()), torch.fft.rfftn(b.float())
    radius = frequency_radius(tuple(a.shape), device=a.device)
    shells = radius.div_(width).round_().long().flatten()
    twice = torch.full((fa.shape[-1],), 2.0, device=a.device)  # the rfft's missing half
    twice[0] = 1.0
    if a.shape[-1] % 2 == 0:
        twice[-1] = 1.0
    m = int(shells.max()) + 1

    def total(values):
        return torch.bincount(shells, weights=(values * twice).flatten().double(),
                              minlength=m)

    cross = total((fa * fb.conj()).real)
    power = total(fa.abs().square()) * total(fb.abs().square())
    count = torch.bincount(shells, minlength=m).double()
    keep = (count > 0) & (power > 0)
    radii = torch.arange(m, dtype=torch.float64, device=a.device) * width
    return radii[keep].cpu(), (cross[keep] / power[keep].sqrt()).cpu(), count[keep].cpu()


def noise_gain(projector: _Backprojector, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise filter: shell radii `(m,)` (cycles per voxel) and gains `(m,)` float64.

    The tomogram's rows `rows` (`FSC_VOXELS`) are reconstructed twice, from the even and from the odd views
    in tilt order (each half spans the whole tilt range); their Fourier shell correlation F
    is turned into the full set's, `2 F / (1 + F)` (Rosenthal and Henderson 2003), which is
    the gain: a Wiener filter whose signal-to-noise ratio is measured on the data. Where
    the halves agree (no noise) it is 1; where they share nothing, 0. Gain 1 at the origin.
    """
    spectra = projector.spectra(rows)  # (nk, b, rows)
    order = torch.argsort(torch.atan(projector.lines.tan)).to(spectra.device)
    halves = [projector.slab(spectra[:, part], views=part) for part in (order[0::2],
                                                                      order[1::2])]
    radii, fsc, count = shell_correlation(*halves, FSC_SHELL)
    # up to Nyquist: beyond, only the corners of the Fourier box, where both halves share
    # the grid's own pattern (the gain there is Nyquist's)
    within = radii <= 0.5
    radii, fsc, count = radii[within], fsc[within], count[within]
    # a correlation within FSC_SIGNIFICANCE standard errors (1 / sqrt(voxels)) of 0 is none
    fsc = torch.where(fsc > FSC_SIGNIFICANCE / count.sqrt(), fsc, torch.zeros_like(fsc))
    fsc = fsc.clamp(max=1.0)
    gain = 2 * fsc / (1 + fsc)
    # never lower than at a higher frequency: where a shell falls below a higher one, few
    # voxels (the lowest shells) or the halves' sparser tilts (without noise) made the dip
    gain = torch.flip(torch.cummax(torch.flip(gain, (0,)), dim=0).values, (0,))
    gain[radii == 0] = 1.0
    return radii, gain


def filter_views(views: torch.Tensor, radii: torch.Tensor, gain: torch.Tensor
                 ) -> torch.Tensor:
    """`(b, h, w)` views multiplied in Fourier space by `gain` at their radial frequency
    (`radii`, cycles per pixel; linear in between, the last gain beyond): by the central
    slice theorem, the 3-D filter of that radial profile on their back-projection. Each
    view is padded by reflection (`FILTER_PAD`) first; the input is not changed."""
    b, h, w = views.shape
    pad_y, pad_x = min(FILTER_PAD, h - 1), min(FILTER_PAD, w - 1)
    shape = (next_fast_size(h + 2 * pad_y), next_fast_size(w + 2 * pad_x))
    extra_y = min(shape[0] - h - pad_y, h - 1)
    extra_x = min(shape[1] - w - pad_x, w - 1)
    rho = frequency_radius(shape, dtype=torch.float64)
    response = np.interp(rho.numpy(), radii.numpy(), gain.numpy())
    response = torch.as_tensor(response, dtype=torch.float32, device=views.device)
    out = torch.empty_like(views, dtype=torch.float32)
    # per view, alive at once: the padded view and its spectrum, or the spectrum and the
    # filtered view (float32 planes of the padded size)
    chunk = items_per_chunk(2 * 4 * shape[0] * shape[1], views.device)
    for start in range(0, b, chunk):
        part = views[start:start + chunk].float()[:, None]
        padded = torch.nn.functional.pad(part, (pad_x, extra_x, pad_y, extra_y),
                                         mode="reflect")[:, 0]
        spectrum = torch.fft.rfft2(padded, s=shape).mul_(response)
        del padded
        out[start:start + chunk] = torch.fft.irfft2(spectrum, s=shape)[:, pad_y:pad_y + h,
                                                                        pad_x:pad_x + w]
    return out


def _slab_rows(n_views: int, n: int, nz: int, device: torch.device) -> int:
    """Rows per slab so that a slab's lines, spectra and sections fit in the working memory,
    but at least `SLAB_MIN_ROWS`."""
    per_row = n_views * n * (4 + 4 + 8) + nz * n * (4 + 8 + 4)
    return max(SLAB_MIN_ROWS, items_per_chunk(per_row, device))


def _enabled(enabled, b: int) -> torch.Tensor:
    if enabled is None:
        return torch.ones(b, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(enabled, dtype=bool))
    if mask.shape != (b,):
        raise ValueError(f"enabled must have one flag per view ({b}), got shape "
                         f"{tuple(mask.shape)}")
    if int(mask.sum()) < 2:
        raise ValueError(f"a tomogram needs at least 2 enabled views, {int(mask.sum())} "
                         "are enabled")
    return mask


def _binned_enabled(views: torch.Tensor, mask: torch.Tensor, factor: int) -> BinnedViews:
    """The enabled views binned (pixels checked); a ViewError names stack indices."""
    use = mask.nonzero()[:, 0]
    try:
        return bin_stack(views if bool(mask.all()) else views[use.to(views.device)], factor)
    except ViewError as error:
        raise ViewError([int(use[v]) for v in error.views], error.problem,
                        error.advice) from None


def _checked_geometry(transforms, tilt_angles, b: int, enabled: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Transforms `(b, 3, 3)` and tilt angles `(b,)` float64, checked on the enabled views."""
    t = torch.as_tensor(np.asarray(transforms.cpu() if torch.is_tensor(transforms)
                                   else transforms, dtype=np.float64))
    if t.shape != (b, 3, 3):
        raise ValueError(f"transforms must be ({b}, 3, 3), got {tuple(t.shape)}")
    angles = torch.as_tensor(np.asarray(tilt_angles.cpu() if torch.is_tensor(tilt_angles)
                                        else tilt_angles, dtype=np.float64)).flatten()
    if angles.shape != (b,):
        raise ValueError(f"tilt_angles must have one angle per view ({b}), got "
                         f"{tuple(angles.shape)}")
    bad = enabled & ~(torch.isfinite(angles) & (angles.abs() < 90.0))
    if bad.any():
        raise ViewError(bad.nonzero()[:, 0].tolist(), "tilt angle not finite or not within "
                        "+-90 degrees")
    linear = t[:, :2, :2]
    det = torch.linalg.det(linear)
    bad = enabled & ~(torch.isfinite(t).all(dim=(1, 2)) & (det.abs() > 1e-6))
    if bad.any():
        raise ViewError(bad.nonzero()[:, 0].tolist(), "transform not finite or not invertible")
    return t, angles


def reconstruct(views: torch.Tensor, transforms, tilt_angles, tilt_axis_angle: float, *,
                thickness: float, binning: int = 1, z_shift: float = 0.0,
                tilt_angle_offset: float = 0.0, radial=RADIAL, fake_sirt_iterations: int = 0,
                weighting: str = "exact", noise_filter: str = "fsc", enabled=None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Weighted back-projection of raw views into a tomogram, as IMOD's `tilt` does.

    Parameters
    ----------
    views
        `(b, h, w)` raw (untransformed) views, float, any device (the work runs there).
    transforms
        `(b, 3, 3)` IMOD forward transforms (raw -> aligned view, about the view centre;
        docs/conventions.md), as a `.xf` or Scipion holds them.
    tilt_angles
        `(b,)` degrees.
    tilt_axis_angle
        The tilt axis in the frame of the transformed views: the acquisition's angle
        after a pure-shift (coarse) alignment, 0 after a tiltalign-style `.xf`.
    thickness
        Stack pixels; the tomogram has `thickness // binning` sections.
    binning
        Views are block-averaged by this factor first (docs/conventions.md, Binning).
    z_shift
        Stack pixels; positive moves the specimen up in the tomogram (IMOD's SHIFT z).
    tilt_angle_offset
        Degrees added to every tilt angle (IMOD's OFFSET; the fine alignment's offset).
    radial
        IMOD's RADIAL `(cutoff, fall-off)`, cycles per binned pixel.
    fake_sirt_iterations
        IMOD's FakeSIRTiterations (0: plain weighted back-projection).
    weighting
        ``"exact"`` (default): each view weighted by one over the density of all views'
        central lines at its frequencies, for an object as thick as the tomogram
        (`exact_weights`), then RADIAL's cutoff and fall-off; at high frequency it is
        IMOD's ramp, at the lowest it does not fall to zero, which keeps a slab's broad
        density (docs/reconstruction.md, Benchmark). ``"ramp"``: IMOD tilt's weighting as
        it is (a ramp, 0.2 of its first step at zero frequency).
    noise_filter
        ``"fsc"`` (default): every 3-D frequency weighted by the agreement of two half
        tomograms, even and odd views (`noise_gain`: `2 F / (1 + F)` of their shell
        correlation F on the central rows, `FSC_VOXELS`), applied to the views before they
        are back-projected (`filter_views`): a Wiener filter measured on the data, 1 where
        there is no noise. ``"none"``: the plain weighted back-projection.
    enabled
        `(b,)` bool; disabled views are left out (never read).
    progress
        Called as `progress(done, total)` over the tomogram's rows.

    Returns
    -------
    `(nz, ny, nx)` float32 tomogram (module docstring: orientation and frame).
    """
    b, _, _ = check_stack(views)
    mask = _enabled(enabled, b)
    use = mask.nonzero()[:, 0]
    t, angles = _checked_geometry(transforms, tilt_angles, b, mask)
    binned = _binned_enabled(views, mask, int(binning))
    return reconstruct_binned(binned, t[use], angles[use], tilt_axis_angle, thickness=thickness,
                              z_shift=z_shift, tilt_angle_offset=tilt_angle_offset,
                              radial=radial, fake_sirt_iterations=fake_sirt_iterations,
                              weighting=weighting, noise_filter=noise_filter,
                              progress=progress)


def reconstruct_binned(binned: BinnedViews, transforms, tilt_angles, tilt_axis_angle: float, *,
                       thickness: float, z_shift: float = 0.0, tilt_angle_offset: float = 0.0,
                       radial=RADIAL, fake_sirt_iterations: int = 0, weighting: str = "exact",
                       noise_filter: str = "fsc",
                       progress: Callable[[int, int], None] | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """`reconstruct` from views already binned (`bin_chunks`: a stack read chunk by chunk).

    Every view in `binned` is used; `transforms` `(b, 3, 3)` and `tilt_angles` `(b,)` are
    theirs, in full-size stack pixels. `out`, if given, is a `(nz, ny, nx)` float32 tensor
    the sections are written into (e.g. a memory-mapped file).
    """
    b = binned.views.shape[0]
    if noise_filter not in RECONSTRUCTION_NOISE_FILTERS:
        raise ValueError(f"noise_filter must be one of {', '.join(RECONSTRUCTION_NOISE_FILTERS)}"
                         f", not {noise_filter!r}")
    t, angles = _checked_geometry(transforms, tilt_angles, b, torch.ones(b, dtype=torch.bool))
    frame = tomogram_frame(binned.full_shape, tilt_axis_angle, thickness=thickness,
                           binning=binned.factor, z_shift=z_shift)
    nz, ny, nx = frame.shape
    lines = _Lines(binned, t, angles + float(tilt_angle_offset), tilt_axis_angle, frame)
    projector = _Backprojector(lines, radial=radial, fake_sirt_iterations=fake_sirt_iterations,
                               line_pixels=nx, weighting=weighting)
    if noise_filter == "fsc" and b >= 4:
        n_rows = min(ny, max(FSC_MIN_ROWS, math.ceil(FSC_VOXELS / (nz * nx))))
        first = (ny - n_rows) // 2
        radii, gain = noise_gain(projector, slice(first, first + n_rows))
        if float(gain.min()) < 0.99:  # a gain of 1 everywhere (no noise) changes nothing
            lines.views = filter_views(lines.views, radii, gain)
            lines.means = lines.views.mean(dim=(1, 2))
    volume = out if out is not None else torch.empty(frame.shape, dtype=torch.float32,
                                                    device=binned.views.device)
    rows = _slab_rows(b, lines.n, nz, binned.views.device)
    for start in range(0, ny, rows):
        slab = slice(start, min(ny, start + rows))
        volume[:, slab, :] = projector.slab(projector.spectra(slab)).to(volume.device)
        if progress is not None:
            progress(slab.stop, ny)
    return volume


@dataclass(frozen=True)
class ReprojectionCheck:
    """Each view against the tomogram reconstructed without it.

    Attributes
    ----------
    residual
        `(b, 2)` float64 `(dy, dx)` stack pixels in the aligned (transformed) frame: how far
        the view's content lies from where the other views put it (moving the view's
        content by `-residual` would lay it on the reprojection). NaN for disabled views and
        for unchecked ones.
    residual_px
        `(b,)` float64 lengths of `residual`.
    correlation
        `(b,)` float64 normalised correlation of the view with its leave-one-out
        reprojection at the residual (band-passed, `CHECK_FILTER`); NaN for disabled views.
    flagged
        `(b,)` bool: `residual_px > limit_px`.
    limit_px
        The limit, stack pixels.
    binning
        The binning the check ran at.
    unchecked
        `(b,)` bool: enabled views the check could not compare, no ray of theirs meeting
        only voxels every other view saw (the ends of the tilt range on a tomogram thick
        for its width; views thrown apart). Neither passed nor flagged.
    thickness
        Thickness (stack pixels) of the leave-one-out tomograms: the one asked for, or
        less (`check_thickness`) where coarse tilt steps would leave ghosts wider than
        `CHECK_GHOST_PX`.
    """

    residual: torch.Tensor
    residual_px: torch.Tensor
    correlation: torch.Tensor
    flagged: torch.Tensor
    limit_px: float
    binning: int
    unchecked: torch.Tensor
    thickness: float

    @property
    def worst_view(self) -> int | None:
        """0-based index of the view with the largest residual (None if none was checked)."""
        finite = torch.isfinite(self.residual_px)
        if not finite.any():
            return None
        values = torch.where(finite, self.residual_px, torch.full_like(self.residual_px, -1.0))
        return int(values.argmax())


def check_thickness(thickness: float, tilt_angles) -> float:
    """Thickness (stack pixels) of the check's tomograms: `thickness`, or less where its
    ghost would be wider than `CHECK_GHOST_PX`.

    The ghost is widest at the largest |tilt| and the median step between consecutive
    tilts (a single gap, as a dropped view leaves, does not thin the check for all).
    """
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).detach().cpu().reshape(-1)
    steps = torch.diff(torch.sort(angles).values)
    steps = steps[steps > 1e-6]
    if not steps.numel():
        return float(thickness)
    step = math.radians(float(steps.median()))
    largest = math.radians(min(float(angles.abs().max()), 89.0))
    return min(float(thickness), CHECK_GHOST_PX * math.cos(largest) / math.sin(step))


def check_binning(view_shape: tuple[int, int]) -> int:
    """The reprojection check's default binning: the larger side at most `CHECK_SIDE`."""
    return max(1, math.ceil(max(view_shape) / CHECK_SIDE))


def reprojection_check(views: torch.Tensor, transforms, tilt_angles, tilt_axis_angle: float, *,
                       thickness: float, binning: int | None = None, enabled=None,
                       tilt_angle_offset: float = 0.0, limit_px: float = CHECK_LIMIT_PX
                       ) -> ReprojectionCheck:
    """Compare every enabled view with the reprojection of a tomogram made without it.

    Parameters as `reconstruct`; `binning` defaults to `check_binning` (views of at most
    `CHECK_SIDE` pixels); the tomograms are made `check_thickness` thick (`thickness`, or
    less where the tilt steps are coarse). Leave-one-out for every view costs about one
    reconstruction (module docstring).
    """
    b, h, w = check_stack(views)
    mask = _enabled(enabled, b)
    use = mask.nonzero()[:, 0]
    factor = int(binning or check_binning((h, w)))
    t, angles = _checked_geometry(transforms, tilt_angles, b, mask)
    binned = _binned_enabled(views, mask, factor)
    return reprojection_check_binned(binned, t[use], angles[use], tilt_axis_angle,
                                     thickness=thickness, tilt_angle_offset=tilt_angle_offset,
                                     limit_px=limit_px, enabled=mask)


def reprojection_check_binned(binned: BinnedViews, transforms, tilt_angles,
                              tilt_axis_angle: float, *, thickness: float,
                              tilt_angle_offset: float = 0.0, limit_px: float = CHECK_LIMIT_PX,
                              enabled: torch.Tensor | None = None) -> ReprojectionCheck:
    """`reprojection_check` on binned views (all used); `enabled` `(B,)` places them back
    among the stack's B views in the result (NaN for the others)."""
    n_used = binned.views.shape[0]
    t, angles = _checked_geometry(transforms, tilt_angles, n_used,
                                  torch.ones(n_used, dtype=torch.bool))
    f = binned.factor
    thickness = max(float(f), check_thickness(thickness, angles + float(tilt_angle_offset)))
    frame = tomogram_frame(binned.full_shape, tilt_axis_angle, thickness=thickness, binning=f)
    nz, ny, nx = frame.shape
    lines = _Lines(binned, t, angles + float(tilt_angle_offset), tilt_axis_angle, frame)
    # IMOD's ramp: the check's band-pass leaves out the lowest frequencies, where the
    # weightings differ, and its limit and figures (docs/reconstruction.md) were set so
    projector = _Backprojector(lines, radial=RADIAL, fake_sirt_iterations=0, line_pixels=nx,
                               weighting="ramp")
    all_rows = slice(0, ny)
    raw_lines = lines.sample(all_rows)  # (b, ny, n): the views themselves, stretched
    weighted = (torch.fft.rfft(raw_lines, dim=-1) * projector.weights[:, None, :]
                ).permute(2, 0, 1).contiguous()  # (nk, b, ny)
    phases = projector.phases
    gram = torch.bmm(phases.mH, phases)  # (nk, b, b)
    gram = gram - nz * torch.eye(n_used, dtype=gram.dtype, device=gram.device)[None]
    reprojected = torch.fft.irfft(torch.bmm(gram, weighted).permute(1, 2, 0), n=lines.n,
                                  dim=-1)  # (b, ny, n)
    # compare where the view has data, within the tomogram's x range, along rays whose
    # voxels every other view saw (elsewhere the tomogram is made of some views only)
    seen = lines.inside(all_rows)  # (b, ny, n)
    inside = seen > 0.999
    columns = torch.zeros(lines.n, dtype=torch.bool, device=inside.device)
    columns[lines.pad:lines.pad + nx] = True
    inside &= columns[None, None, :]
    if COVERED_RAYS_ONLY:
        inside &= _fully_seen_rays(gram, seen, nz)
    shifts, correlation = _correlate(raw_lines, reprojected, inside)
    # (dy, du) in binned samples -> stack pixels in the aligned frame
    along, across = axis_directions(tilt_axis_angle)
    du = shifts[:, 1] * lines.cos.abs() * f
    residual = (shifts[:, 0:1] * f) * along[None, :] + du[:, None] * across[None, :]
    mask = torch.ones(n_used, dtype=torch.bool) if enabled is None else enabled.cpu()
    full = torch.full((len(mask), 2), math.nan, dtype=torch.float64)
    full[mask] = residual
    corr = torch.full((len(mask),), math.nan, dtype=torch.float64)
    corr[mask] = correlation
    lengths = full.norm(dim=1)
    flagged = torch.isfinite(lengths) & (lengths > limit_px)
    return ReprojectionCheck(residual=full, residual_px=lengths, correlation=corr,
                             flagged=flagged, limit_px=float(limit_px), binning=f,
                             unchecked=mask & ~torch.isfinite(lengths), thickness=thickness)


#: The check compares a view only along rays through voxels that all other views saw.
COVERED_RAYS_ONLY = True
#: A ray counts as fully seen when it misses at most this many view-voxels (the masks are
#: interpolated, and shifted in Fourier space, so they are not exactly 0 or 1).
COVERAGE_TOLERANCE = 0.5


def _fully_seen_rays(gram: torch.Tensor, seen: torch.Tensor, nz: int) -> torch.Tensor:
    """`(b, ny, n)` bool: line samples of each view whose ray meets only voxels that every
    other view saw. `gram` `(nk, b, b)`: the leave-one-out reprojection operator;
    `seen` `(b, ny, n)`: where each view's lines hold data (0..1).

    A view at the end of the tilt range is reprojected from views all on one side; where
    its rays cross voxels only some views saw (near the tomogram's sides, at the top and
    bottom of a thick one) the reprojection leans across the axis, by up to a pixel on
    thick tomograms. Those rays are left out.
    """
    b = seen.shape[0]
    n = seen.shape[-1]
    spectra = torch.fft.rfft(seen, dim=-1).permute(2, 0, 1).contiguous()  # (nk, b, ny)
    others = torch.fft.irfft(torch.bmm(gram, spectra).permute(1, 2, 0), n=n, dim=-1)
    return nz * (b - 1) - others <= COVERAGE_TOLERANCE


def _correlate(views: torch.Tensor, reprojected: torch.Tensor, inside: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift `(b, 2)` of each view against its reprojection, and their correlation `(b,)`.

    Both are cropped to the box where some view data lie, weighted by where each view has
    data (tapered), band-passed (`CHECK_FILTER`) and cross-correlated; the peak is refined
    to its exact maximum (alignment.peak). Shifts are `(rows, line samples)`: the view's
    content lies at `+shift` from the reprojection's. A view with nothing to compare (no
    ray all other views saw, as when an alignment throws views apart) gets NaN: unchecked.
    """
    compared = inside.any(dim=(1, 2))
    if not bool(compared.any()):
        nan = torch.full((views.shape[0],), math.nan, dtype=torch.float64)
        return torch.stack([nan, nan], dim=1), nan
    cols = inside.any(dim=(0, 1)).nonzero()[:, 0]
    rows = inside.any(dim=(0, 2)).nonzero()[:, 0]
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    a = views[:, box[0], box[1]].double()
    r = reprojected[:, box[0], box[1]].double()
    weight = inside[:, box[0], box[1]].double()
    weight = weight * taper_mask(tuple(weight.shape[1:]), 0.1, dtype=torch.float64,
                                 device=weight.device)[None]
    h, w = a.shape[1:]
    shape = (next_fast_size(h + 2 * int(CHECK_SEARCH) + 2),
             next_fast_size(w + 2 * int(CHECK_SEARCH) + 2))

    def prepared(image):
        total = weight.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
        centred = (image - (image * weight).sum(dim=(1, 2), keepdim=True) / total) * weight
        return torch.fft.rfft2(centred, s=shape)

    ky, kx = frequency_grid(shape, device=views.device)
    band = imod_filter(ky, kx, **CHECK_FILTER)
    fa, fr = prepared(a) * band, prepared(r) * band
    cross = fa * fr.conj()  # correlation c(d) = sum a(x) r(x - d): peaks at the view's shift
    start = coarse_peak(cross, shape, max_shift=CHECK_SEARCH)
    peak, value = refine_peak(cross, ky, kx, hermitian_weights(shape[1], device=views.device),
                              start)
    cols_w = hermitian_weights(shape[1], device=views.device)
    energy_a = (fa.abs() ** 2 * cols_w).sum(dim=(1, 2))
    energy_r = (fr.abs() ** 2 * cols_w).sum(dim=(1, 2))
    correlation = value / (energy_a * energy_r).sqrt().clamp(min=1e-300)
    unchecked = ~compared.cpu()
    peak, correlation = peak.cpu().double(), correlation.cpu().double()
    peak[unchecked], correlation[unchecked] = math.nan, math.nan
    return peak, correlation
