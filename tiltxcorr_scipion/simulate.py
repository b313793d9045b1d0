"""Simulated tilt series with known shifts, for tests, benchmarks and the demo.

The specimen is a slab of Gaussian blobs (and a smooth density ramp) in 3-D.
Each view is the exact projection of that specimen at its tilt, rendered
analytically (the projection of an isotropic 3-D Gaussian is an isotropic 2-D
Gaussian), then displaced by a random shift and given Gaussian noise.

Geometry, the convention the aligner must follow (IMOD's):
- image coordinates are (row, col) indices; the image centre is the geometric
  centre ``((h - 1) / 2, (w - 1) / 2)``;
- the tilt axis direction in (row, col) space is ``(cos a, -sin a)`` for a tilt
  axis angle ``a`` in degrees (from the Y axis, counter-clockwise positive);
- the tilt axis passes through the image centre in the lowest-|tilt| view,
  which gets no shift. Any other choice leaves the shifts undetermined: an
  aligner that assumes a centred axis errs by a tilt-dependent amount;
- a specimen point `x` across the axis, `y` along it, at height `z`, seen at
  the true tilt `t`, lands at ``centre + y * axis + (x cos t + z sin t) * perp``
  in the aligned view (IMOD's projection, `x`, `y`, `z` its specimen axes);
  the raw view is that moved by `-shift` (and, with `view_rotations`, turned
  about the centre: ``raw = centre + R^-1 (aligned - centre - shift)``).

Real conditions (all off by default; each draws from its own random stream,
so turning one on leaves the specimen, the shifts and the other conditions
as they were): counting noise at a dose per view, a CTF, thick ice, a fixed
camera pattern, gold beads, a grid-bar shadow and blocked views. See
`simulate_tilt_series` for what each models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .alignment.geometry import unfixed_motions


@dataclass(frozen=True)
class SimulatedTiltSeries:
    """A simulated tilt series and its ground truth.

    Attributes
    ----------
    images
        `(b, h, w)` float32 views, in stack order.
    tilt_angles
        `(b,)` float32 tilt angles in degrees, in stack order.
    tilt_axis_angle
        Tilt axis angle in degrees (IMOD RotationAngle convention).
    shifts
        `(b, 2)` float32 true alignment shifts `(dy, dx)` in pixels: moving the
        content of view i by `+shifts[i]` aligns it. Zero for the lowest |tilt|.
    tilt_angle_offset
        Degrees that the true tilts exceed the nominal `tilt_angles` by: the
        specimen slab is level at tilt `tilt_angles + tilt_angle_offset`.
    view_rotations
        `(b,)` float32 in-plane rotations in degrees, or None: the aligned view
        is ``R (raw - centre) + shift + centre`` with ``R`` the rotation by
        `view_rotations[i]`, counter-clockwise positive as IMOD displays
        images (row 0 at the bottom), i.e. ``[[cos, sin], [-sin, cos]]`` in
        `(row, col)`.
    """

    images: torch.Tensor
    tilt_angles: torch.Tensor
    tilt_axis_angle: float
    shifts: torch.Tensor
    tilt_angle_offset: float = 0.0
    view_rotations: torch.Tensor | None = None

    def alignment_error(self, shifts: torch.Tensor, *, exclude=(),
                        tilt_axis_angle: float | None = None,
                        tilt_angles: torch.Tensor | None = None) -> float:
        """`alignment_error` of estimated `shifts` against this series' true shifts.

        In the geometry the estimate assumes: by default the nominal tilt axis
        and tilt angles; a fine alignment passes its refined ones.
        """
        return alignment_error(
            shifts, self.shifts,
            self.tilt_axis_angle if tilt_axis_angle is None else tilt_axis_angle,
            self.tilt_angles if tilt_angles is None else tilt_angles, exclude=exclude)


def alignment_error(shifts: torch.Tensor, true_shifts: torch.Tensor, tilt_axis_angle: float,
                    tilt_angles: torch.Tensor, *, exclude=()) -> float:
    """RMS error (pixels) of `(b, 2)` `(dy, dx)` shifts after removing what no tilt series fixes.

    A 3-D translation `(X, Y, Z)` of the specimen moves its projection at tilt
    `t` by `Y` along the tilt axis and by `X cos t + Z sin t` across it, and one
    offset of the whole series is free too: a constant `(dy, dx)` and
    `(a cos t + b sin t)` across the axis are removed by least squares before
    the RMS over views. `exclude`: views (indices) left out, e.g. blocked ones.
    """
    error = shifts.detach().cpu().double() - torch.as_tensor(true_shifts).cpu().double()
    keep = torch.ones(len(error), dtype=torch.bool)
    keep[list(exclude)] = False
    error = error[keep].reshape(-1)
    b = int(keep.sum())
    basis = unfixed_motions(tilt_angles, tilt_axis_angle)[keep].reshape(2 * b, 4)
    fit = torch.linalg.lstsq(basis, error[:, None]).solution
    return float((error - (basis @ fit)[:, 0]).reshape(b, 2).norm(dim=1).pow(2).mean().sqrt())


#: Inelastic mean free path of 300 kV electrons in vitreous ice (Angstrom): the
#: fraction that passes unscattered (what an energy filter keeps) is exp(-path / this).
ICE_MEAN_FREE_PATH = 3500.0
#: Peak density of a gold bead's projection, in standard deviations of the blob signal.
BEAD_DENSITY = 8.0
#: Density of an opaque object (grid bar, blocked view), in standard deviations of the
#: blob signal above the view's mean; with a dose, the fraction of electrons it lets pass.
OPAQUE_DENSITY = 10.0
OPAQUE_TRANSMISSION = 0.01


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom at an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2643 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def ctf_2d(shape: tuple[int, int], pixel_size: float, defocus_um: float, *,
           voltage: float = 300.0, spherical_aberration: float = 2.7,
           amplitude_contrast: float = 0.07) -> torch.Tensor:
    """Phase-contrast transfer function `(h, w // 2 + 1)` on an rfft2 grid, float64.

    `CTF(k) = -(sqrt(1 - A^2) sin chi + A cos chi)` with
    `chi = pi lambda df k^2 - pi / 2 Cs lambda^3 k^4`, `df` the underfocus
    (positive), `k` in 1/Angstrom: mass appears dark at low frequencies, as in
    an electron micrograph; the sign flips at each zero of `sin chi`.
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, d=pixel_size, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, d=pixel_size, dtype=torch.float64)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    lam = electron_wavelength(voltage)
    chi = (math.pi * lam * defocus_um * 1e4 * k2
           - 0.5 * math.pi * spherical_aberration * 1e7 * lam ** 3 * k2 ** 2)
    a = amplitude_contrast
    return -(math.sqrt(1.0 - a * a) * torch.sin(chi) + a * torch.cos(chi))


