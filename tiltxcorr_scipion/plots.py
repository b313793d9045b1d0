"""Alignment plots: shifts against tilt angle and per-view correlation.

One figure per tilt series, meant to let an operator spot a bad view in
seconds: the upper panel shows the shifts (dx, dy) against tilt angle, the
lower panel the correlation score of each view with the view it was aligned
to, with low scores in red and labelled with their view number. Excluded
(disabled) views are drawn as grey marks in both panels; the reference view
is a star.

With a preview tomogram (`pipeline.Preview`) both figures gain a row: its
central XY section, its central XZ slice across the tilt axis, and the
reprojection check per view (the residual of each view against the tomogram
made without it; views above the limit in red, labelled with their number).

The figures are built with `matplotlib.figure.Figure` (no pyplot state, no
display), so they render headless; `save_alignment_plot` writes a PNG.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .convert.files import atomic_output
from .options import plus_minus, uncertainty_warning

__all__ = ["correlation_threshold", "draw_preview", "low_correlation_views", "plot_alignment",
           "plot_fine_alignment", "save_alignment_plot", "save_fine_plot"]

#: A view is flagged when its score lies this many robust standard deviations
#: below the trend of its neighbours' scores.
LOW_CORRELATION_SIGMAS = 4.0
#: Views on each side that make the trend (a running median over tilt order).
TREND_HALF_WINDOW = 3
#: Smallest drop below the trend that is flagged, whatever the spread.
MIN_DROP = 0.1

_DX_COLOUR, _DY_COLOUR = "#1f77b4", "#ff7f0e"
_OK_COLOUR, _LOW_COLOUR, _EXCLUDED_COLOUR = "#2a9d4b", "#d62728", "#9a9a9a"
_UNUSABLE_COLOUR = "#b5179e"
_RESIDUAL_COLOUR = "#6a994e"


def _check_inputs(tilt_angles, shifts, enabled, correlation):
    angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    n = angles.shape[0]
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must have shape ({n}, 2) (dy, dx) for {n} tilt angles, "
                         f"got {shifts.shape}")
    enabled = np.asarray(enabled, dtype=bool).reshape(-1)
    correlation = np.asarray(correlation, dtype=np.float64).reshape(-1)
    for name, array in (("enabled", enabled), ("correlation", correlation)):
        if array.shape[0] != n:
            raise ValueError(f"{name} has {array.shape[0]} values for {n} tilt angles: "
                             "give one per view")
    if n == 0:
        raise ValueError("no views to plot: the tilt series is empty")
    return angles, shifts, enabled, correlation


def correlation_threshold(tilt_angles: np.ndarray, correlation: np.ndarray,
                          enabled: np.ndarray | None = None) -> np.ndarray:
    """The score below which each view is flagged as suspiciously low.

    Correlation falls with tilt (thicker projected specimen, less overlap),
    so views are compared with their neighbours, not with one global level:
    the trend at each view is a robust (Theil-Sen) line through the
    `TREND_HALF_WINDOW` views on each side in tilt order, the view itself left
    out (and, in a second pass, the views the first pass flagged), and a view
    is flagged when it lies more than
    `LOW_CORRELATION_SIGMAS` robust standard deviations (1.4826 x median
    absolute deviation of all views from the trend), and at least
    `MIN_DROP`, below it. A bad view usually drags down its neighbour too
    (the neighbour is correlated against it); the robust line tolerates that.

    Parameters
    ----------
    tilt_angles
        `(n,)` degrees.
    correlation
        `(n,)` per-view scores; NaN for the reference and excluded views.
    enabled
        `(n,)` bool, False for excluded views (optional).

    Returns
    -------
    numpy.ndarray
        `(n,)` float64 threshold per view; NaN where the view has no score.
    """
    angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    scores = np.asarray(correlation, dtype=np.float64).reshape(-1)
    usable = np.isfinite(scores)
    if enabled is not None:
        usable &= np.asarray(enabled, dtype=bool).reshape(-1)
    threshold = np.full(scores.shape, np.nan)
    index = np.flatnonzero(usable)
    if index.size == 0:
        return threshold
    index = index[np.argsort(angles[index], kind="stable")]
    values = scores[index]
    x = angles[index]
    trusted = np.ones(values.size, dtype=bool)
    for _ in range(2):  # second pass: flagged views no longer shape their neighbours' trend
        trend = np.array([_local_trend(x, values, k, trusted) for k in range(values.size)])
        residual = (values - trend)[trusted]
        spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        level = trend - max(LOW_CORRELATION_SIGMAS * spread, MIN_DROP)
        trusted = values >= level
    threshold[index] = level
    return threshold


def _local_trend(x: np.ndarray, y: np.ndarray, k: int, trusted: np.ndarray) -> float:
    """Score expected at point k from its neighbours (k left out): a Theil-Sen line.

    Uses up to `TREND_HALF_WINDOW` points on each side (more on one side at
    the ends of the series, so the end views are extrapolated, not compared
    with a median that a monotonic trend biases).
    """
    h = TREND_HALF_WINDOW
    candidates = np.flatnonzero(trusted)
    candidates = candidates[candidates != k]
    position = int(np.searchsorted(candidates, k))
    start = min(max(0, position - h), max(0, candidates.size - 2 * h))
    neighbours = candidates[start:start + 2 * h]
    if neighbours.size == 0:
        return float(y[k])
    xs, ys = x[neighbours], y[neighbours]
    i, j = np.triu_indices(xs.size, 1)
    separated = xs[j] != xs[i]
    if not np.any(separated):
        return float(np.median(ys))
    slope = float(np.median((ys[j] - ys[i])[separated] / (xs[j] - xs[i])[separated]))
    return float(np.median(ys - slope * xs) + slope * x[k])


def low_correlation_views(tilt_angles: np.ndarray, correlation: np.ndarray,
                          enabled: np.ndarray | None = None) -> np.ndarray:
    """Which views have a suspiciously low correlation score.

    Arguments as in `correlation_threshold`. Returns `(n,)` bool, True where
    the score is below `correlation_threshold`; the reference view, excluded
    views and views without a score are never flagged.
    """
    scores = np.asarray(correlation, dtype=np.float64).reshape(-1)
    threshold = correlation_threshold(tilt_angles, scores, enabled)
    with np.errstate(invalid="ignore"):
        return np.isfinite(threshold) & (scores < threshold)


def plot_alignment(ts_id: str, tilt_angles: np.ndarray, shifts: np.ndarray, enabled: np.ndarray,
                   correlation: np.ndarray, *, view_numbers: np.ndarray | None = None,
                   unusable: np.ndarray | None = None, residual: np.ndarray | None = None,
                   unreliable_reason: str = "", figure: Figure | None = None,
                   preview=None) -> Figure:
    """Plot one tilt series' alignment: shifts and correlation against tilt angle.

    Parameters
    ----------
    ts_id
        Tilt-series id, shown in the title.
    tilt_angles
        `(n,)` tilt angles in degrees, stack order.
    shifts
        `(n, 2)` shifts `(dy, dx)` in pixels (the transforms' ``(DY, DX)``):
        moving view i's content by ``+shifts[i]`` aligns it.
    enabled
        `(n,)` bool, False for views excluded from the alignment.
    correlation
        `(n,)` per-view correlation score; NaN for the reference view and
        excluded views.
    view_numbers
        `(n,)` numbers naming the views in labels, e.g. 1-based stack
        positions when the arrays are not in stack order; default 1..n.
    unusable
        `(n,)` bool: views the engine found without usable specimen (blocked,
        dark, blank), drawn as magenta diamonds with their number, whether
        they were then disabled or not; never flagged as low correlation.
    residual
        `(n,)` the self-check's held-out residual per view (pixels; NaN where
        not measured), drawn against the right axis of the correlation panel.
    unreliable_reason
        When the self-check found the alignment unreliable, why: shown in red
        under the title.
    figure
        Figure to draw into (e.g. one made by pyplot for an interactive
        window); a new 8 x 6.5 inch `Figure` if None (8 x 9.5 with a preview).
    preview
        A `pipeline.Preview` (arrays in the same order as `tilt_angles`): its
        slices and reprojection check are drawn in a third row.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels sharing the tilt axis: dx and dy (pixels) with excluded
        views as grey crosses and the reference view as a star; the
        correlation per view, low scores (`low_correlation_views`) in red,
        labelled with their view number (`view_numbers`), and the
        flagging threshold (`correlation_threshold`) as a dashed line.
    """
    angles, shifts, enabled, correlation = _check_inputs(tilt_angles, shifts, enabled, correlation)
    n = angles.shape[0]
    if view_numbers is None:
        views = np.arange(1, n + 1)
    else:
        views = np.asarray(view_numbers).reshape(-1)
        if views.shape[0] != n:
            raise ValueError(f"view_numbers has {views.shape[0]} values for {n} tilt angles")
    order = np.argsort(angles, kind="stable")
    unusable = (np.zeros(n, dtype=bool) if unusable is None
                else np.asarray(unusable, dtype=bool).reshape(-1))
    low = low_correlation_views(angles, correlation, enabled & ~unusable)
    scored = enabled & np.isfinite(correlation)
    reference = enabled & ~np.isfinite(correlation)
    threshold = correlation_threshold(angles, correlation, enabled)

    if figure is None:
        figure = Figure(figsize=(8.0, 6.5 if preview is None else 9.5), dpi=100)
    if preview is None:
        axes_shift, axes_corr = figure.subplots(2, 1, sharex=True,
                                                gridspec_kw={"height_ratios": [3, 2]})
    else:
        grid = figure.add_gridspec(3, 3, height_ratios=[3, 2, 2.6])
        axes_shift = figure.add_subplot(grid[0, :])
        axes_corr = figure.add_subplot(grid[1, :], sharex=axes_shift)
        axes_shift.tick_params(labelbottom=False)
        draw_preview(figure, grid[2, :], preview, angles, enabled, views)

    # ---- shifts
    on = order[enabled[order]]
    for column, label, colour, marker in ((1, "dx", _DX_COLOUR, "o"), (0, "dy", _DY_COLOUR, "s")):
        axes_shift.plot(angles[on], shifts[on, column], "-", color=colour, marker=marker,
                        markersize=3.5, linewidth=1.2, label=f"{label} (px)")
        if np.any(low):
            axes_shift.plot(angles[low], shifts[low, column], "o", markersize=9,
                            markerfacecolor="none", markeredgecolor=_LOW_COLOUR,
                            markeredgewidth=1.5)
    axes_shift.plot(angles[reference], shifts[reference, 1], "*", color="gold", markersize=14,
                    markeredgecolor="black", markeredgewidth=0.7, zorder=5)
    off = ~enabled
    if np.any(off):
        for column in (1, 0):
            axes_shift.plot(angles[off], shifts[off, column], "x", color=_EXCLUDED_COLOUR,
                            markersize=7, markeredgewidth=1.5)
        for angle in angles[off]:
            for axes in (axes_shift, axes_corr):
                axes.axvline(angle, color=_EXCLUDED_COLOUR, linewidth=0.8, linestyle=":",
                             zorder=0)
    if np.any(unusable):
        for column in (1, 0):
            axes_shift.plot(angles[unusable], shifts[unusable, column], "D",
                            color=_UNUSABLE_COLOUR, markersize=7, markerfacecolor="none",
                            markeredgewidth=1.5, zorder=6)
        for index in np.flatnonzero(unusable):
            axes_corr.annotate(f"{views[index]}", (angles[index], 0.0),
                               textcoords="offset points", xytext=(0, 6), ha="center",
                               fontsize=8, color=_UNUSABLE_COLOUR, fontweight="bold")
        axes_corr.plot(angles[unusable], np.zeros(int(unusable.sum())), "D",
                       color=_UNUSABLE_COLOUR, markersize=7, markerfacecolor="none",
                       markeredgewidth=1.5)
    axes_shift.axhline(0.0, color="black", linewidth=0.6, zorder=0)
    axes_shift.set_ylabel("shift (pixels)")
    axes_shift.grid(True, alpha=0.3)
    handles = axes_shift.get_legend_handles_labels()[0][:2]
    handles += [Line2D([], [], linestyle="none", marker="*", markersize=12, color="gold",
                       markeredgecolor="black", label="reference view")]
    if np.any(off):
        handles.append(Line2D([], [], linestyle="none", marker="x", color=_EXCLUDED_COLOUR,
                              markeredgewidth=1.5, label="excluded view"))
    if np.any(low):
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor=_LOW_COLOUR, markeredgewidth=1.5,
                              label="low correlation (view no.)"))
    if np.any(unusable):
        handles.append(Line2D([], [], linestyle="none", marker="D", markerfacecolor="none",
                              markeredgecolor=_UNUSABLE_COLOUR, markeredgewidth=1.5,
                              label="unusable: blocked, dark, blank"))
    axes_shift.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85,
                      ncol=min(len(handles), 3))

    # ---- correlation
    ok = scored & ~low
    axes_corr.vlines(angles[scored], 0.0, correlation[scored], color=_OK_COLOUR, alpha=0.35,
                     linewidth=1.0)
    axes_corr.plot(angles[ok], correlation[ok], "o", color=_OK_COLOUR, markersize=4)
    axes_corr.plot(angles[low], correlation[low], "o", color=_LOW_COLOUR, markersize=7)
    axes_corr.vlines(angles[low], 0.0, correlation[low], color=_LOW_COLOUR, linewidth=1.5)
    for index in np.flatnonzero(low):
        axes_corr.annotate(f"{views[index]}", (angles[index], correlation[index]),
                           textcoords="offset points", xytext=(0, 6), ha="center",
                           fontsize=8, color=_LOW_COLOUR, fontweight="bold")
    if np.any(off):
        axes_corr.plot(angles[off], np.zeros(int(off.sum())), "x", color=_EXCLUDED_COLOUR,
                       markersize=7, markeredgewidth=1.5)
    along = order[scored[order]]
    axes_corr.plot(angles[along], threshold[along], "--", color=_LOW_COLOUR, linewidth=0.9,
                   label="flag threshold (from neighbouring views)")
    finite = correlation[scored]
    bottom = min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0
    axes_corr.set_ylim(bottom, 1.02)
    axes_corr.set_ylabel("correlation")
    axes_corr.set_xlabel("tilt angle (degrees)")
    axes_corr.grid(True, alpha=0.3)
    corr_handles = axes_corr.get_legend_handles_labels()[0]
    if residual is not None:
        residual = np.asarray(residual, dtype=np.float64).reshape(-1)
        measured = order[np.isfinite(residual[order]) & enabled[order]]
        if measured.size:
            axes_residual = axes_corr.twinx()
            axes_residual.plot(angles[measured], residual[measured], "-", color=_RESIDUAL_COLOUR,
                               marker=".", linewidth=1.0, markersize=4)
            axes_residual.set_ylim(0.0, max(1.0, 1.1 * float(residual[measured].max())))
            axes_residual.set_ylabel("self-check residual (px)", color=_RESIDUAL_COLOUR)
            axes_residual.tick_params(axis="y", colors=_RESIDUAL_COLOUR)
            corr_handles.append(Line2D([], [], color=_RESIDUAL_COLOUR, marker=".",
                                       label="held-out residual of its links (px)"))
    axes_corr.legend(handles=corr_handles, loc="lower center", fontsize=8, framealpha=0.85)

    n_off = int(off.sum())
    n_low = int(low.sum())
    status = f"{n} views, {n_off} excluded, "
    if np.any(unusable):
        status += ("unusable: " + ", ".join(str(v) for v in sorted(views[unusable])[:8])
                   + ("..." if unusable.sum() > 8 else "") + "; ")
    status += (f"{n_low} with low correlation: view{'s' if n_low > 1 else ''} "
               + ", ".join(str(v) for v in sorted(views[low])[:8]) + ("..." if n_low > 8 else "")
               if n_low else "no low correlation")
    title = f"{ts_id}: coarse alignment"
    if unreliable_reason:
        title += "\nUNRELIABLE: " + textwrap.shorten(unreliable_reason, 110)
    figure.suptitle(title, fontsize=11 if unreliable_reason else 12, fontweight="bold",
                    color=_LOW_COLOUR if unreliable_reason else "black")
    axes_shift.set_title(status, fontsize=9,
                         color=_LOW_COLOUR if n_low or np.any(unusable) else "black")
    figure.tight_layout()
    return figure


def save_alignment_plot(path: str, ts_id: str, tilt_angles: np.ndarray, shifts: np.ndarray,
                        enabled: np.ndarray, correlation: np.ndarray, *,
                        view_numbers: np.ndarray | None = None,
                        unusable: np.ndarray | None = None, residual: np.ndarray | None = None,
                        unreliable_reason: str = "", preview=None) -> str:
    """Write `plot_alignment`'s figure as a PNG (800 x 650 pixels, 800 x 950 with a
    preview) and return its path.

    Uses matplotlib's Agg canvas directly: no display, no pyplot state. The
    file appears whole or not at all (`atomic_output`). Arguments as in
    `plot_alignment`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    figure = plot_alignment(ts_id, tilt_angles, shifts, enabled, correlation,
                            view_numbers=view_numbers, unusable=unusable, residual=residual,
                            unreliable_reason=unreliable_reason, preview=preview)
    FigureCanvasAgg(figure)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


