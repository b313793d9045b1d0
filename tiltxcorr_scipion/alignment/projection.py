"""Tilt-series geometry from tracked points: IMOD tiltalign's projection model, solved in torch.

The model (all `(row, col)` pixel coordinates, `c` the image centre
`((h - 1) / 2, (w - 1) / 2)`):

    aligned = R_i (raw - c) / m_i + shift_i + c                (forward, raw -> aligned)
    aligned = c + y a + (x cos t_i + z sin t_i) n               (a specimen point x, y, z)

with `a = (cos A, -sin A)` along the tilt axis, `n = (sin A, cos A)` across it,
`A` the tilt axis angle, `t_i` the tilt of view i, `R_i` the in-plane rotation
by `rotations[i]` (`[[cos, sin], [-sin, cos]]` in `(row, col)`) and `m_i` the
magnification of view i. With `R = I`, `m = 1` a point is seen at
`c + projection - shift_i` in the raw view: moving view i's content by
`+shift_i` aligns it, the contract of the coarse `tiltxcorr`.

Mapping to IMOD (tiltalign man page and source): IMOD's image X is our
column and its Y our row, displayed with row 0 at the bottom, so "counter-
clockwise" there is `R` above. tiltalign projects a specimen point with
`x cos(beta) + z sin(beta)` along the image X of the aligned view (tilt
matrix `[[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]`), then rotates the
projection in the plane into the raw view by the rotation angle, counter-
clockwise positive from the Y axis to the tilt axis. Our `n` is that rotated X
axis and `a` the rotated Y axis, so:
- `A` is IMOD's RotationAngle (and Scipion's tiltAxisAngle);
- a tilt `t` here is IMOD's tilt angle `beta`, same sign, and `x`, `y`, `z`
  are IMOD's specimen coordinates (x across the axis, y along it);
- `tilt_angle_offset` is what tiltalign's surface analysis calls the total
  tilt angle change and what its AngleOffset adds: `atan(-slope)` of the
  plane `z = slope * x + ...` fitted to the solved points; adding it to every
  tilt makes that plane level (the points are reported in the levelled frame).
- The IMOD `.xf` line of view i, a forward transform about the centre like
  ours, is `A11 A12 A21 A22 DX DY` with, in IMOD's (X, Y) = (col, row),
  `[[A11, A12], [A21, A22]] = [[R_i[1, 1], R_i[1, 0]], [R_i[0, 1], R_i[0, 0]]] / m_i`
  and `(DX, DY) = (shift_i[1], shift_i[0])`: it keeps the tilt axis at angle
  A in the aligned views (as tiltxcorr's `.prexg`). tiltalign's own `.xf` also
  turns the axis onto the Y axis: compose with the rotation by `-A`, i.e.
  left-multiply the 2x2 part and `(DX, DY)` by `[[cos A, sin A], [-sin A, cos A]]`
  (X, Y order).

Unknowns and gauge (facts: the 3-D translation of the specimen, the axis
angle modulo 180 degrees and a common tilt offset are not determined by
point projections):
- the reference view (smallest |tilt|) has zero shift: the tilt axis passes
  through the image centre there, as in the coarse engine;
- the solved points have zero (weighted) mean height `z` before levelling:
  the tilt axis lies at the points' mean height;
- with per-view rotations, their mean over the views is zero: `A` is the
  series' mean axis, and the axis of raw view i lies at `A - rotations[i]`;
- magnification and tilt changes are fixed at 1 and 0 in the reference
  view's group; the axis angle starts at the nominal one and stays near it.

Solver: Levenberg-Marquardt on all unknowns at once, with the 3-D points
eliminated per point (Schur complement), so each step costs a dense solve of
the size of the per-view unknowns. Robust fitting is iteratively reweighted:
Tukey's biweight on residuals scaled by their (smoothed) per-view median, for
single points and for whole tracks, as tiltalign's RobustFitting with
WeightWholeTracks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..options import FINE_DEFAULTS
from .core import chain_pairs
from .patches import PatchTracks
from .validation import check_shifts

ROBUST_ROUNDS = 5           # reweighting rounds at most
ROBUST_TOLERANCE = 0.05     # stop when no weight changes by more than this
RESIDUAL_SMOOTHING = 5      # views in the running median of per-view residual scales
ROBUST_FLOOR = 0.05         # pixels: residual scales below this are numerical noise
ROBUST_MIN_SPREAD = 0.02    # smallest robust deviation of residual ratios (1 = a view's median)
INITIAL_DAMPING = 1e-3
MIN_PLANE_POINTS = 3
ERROR_BLOCKS = 4            # the views' blocks per side that cluster the standard errors


@dataclass(frozen=True)
class GeometrySolution:
    """The solved geometry of a tilt series; conventions in the module docstring.

    Attributes
    ----------
    tilt_axis_angle
        Refined tilt axis angle in degrees (IMOD RotationAngle convention);
        with per-view rotations, the mean over the views.
    tilt_angle_offset
        Degrees to ADD to the (refined) tilt angles so that the plane fitted
        to the solved points is level at tilt 0 (IMOD's AngleOffset).
    tilt_angles
        `(b,)` float64 refined tilt angles in degrees: nominal + solved
        per-view changes + `tilt_angle_offset`.
    tilt_changes
        `(b,)` float64 solved per-view tilt changes in degrees (zeros unless
        tilt groups were solved), offset not included.
    shifts
        `(b, 2)` float64 `(dy, dx)` in input pixels: the forward map is
        `aligned = R_i (raw - c) / m_i + shifts[i] + c`; with no rotation and
        magnification, moving view i's content by `+shifts[i]` aligns it. The
        reference view's shift is zero.
    rotations
        `(b,)` float64 in-plane rotations in degrees (`R_i`, counter-clockwise
        as IMOD displays images), zeros when not solved.
    magnifications
        `(b,)` float64 image scale of each view relative to the reference view
        (ones when not solved).
    points
        `(n_contours, 3)` float64 solved specimen points `(x, y, z)` in pixels,
        in the levelled frame (tilts `tilt_angles`): `x` across the axis,
        `y` along it, `z` height, origin on the tilt axis at the image centre.
    residuals
        `(n_contours, b, 2)` float64 measured minus modelled raw positions
        `(row, col)` in pixels (IMOD's residual files list model minus
        measured); NaN where a contour has no point.
    weights
        `(n_contours, b)` float64 final robust weight of each point (0..1;
        1 everywhere without robust fitting), the track's weight included;
        NaN where there is no point.
    contour_weights
        `(n_contours,)` float64 whole-track weights (0..1).
    view_residuals
        `(b,)` float64 RMS residual length per view in pixels, over the points
        with a non-zero weight (NaN for a view with none).
    mean_residual
        Mean residual length in pixels over the points with a non-zero weight.
    reference_view
        Stack index of the view whose shift is fixed at zero.
    image_shape
        `(h, w)` of the views (the centre `c` is `((h - 1) / 2, (w - 1) / 2)`).
    iterations
        Levenberg-Marquardt iterations run, all reweighting rounds together.
    tilt_axis_angle_error
        One standard error of `tilt_axis_angle` in degrees, from the data: the
        robust fit's curvature with the spread of the tracks' gradients
        (`_Problem.view_covariance`: a jackknife over blocks of patches and a
        linearised bootstrap over views), with `tilt_axis_angle_misfit` added
        in quadrature; NaN when the axis was not solved.
    tilt_axis_angle_misfit
        Degrees: the part of `tilt_axis_angle_error` that the model's misfit
        with height adds (`_height_misfit`: the axes solved from the upper and
        the lower half of the points disagree by more than their own standard
        errors allow); 0 where they agree, NaN where not estimated.
    tilt_angle_offset_error
        One standard error in degrees of the offset that levels the plane of
        the points (`tilt_angle_offset` as solved), from the points' scatter
        about that plane (clustered by block of the view, `error_blocks`).
        A common offset of all tilts
        is not determined by the projections: this is the error of the
        plane's tilt, i.e. of the specimen's level.
    """

    tilt_axis_angle: float
    tilt_angle_offset: float
    tilt_angles: torch.Tensor
    tilt_changes: torch.Tensor
    shifts: torch.Tensor
    rotations: torch.Tensor
    magnifications: torch.Tensor
    points: torch.Tensor
    residuals: torch.Tensor
    weights: torch.Tensor
    contour_weights: torch.Tensor
    view_residuals: torch.Tensor
    mean_residual: float
    reference_view: int
    image_shape: tuple[int, int]
    iterations: int
    tilt_axis_angle_error: float = float("nan")
    tilt_angle_offset_error: float = float("nan")
    tilt_axis_angle_misfit: float = float("nan")

    def forward_matrices(self) -> torch.Tensor:
        """`(b, 2, 2)` linear part `R_i / m_i` of the raw -> aligned maps, `(row, col)` order."""
        return rotation_matrices(self.rotations) / self.magnifications[:, None, None]

    def project(self, points: torch.Tensor | None = None) -> torch.Tensor:
        """Raw positions `(n, b, 2)` `(row, col)` of specimen points `(n, 3)` in every view.

        Defaults to the solved `points`: the model's prediction of every
        track, `c + m_i R_i^-1 (projection - shifts[i])`.
        """
        points = self.points if points is None else points
        return self.to_raw(torch.einsum("bki,ni->nbk", self._specimen_to_aligned(), points))

    def _specimen_to_aligned(self) -> torch.Tensor:
        """`(b, 2, 3)`: a specimen point `(x, y, z)` lands at `c + this @ (x, y, z)` in
        aligned view i, i.e. `y along + (x cos t_i + z sin t_i) across`."""
        along, across = _axis_vectors(math.radians(self.tilt_axis_angle))
        tilt = torch.deg2rad(self.tilt_angles)
        return torch.stack([torch.cos(tilt)[:, None] * across, along.expand(len(tilt), 2),
                            torch.sin(tilt)[:, None] * across], dim=-1)

    def to_raw(self, aligned: torch.Tensor) -> torch.Tensor:
        """Raw positions `(..., b, 2)` of aligned positions `(..., b, 2)` `(row, col)`, view by
        view: `c + m_i R_i^-1 (aligned - shifts[i])`, the forward transform undone."""
        backward = torch.linalg.inv(self.forward_matrices())  # (b, 2, 2)
        return _centre(self.image_shape) + (backward @ (aligned - self.shifts)[..., None])[..., 0]

    def with_shifts(self, shifts: torch.Tensor) -> GeometrySolution:
        """This solution with other `shifts` `(b, 2)`, its points re-fitted to the tracks.

        Everything else of the views stays as solved. Each point is the
        weighted least-squares fit of its track under the new shifts (a
        track that robust fitting rejected keeps equal weights, so that it
        still has a point), and the residuals are measured again.
        """
        measured = self.residuals + self.project()  # (n, b, 2), NaN where no point
        moved = replace(self, shifts=shifts.to(torch.float64))
        backward = torch.linalg.inv(moved.forward_matrices())  # (b, 2, 2)
        # raw = c + B_v (P_v (x, y, z) - s_v): linear in the point
        design = backward @ self._specimen_to_aligned()  # (b, 2, 3)
        present = torch.isfinite(measured[..., 0])
        target = measured - _centre(self.image_shape) + (backward @ moved.shifts[..., None])[..., 0]
        target = torch.where(present[..., None], target, torch.zeros_like(target))
        weights = torch.where(present, self.weights, torch.zeros_like(self.weights))
        weights = torch.where((weights.sum(dim=1) > 0)[:, None], weights, present.double())
        normal = torch.einsum("nb,bki,bkj->nij", weights, design, design) \
            + 1e-9 * torch.eye(3, dtype=torch.float64)
        points = torch.linalg.solve(normal, torch.einsum("nb,bki,nbk->ni", weights, design,
                                                         target))
        residuals = measured - moved.project(points)
        view_rms, mean = _residual_summary(residuals, present & (self.weights > 0))
        return replace(moved, points=points, residuals=residuals, view_residuals=view_rms,
                       mean_residual=mean)

    @property
    def rejected_points(self) -> torch.Tensor:
        """`(n_contours, b)` bool: points given zero weight (a whole rejected track included)."""
        return self.weights == 0

    @property
    def rejected_contours(self) -> torch.Tensor:
        """`(n_contours,)` bool: whole tracks given zero weight."""
        return self.contour_weights == 0


def relevel(solution: GeometrySolution, degrees: float) -> GeometrySolution:
    """`solution` with `degrees` added to its tilt angle offset and tilt angles.

    The points turn about the tilt axis by the same angle, so every
    projection, shift and residual stays as it was: only what is called
    level changes (e.g. to the slab's surfaces, `slab.find_slab`).
    """
    return replace(solution, tilt_angle_offset=solution.tilt_angle_offset + degrees,
                   tilt_angles=solution.tilt_angles + degrees,
                   points=_turned(solution.points, math.radians(degrees)))


def _turned(points: torch.Tensor, angle: float) -> torch.Tensor:
    """Points `(n, 3)` turned about the tilt axis (y) by `angle` radians: with `angle` added to
    every tilt they project where they did (`x cos t + z sin t` is unchanged)."""
    return torch.stack([points[:, 0] * math.cos(angle) - points[:, 2] * math.sin(angle),
                        points[:, 1],
                        points[:, 0] * math.sin(angle) + points[:, 2] * math.cos(angle)], dim=1)


def _residual_summary(residuals: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, float]:
    """RMS residual length per view `(b,)` (NaN for a view with no used point) and the mean
    length, over the points `used` `(n, b)` of residuals `(n, b, 2)`."""
    lengths = torch.where(used, residuals.norm(dim=-1), torch.zeros_like(residuals[..., 0]))
    view_rms = ((lengths.square() * used).sum(dim=0) / used.sum(dim=0)).sqrt()
    return view_rms, float(lengths[used].mean()) if used.any() else float("nan")


def _axis_vectors(axis: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(along, across)` unit vectors `(2,)` float64 for an axis angle in radians."""
    along = torch.tensor([math.cos(axis), -math.sin(axis)], dtype=torch.float64)
    across = torch.tensor([math.sin(axis), math.cos(axis)], dtype=torch.float64)
    return along, across


def _centre(image_shape: tuple[int, int]) -> torch.Tensor:
    h, w = image_shape
    return torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)


def rotation_matrices(degrees: torch.Tensor) -> torch.Tensor:
    """`(..., 2, 2)` in-plane rotations `[[cos, sin], [-sin, cos]]` in `(row, col)`.

    Counter-clockwise by `degrees` as IMOD displays images (row 0 at the
    bottom): the Y axis `(1, 0)` turns to `(cos, -sin)`, as the tilt axis does
    with its angle.
    """
    turn = torch.deg2rad(degrees)
    cos, sin = torch.cos(turn), torch.sin(turn)
    return torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)


