"""Tilt series projected from a 3-D volume: a second image model, independent of `simulate`.

`tiltxcorr_scipion.simulate` is the world the engine's defaults were tuned on. This module
builds other worlds, on purpose in another way, to judge the engine where it was not tuned:

- **Specimen**: a voxel volume. ``"cell"``: a slab of given thickness holding filaments,
  microtubules, membrane vesicles (lipid bilayers), dense macromolecular particles, optional
  gold beads on its surfaces and a faint 3-D texture with a ``1/f^1.3`` amplitude spectrum;
  ``"needle"``: a STEM needle (a tapered rod near the tilt axis, bright bands, inclusions and
  voids); ``"cluster"``: nanoparticles on an amorphous support; ``"beads"``: gold beads at
  given positions (for tests). Densities are evaluated at voxel centres, with soft edges.
- **Projection**: line integrals through the volume at each tilt, about a tilt axis at any
  in-plane angle (docs/conventions.md): a specimen point ``(x, y, z)`` (``x`` across the
  axis, ``y`` along it, ``z`` the height) lands in the aligned view at
  ``centre + y along + (x cos t + z sin t) across``, ``along = (cos a, -sin a)`` and
  ``across = (sin a, cos a)`` in `(row, col)`, the centre ``((h - 1) / 2, (w - 1) / 2)``.
  The tilt axis passes through the image centre of the lowest-|tilt| view (IMOD's
  convention; without it a correct aligner cannot be scored). The integral along each ray
  is a sum over the volume's planes, each plane moved exactly in Fourier space
  (``z tan t`` along ``x``), then the foreshortening ``x cos t`` is sampled bicubically;
  beyond 45 degrees a compact specimen is projected from its copy turned by 90 degrees, so
  any tilt up to 90 works (an extended slab is refused beyond 80).
- **Shifts**: the content of view i is then moved by ``-shifts[i]``, so that moving it by
  ``+shifts[i]`` aligns it: the engine's convention (docs/conventions.md). The lowest-|tilt|
  view has shift ``(0, 0)``.
- **Contrast**: ``"cryo"``: a dark specimen at a few percent contrast on a bright
  background, through a CTF-like transfer (phase contrast with 7% amplitude contrast,
  oscillating above its first zero) and an envelope, with ice absorbing more at high tilt
  (path ``1 / cos t``); ``"stem"``: a bright specimen (HAADF, mass-thickness) on a dark
  background, blurred by the probe.
- **Noise**: Poisson counts at a dose per view and/or Gaussian noise at ``k`` times the
  standard deviation of the noiseless lowest-tilt view.

Everything is torch; nothing here imports Scipion. `simulate_volume_series` returns a
`VolumeTiltSeries`, whose `alignment_error` is the project's fair measure
(`tiltxcorr_scipion.simulate.alignment_error`, docs/benchmarks-hard-data.md).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .alignment.fourier import next_fast_size
from .alignment.geometry import axis_directions
from .simulate import alignment_error, tilt_scheme

__all__ = ["VolumeTiltSeries", "simulate_volume_series"]

SPECIMENS = ("cell", "needle", "cluster", "beads")
CONTRASTS = ("cryo", "stem")
JUMPS = ("walk", "large", "pre-aligned", "none")
#: Highest |tilt| an extended slab can be seen at (its projection grows as 1 / cos t).
SLAB_TILT_LIMIT = 80.0
#: Canvas margin (px) rendered around each view so that the CTF and the probe blur,
#: applied by FFT, wrap nothing into the view.
_MARGIN = 16


@dataclass(frozen=True)
class VolumeTiltSeries:
    """A tilt series projected from a 3-D volume, and its ground truth.

    Attributes
    ----------
    views
        `(b, h, w)` float32 views, in stack order.
    tilt_angles
        `(b,)` float32 tilt angles in degrees, in stack order.
    tilt_axis_angle
        Degrees from the image Y axis, counter-clockwise positive (IMOD's RotationAngle).
    shifts
        `(b, 2)` float32 true shifts `(dy, dx)` in pixels: moving the content of view i by
        `+shifts[i]` aligns it. `(0, 0)` for the lowest-|tilt| view.
    description
        One line saying what world this is.
    volume
        With ``keep_volume=True``: the specimen `(nz, na, nc)` float32 density, centred on
        the tilt axis at the reference view's centre: z the height, a along the axis, c
        across it (a tomogram's z, y, x; docs/reconstruction.md), `voxel_size` pixels per
        voxel. None otherwise.
    voxel_size
        Camera pixels per voxel of `volume`.
    """

    views: torch.Tensor
    tilt_angles: torch.Tensor
    tilt_axis_angle: float
    shifts: torch.Tensor
    description: str = ""
    volume: torch.Tensor | None = None
    voxel_size: float = 1.0

    @property
    def reference_view(self) -> int:
        """Stack index of the lowest-|tilt| view (its true shift is `(0, 0)`)."""
        return int(torch.argmin(self.tilt_angles.abs()))

    def alignment_error(self, shifts: torch.Tensor, *, exclude=()) -> float:
        """RMS error (px) of estimated `(b, 2)` shifts after removing what no series fixes.

        The project's fair measure (`tiltxcorr_scipion.simulate.alignment_error`): one
        constant offset and a 3-D translation of the specimen are removed by least squares.
        """
        return alignment_error(shifts, self.shifts, self.tilt_axis_angle, self.tilt_angles,
                               exclude=exclude)

    def within(self, max_tilt: float = 82.0) -> VolumeTiltSeries:
        """The views with |tilt| <= `max_tilt` (the engine's stretch limit is 82 degrees)."""
        keep = self.tilt_angles.abs() <= max_tilt + 1e-6
        return replace(self, views=self.views[keep], tilt_angles=self.tilt_angles[keep],
                       shifts=self.shifts[keep],
                       description=f"{self.description}; views beyond {max_tilt:g} deg left out")


def simulate_volume_series(
    *,
    shape: tuple[int, int] = (256, 256),
    n_views: int = 41,
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    order: str = "sorted",
    tilt_angles=None,
    tilt_axis_angle: float = 85.0,
    specimen: str = "cell",
    thickness: float = 40.0,
    contrast: str = "cryo",
    jumps: str = "walk",
    jump_size: float | None = None,
    noise: float = 0.0,
    dose: float | None = None,
    gold_beads: int = 0,
    bead_positions=None,
    ctf_first_zero: float = 0.14,
    voxel_size: float | None = None,
    seed: int = 0,
    keep_volume: bool = False,
) -> VolumeTiltSeries:
    """Project a simulated 3-D specimen into a tilt series with known shifts.

    Parameters
    ----------
    shape
        `(h, w)` of each view, in pixels; need not be square.
    n_views, tilt_range, order
        `n_views` tilts evenly spaced over `tilt_range` (degrees), in stack order
        ``"sorted"`` or ``"dose-symmetric"`` (`tiltxcorr_scipion.simulate.tilt_scheme`).
        `tilt_angles` (degrees, stack order) overrides all three.
    tilt_axis_angle
        Degrees from the image Y axis, counter-clockwise positive.
    specimen
        ``"cell"`` (a slab `thickness` px thick), ``"needle"``, ``"cluster"`` or
        ``"beads"`` (gold beads only, at `bead_positions`).
    contrast
        ``"cryo"`` (dark, low contrast, CTF-like transfer whose first zero lies at
        `ctf_first_zero` cycles/px) or ``"stem"`` (bright on dark, no CTF).
    jumps
        How the views are displaced: ``"walk"`` (a drift: random steps of `jump_size` px,
        default 2, per axis, in acquisition order), ``"large"`` (each view displaced
        independently by `jump_size` px, default 12, per axis: neighbours up to ~40 px
        apart), ``"pre-aligned"`` (every view within 0.5 px of its place: neighbours
        within 1 px, the microscope's tracking) or ``"none"`` (an aligned stack).
    noise
        Gaussian noise, in standard deviations of the noiseless lowest-tilt view.
    dose
        Mean counts per pixel of the lowest-tilt view, drawn as Poisson; None: no counts.
    gold_beads
        Gold beads per view field (cell: on the slab's surfaces; others: around the
        specimen).
    bead_positions
        `(n, 3)` bead centres `(x, y, z)` in pixels for ``specimen="beads"``: `x` across
        the axis, `y` along it, `z` the height, from the tilt axis at the view centre.
    voxel_size
        Camera pixels per voxel (default 1, or 2 for views over 600 px).
    seed
        Everything random (specimen, shifts, noise) follows from it.
    keep_volume
        Return the rendered specimen too (`VolumeTiltSeries.volume`), e.g. to score a
        reconstruction against it.

    Returns
    -------
    `VolumeTiltSeries`.
    """
    if specimen not in SPECIMENS:
        raise ValueError(f"unknown specimen {specimen!r}: use one of {', '.join(SPECIMENS)}")
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}: use one of {', '.join(CONTRASTS)}")
    if jumps not in JUMPS:
        raise ValueError(f"unknown jumps {jumps!r}: use one of {', '.join(JUMPS)}")
    generator = torch.Generator().manual_seed(seed)
    if tilt_angles is None:
        angles = tilt_scheme(tilt_range, n_views, order, generator)
    else:
        angles = torch.as_tensor(tilt_angles, dtype=torch.float64).flatten()
    if specimen == "cell" and float(angles.abs().max()) > SLAB_TILT_LIMIT:
        raise ValueError(f"an extended slab ('cell') cannot be seen beyond {SLAB_TILT_LIMIT:g} "
                         "degrees: use a compact specimen ('needle', 'cluster') for full ranges")
    h, w = shape
    voxel = float(voxel_size or (2.0 if max(h, w) > 600 else 1.0))
    shifts = _true_shifts(angles, jumps, jump_size, generator)
    field = _field_positions(h, w)  # (h', w', 2) canvas pixels from the centre
    along, across = axis_directions(tilt_axis_angle)
    reach_along, reach_across = _reach(field, shifts, along, across)

    with _one_thread():  # thousands of small blocks: threads only wait on each other
        if specimen == "cell":
            projector, volume = _slab_projector(reach_along, reach_across,
                                                float(angles.abs().max()), thickness, voxel,
                                                gold_beads, (h, w), generator)
        else:
            volume_along = reach_along + 8.0
            if specimen == "needle":
                volume = _needle_volume(volume_along, min(h, w), voxel, gold_beads, generator)
            elif specimen == "cluster":
                volume = _cluster_volume(volume_along, min(h, w), voxel, gold_beads, generator)
            else:
                volume = _beads_volume(volume_along, bead_positions, voxel)
            projector = _CompactProjector(volume, voxel)

    projections = torch.stack([
        projector.project(float(t), field + shifts[i].to(torch.float32), along, across)
        for i, t in enumerate(angles)])  # (b, h', w') density x px
    clean = _form_images(projections, angles, contrast, ctf_first_zero, thickness
                         if specimen == "cell" else 0.0)
    clean = clean[:, _MARGIN:_MARGIN + h, _MARGIN:_MARGIN + w]
    views = _add_noise(clean, int(torch.argmin(angles.abs())), noise, dose, generator)
    description = (f"{specimen}, {contrast} contrast, jumps {jumps}, "
                   f"{len(angles)} x {h} x {w}, tilts {float(angles.min()):g}..."
                   f"{float(angles.max()):g}, axis {tilt_axis_angle:g}"
                   + (f", noise {noise:g}x" if noise else "")
                   + (f", dose {dose:g}/px" if dose else ""))
    return VolumeTiltSeries(views=views.to(torch.float32), tilt_angles=angles.to(torch.float32),
                            tilt_axis_angle=float(tilt_axis_angle),
                            shifts=shifts.to(torch.float32), description=description,
                            volume=volume if keep_volume else None, voxel_size=voxel)


@contextmanager
def _one_thread():
    """Run torch on one thread inside, and restore the caller's setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- shifts ---------------------------------------------------------------------------

def _true_shifts(angles: torch.Tensor, jumps: str, jump_size: float | None,
                 generator: torch.Generator) -> torch.Tensor:
    """`(b, 2)` float64 true shifts, zero for the lowest-|tilt| view."""
    b = len(angles)
    if jumps == "none":
        shifts = torch.zeros(b, 2, dtype=torch.float64)
    elif jumps == "walk":  # a drift, step by step in acquisition (stack) order
        steps = torch.randn(b, 2, generator=generator, dtype=torch.float64)
        shifts = torch.cumsum(steps * (2.0 if jump_size is None else jump_size), dim=0)
    elif jumps == "large":
        shifts = torch.randn(b, 2, generator=generator, dtype=torch.float64) \
            * (12.0 if jump_size is None else jump_size)
    else:  # pre-aligned: every view within 0.5 px of its place (uniform in a disc)
        radius = 0.5 * torch.rand(b, generator=generator, dtype=torch.float64).sqrt()
        phase = 2 * math.pi * torch.rand(b, generator=generator, dtype=torch.float64)
        shifts = torch.stack([radius * torch.sin(phase), radius * torch.cos(phase)], dim=1)
    return shifts - shifts[int(torch.argmin(angles.abs()))]


# ---- geometry of the field and the volume ---------------------------------------------

def _field_positions(h: int, w: int) -> torch.Tensor:
    """`(h + 2m, w + 2m, 2)` float32 `(row, col)` of the canvas pixels, from the view centre."""
    rows = torch.arange(-_MARGIN, h + _MARGIN, dtype=torch.float32) - (h - 1) / 2
    cols = torch.arange(-_MARGIN, w + _MARGIN, dtype=torch.float32) - (w - 1) / 2
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)


def _reach(field: torch.Tensor, shifts: torch.Tensor, along: torch.Tensor, across: torch.Tensor
           ) -> tuple[float, float]:
    """How far (px) from the axis the aligned canvas reaches, along and across the axis."""
    corners = field[[0, 0, -1, -1], [0, -1, 0, -1]].double()  # (4, 2)
    extra = float(shifts.norm(dim=1).max()) + 2.0
    return (float((corners @ along).abs().max()) + extra,
            float((corners @ across).abs().max()) + extra)


@dataclass(frozen=True)
class _Grid:
    """A centred voxel grid `(nz, na, nc)`: z height, a along the axis, c across it."""

    nz: int
    na: int
    nc: int
    voxel: float

    @staticmethod
    def covering(half_z: float, half_a: float, half_c: float, voxel: float) -> _Grid:
        return _Grid(*(2 * math.ceil(half / voxel) + 1 for half in (half_z, half_a, half_c)),
                     voxel)

    def empty(self) -> torch.Tensor:
        return torch.zeros(self.nz, self.na, self.nc, dtype=torch.float32)

    def axis(self, n: int) -> torch.Tensor:
        """Positions (px) of `n` voxel centres, symmetric about 0."""
        return (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * self.voxel

    def block(self, centre, radius: float):
        """Slices of the voxels within `radius` of `centre` `(x, y, z)` (a box), and their
        positions relative to it as broadcastable `(z, a, c)` tensors; None if outside."""
        x, y, z = (float(v) for v in centre)
        slices, offsets = [], []
        for pos, n in ((z, self.nz), (y, self.na), (x, self.nc)):
            lo = max(0, math.floor((pos - radius) / self.voxel + (n - 1) / 2))
            hi = min(n, math.ceil((pos + radius) / self.voxel + (n - 1) / 2) + 1)
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
            offsets.append((torch.arange(lo, hi, dtype=torch.float32) - (n - 1) / 2)
                           * self.voxel - pos)
        dz, da, dc = offsets
        return tuple(slices), (dz[:, None, None], da[None, :, None], dc[None, None, :])


# ---- specimens ------------------------------------------------------------------------

def _uniform(generator, low, high, n=None):
    if n is None:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _add_blob(volume, grid: _Grid, centre, sigma: float, amplitude: float) -> None:
    found = grid.block(centre, 3.5 * sigma)
    if found is not None:
        index, (dz, da, dc) = found
        volume[index] += amplitude * torch.exp(-(dz * dz + da * da + dc * dc) / (2 * sigma ** 2))


def _add_sphere(volume, grid: _Grid, centre, radius: float, density: float,
                edge: float = 0.6) -> None:
    """A uniform sphere with a soft (logistic) edge of `edge` px."""
    found = grid.block(centre, radius + 5 * edge)
    if found is not None:
        index, (dz, da, dc) = found
        distance = torch.sqrt(dz * dz + da * da + dc * dc)
        volume[index] += density * torch.sigmoid((radius - distance) / edge)


def _add_tube(volume, grid: _Grid, start, end, profile, reach: float) -> None:
    """Set voxels near the segment `start`-`end` `(x, y, z)` to at least `profile(distance)`."""
    start = torch.as_tensor(start, dtype=torch.float32)
    end = torch.as_tensor(end, dtype=torch.float32)
    middle, half = (start + end) / 2, float((end - start).norm()) / 2
    found = grid.block(middle.tolist(), half + reach)
    if found is None:
        return
    index, (dz, da, dc) = found
    # positions relative to `start`, components (x, y, z) = (c, a, z)
    px, py, pz = dc + (middle[0] - start[0]), da + (middle[1] - start[1]), \
        dz + (middle[2] - start[2])
    d = end - start
    length2 = float(d @ d) or 1e-9
    t = ((px * d[0] + py * d[1] + pz * d[2]) / length2).clamp(0.0, 1.0)
    distance = torch.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    volume[index] = torch.maximum(volume[index], profile(distance))


def _random_directions(n: int, generator, max_z: float) -> torch.Tensor:
    """`(n, 3)` unit vectors `(x, y, z)`, |z| <= max_z, uniform in azimuth."""
    phi = _uniform(generator, 0.0, 2 * math.pi, n)
    z = _uniform(generator, -max_z, max_z, n)
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


def _cell_volume(grid: _Grid, thickness: float, gold_per_field: float, field_area: float,
                 generator) -> torch.Tensor:
    """A slab of cytoplasm: filaments, microtubules, vesicles, particles, texture, gold."""
    volume = grid.empty()
    half_t = thickness / 2
    half_c = (grid.nc - 1) / 2 * grid.voxel
    half_a = (grid.na - 1) / 2 * grid.voxel
    area = 4 * half_c * half_a

    def somewhere(margin: float):
        return (_uniform(generator, -half_c, half_c), _uniform(generator, -half_a, half_a),
                _uniform(generator, -max(half_t - margin, 0.0), max(half_t - margin, 0.0)))

    # actin-like filaments (radius ~2.5 px) and microtubules (hollow, radius 11 px)
    def actin(distance):
        return torch.sigmoid((2.5 - distance) / 0.6)

    def microtubule(distance):
        return 0.9 * torch.exp(-0.5 * ((distance - 10.5) / 1.4) ** 2)

    for profile, radius, count, step, length in (
            (actin, 3.0, round(area / 9000), 8.0, (80.0, 320.0)),
            (microtubule, 13.0, round(area / 150000), 16.0, (300.0, 900.0))):
        for _ in range(count):
            point = torch.tensor(somewhere(radius + 1), dtype=torch.float64)
            direction = _random_directions(1, generator, 0.2)[0]
            for _ in range(int(_uniform(generator, *length) / step)):
                bend = torch.randn(3, generator=generator, dtype=torch.float64) * 0.12
                direction = direction + bend
                direction[2] = direction[2].clamp(-0.25, 0.25)
                direction = direction / direction.norm()
                nxt = point + step * direction
                if abs(float(nxt[2])) > half_t - radius:  # keep inside the slab
                    direction[2] = -direction[2]
                    nxt = point + step * direction
                _add_tube(volume, grid, point.tolist(), nxt.tolist(), profile, radius + 3)
                point = nxt
    # membrane vesicles: lipid bilayers (two leaflets 3.2 px apart), flattened to fit
    for _ in range(round(area / 40000)):
        radius = _uniform(generator, 12.0, 45.0)
        radius_z = min(radius, max(half_t - 4.0, 4.0))
        centre = somewhere(radius_z + 2)
        found = grid.block(centre, radius + 4)
        if found is None:
            continue
        index, (dz, da, dc) = found
        rho = torch.sqrt((dc * dc + da * da) / radius ** 2 + dz * dz / radius_z ** 2)
        depth = (rho - 1) * min(radius, radius_z * 1.5)
        bilayer = torch.exp(-0.5 * ((depth - 1.6) / 0.8) ** 2) \
            + torch.exp(-0.5 * ((depth + 1.6) / 0.8) ** 2)
        volume[index] += 1.2 * bilayer + 0.15 * torch.sigmoid(-depth / 1.0)
    # dense particles (ribosome-like): each a few overlapping blobs
    for _ in range(round(area / 1800)):
        centre = torch.tensor(somewhere(9.0), dtype=torch.float64)
        size = _uniform(generator, 4.0, 8.0)
        for _ in range(int(_uniform(generator, 3, 7))):
            offset = torch.randn(3, generator=generator, dtype=torch.float64) * size / 2
            _add_blob(volume, grid, (centre + offset).tolist(), _uniform(generator, 1.8, 3.2),
                      _uniform(generator, 0.8, 1.4))
    volume += _texture(grid, generator, std=0.08)
    # gold beads on the two surfaces
    for _ in range(round(gold_per_field * area / field_area)):
        radius = _uniform(generator, 3.0, 5.0)
        x, y, _ = somewhere(0.0)
        side = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
        _add_sphere(volume, grid, (x, y, side * (half_t - radius - 0.5)), radius, 12.0)
    return volume


def _texture(grid: _Grid, generator, *, std: float) -> torch.Tensor:
    """A 3-D random field with a 1/f^1.3 amplitude spectrum, made 4x coarser and upsampled."""
    coarse = tuple(max(n // 4, 4) for n in (grid.nz, grid.na, grid.nc))
    spectrum = torch.fft.rfftn(torch.randn(coarse, generator=generator))
    fz, fa = (torch.fft.fftfreq(n) for n in coarse[:2])
    fc = torch.fft.rfftfreq(coarse[2])
    frequency = torch.sqrt(fz[:, None, None] ** 2 + fa[None, :, None] ** 2 + fc[None, None] ** 2)
    field = torch.fft.irfftn(spectrum * frequency.clamp(min=1.0 / max(coarse)) ** -1.3,
                             s=coarse)
    field = F.interpolate(field[None, None], size=(grid.nz, grid.na, grid.nc), mode="trilinear",
                          align_corners=True)[0, 0]
    return std * (field - field.mean()) / field.std()


def _needle_volume(half_a: float, side: int, voxel: float, gold: int, generator) -> torch.Tensor:
    """A STEM needle: a tapered rod entering from one end of the axis, bright bands inside."""
    radius = 0.14 * side
    offset = _uniform(generator, -0.03, 0.03, 2) * side  # rod centre off the axis (x, z)
    tilt = _uniform(generator, -0.03, 0.03, 2)  # slopes of the rod against the axis (x, z)
    half = radius + float(offset.abs().max()) + 0.03 * half_a + 14.0
    grid = _Grid.covering(half, half_a, half, voxel)
    volume = grid.empty()
    z = grid.axis(grid.nz)[:, None, None]
    a = grid.axis(grid.na)[None, :, None]
    c = grid.axis(grid.nc)[None, None, :]
    tip = 0.3 * side
    taper = 0.25 * side
    length = a  # position along the rod (the rod is nearly along the axis)
    rho = torch.sqrt((c - offset[0] - tilt[0] * a) ** 2 + (z - offset[1] - tilt[1] * a) ** 2)
    local_radius = radius * ((tip - length) / taper).clamp(0.0, 1.0).sqrt()
    body = torch.sigmoid((local_radius - rho) / 1.0) * torch.sigmoid((tip - length) / 1.0)
    # density along the rod: a dim shaft, then bands of alternating density (1.0, 0.6, ...)
    start = tip - taper - 0.12 * side
    edges = start + torch.cumsum(_uniform(generator, 0.04, 0.09, 6) * side, dim=0)
    bands = 0.35 + 0.65 * torch.sigmoid(length - start)
    for k, edge in enumerate(edges.tolist()):
        bands = bands + 0.4 * (-1) ** (k + 1) * torch.sigmoid(length - edge)
    volume += body * bands.clamp(min=0.2)
    # inclusions (denser) and voids inside the rod
    for density, count in ((1.5, 10), (-0.5, 5)):
        for _ in range(count):
            along = _uniform(generator, -half_a, tip - taper)
            angle = _uniform(generator, 0.0, 2 * math.pi)
            r = radius * 0.7 * math.sqrt(_uniform(generator, 0.0, 1.0))
            centre = (float(offset[0]) + r * math.cos(angle), along,
                      float(offset[1]) + r * math.sin(angle))
            _add_sphere(volume, grid, centre, _uniform(generator, 2.5, 7.0), density)
    for _ in range(gold):  # dense grains on the surface
        along = _uniform(generator, -half_a, tip - taper)
        angle = _uniform(generator, 0.0, 2 * math.pi)
        centre = (float(offset[0]) + radius * math.cos(angle), along,
                  float(offset[1]) + radius * math.sin(angle))
        _add_sphere(volume, grid, centre, _uniform(generator, 2.0, 4.0), 4.0)
    return volume.clamp(min=0.0)


def _cluster_volume(half_a: float, side: int, voxel: float, gold: int, generator
                    ) -> torch.Tensor:
    """Nanoparticles on an amorphous support blob (STEM catalyst-like), compact."""
    spread = 0.11 * side
    half = 3.2 * spread + 14.0
    grid = _Grid.covering(half, min(half_a, half), half, voxel)
    volume = grid.empty()
    for _ in range(12):  # the support: soft overlapping lumps
        centre = (torch.randn(3, generator=generator, dtype=torch.float64) * spread * 0.8)
        _add_blob(volume, grid, centre.tolist(), _uniform(generator, 0.4, 0.8) * spread, 0.25)
    for _ in range(40 + gold):  # particles near the support's surface
        direction = torch.randn(3, generator=generator, dtype=torch.float64)
        direction = direction / direction.norm()
        centre = direction * spread * _uniform(generator, 0.6, 2.2)
        _add_sphere(volume, grid, centre.tolist(), _uniform(generator, 2.5, 0.05 * side + 3),
                    _uniform(generator, 1.5, 4.0))
    return volume


def _beads_volume(half_a: float, positions, voxel: float) -> torch.Tensor:
    """Gold beads (radius 3 px) at `positions` `(n, 3)` `(x, y, z)`, nothing else."""
    points = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 3)
    half = float(points[:, [0, 2]].abs().max()) + 12.0
    grid = _Grid.covering(half, max(half_a, float(points[:, 1].abs().max()) + 12.0), half, voxel)
    volume = grid.empty()
    for point in points:
        _add_sphere(volume, grid, point.tolist(), 3.0, 10.0)
    return volume


# ---- projection ----------------------------------------------------------------------

class _ShearProjector:
    """Line integrals through a volume `(nz, na, nc)` at tilts up to `max_tilt` degrees.

    At tilt t a ray meets plane z at ``x = (s - z sin t) / cos t``; so the projection at
    ``s`` is ``(dz / cos t) * Q(s / cos t)`` with ``Q(u) = sum_z V(u - z tan t, z)``:
    each plane moved by ``z tan t`` along x, exactly (a phase ramp on its spectrum along
    x, computed once), summed, then sampled at ``s / cos t``.
    """

    def __init__(self, volume: torch.Tensor, voxel: float, max_tilt: float):
        nz, na, nc = volume.shape
        self.voxel = voxel
        self.na = na
        self.z = (torch.arange(nz, dtype=torch.float64) - (nz - 1) / 2) * voxel
        shear = float(self.z.abs().max()) * math.tan(math.radians(min(max_tilt, 89.0)))
        pad = math.ceil(shear / voxel) + 2
        self.n = next_fast_size(nc + 2 * pad)
        self.centre = pad + (nc - 1) / 2  # padded index of x = 0
        padded = F.pad(volume, (pad, self.n - nc - pad))
        self.spectrum = torch.fft.rfft(padded, dim=-1).permute(2, 1, 0).contiguous()  # (f, a, z)
        self.frequency = torch.fft.rfftfreq(self.n, d=voxel, dtype=torch.float64)

    def sheared_sum(self, tilt: float) -> torch.Tensor:
        """`Q` `(na, n)`: the planes moved by ``z tan t`` along x and summed (times dz)."""
        phase = torch.exp(-2j * math.pi * self.frequency[:, None] * self.z[None, :]
                          * math.tan(math.radians(tilt))).to(torch.complex64)  # (f, z)
        summed = torch.bmm(self.spectrum, phase[:, :, None])[..., 0]  # (f, a)
        return torch.fft.irfft(summed.T, n=self.n, dim=-1) * self.voxel

    def project(self, tilt: float, positions: torch.Tensor, along, across, *,
                mirrored: bool = False) -> torch.Tensor:
        """Projection at `tilt` sampled at aligned positions `(h, w, 2)` from the centre.

        `mirrored`: sample at ``-s`` across the axis (a volume turned by 180 degrees).
        """
        a = positions @ along.to(torch.float32)
        s = positions @ across.to(torch.float32)
        if mirrored:
            s = -s
        cosine = math.cos(math.radians(tilt))
        col = (s / cosine) / self.voxel + self.centre
        row = a / self.voxel + (self.na - 1) / 2
        grid = torch.stack([2 * col / (self.n - 1) - 1, 2 * row / (self.na - 1) - 1], dim=-1)
        q = self.sheared_sum(tilt)
        sampled = F.grid_sample(q[None, None], grid[None], mode="bicubic", padding_mode="zeros",
                                align_corners=True)[0, 0]
        return sampled / abs(cosine)


class _CompactProjector:
    """Any tilt up to 90 degrees for a specimen that fits in its volume `(n, na, n)`.

    Beyond 45 degrees the volume turned by 90 degrees about the tilt axis is projected at
    ``t - 90`` (or ``t + 90``, mirrored), so the planes are never sheared by more than 45
    degrees: ``V'(x, z) = V(-z, x)`` seen at ``t - 90`` is ``V`` seen at ``t``.
    """

    def __init__(self, volume: torch.Tensor, voxel: float):
        self.upright = _ShearProjector(volume, voxel, 45.0)
        self.turned = _ShearProjector(volume.permute(2, 1, 0).flip(0), voxel, 45.0)

    def project(self, tilt: float, positions, along, across) -> torch.Tensor:
        if abs(tilt) <= 45.0:
            return self.upright.project(tilt, positions, along, across)
        if tilt > 0:
            return self.turned.project(tilt - 90.0, positions, along, across)
        return self.turned.project(tilt + 90.0, positions, along, across, mirrored=True)


def _slab_projector(reach_along: float, reach_across: float, max_tilt: float, thickness: float,
                    voxel: float, gold: int, shape: tuple[int, int], generator
                    ) -> tuple[_ShearProjector, torch.Tensor]:
    """The cell slab, wide enough that no view at up to `max_tilt` sees its edge, and its
    volume."""
    tilt = math.radians(max_tilt)
    half_c = reach_across / math.cos(tilt) + thickness / 2 * math.tan(tilt) + 8.0
    grid = _Grid.covering(thickness / 2, reach_along + 8.0, half_c, voxel)
    volume = _cell_volume(grid, thickness, gold, shape[0] * shape[1], generator)
    return _ShearProjector(volume, voxel, max_tilt), volume


# ---- image formation and noise ---------------------------------------------------------

#: Amplitude contrast of the cryo-EM-like transfer; the rest is phase contrast.
AMPLITUDE_CONTRAST = 0.07
#: Standard deviation of the cryo-like image modulation, relative to the mean intensity.
CRYO_CONTRAST = 0.05
#: STEM probe blur (Gaussian sd, px) and the dark background level (specimen peak ~1).
PROBE_SIGMA = 0.8
STEM_BACKGROUND = 0.02


def _form_images(projections: torch.Tensor, angles: torch.Tensor, contrast: str,
                 first_zero: float, thickness: float) -> torch.Tensor:
    """Intensities `(b, h', w')` from projected densities `(b, h', w')` (density x px)."""
    b, h, w = projections.shape
    ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    f2 = ky * ky + kx * kx
    reference = int(torch.argmin(angles.abs()))
    inner = (slice(None), slice(_MARGIN, h - _MARGIN), slice(_MARGIN, w - _MARGIN))
    if contrast == "cryo":
        chi = math.pi * f2 / first_zero ** 2
        transfer = (math.sqrt(1 - AMPLITUDE_CONTRAST ** 2) * torch.sin(chi)
                    + AMPLITUDE_CONTRAST * torch.cos(chi)) * torch.exp(-f2 / 0.3 ** 2)
        phase = torch.fft.irfft2(torch.fft.rfft2(projections) * transfer.to(torch.float32),
                                 s=(h, w))
        scale = CRYO_CONTRAST / float(phase[inner][reference].std())
        # ice absorbs along its path, 1/cos t: half the intensity is lost at zero tilt
        transmission = torch.exp(-0.5 / torch.cos(torch.deg2rad(angles)).clamp(min=0.05)) \
            if thickness > 0 else torch.ones_like(angles)
        return transmission.to(torch.float32)[:, None, None] * (1 - scale * phase).clamp(min=0.02)
    blur = torch.exp(-2 * math.pi ** 2 * PROBE_SIGMA ** 2 * f2).to(torch.float32)
    image = torch.fft.irfft2(torch.fft.rfft2(projections) * blur, s=(h, w)).clamp(min=0.0)
    peak = float(torch.quantile(image[inner][reference].flatten(), 0.999))
    return STEM_BACKGROUND + image / max(peak, 1e-12)


def _add_noise(clean: torch.Tensor, reference: int, noise: float, dose: float | None,
               generator) -> torch.Tensor:
    """Poisson counts at `dose` per pixel of the reference view, then Gaussian `noise` x std."""
    views = clean
    if dose:
        scale = dose / float(clean[reference].mean())
        views = torch.poisson(clean * scale, generator=generator) / scale
    if noise:
        sigma = noise * float(clean[reference].std())
        views = views + sigma * torch.randn(views.shape, generator=generator)
    return views