def plot_fine_alignment(ts_id: str, tilt_angles: np.ndarray, residuals: np.ndarray,
                        enabled: np.ndarray, reference_points: np.ndarray,
                        reference_weights: np.ndarray, image_shape: tuple[int, int],
                        tilt_axis_angle: float, tilt_angle_offset: float, mean_residual: float,
                        *, view_numbers: np.ndarray | None = None,
                        figure: Figure | None = None,
                        tilt_axis_angle_error: float = float("nan"),
                        tilt_angle_offset_error: float = float("nan"),
                        preview=None) -> Figure:
    """Plot one tilt series' fine alignment: residual per view, and the tracks with the axis.

    Parameters
    ----------
    tilt_angles, residuals, enabled
        `(n,)` refined tilt angles (degrees), RMS residual per view (pixels;
        NaN for excluded views) and the enabled flags, stack order or any.
    reference_points, reference_weights
        `(k, 2)` `(row, col)` of the tracked points in the reference view and
        their robust weights (0: rejected).
    image_shape
        `(h, w)` of the views.
    tilt_axis_angle, tilt_angle_offset, mean_residual
        The solved axis (degrees from Y, counter-clockwise), offset (degrees)
        and mean residual (pixels), shown in the title and as the axis line.
    view_numbers
        `(n,)` numbers naming the views (1-based stack positions); default 1..n.
    tilt_axis_angle_error, tilt_angle_offset_error
        One standard error (degrees) of the axis and the offset, shown after
        them (NaN: not estimated); one beyond its target
        (`options.uncertainty_warning`) is named under the title, in red.
    preview
        A `pipeline.Preview` (same order): slices and reprojection check in a second row.
    """
    angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    residuals = np.asarray(residuals, dtype=np.float64).reshape(-1)
    enabled = np.asarray(enabled, dtype=bool).reshape(-1)
    n = angles.shape[0]
    if residuals.shape[0] != n or enabled.shape[0] != n:
        raise ValueError(f"residuals and enabled need one value per view ({n})")
    views = np.arange(1, n + 1) if view_numbers is None else np.asarray(view_numbers)
    if figure is None:
        figure = Figure(figsize=(10.0, 5.0 if preview is None else 8.5), dpi=100)
    if preview is None:
        axes_res, axes_img = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    else:
        grid = figure.add_gridspec(2, 5, height_ratios=[5, 3.5])
        axes_res = figure.add_subplot(grid[0, :3])
        axes_img = figure.add_subplot(grid[0, 3:])
        draw_preview(figure, grid[1, :], preview, angles, enabled, views)

    order = np.argsort(angles, kind="stable")
    on = order[enabled[order] & np.isfinite(residuals[order])]
    axes_res.vlines(angles[on], 0.0, residuals[on], color=_OK_COLOUR, alpha=0.5)
    axes_res.plot(angles[on], residuals[on], "o", color=_OK_COLOUR, markersize=4)
    axes_res.axhline(mean_residual, color="black", linewidth=0.8, linestyle="--",
                     label=f"mean {mean_residual:.2f} px")
    worst = on[np.argsort(residuals[on])[-3:]] if on.size else []
    for index in worst:
        axes_res.annotate(f"{views[index]}", (angles[index], residuals[index]),
                          textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
    off = ~enabled
    if np.any(off):
        axes_res.plot(angles[off], np.zeros(int(off.sum())), "x", color=_EXCLUDED_COLOUR,
                      markersize=7, markeredgewidth=1.5, label="excluded view")
    axes_res.set_xlabel("tilt angle (degrees)")
    axes_res.set_ylabel("RMS residual (pixels)")
    axes_res.set_ylim(bottom=0.0)
    axes_res.grid(True, alpha=0.3)
    axes_res.legend(loc="upper center", fontsize=8)

    h, w = image_shape
    points = np.asarray(reference_points, dtype=np.float64).reshape(-1, 2)
    weights = np.asarray(reference_weights, dtype=np.float64).reshape(-1)
    kept = weights > 0
    axes_img.plot(points[kept, 1], points[kept, 0], ".", color=_DX_COLOUR, markersize=3,
                  label=f"tracked points ({int(kept.sum())})")
    if np.any(~kept):
        axes_img.plot(points[~kept, 1], points[~kept, 0], "x", color=_LOW_COLOUR, markersize=4,
                      label=f"rejected ({int((~kept).sum())})")
    # the axis through the centre, along (cos a, -sin a) in (row, col)
    a = np.radians(tilt_axis_angle)
    half = 0.5 * np.hypot(h, w)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    ends = centre[None] + np.array([[-half], [half]]) * np.array([np.cos(a), -np.sin(a)])[None]
    axes_img.plot(ends[:, 1], ends[:, 0], "-", color=_LOW_COLOUR, linewidth=1.2,
                  label=f"tilt axis {tilt_axis_angle:.2f}{plus_minus(tilt_axis_angle_error)} deg")
    axes_img.set_xlim(0, w - 1)
    axes_img.set_ylim(0, h - 1)  # IMOD's display: row 0 at the bottom
    axes_img.set_aspect("equal")
    axes_img.set_xlabel("X (pixels)")
    axes_img.set_ylabel("Y (pixels)")
    axes_img.set_title("reference view", fontsize=9)
    axes_img.legend(loc="upper right", fontsize=7, framealpha=0.85)

    figure.suptitle(f"{ts_id}: fine alignment - axis {tilt_axis_angle:.2f}"
                    f"{plus_minus(tilt_axis_angle_error)} deg, tilt offset "
                    f"{tilt_angle_offset:+.2f}{plus_minus(tilt_angle_offset_error)} deg, "
                    f"mean residual {mean_residual:.2f} px", fontsize=11, fontweight="bold")
    warning = uncertainty_warning(tilt_axis_angle_error, tilt_angle_offset_error)
    figure.tight_layout(rect=(0, 0, 1, 0.93) if warning else None)
    if warning:
        figure.text(0.5, 0.905, f"UNCERTAIN: {warning}", ha="center", fontsize=9,
                    color=_LOW_COLOUR)
    return figure


def save_fine_plot(path: str, ts_id: str, *args, **kwargs) -> str:
    """Write `plot_fine_alignment`'s figure as a PNG (1000 x 500 pixels, 1000 x 850 with a
    preview) and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = plot_fine_alignment(ts_id, *args, **kwargs)
    FigureCanvasAgg(figure)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


def draw_preview(figure: Figure, area, preview, angles: np.ndarray, enabled: np.ndarray,
                 views: np.ndarray) -> list:
    """Draw a preview's XY and XZ slices and its reprojection check into `area` (a
    gridspec cell of `figure`); returns the three axes.

    The slices are shown as IMOD displays them (Y and Z up), grey levels clipped at the
    0.5 and 99.5 percentiles; the check plots each view's residual (pixels) against its
    tilt angle, views above the limit in red with their number, the limit dashed.
    """
    inner = area.subgridspec(1, 3, width_ratios=[1, 1, 1.3])
    axes_xy, axes_xz, axes_check = (figure.add_subplot(inner[0, k]) for k in range(3))
    for axes, image, title, ylabel in (
            (axes_xy, preview.xy_slice, "XY (central section)", "Y"),
            (axes_xz, preview.xz_slice, "XZ (across the tilt axis)", "Z")):
        low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
        axes.imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower",
                    interpolation="nearest", aspect="equal")
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("X", fontsize=8)
        axes.set_ylabel(ylabel, fontsize=8)
        axes.tick_params(labelsize=7)
    nz, ny, nx = preview.shape
    axes_xy.text(0.02, 0.02, f"{nx} x {ny} x {nz}, bin {preview.binning}",
                 transform=axes_xy.transAxes, fontsize=7, color="yellow", va="bottom")
    check = preview.check
    residual = np.asarray(check.residual_px, dtype=np.float64).reshape(-1)
    flagged = np.asarray(check.flagged, dtype=bool).reshape(-1)
    order = np.argsort(angles, kind="stable")
    measured = order[np.isfinite(residual[order]) & enabled[order]]
    axes_check.plot(angles[measured], residual[measured], "-", color=_OK_COLOUR, marker="o",
                    markersize=3, linewidth=1.0)
    bad = np.flatnonzero(flagged)
    axes_check.plot(angles[bad], residual[bad], "o", color=_LOW_COLOUR, markersize=6)
    for index in bad:
        axes_check.annotate(f"{views[index]}", (angles[index], residual[index]),
                            textcoords="offset points", xytext=(0, 5), ha="center",
                            fontsize=8, color=_LOW_COLOUR, fontweight="bold")
    axes_check.axhline(check.limit_px, color=_LOW_COLOUR, linestyle="--", linewidth=0.9,
                       label=f"limit {check.limit_px:g} px")
    top = float(residual[measured].max()) if measured.size else 0.0
    axes_check.set_ylim(0.0, max(1.3 * check.limit_px, 1.1 * top))
    axes_check.set_xlabel("tilt angle (degrees)", fontsize=8)
    axes_check.set_ylabel("reprojection residual (px)", fontsize=8)
    axes_check.tick_params(labelsize=7)
    axes_check.grid(True, alpha=0.3)
    worst = f"worst {top:.2f} px" if measured.size else "no view checked"
    axes_check.set_title(f"each view vs the tomogram without it: {worst}, "
                         f"{len(bad)} flagged", fontsize=8,
                         color=_LOW_COLOUR if len(bad) else "black")
    axes_check.legend(loc="upper center", fontsize=7)
    return [axes_xy, axes_xz, axes_check]