def _group_index(view_order: torch.Tensor, size: int | None) -> torch.Tensor | None:
    """`(b,)` group of each view: runs of `size` views adjacent in tilt; None for no groups."""
    if size is None:
        return None
    rank = torch.empty_like(view_order)
    rank[view_order] = torch.arange(view_order.numel())
    return rank // size


@dataclass
class _Model:
    """Current values of all unknowns (radians, log-magnifications), float64."""

    axis: float                    # A, radians
    shifts: torch.Tensor           # (b, 2)
    rotations: torch.Tensor        # (n_rot_groups,) radians
    log_mags: torch.Tensor         # (n_mag_groups,)
    tilt_changes: torch.Tensor     # (n_tilt_groups,) radians
    points: torch.Tensor           # (n, 3): x across, y along, z height


class _Problem:
    """Tracks, parameter layout, residuals and normal equations of the model.

    Arrays are laid out per contour and view, `(n, b, ...)`, with `present`
    `(n, b)` marking real points (elsewhere the residuals are zero and carry
    no weight).
    """

    def __init__(self, positions, tilts, centre, reference, view_rank, *, rotation_groups,
                 magnification_groups, tilt_groups, solve_axis):
        self.present = torch.isfinite(positions[..., 0])  # (n, b)
        self.measured = torch.where(self.present[..., None], positions - centre,
                                    torch.zeros_like(positions))  # (n, b, 2) from the centre
        self.n_points, self.n_views = self.present.shape
        self.tilts = tilts  # (b,) nominal, radians
        self.reference = reference
        # signed number of correlation steps from the reference view, along the tilt order
        self.steps = (view_rank - view_rank[reference]).to(torch.float64)
        self.view_rank = view_rank
        self.groups = {"rotation": rotation_groups, "magnification": magnification_groups,
                       "tilt": tilt_groups}
        self.solve_axis = solve_axis
        # Columns of the per-view unknowns: shifts, then each kind of group, then the axis.
        fixed: list[int] = []
        width = 2 * self.n_views
        columns = [torch.arange(width).reshape(self.n_views, 2)]
        fixed += columns[0][reference].tolist()
        self.group_start: dict[str, int] = {}
        for kind, group in self.groups.items():
            if group is None:
                continue
            self.group_start[kind] = width
            columns.append((width + group)[:, None])
            fixed.append(width + int(group[reference]))
            width += int(group.max()) + 1
        if solve_axis:
            self.axis_column = width
            columns.append(torch.full((self.n_views, 1), width))
            width += 1
        self.columns = torch.cat(columns, dim=1)  # (b, k): the unknowns each view depends on
        self.width = width
        self.free = torch.ones(width, dtype=torch.bool)
        self.free[fixed] = False

    def counts(self, kind: str) -> int:
        group = self.groups[kind]
        return 0 if group is None else int(group.max()) + 1

    def view_terms(self, model: _Model):
        """Per-view tilt (radians), rotation (radians) and inverse magnification, `(b,)` each."""
        tilt = self.tilts.clone()
        if self.groups["tilt"] is not None:
            tilt = tilt + model.tilt_changes[self.groups["tilt"]]
        turn = torch.zeros(self.n_views, dtype=torch.float64)
        if self.groups["rotation"] is not None:
            turn = model.rotations[self.groups["rotation"]]
        shrink = torch.ones(self.n_views, dtype=torch.float64)
        if self.groups["magnification"] is not None:
            shrink = torch.exp(-model.log_mags[self.groups["magnification"]])
        return tilt, turn, shrink

    def residuals(self, model: _Model, *, with_jacobians: bool = False):
        """Aligned-frame residuals `(n, b, 2)`; with Jacobians for points and view unknowns.

        `r = R_i q / m_i + shift_i - projection`. Returns `r`, or
        `(r, J_points (n, b, 2, 3), J_views (n, b, 2, k))`, the columns of
        `J_views` being `self.columns`.
        """
        tilt, turn, shrink = self.view_terms(model)
        along, across = _axis_vectors(model.axis)
        cos_t, sin_t = torch.cos(tilt), torch.sin(tilt)  # (b,)
        x, y, z = (c[:, None] for c in model.points.unbind(-1))  # (n, 1) each
        height = x * cos_t + z * sin_t  # (n, b) position across the axis
        # R q / m with R = [[cos, sin], [-sin, cos]], elementwise (tiny matmuls are slow)
        c_r, s_r = shrink * torch.cos(turn), shrink * torch.sin(turn)  # (b,)
        q_row, q_col = self.measured[..., 0], self.measured[..., 1]
        mapped = torch.stack([c_r * q_row + s_r * q_col, c_r * q_col - s_r * q_row], dim=-1)
        r = mapped + model.shifts - y[..., None] * along - height[..., None] * across
        r = r * self.present[..., None]
        if not with_jacobians:
            return r
        mask = self.present[..., None, None].to(torch.float64)
        j_points = torch.stack([-cos_t[:, None] * across, -along.expand(self.n_views, 2),
                                -sin_t[:, None] * across], dim=-1) * mask  # (n, b, 2, 3)
        blocks = [torch.eye(2, dtype=torch.float64) * mask]
        if self.groups["rotation"] is not None:
            # d(R q)/d(turn) = [[-sin, cos], [-cos, -sin]] q
            blocks.append(torch.stack([c_r * q_col - s_r * q_row, -c_r * q_row - s_r * q_col],
                                      dim=-1)[..., None])
        if self.groups["magnification"] is not None:
            blocks.append(-mapped[..., None])
        if self.groups["tilt"] is not None:
            slope = -x * sin_t + z * cos_t  # d(height)/d(tilt)
            blocks.append((-slope[..., None] * across)[..., None])
        if self.solve_axis:
            blocks.append((y[..., None] * across - height[..., None] * along)[..., None])
        return r, j_points, torch.cat(blocks, dim=-1) * mask

    @staticmethod
    def precision(weights: torch.Tensor, track_weights: torch.Tensor) -> torch.Tensor:
        """`(n, b)` weight of each point's residual: point weight times track weight."""
        return weights * track_weights[:, None]

    def cost(self, model: _Model, precision: torch.Tensor) -> float:
        return float((precision[..., None] * self.residuals(model).square()).sum())

    def normal_equations(self, model: _Model, precision: torch.Tensor):
        """Gauss-Newton normal equations, the points' blocks per point.

        Returns `(h_pp (n, 3, 3), g_p (n, 3), h_pv (n, 3, width), g_v (n, width),
        h_vv (width, width))`: `g_v` holds each point's share of the views'
        gradient (summed over the points, the gradient).
        """
        r, j_points, j_views = self.residuals(model, with_jacobians=True)
        n, b, _, k = j_views.shape
        q_r = precision[..., None] * r
        q_points = precision[..., None, None] * j_points
        h_pp = torch.einsum("nkca,nkcd->nad", j_points, q_points)  # (n, 3, 3)
        g_p = torch.einsum("nkca,nkc->na", j_points, q_r)  # (n, 3)
        # point-view coupling, gathered into the columns of each view's unknowns
        coupling = torch.einsum("nkca,nkcq->nkaq", q_points, j_views)  # (n, b, 3, k)
        h_pv = torch.zeros(n, 3, self.width, dtype=torch.float64)
        h_pv.index_add_(2, self.columns.reshape(-1),
                        coupling.permute(0, 2, 1, 3).reshape(n, 3, b * k))
        g_v = torch.zeros(n, self.width, dtype=torch.float64)
        g_v.index_add_(1, self.columns.reshape(-1),
                       torch.einsum("nkcq,nkc->nkq", j_views, q_r).reshape(n, -1))
        h_vv = torch.zeros(self.width * self.width, dtype=torch.float64)
        blocks = torch.einsum("nk,nkcp,nkcq->kpq", precision, j_views, j_views)  # (b, k, k)
        flat = self.columns[:, :, None] * self.width + self.columns[:, None, :]
        h_vv.index_add_(0, flat.reshape(-1), blocks.reshape(-1))
        return h_pp, g_p, h_pv, g_v, h_vv.reshape(self.width, self.width)

    def step(self, model: _Model, precision: torch.Tensor, damping: float):
        """Damped Gauss-Newton step `(d_points (n, 3), d_views (width,))` by Schur complement."""
        h_pp, g_p, h_pv, g_v, h_vv = self.normal_equations(model, precision)
        g_v = g_v.sum(dim=0)
        # Marquardt damping, and a whisper of ridge for directions nothing constrains
        h_pp = h_pp + damping * torch.diag_embed(torch.diagonal(h_pp, dim1=1, dim2=2)) \
            + 1e-9 * torch.eye(3, dtype=torch.float64)
        h_vv = h_vv + damping * torch.diag(torch.diagonal(h_vv)) \
            + 1e-9 * torch.eye(self.width, dtype=torch.float64)
        inverse_pp = torch.linalg.inv(h_pp)  # (n, 3, 3)
        flat_pv = h_pv.reshape(-1, self.width)
        schur = h_vv - flat_pv.T @ (inverse_pp @ h_pv).reshape(-1, self.width)
        rhs = g_v - flat_pv.T @ (inverse_pp @ g_p[..., None]).reshape(-1)
        free = self.free
        d_views = torch.zeros(self.width, dtype=torch.float64)
        d_views[free] = -torch.linalg.solve(schur[free][:, free], rhs[free])
        d_points = -(inverse_pp @ (g_p + h_pv @ d_views)[..., None])[..., 0]
        return d_points, d_views

    def curvature(self, j_points: torch.Tensor, j_views: torch.Tensor, bread: torch.Tensor):
        """`(h_pp, h_pv, h_vv, blocks)` as `normal_equations`, each measurement weighted by
        a `(n, b, 2, 2)` matrix `bread` instead of a number; `blocks` `(n, b, k, k)` are the
        measurements' own shares of `h_vv` in their columns."""
        n, b, _, k = j_views.shape
        q_points = bread @ j_points  # (n, b, 2, 3)
        h_pp = torch.einsum("nkca,nkcd->nad", j_points, q_points)
        coupling = torch.einsum("nkca,nkcq->nkaq", q_points, j_views)  # (n, b, 3, k)
        h_pv = torch.zeros(n, 3, self.width, dtype=torch.float64)
        h_pv.index_add_(2, self.columns.reshape(-1),
                        coupling.permute(0, 2, 1, 3).reshape(n, 3, b * k))
        blocks = torch.einsum("nkcp,nkcd,nkdq->nkpq", j_views, bread, j_views)
        h_vv = torch.zeros(self.width * self.width, dtype=torch.float64)
        flat = self.columns[:, :, None] * self.width + self.columns[:, None, :]
        h_vv.index_add_(0, flat.reshape(-1), blocks.sum(dim=0).reshape(-1))
        return h_pp, h_pv, h_vv.reshape(self.width, self.width), blocks

    def view_covariance(self, model: _Model, precision: torch.Tensor, clusters: torch.Tensor,
                        bread_weights: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, ...]:
        """Covariances `(width, width)` of the per-view unknowns from the data.

        The bread is the inverse curvature of the cost with the points
        eliminated (the Schur complement `S`), each measurement weighted by
        `bread_weights` `(n, b, 2, 2)` (the robust fit's own curvature,
        `_robust_curvature`; default: its `precision`); the meat is the spread
        of the gradient that the measurements contribute, each measurement's
        share taken with its point re-fitted (the influence on the view
        unknowns): `S^+ (sum_c g_c g_c^T) S^+`, a linearised bootstrap over
        clusters `c` of measurements. Returned: by patch (`clusters` `(n,)`,
        e.g. the block of the view the contour was tracked from,
        `error_blocks`: the pieces of one track and neighbouring patches share
        their errors) as a delete-one-cluster jackknife (`_block_jackknife`:
        with 16 clusters of very unequal leverage the sandwich falls short), by
        view (a view pair's correlation errs for all its patches alike), and by
        single measurement (counted in both others), both sandwiches. Each
        measurement's share is inflated by `2L / (2L - 3)` in variance (its
        point's 3 unknowns were fitted to its `L` views), and each sandwich's
        sum by `C / (C - 1)` for `C` clusters. Fixed unknowns get zero. Also
        returns the bread.
        """
        r, j_points, j_views = self.residuals(model, with_jacobians=True)
        n, b, _, k = j_views.shape
        if bread_weights is None:
            eye = torch.eye(2, dtype=torch.float64)
            bread_weights = precision[..., None, None] * eye
        h_pp, h_pv, h_vv, own_blocks = self.curvature(j_points, j_views, bread_weights)
        inverse_pp = torch.linalg.inv(h_pp + 1e-9 * torch.eye(3, dtype=torch.float64))
        flat_pv = h_pv.reshape(-1, self.width)
        schur = h_vv - flat_pv.T @ (inverse_pp @ h_pv).reshape(-1, self.width)
        used = ((precision > 0) & self.present).sum(dim=1).to(torch.float64)
        inflation = torch.where(used > 1.5, 2 * used / (2 * used - 3).clamp_min(1.0),
                                torch.zeros_like(used)).sqrt()  # (n,)
        q_r = precision[..., None] * r * inflation[:, None, None]  # (n, b, 2)
        # each measurement's share: its own columns, less what its re-fitted point takes
        own = torch.einsum("nkcq,nkc->nkq", j_views, q_r)  # (n, b, k)
        point_share = torch.einsum("nkca,nkc->nka", j_points, q_r)  # (n, b, 3)
        taken = torch.einsum("naw,nab,nkb->nkw", h_pv, inverse_pp, point_share)  # (n, b, width)
        shares = -taken
        shares.scatter_add_(2, self.columns[None].expand(n, -1, -1), own)
        free = self.free

        def meat(flat_shares: torch.Tensor) -> torch.Tensor:
            count = int((flat_shares.abs().sum(dim=1) > 0).sum())
            return flat_shares.T @ flat_shares * (count / max(count - 1, 1))

        labels, index = torch.unique(clusters, return_inverse=True)
        by_patch = torch.zeros(len(labels), self.width, dtype=torch.float64)
        by_patch.index_add_(0, index, shares.sum(dim=1))
        meats = (meat(shares.sum(dim=0)), meat(shares.reshape(-1, self.width)))
        # pinv: the heights' gauge (points and shifts moved together) has no curvature
        bread = torch.linalg.pinv(schur[free][:, free], hermitian=True, rtol=1e-12)
        out = [self._block_jackknife(own_blocks, h_pv, inverse_pp, schur, by_patch, index,
                                     len(labels))]
        for one in (*meats, None):
            covariance = torch.zeros(self.width, self.width, dtype=torch.float64)
            block = bread if one is None else bread @ one[free][:, free] @ bread
            covariance[free[:, None] & free[None, :]] = block.reshape(-1)
            out.append(covariance)
        return tuple(out)

    def _block_jackknife(self, blocks, h_pv, inverse_pp, schur, by_patch, index,
                         n_clusters) -> torch.Tensor:
        """`(width, width)` delete-one-cluster jackknife covariance of the view unknowns.

        Each cluster's solution without it, one Newton step from the full one (the robust
        weights held): `delta_c = (S - S_c)^+ g_c`, `S_c` the cluster's own share of the
        Schur complement (its points are its own, so the shares add up to `S`) and `g_c` its
        share of the gradient; then `(C - 1) / C` times the spread of the `delta_c`. Unlike
        the sandwich it sees how much a cluster pulls the solution where the rest of the
        data hold it weakly (the leverage; Bell and McCaffrey's CR3).
        """
        free = self.free
        flat = (self.columns[:, :, None] * self.width + self.columns[:, None, :]).reshape(-1)
        size = self.width * self.width
        own = torch.zeros(n_clusters * size, dtype=torch.float64)
        where = (index[:, None] * size + flat[None, :]).reshape(-1)
        own.index_add_(0, where, blocks.reshape(-1))
        own = own.reshape(n_clusters, self.width, self.width)
        solved = inverse_pp @ h_pv  # (n, 3, width)
        deltas = []
        for cluster in range(n_clusters):
            mine = index == cluster
            taken = h_pv[mine].reshape(-1, self.width).T @ solved[mine].reshape(-1, self.width)
            rest = (schur - own[cluster] + taken)[free][:, free]
            deltas.append(torch.linalg.pinv(rest, hermitian=True, rtol=1e-12)
                          @ by_patch[cluster][free])
        deltas = torch.stack(deltas)  # (C, n_free)
        spread = deltas - deltas.mean(dim=0)
        covariance = torch.zeros(self.width, self.width, dtype=torch.float64)
        covariance[free[:, None] & free[None, :]] = (
            spread.T @ spread * ((n_clusters - 1) / max(n_clusters, 1))).reshape(-1)
        return covariance

    def moved(self, model: _Model, d_points, d_views) -> _Model:
        new = _Model(axis=model.axis,
                     shifts=model.shifts + d_views[:2 * self.n_views].reshape(self.n_views, 2),
                     rotations=model.rotations, log_mags=model.log_mags,
                     tilt_changes=model.tilt_changes, points=model.points + d_points)
        if self.groups["rotation"] is not None:
            new.rotations = model.rotations + self._group_step("rotation", d_views)
        if self.groups["magnification"] is not None:
            new.log_mags = model.log_mags + self._group_step("magnification", d_views)
        if self.groups["tilt"] is not None:
            new.tilt_changes = model.tilt_changes + self._group_step("tilt", d_views)
        if self.solve_axis:
            new.axis = model.axis + float(d_views[self.axis_column])
        return new

    def _group_step(self, kind: str, d_views: torch.Tensor) -> torch.Tensor:
        start = self.group_start[kind]
        return d_views[start:start + self.counts(kind)]

    def centre_heights(self, model: _Model, track_weights: torch.Tensor) -> _Model:
        """Move the points to zero weighted mean height, keeping the reference view's shift.

        Translating every point by `(dx, 0, dz)` changes each view's
        projection by `(dx cos t + dz sin t) n`, which the shifts absorb
        exactly; `dx = -dz tan t_ref` leaves the reference view's shift alone.
        """
        total = track_weights.sum().clamp_min(1e-300)
        dz = -float((track_weights * model.points[:, 2]).sum() / total)
        tilt, _, _ = self.view_terms(model)
        dx = -dz * math.tan(float(tilt[self.reference]))
        _, across = _axis_vectors(model.axis)
        points = model.points + torch.tensor([dx, 0.0, dz], dtype=torch.float64)
        shifts = model.shifts + (dx * torch.cos(tilt) + dz * torch.sin(tilt))[:, None] * across
        return _Model(model.axis, shifts, model.rotations, model.log_mags, model.tilt_changes,
                      points)