@dataclass(frozen=True)
class RealConditions:
    """Conditions of real tilt series, applied to a simulated noiseless series.

    The noiseless views are projected density `D` (mass positive). In order:

    1. gold beads join the specimen: strong (`BEAD_DENSITY`), small Gaussian
       projections of spheres on the slab's two surfaces, moving and
       projecting with it;
    2. the CTF filters each view's density (`ctf_defocus`);
    3. opaque objects replace the density: a grid bar's shadow (its edge
       moves with the specimen and advances by `height * sin(tilt)`), and the
       blocked views entirely;
    4. with a `dose`: expected counts `N T exp(-contrast (D - D0) / s)` with
       `N = dose * pixel_size^2`, `T` the ice's transmission
       `exp(-ice_thickness * pixel_size / (cos(tilt) * ICE_MEAN_FREE_PATH))`
       (`OPAQUE_TRANSMISSION` behind opaque objects), `D0` the reference
       view's mean and `s` the blob signal's std; then Poisson counts;
    5. the fixed pattern, in the camera frame (additive on density,
       a gain error on counts);
    6. Gaussian noise, `noise` times the signal's std in the output's units
       (at least 1x on blocked views, so that they are never constant).

    Each draws from its own random stream, seeded from the series' seed.
    """

    pixel_size: float = 4.0
    dose: float | None = None
    contrast: float = 0.1
    ctf_defocus: float | None = None
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.07
    ice_thickness: float = 0.0
    fixed_pattern: float = 0.0
    gold_beads: float = 0.0
    bead_radius: float = 4.0
    grid_bar: tuple[float, float] | None = None
    blocked_views: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.pixel_size <= 0:
            raise ValueError(f"pixel_size must be positive, got {self.pixel_size}")
        if self.dose is not None and self.dose <= 0:
            raise ValueError(f"dose must be positive (e/A^2 per view), got {self.dose}")
        for name in ("ice_thickness", "fixed_pattern", "gold_beads", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bead_radius <= 0:
            raise ValueError(f"bead_radius must be positive, got {self.bead_radius}")

    @property
    def active(self) -> bool:
        """Whether any condition changes the series."""
        return (self.dose is not None or self.ctf_defocus is not None or self.fixed_pattern > 0
                or self.gold_beads > 0 or self.grid_bar is not None or bool(self.blocked_views))

    def apply(self, images: torch.Tensor, angles: torch.Tensor, tilt_axis_angle: float,
              shifts: torch.Tensor, *, signal_std: float, noise: float, thickness: float,
              reach: tuple[float, float], seed: int) -> torch.Tensor:
        """The views `(b, h, w)` float32 under these conditions (see the class docstring).

        `images` are the noiseless views (density), `angles` `(b,)` the true
        tilts in degrees, `shifts` `(b, 2)` the true alignment shifts,
        `signal_std` the blob signal's std in the reference view, `reach` the
        specimen's half extents `(across, along)` in pixels.
        """
        b, h, w = images.shape
        for view in self.blocked_views:
            if not -b <= view < b:
                raise ValueError(f"blocked view {view} is not in a series of {b} views")
        blocked = {v % b for v in self.blocked_views}
        streams = {name: torch.Generator().manual_seed(seed * 1_000_003 + k)
                   for k, name in enumerate(("beads", "counts", "pattern", "noise"))}
        alpha = math.radians(tilt_axis_angle)
        axis = torch.tensor([math.cos(alpha), -math.sin(alpha)], dtype=torch.float64)
        perp = torch.tensor([math.sin(alpha), math.cos(alpha)], dtype=torch.float64)
        centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
        rows = torch.arange(h, dtype=torch.float64)[:, None]
        cols = torch.arange(w, dtype=torch.float64)[None, :]
        reference = int(torch.argmin(angles.abs()))

        beads = None
        if self.gold_beads > 0:
            gen = streams["beads"]
            half_x, half_y = reach
            n = max(1, round(self.gold_beads * 4 * half_x * half_y / (h * w)))
            bx = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * half_x
            by = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * half_y
            side = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
            beads = (bx, by, side * 0.5 * thickness)
        ctf = None
        pad = 0
        if self.ctf_defocus is not None:
            pad = min(h, w) // 8
            ctf = ctf_2d((h + 2 * pad, w + 2 * pad), self.pixel_size, self.ctf_defocus,
                         voltage=self.voltage, spherical_aberration=self.spherical_aberration,
                         amplitude_contrast=self.amplitude_contrast)

        density = images.to(torch.float64)
        opaque = torch.zeros(b, h, w, dtype=torch.float64)
        for i in range(b):
            theta = math.radians(float(angles[i]))
            view = density[i]
            if beads is not None:
                bx, by, bz = beads
                u = bx * math.cos(theta) + bz * math.sin(theta)
                position = centre + u[:, None] * perp + by[:, None] * axis - shifts[i]
                sigma = 0.6 * self.bead_radius
                margin = 4 * sigma
                seen = ((position[:, 0] > -margin) & (position[:, 0] < h - 1 + margin)
                        & (position[:, 1] > -margin) & (position[:, 1] < w - 1 + margin))
                count = int(seen.sum())
                if count:
                    view = view + _render_gaussians(
                        position[seen, 0], position[seen, 1],
                        torch.full((count,), BEAD_DENSITY * signal_std, dtype=torch.float64),
                        torch.full((count,), sigma, dtype=torch.float64), (h, w))
            if ctf is not None:
                mean = view.mean()
                padded = torch.nn.functional.pad((view - mean)[None, None], (pad,) * 4,
                                                 mode="reflect")[0, 0]
                filtered = torch.fft.irfft2(torch.fft.rfft2(padded) * ctf, s=padded.shape)
                view = filtered[pad:pad + h, pad:pad + w] + mean
            if self.grid_bar is not None:
                edge, height = self.grid_bar
                # across-axis coordinate in the aligned view of each pixel
                u_image = ((rows + shifts[i, 0] - centre[0]) * perp[0]
                           + (cols + shifts[i, 1] - centre[1]) * perp[1])
                corners = (edge * math.cos(theta), edge * math.cos(theta) + height * math.sin(theta))
                if edge >= 0:  # the bar lies beyond the edge: shadow from the nearer corner on
                    opaque[i] = (u_image - min(corners) + 0.5).clamp(0.0, 1.0)
                else:
                    opaque[i] = (max(corners) - u_image + 0.5).clamp(0.0, 1.0)
            if i in blocked:
                opaque[i] = 1.0
            density[i] = view

        s_out = signal_std
        if ctf is not None:  # the CTF changes the signal's std: measure it on the reference
            view = density[reference] - density[reference].mean()
            s_out = float(view.std()) if float(view.std()) > 0 else signal_std
        if self.dose is None:
            level = density.mean(dim=(1, 2), keepdim=True) + OPAQUE_DENSITY * s_out
            out = density * (1 - opaque) + opaque * level
        else:
            electrons = self.dose * self.pixel_size ** 2
            cosines = torch.cos(torch.deg2rad(angles.to(torch.float64)))
            ice = torch.exp(-self.ice_thickness * self.pixel_size
                            / (cosines * ICE_MEAN_FREE_PATH))[:, None, None]
            d0 = float(density[reference].mean())
            transmission = (1 - opaque) + opaque * OPAQUE_TRANSMISSION
            expected = (electrons * ice * transmission
                        * torch.exp(-self.contrast * (density - d0) / signal_std))
            out = torch.poisson(expected, generator=streams["counts"])
            s_out = electrons * self.contrast * s_out / signal_std
        if self.fixed_pattern > 0:
            pattern = camera_pattern((h, w), streams["pattern"])
            if self.dose is None:
                out = out + self.fixed_pattern * s_out * pattern
            else:  # a gain error: proportional to the counts, sized at the reference's mean
                out = out * (1 + self.fixed_pattern * s_out * pattern
                             / float(out[reference].mean()))
        gen = streams["noise"]
        for i in range(b):
            level = max(noise, 1.0) if i in blocked and self.dose is None else noise
            if level > 0:
                out[i] = out[i] + level * s_out * torch.randn(h, w, generator=gen,
                                                             dtype=torch.float64)
        return out.to(torch.float32)


def camera_pattern(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A fixed camera pattern `(h, w)` float64 of unit std: pixel gains and column offsets.

    What an imperfect gain reference leaves: independent per-pixel gain errors
    and, weaker, offsets shared by the pixels of a column (read-out lines).
    """
    h, w = shape
    pixels = torch.randn(h, w, generator=generator, dtype=torch.float64)
    columns = torch.randn(1, w, generator=generator, dtype=torch.float64)
    pattern = pixels + 0.5 * columns
    return (pattern - pattern.mean()) / pattern.std()


def tilt_scheme(tilt_range: tuple[float, float], n_views: int, order: str,
                generator: torch.Generator) -> torch.Tensor:
    """Tilt angles `(n_views,)` in degrees, in the requested stack order.

    ``order`` is ``"sorted"`` (ascending), ``"dose-symmetric"`` (0, +d, -d,
    +2d, -2d..., as acquired by a dose-symmetric scheme) or ``"random"``.
    """
    angles = torch.linspace(tilt_range[0], tilt_range[1], n_views, dtype=torch.float64)
    if order == "sorted":
        return angles
    if order == "dose-symmetric":
        keys = torch.stack([angles.abs(), -angles.sign()], dim=1)  # |tilt|, then + before -
        index = sorted(range(n_views), key=lambda i: (keys[i, 0].item(), keys[i, 1].item()))
        return angles[index]
    if order == "random":
        return angles[torch.randperm(n_views, generator=generator)]
    raise ValueError(f"unknown view order {order!r}: use 'sorted', 'dose-symmetric' or 'random'")


def _render_gaussians(rows: torch.Tensor, cols: torch.Tensor, amplitudes: torch.Tensor,
                      sigmas: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Sum of isotropic 2-D Gaussians `(h, w)`, evaluated exactly at pixel centres.

    An isotropic Gaussian is separable in the pixel axes, so the image is the
    matrix product `G_rows^T diag(a) G_cols` (h x n times n x w).
    """
    h, w = shape
    r = torch.arange(h, dtype=rows.dtype)
    c = torch.arange(w, dtype=rows.dtype)
    g_rows = torch.exp(-0.5 * ((r[:, None] - rows[None, :]) / sigmas[None, :]) ** 2)  # (h, n)
    g_cols = torch.exp(-0.5 * ((c[None, :] - cols[:, None]) / sigmas[:, None]) ** 2)  # (n, w)
    return (g_rows * amplitudes[None, :]) @ g_cols


def simulate_tilt_series(
    *,
    shape: tuple[int, int] = (256, 256),
    n_views: int = 41,
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    tilt_axis_angle: float = 85.0,
    max_shift: float = 20.0,
    thickness: float = 30.0,
    blob_density: float = 1 / 300,
    blob_sigma: tuple[float, float] = (1.5, 5.0),
    noise: float = 0.0,
    ramp: float = 0.5,
    order: str = "sorted",
    seed: int = 0,
    shifts: torch.Tensor | None = None,
    tilt_angle_offset: float = 0.0,
    view_rotations: torch.Tensor | None = None,
    pixel_size: float = 4.0,
    dose: float | None = None,
    contrast: float = 0.1,
    ctf_defocus: float | None = None,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    ice_thickness: float = 0.0,
    fixed_pattern: float = 0.0,
    gold_beads: float = 0.0,
    bead_radius: float = 4.0,
    grid_bar: tuple[float, float] | None = None,
    blocked_views: tuple[int, ...] | list[int] = (),
) -> SimulatedTiltSeries:
    """Simulate a tilt series of a slab of blobs, with known alignment shifts.

    Parameters
    ----------
    shape
        `(h, w)` of each view in pixels; need not be square.
    n_views, tilt_range
        Number of views, equally spaced over `tilt_range` degrees.
    tilt_axis_angle
        Degrees from the image Y axis, counter-clockwise positive.
    max_shift
        Each shift component is uniform in `[-max_shift, max_shift]` pixels
        (the lowest-|tilt| view gets none).
    thickness
        Slab thickness in pixels: blob centres are uniform in `z`
        within `+-thickness / 2`. Thick slabs break cosine stretching.
    blob_density
        Blobs per square pixel of specimen area.
    blob_sigma
        Range of blob standard deviations in pixels (uniform).
    noise
        Gaussian noise standard deviation, as a multiple of the standard
        deviation of the noiseless blob signal of the lowest-tilt view.
    ramp
        Strength of a smooth density gradient across the specimen (relative to
        the blob signal std over the half-width); like all projected density,
        it grows as `1 / cos(tilt)`.
    order
        Stack order: ``"sorted"``, ``"dose-symmetric"`` or ``"random"``.
    seed
        Seed of the random generator: equal seeds give equal series.
    shifts
        `(n_views, 2)` alignment shifts `(dy, dx)` to use instead of random
        ones, in stack order; the lowest-|tilt| view's must be zero.
    tilt_angle_offset
        Degrees added to the nominal tilts to get the true ones: the slab is
        level at `tilt_angles + tilt_angle_offset` (a pre-tilted specimen,
        e.g. a lamella). The returned `tilt_angles` stay nominal.
    view_rotations
        `(n_views,)` in-plane rotation of each view in degrees (see
        `SimulatedTiltSeries.view_rotations`), in stack order; None for none.
        The real conditions' gold beads and grid bar do not turn with it.

    Real conditions (see `RealConditions` for the models; all off by default,
    and then the series is exactly what it was before they existed):

    pixel_size
        Angstrom per pixel, for `dose`, `ctf_defocus` and `ice_thickness`.
    dose
        Electrons per square Angstrom per view: the views become electron
        counts (Poisson), mass dark, `contrast` setting how dark.
    contrast
        With `dose`: fractional drop in transmitted intensity per standard
        deviation of the blob signal (0.1: weak phase contrast).
    ctf_defocus
        Underfocus in micrometres: the projected density is filtered by the
        phase-contrast transfer function (`voltage` kV, `spherical_aberration`
        mm, `amplitude_contrast`), one defocus over the whole view.
    ice_thickness
        Pixels of vitreous ice around the specimen; with `dose`, the electrons
        that pass without scattering fall as `exp(-path / 3500 A)` with a path
        of `ice_thickness / cos(tilt)`.
    fixed_pattern
        Strength of a pattern fixed in the camera frame (gain-reference
        residue), the same in every view, relative to the signal's std.
    gold_beads
        Gold beads expected in the field of view, on the two surfaces of the
        slab; radius `bead_radius` pixels.
    grid_bar
        `(edge, height)` in pixels: an opaque grid bar beyond `edge` across
        the axis (specimen coordinates at zero tilt; negative: the other
        side), whose top lies `height` above the specimen: its shadow moves
        with the specimen and advances across the field as the stage tilts.
    blocked_views
        Stack indices of views that carry no specimen at all (a bar, a lamella
        edge, an ice chunk in the beam): opaque, blank plus noise.
    """
    conditions = RealConditions(
        pixel_size=pixel_size, dose=dose, contrast=contrast, ctf_defocus=ctf_defocus,
        voltage=voltage, spherical_aberration=spherical_aberration,
        amplitude_contrast=amplitude_contrast, ice_thickness=ice_thickness,
        fixed_pattern=fixed_pattern, gold_beads=gold_beads, bead_radius=bead_radius,
        grid_bar=grid_bar, blocked_views=tuple(int(v) for v in blocked_views))
    loop_noise = 0.0 if conditions.active else noise  # the conditions add the noise last
    gen = torch.Generator().manual_seed(seed)
    h, w = shape
    angles = tilt_scheme(tilt_range, n_views, order, gen)
    max_tilt = float((angles + tilt_angle_offset).abs().max())
    if max_tilt >= 89.0:
        raise ValueError(f"tilt range {tilt_range} reaches {max_tilt} degrees: keep below 89")

    # The specimen must fill every view: along the axis a disc of radius
    # `reach` around the centre, across it stretched by 1/cos(max tilt).
    sigma_max = blob_sigma[1]
    reach = 0.5 * math.hypot(h, w) + max_shift * math.sqrt(2) + 4 * sigma_max
    half_x = reach / math.cos(math.radians(max_tilt)) + thickness
    half_y = reach
    n_blobs = max(1, int(round(blob_density * (2 * half_x) * (2 * half_y))))
    uniform = lambda n: torch.rand(n, generator=gen, dtype=torch.float64)  # noqa: E731
    x = (2 * uniform(n_blobs) - 1) * half_x
    y = (2 * uniform(n_blobs) - 1) * half_y
    z = (uniform(n_blobs) - 0.5) * thickness
    sigmas = blob_sigma[0] + (blob_sigma[1] - blob_sigma[0]) * uniform(n_blobs)
    amplitudes = 0.5 + uniform(n_blobs)

    random_shifts = (2 * torch.rand(n_views, 2, generator=gen, dtype=torch.float64) - 1) * max_shift
    reference = int(torch.argmin(angles.abs()))
    random_shifts[reference] = 0.0
    if shifts is None:
        shifts = random_shifts
    else:
        shifts = torch.as_tensor(shifts, dtype=torch.float64).reshape(n_views, 2).clone()
        if shifts[reference].abs().max() > 0:
            raise ValueError("the lowest-|tilt| view defines the alignment: its shift must be 0")

    alpha = math.radians(tilt_axis_angle)
    axis = torch.tensor([math.cos(alpha), -math.sin(alpha)], dtype=torch.float64)  # (row, col)
    perp = torch.tensor([math.sin(alpha), math.cos(alpha)], dtype=torch.float64)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    ramp_direction = torch.nn.functional.normalize(torch.randn(2, generator=gen, dtype=torch.float64), dim=0)

    rotation = None
    if view_rotations is not None:
        view_rotations = torch.as_tensor(view_rotations, dtype=torch.float64).reshape(n_views)
        turns = torch.deg2rad(view_rotations)
        # R per view in (row, col): aligned - centre = R (raw - centre) + shift
        rotation = torch.stack([torch.stack([turns.cos(), turns.sin()], -1),
                                torch.stack([-turns.sin(), turns.cos()], -1)], -2)

    rows_grid = torch.arange(h, dtype=torch.float64)[:, None]
    cols_grid = torch.arange(w, dtype=torch.float64)[None, :]
    images = torch.empty(n_views, h, w, dtype=torch.float32)
    signal_std = None
    for i in torch.argsort(angles.abs()).tolist():  # lowest tilt first: it sets the noise scale
        theta = math.radians(float(angles[i]) + tilt_angle_offset)  # the true tilt
        u = x * math.cos(theta) + z * math.sin(theta)  # across the axis
        # content displaced by the misalignment -shift: moving it by +shift aligns it
        position = centre + u[:, None] * perp + y[:, None] * axis - shifts[i]  # (n, 2)
        if rotation is not None:  # R^-1 = R^T about the centre, applied to row vectors
            position = centre + (position - centre) @ rotation[i]
        visible = ((position[:, 0] > -4 * sigmas) & (position[:, 0] < h - 1 + 4 * sigmas)
                   & (position[:, 1] > -4 * sigmas) & (position[:, 1] < w - 1 + 4 * sigmas))
        blobs = _render_gaussians(position[visible, 0], position[visible, 1],
                                  amplitudes[visible], sigmas[visible], (h, w))
        if signal_std is None:
            signal_std = float(blobs.std())
        # The ramp is a thickness gradient of the specimen: it moves with the
        # content, is foreshortened across the axis and projects as 1/cos.
        offset_row = rows_grid + shifts[i, 0] - centre[0]
        offset_col = cols_grid + shifts[i, 1] - centre[1]
        if rotation is not None:  # aligned - centre = R (raw - centre) + shift
            r, c = rows_grid - centre[0], cols_grid - centre[1]
            offset_row = rotation[i, 0, 0] * r + rotation[i, 0, 1] * c + shifts[i, 0]
            offset_col = rotation[i, 1, 0] * r + rotation[i, 1, 1] * c + shifts[i, 1]
        u_image = offset_row * perp[0] + offset_col * perp[1]
        v_image = offset_row * axis[0] + offset_col * axis[1]
        specimen_x = u_image / math.cos(theta)  # thin-slab approximation of the mid-plane
        gradient = (specimen_x * ramp_direction[0] + v_image * ramp_direction[1]) / (0.5 * max(h, w))
        view = blobs + signal_std * (1.0 + ramp * gradient) / math.cos(theta)
        if loop_noise > 0:
            view = view + noise * signal_std * torch.randn(h, w, generator=gen, dtype=torch.float64)
        images[i] = view.to(torch.float32)

    if conditions.active:
        images = conditions.apply(  # the true tilts: beads, bars and ice follow them
            images, angles + tilt_angle_offset, tilt_axis_angle, shifts,
            signal_std=signal_std, noise=noise,
            thickness=thickness, reach=(half_x, half_y), seed=seed)

    return SimulatedTiltSeries(
        images=images,
        tilt_angles=angles.to(torch.float32),
        tilt_axis_angle=float(tilt_axis_angle),
        shifts=shifts.to(torch.float32),
        tilt_angle_offset=float(tilt_angle_offset),
        view_rotations=None if view_rotations is None else view_rotations.to(torch.float32),
    )
