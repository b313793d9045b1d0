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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
    """
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
        if noise > 0:
            view = view + noise * signal_std * torch.randn(h, w, generator=gen, dtype=torch.float64)
        images[i] = view.to(torch.float32)

    return SimulatedTiltSeries(
        images=images,
        tilt_angles=angles.to(torch.float32),
        tilt_axis_angle=float(tilt_axis_angle),
        shifts=shifts.to(torch.float32),
        tilt_angle_offset=float(tilt_angle_offset),
        view_rotations=None if view_rotations is None else view_rotations.to(torch.float32),
    )