def _levenberg_marquardt(problem: _Problem, model: _Model, precision: torch.Tensor,
                         track_weights: torch.Tensor, max_iterations: int
                         ) -> tuple[_Model, int]:
    """Fit with a fixed error model; `track_weights` `(n,)` set the mean height."""
    cost = problem.cost(model, precision)
    damping = INITIAL_DAMPING
    iterations = 0
    for _ in range(max_iterations):
        iterations += 1
        improved = False
        while damping < 1e10:
            d_points, d_views = problem.step(model, precision, damping)
            trial = problem.moved(model, d_points, d_views)
            trial_cost = problem.cost(trial, precision)
            if trial_cost < cost:
                improved = True
                break
            damping *= 10.0
        if not improved:
            break
        gain = (cost - trial_cost) / max(cost, 1e-300)
        model = problem.centre_heights(trial, track_weights)
        cost = problem.cost(model, precision)
        damping = max(damping / 10.0, 1e-12)
        if gain < 1e-10:
            break
    return model, iterations


def _tukey(values: torch.Tensor, k: float) -> torch.Tensor:
    """Tukey biweights of `values` above their median, in units of k robust deviations.

    The robust deviation (normalised median absolute deviation) is at least
    `ROBUST_MIN_SPREAD`: noiseless data must not be weighted by rounding.
    """
    return _tukey_and_slope(values, k)[0]


def _tukey_and_slope(values: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_tukey`'s weights and their derivatives with respect to `values` (the median and
    the robust deviation held)."""
    median = values.median()
    spread = max(1.4826 * float((values - median).abs().median()), ROBUST_MIN_SPREAD)
    scaled = ((values - median) / (k * spread)).clamp_min(0.0)
    inside = scaled < 1.0
    weights = torch.where(inside, (1.0 - scaled.square()).square(), torch.zeros_like(values))
    slopes = torch.where(inside, -4.0 * scaled * (1.0 - scaled.square()) / (k * spread),
                         torch.zeros_like(values))
    return weights, slopes


def _robust_weights(problem: _Problem, model: _Model, k: float, *, slopes: bool = False
                    ) -> tuple[torch.Tensor, ...]:
    """Point weights `(n, b)` and whole-track weights `(n,)` from the residuals.

    Residual lengths are divided by the median residual of their view,
    smoothed over neighbouring views in tilt (errors grow with tilt; that is
    not a reason to down-weight). Points far above the median of those
    ratios get Tukey weights, and so do whole tracks whose mean ratio is far
    above that of the other tracks.
    """
    present = problem.present
    lengths = problem.residuals(model).norm(dim=-1)  # (n, b)
    view_medians = torch.stack([lengths[present[:, v], v].median() if present[:, v].any()
                                else torch.tensor(float("nan"), dtype=torch.float64)
                                for v in range(problem.n_views)])
    in_tilt_order = view_medians[problem.view_rank.argsort()]
    half = RESIDUAL_SMOOTHING // 2
    smoothed = torch.stack([in_tilt_order[max(0, i - half): i + half + 1].nanmedian()
                            for i in range(problem.n_views)])
    scale = smoothed[problem.view_rank]  # back to stack order
    ratios = lengths / scale.clamp_min(ROBUST_FLOOR)
    weights = torch.zeros_like(lengths)
    point_slopes = torch.zeros_like(lengths)
    weights[present], point_slopes[present] = _tukey_and_slope(ratios[present], k)
    track_ratio = (ratios * present).sum(dim=1) / present.sum(dim=1)
    if not slopes:
        return weights, _tukey(track_ratio, k)
    # d(weight) / d(residual length): the ratio's scale held
    return weights, _tukey(track_ratio, k), point_slopes / scale.clamp_min(ROBUST_FLOOR)


def _check_solve_inputs(positions, tilt_angles, tilt_axis_angle, image_shape, initial_shifts,
                        group_sizes, robust_k, max_iterations):
    if not isinstance(positions, torch.Tensor) or positions.ndim != 3 or positions.shape[-1] != 2:
        raise ValueError("tracks must be a PatchTracks or an (n_contours, b, 2) tensor of "
                         "(row, col) positions")
    n_contours, n_views, _ = positions.shape
    angles = torch.as_tensor(tilt_angles, dtype=torch.float64).detach().cpu().reshape(-1)
    if angles.numel() != n_views:
        raise ValueError(f"got {angles.numel()} tilt angles for tracks over {n_views} views: "
                         "give one angle per view, in stack order")
    bad = torch.nonzero(~torch.isfinite(angles)).flatten().tolist()
    if bad:
        raise ValueError(f"tilt angle of view {bad[0]} (0-based): not a finite number")
    if not math.isfinite(float(tilt_axis_angle)):
        raise ValueError(f"tilt axis angle must be a finite number of degrees, got "
                         f"{tilt_axis_angle}")
    if image_shape is None or len(image_shape) != 2 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be the (h, w) of the views, got {image_shape!r}")
    for name, size in group_sizes.items():
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{name} must be None or a positive number of views, got {size!r}")
    if not (math.isfinite(robust_k) and robust_k > 0):
        raise ValueError(f"robust_k must be a positive number, got {robust_k}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
            or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    present = torch.isfinite(positions[..., 0])
    if n_contours == 0:
        raise ValueError("no tracks to solve from: tracking found no usable patches")
    counts = present.sum(dim=0)
    needed = 2 if any(group_sizes[k] is not None for k in
                      ("rotation_group_size", "magnification_group_size")) else 1
    empty = torch.nonzero(counts < needed).flatten().tolist()
    if empty:
        raise ValueError(f"view {empty[0]} (0-based) has {int(counts[empty[0]])} tracked points, "
                         f"fewer than the {needed} its unknowns need: exclude the view, or "
                         "track more or larger patches")
    short = torch.nonzero(present.sum(dim=1) < 2).flatten().tolist()
    if short:
        raise ValueError(f"contour {short[0]} has fewer than 2 points: a 3-D point needs at "
                         "least 2 views")
    if initial_shifts is not None:
        initial_shifts = check_shifts(initial_shifts, n_views, "initial_shifts")
    return angles, initial_shifts


def solve_geometry(
    tracks: PatchTracks | torch.Tensor,
    tilt_angles,
    tilt_axis_angle: float,
    *,
    image_shape: tuple[int, int] | None = None,
    initial_shifts: torch.Tensor | None = None,
    rotation_group_size: int | None = FINE_DEFAULTS.rotation_group_size,
    magnification_group_size: int | None = FINE_DEFAULTS.magnification_group_size,
    tilt_group_size: int | None = FINE_DEFAULTS.tilt_group_size,
    solve_axis: bool = FINE_DEFAULTS.solve_axis,
    robust: bool = FINE_DEFAULTS.robust,
    robust_k: float = FINE_DEFAULTS.robust_k,
    max_iterations: int = FINE_DEFAULTS.max_iterations,
    estimate_errors: bool = True,
) -> GeometrySolution:
    """Solve the projection geometry from tracked points, as IMOD's tiltalign does.

    Parameters
    ----------
    tracks
        `PatchTracks` from `track_patches`, or `(n_contours, b, 2)` raw
        `(row, col)` positions in pixels with NaN where a contour has no
        point (then `image_shape` is needed).
    tilt_angles
        `(b,)` nominal tilt angles in degrees, stack order.
    tilt_axis_angle
        Nominal tilt axis angle in degrees (IMOD RotationAngle); the solution
        stays within a few degrees of it (the axis is only determined modulo
        180 degrees).
    image_shape
        `(h, w)` of the views; taken from `tracks` when it is a PatchTracks.
    initial_shifts
        `(b, 2)` starting shifts `(dy, dx)` (e.g. the coarse alignment's),
        in `tiltxcorr`'s contract; None starts from zero.
    rotation_group_size, magnification_group_size, tilt_group_size, solve_axis
        Which unknowns to solve; see `FineOptions`.
    robust, robust_k
        Robust fitting and its Tukey constant; see `FineOptions`.
    max_iterations
        Levenberg-Marquardt iterations per fit (each reweighting round fits).
    estimate_errors
        Estimate the standard errors of the axis and of the points' plane
        (`GeometrySolution.tilt_axis_angle_error`, `.tilt_angle_offset_error`);
        False leaves them NaN (a solve that only steers the next one).

    Returns
    -------
    GeometrySolution
        The refined geometry, shifts in the coarse engine's contract, the
        levelled 3-D points, residuals and robust weights.

    Raises
    ------
    ValueError
        Malformed tracks or angles, a view without (enough) tracked points
        (naming the view), contours with a single point, bad options.
    """
    solution = _solve(tracks, tilt_angles, tilt_axis_angle, image_shape=image_shape,
                      initial_shifts=initial_shifts, rotation_group_size=rotation_group_size,
                      magnification_group_size=magnification_group_size,
                      tilt_group_size=tilt_group_size, solve_axis=solve_axis, robust=robust,
                      robust_k=robust_k, max_iterations=max_iterations,
                      estimate_errors=estimate_errors)
    if not (estimate_errors and math.isfinite(solution.tilt_axis_angle_error)):
        return solution
    misfit = _height_misfit(tracks, tilt_angles, solution, image_shape=image_shape,
                            rotation_group_size=rotation_group_size,
                            magnification_group_size=magnification_group_size,
                            tilt_group_size=tilt_group_size, solve_axis=solve_axis,
                            robust=robust, robust_k=robust_k, max_iterations=max_iterations)
    total = math.hypot(solution.tilt_axis_angle_error, misfit) if math.isfinite(misfit) \
        else solution.tilt_axis_angle_error
    return replace(solution, tilt_axis_angle_error=total, tilt_axis_angle_misfit=misfit)


def _height_misfit(tracks, tilt_angles, solution: GeometrySolution, *, image_shape,
                   **solving) -> float:
    """Degrees of axis error the model's misfit with height adds to the noise's (NaN where a
    half cannot be solved).

    Tracking errs with height in a thick specimen (the patches' content slides with its
    depth): the projection model then fits the points of one height better than those of
    another, an error common to all tracks of a height that no clustering by block or view
    sees. The points are split at the median of their solved height `z` (weighted tracks),
    each half solved alone from the full solution (its axis and shifts), with its own
    standard error `s_1`, `s_2`. Under the model and noise alone their axes differ by
    `d ~ N(0, s_1^2 + s_2^2)`; a misfit adds to each half an error of variance `tau^2`
    (as a random effect, the method-of-moments estimate of DerSimonian and Laird for two
    groups: `tau^2 = (d^2 - s_1^2 - s_2^2) / 2`, at least 0), and to the full solution,
    their average, `tau^2 / 2`: the misfit's standard error is
    `sqrt(max(0, d^2 - s_1^2 - s_2^2) / 4)`.
    """
    positions = tracks.positions if isinstance(tracks, PatchTracks) else tracks
    z = solution.points[:, 2]
    weights = solution.contour_weights
    used = weights > 0
    if int(used.sum()) < 2:
        return float("nan")
    upper = z > z[used].median()
    halves = []
    for keep in (upper, ~upper):
        part = replace(tracks, positions=tracks.positions[keep], scores=tracks.scores[keep],
                       patch_index=tracks.patch_index[keep]) \
            if isinstance(tracks, PatchTracks) else positions[keep]
        try:
            half = _solve(part, tilt_angles, solution.tilt_axis_angle, image_shape=image_shape,
                          initial_shifts=solution.shifts, estimate_errors=True, **solving)
        except ValueError:  # a view without (enough) points in this half
            return float("nan")
        if not math.isfinite(half.tilt_axis_angle_error):
            return float("nan")
        halves.append(half)
    difference = halves[0].tilt_axis_angle - halves[1].tilt_axis_angle
    noise = halves[0].tilt_axis_angle_error ** 2 + halves[1].tilt_axis_angle_error ** 2
    return math.sqrt(max(difference * difference - noise, 0.0) / 4.0)


def _solve(tracks, tilt_angles, tilt_axis_angle: float, *, image_shape, initial_shifts,
           rotation_group_size, magnification_group_size, tilt_group_size, solve_axis, robust,
           robust_k, max_iterations, estimate_errors) -> GeometrySolution:
    """`solve_geometry` without the misfit's split (its arguments)."""
    if isinstance(tracks, PatchTracks):
        positions, image_shape = tracks.positions, tracks.image_shape
        clusters = error_blocks(tracks.patch_centres[tracks.patch_index].cpu(), image_shape)
    else:
        positions = tracks
        clusters = None
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().to(device="cpu", dtype=torch.float64)
    group_sizes = {"rotation_group_size": rotation_group_size,
                   "magnification_group_size": magnification_group_size,
                   "tilt_group_size": tilt_group_size}
    angles, initial_shifts = _check_solve_inputs(positions, tilt_angles, tilt_axis_angle,
                                                 image_shape, initial_shifts, group_sizes,
                                                 robust_k, max_iterations)
    centre = _centre(image_shape)
    reference, _ = chain_pairs(angles)
    view_order = torch.argsort(angles, stable=True)
    view_rank = torch.empty_like(view_order)
    view_rank[view_order] = torch.arange(view_order.numel())
    problem = _Problem(positions, torch.deg2rad(angles), centre, reference, view_rank,
                       rotation_groups=_group_index(view_order, rotation_group_size),
                       magnification_groups=_group_index(view_order, magnification_group_size),
                       tilt_groups=_group_index(view_order, tilt_group_size),
                       solve_axis=solve_axis)
    shifts = torch.zeros(problem.n_views, 2, dtype=torch.float64) if initial_shifts is None \
        else initial_shifts - initial_shifts[reference]
    model = _Model(axis=math.radians(float(tilt_axis_angle)), shifts=shifts,
                   rotations=torch.zeros(problem.counts("rotation"), dtype=torch.float64),
                   log_mags=torch.zeros(problem.counts("magnification"), dtype=torch.float64),
                   tilt_changes=torch.zeros(problem.counts("tilt"), dtype=torch.float64),
                   points=torch.zeros(problem.n_points, 3, dtype=torch.float64))
    model.points = _best_points(problem, model)

    weights = problem.present.to(torch.float64)  # (n, b) per point
    track_weights = torch.ones(problem.n_points, dtype=torch.float64)
    model, iterations = _levenberg_marquardt(problem, model, weights, track_weights,
                                             max_iterations)
    if robust:
        for _ in range(ROBUST_ROUNDS):
            new_weights, new_tracks = _robust_weights(problem, model, robust_k)
            change = max(float((new_weights - weights).abs().max()),
                         float((new_tracks - track_weights).abs().max()))
            weights, track_weights = new_weights, new_tracks
            model, more = _levenberg_marquardt(
                problem, model, problem.precision(weights, track_weights),
                track_weights, max_iterations)
            iterations += more
            if change < ROBUST_TOLERANCE:
                break
    if clusters is None:
        clusters = error_blocks(_first_positions(positions), image_shape)
    return _solution(problem, model, weights, track_weights, angles, reference,
                     (int(image_shape[0]), int(image_shape[1])), iterations,
                     clusters if estimate_errors else None, robust_k if robust else None)


def error_blocks(centres: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """`(n,)` the block of the view (`ERROR_BLOCKS` x `ERROR_BLOCKS`) each `(row, col)` of
    `centres` `(n, 2)` falls in: the clusters of the standard errors.

    Tracking errs alike for neighbouring patches (they share content and the way it slides
    with thickness, and the pieces of one track share everything): counted as independent
    they would make the standard errors too small, so measurements are clustered by block.
    """
    h, w = image_shape
    rows = (centres[:, 0] / h * ERROR_BLOCKS).floor().clamp(0, ERROR_BLOCKS - 1)
    cols = (centres[:, 1] / w * ERROR_BLOCKS).floor().clamp(0, ERROR_BLOCKS - 1)
    return (rows * ERROR_BLOCKS + cols).long()


def _first_positions(positions: torch.Tensor) -> torch.Tensor:
    """`(n, 2)` each contour's first finite position (in stack order)."""
    present = torch.isfinite(positions[..., 0])
    first = present.to(torch.int8).argmax(dim=1)
    return positions[torch.arange(len(positions)), first]


def _best_points(problem: _Problem, model: _Model) -> torch.Tensor:
    """Least-squares points `(n, 3)` for the current views (one Gauss-Newton step in them)."""
    r, j_points, _ = problem.residuals(model, with_jacobians=True)
    h_pp = torch.einsum("nkca,nkcd->nad", j_points, j_points) \
        + 1e-9 * torch.eye(3, dtype=torch.float64)
    g_p = torch.einsum("nkca,nkc->na", j_points, r)
    return model.points - torch.linalg.solve(h_pp, g_p)


def _robust_curvature(problem: _Problem, model: _Model, weights: torch.Tensor,
                      track_weights: torch.Tensor, k: float) -> torch.Tensor:
    """`(n, b, 2, 2)` each measurement's weight in the curvature of the robust fit.

    The robust fit solves `sum w(|r|) r dr/dtheta = 0`, so its curvature weighs a residual
    by `d(w(|r|) r) / dr`: `w` across `r` and `w + |r| w'(|r|)` along it (Huber's
    sandwich for M-estimators), less than `w` where the weights fall with the residual.
    Held at `w` the curvature is too large and the standard errors too small: a robust
    fit leans on which points it trusts, and that choice moves with the data. Along `r`
    the weight is kept >= 0 (a redescending weight's tail gives no curvature).
    """
    _, _, slopes = _robust_weights(problem, model, k, slopes=True)
    r = problem.residuals(model)  # (n, b, 2)
    length = r.norm(dim=-1)
    unit = r / length.clamp_min(1e-12)[..., None]
    along_r = (weights + length * slopes).clamp_min(0.0)
    outer = unit[..., :, None] * unit[..., None, :]
    eye = torch.eye(2, dtype=torch.float64)
    matrices = weights[..., None, None] * (eye - outer) + along_r[..., None, None] * outer
    return track_weights[:, None, None, None] * matrices * problem.present[..., None, None]


def _axis_error(problem: _Problem, model: _Model, precision: torch.Tensor,
                clusters: torch.Tensor, bread_weights: torch.Tensor | None = None) -> float:
    """One standard error (degrees) of the reported tilt axis angle; NaN when not solved.

    With rotation groups the reported angle is the solved one minus the
    views' mean rotation (`_solution`), so its error is that contrast's.
    """
    if not problem.solve_axis:
        return float("nan")
    contrast = torch.zeros(problem.width, dtype=torch.float64)
    contrast[problem.axis_column] = 1.0
    group = problem.groups["rotation"]
    if group is not None:
        start = problem.group_start["rotation"]
        contrast.index_add_(0, start + group, torch.full((problem.n_views,), -1.0 / problem.n_views,
                                                         dtype=torch.float64))
    by_patch, by_view, single, _ = (float(contrast @ c @ contrast) for c in
                                    problem.view_covariance(model, precision, clusters,
                                                            bread_weights))
    # two-way clustering (patches and views, Cameron, Gelbach & Miller 2011), never below
    # either one-way estimate
    variance = max(by_patch + by_view - single, by_patch, by_view)
    return math.degrees(math.sqrt(max(variance, 0.0)))


def _plane_slope(points: torch.Tensor, weights: torch.Tensor, clusters: torch.Tensor | None
                 ) -> tuple[float, float]:
    """Slope of the weighted least-squares plane `z = slope x + b y + c` through `points`
    `(n, 3)`, and its standard error from the points' scatter about the plane (sandwich,
    clustered: the pieces of one track share their point's errors; NaN without clusters)."""
    design = torch.stack([points[:, 0], points[:, 1], torch.ones(len(points),
                          dtype=torch.float64)], dim=1)
    root = weights.sqrt()[:, None]
    fit = torch.linalg.lstsq(design * root, points[:, 2:3] * root).solution[:, 0]
    if clusters is None:
        return float(fit[0]), float("nan")
    bread = torch.linalg.pinv(design.T @ (weights[:, None] * design), hermitian=True)
    scores = design * (weights * (points[:, 2] - design @ fit))[:, None]  # (n, 3)
    labels, index = torch.unique(clusters, return_inverse=True)
    summed = torch.zeros(len(labels), 3, dtype=torch.float64).index_add_(0, index, scores)
    n_clusters = len(labels)
    meat = summed.T @ summed * (n_clusters / max(n_clusters - 3, 1))
    variance = float((bread @ meat @ bread)[0, 0])
    return float(fit[0]), math.sqrt(max(variance, 0.0))


def _solution(problem: _Problem, model: _Model, weights: torch.Tensor,
              track_weights: torch.Tensor, angles: torch.Tensor, reference: int,
              image_shape: tuple[int, int], iterations: int,
              clusters: torch.Tensor | None, robust_k: float | None = None) -> GeometrySolution:
    """Put the solution in the reported gauge and units; residuals and weights per point.
    `clusters` None: no standard errors (NaN)."""
    tilt, turn, shrink = problem.view_terms(model)
    back = rotation_matrices(-torch.rad2deg(turn))  # R^-1 of the views as solved
    axis = model.axis
    shifts = model.shifts
    if problem.groups["rotation"] is not None:
        # (A, rotations, shifts) -> (A - m, rotations - m, R(-m) shifts) changes no residual
        mean_turn = float(turn.mean())
        axis, turn = axis - mean_turn, turn - mean_turn
        shifts = (rotation_matrices(torch.tensor(-math.degrees(mean_turn), dtype=torch.float64))
                  @ shifts[..., None])[..., 0]

    # tiltalign's surface analysis: the plane z = slope x + b y + c through the points
    points = model.points
    kept = track_weights > 0
    if int(kept.sum()) < MIN_PLANE_POINTS:
        kept = torch.ones_like(kept)
    slope, slope_error = _plane_slope(points[kept], track_weights[kept],
                                      None if clusters is None else clusters[kept])
    offset = math.atan(-slope)
    level = _turned(points, offset)  # projections do not change

    present = problem.present
    raw = (back @ problem.residuals(model)[..., None])[..., 0] / shrink[:, None]  # (n, b, 2)
    residuals = torch.where(present[..., None], raw, torch.full_like(raw, float("nan")))
    point_weights = torch.where(present, weights * track_weights[:, None],
                                torch.full_like(weights, float("nan")))
    view_rms, mean_residual = _residual_summary(raw, present & (point_weights > 0))
    tilt_changes = torch.rad2deg(tilt) - angles
    return GeometrySolution(
        tilt_axis_angle=math.degrees(axis),
        tilt_angle_offset=math.degrees(offset),
        tilt_angles=angles + tilt_changes + math.degrees(offset),
        tilt_changes=tilt_changes,
        shifts=shifts,
        rotations=torch.rad2deg(turn),
        magnifications=1.0 / shrink,
        points=level,
        residuals=residuals,
        weights=point_weights,
        contour_weights=track_weights,
        view_residuals=view_rms,
        mean_residual=mean_residual,
        reference_view=reference,
        image_shape=image_shape,
        iterations=iterations,
        tilt_axis_angle_error=float("nan") if clusters is None else _axis_error(
            problem, model, problem.precision(weights, track_weights), clusters,
            None if robust_k is None else _robust_curvature(problem, model, weights,
                                                            track_weights, robust_k)),
        tilt_angle_offset_error=math.degrees(slope_error / (1.0 + slope * slope)),
    )
