"""Scipion viewer for ProtTiltxcorrPrealignment: the alignment plot of each tilt series.

"Analyze results" on a finished (or running, streaming) prealignment opens a
small form: pick a tilt series, then show its plot (`plot_alignment`: dx, dy
against tilt angle with excluded views marked, and the correlation score of
every view with low scores flagged), or list the flagged views of all tilt
series at once. Everything is read from the protocol's output set
``TiltSeries``: the transforms, tilt angles, enabled flags and the
``_tiltxcorrCorrelation`` attribute of each tilt image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.gui.plotter import Plotter

from .. import constants as cts
from ..pipeline import Preview
from ..plots import low_correlation_views, plot_alignment
from ..protocols import ProtTiltxcorrPrealignment
from .viewer_base import TiltSeriesResultsViewer

__all__ = ["AlignmentData", "TiltxcorrPrealignmentViewer", "alignment_data", "alignment_figure"]

@dataclass(frozen=True)
class AlignmentData:
    """One tilt series' alignment as the plot needs it, in stack order.

    Attributes
    ----------
    ts_id
        Tilt-series id.
    view_numbers
        `(n,)` 1-based stack positions of the views.
    tilt_angles
        `(n,)` degrees.
    shifts
        `(n, 2)` `(dy, dx)` pixels: the transforms' ``(DY, DX)`` (identity for
        views without a transform).
    enabled
        `(n,)` bool, False for excluded views.
    correlation
        `(n,)` the ``_tiltxcorrCorrelation`` scores, NaN where unset (the
        reference view, excluded views).
    unusable
        `(n,)` the ``_tiltxcorrUnusable`` reasons, ``""`` for usable views.
    residual
        `(n,)` the self-check's held-out residual per view (``_tiltxcorrResidual``,
        pixels), NaN where unset.
    unreliable_reason
        The tilt series' ``_tiltxcorrUnreliable`` (kept although unreliable), or ``""``.
    """

    ts_id: str
    view_numbers: np.ndarray
    tilt_angles: np.ndarray
    shifts: np.ndarray
    enabled: np.ndarray
    correlation: np.ndarray
    unusable: tuple[str, ...] = ()
    residual: np.ndarray | None = None
    unreliable_reason: str = ""

    @property
    def unusable_mask(self) -> np.ndarray:
        return np.array([bool(reason) for reason in self.unusable], dtype=bool) if self.unusable \
            else np.zeros(len(self.view_numbers), dtype=bool)


def alignment_data(tilt_series) -> AlignmentData:
    """Read a `tomo.objects.TiltSeries` of the protocol's output into `AlignmentData`."""
    rows = []
    for item in tilt_series.iterItems():  # one reused object: copy values out at once
        matrix = (np.asarray(item.getTransform().getMatrix(), dtype=np.float64)
                  if item.hasTransform() else np.eye(3))
        score = getattr(item, cts.CORRELATION_ATTR, None)
        value = None if score is None else score.get()
        reason = getattr(item, cts.UNUSABLE_ATTR, None)
        residual = getattr(item, cts.RESIDUAL_ATTR, None)
        residual = None if residual is None else residual.get()
        rows.append((int(item.getIndex()), float(item.getTiltAngle()), float(matrix[1, 2]),
                     float(matrix[0, 2]), bool(item.isEnabled()),
                     np.nan if value is None else float(value),
                     (reason.get() if reason is not None else None) or "",
                     np.nan if residual is None else float(residual)))
    rows.sort(key=lambda row: row[0])
    columns = list(zip(*rows, strict=True)) if rows else [()] * 8
    unreliable = getattr(tilt_series, cts.UNRELIABLE_ATTR, None)
    return AlignmentData(
        ts_id=str(tilt_series.getTsId()),
        view_numbers=np.array(columns[0], dtype=np.int64),
        tilt_angles=np.array(columns[1], dtype=np.float64),
        shifts=np.stack([np.array(columns[2], dtype=np.float64),
                         np.array(columns[3], dtype=np.float64)], axis=1).reshape(-1, 2),
        enabled=np.array(columns[4], dtype=bool),
        correlation=np.array(columns[5], dtype=np.float64),
        unusable=tuple(columns[6]),
        residual=np.array(columns[7], dtype=np.float64),
        unreliable_reason=(unreliable.get() if unreliable is not None else None) or "",
    )


def alignment_figure(data: AlignmentData, figure=None, preview: Preview | None = None):
    """`plot_alignment` of `data` (into `figure` if given), with the preview tomogram's row
    when `preview` is given (stack order, as `data`); returns the figure."""
    return plot_alignment(data.ts_id, data.tilt_angles, data.shifts, data.enabled,
                          data.correlation, view_numbers=data.view_numbers,
                          unusable=data.unusable_mask, residual=data.residual,
                          unreliable_reason=data.unreliable_reason, figure=figure,
                          preview=preview)


class AlignmentPlotter(Plotter):
    """A Scipion plot window holding one tilt series' alignment figure (and its preview)."""

    def __init__(self, data: AlignmentData, preview: Preview | None = None,
                 **kwargs) -> None:
        Plotter.__init__(self, figsize=(8, 6.5 if preview is None else 9.5),
                         windowTitle=f"tiltxcorr alignment: {data.ts_id}", **kwargs)
        self.tightLayoutOn = False  # plot_alignment lays the figure out itself
        alignment_figure(data, self.getFigure(), preview)


class TiltxcorrPrealignmentViewer(TiltSeriesResultsViewer):
    """Alignment plots (shifts, excluded views, correlation per view) per tilt series."""

    _label = "tiltxcorr alignment plots"
    _targets = [ProtTiltxcorrPrealignment]

    def _defineParams(self, form) -> None:
        self._defineTiltSeriesChoice(form, help="The tilt series whose alignment plot to show.")
        form.addParam("showAlignmentPlot", params.LabelParam,
                      label="Show shifts and correlation per view",
                      help="dx and dy (pixels) against tilt angle, excluded views as grey "
                           "crosses, the reference view as a star; below, the correlation of "
                           "each view with the view it was aligned to. Red: a score well below "
                           "its neighbours' (check that view: blank, blurred, an obstruction...). "
                           "Green, right axis: the self-check's held-out residual of each view. "
                           "With a preview tomogram, a third row: its central XY and XZ "
                           "slices and the reprojection residual of each view.")
        form.addParam("showLowViews", params.LabelParam,
                      label="List views with low correlation, all tilt series",
                      help="The views the plots flag in red, for every tilt series, and the "
                           "views found unusable (blocked, dark, blank) with the reason.")
        self._definePreviewChoice(form)

    def _getVisualizeDict(self) -> dict:
        return {"showAlignmentPlot": self._showAlignmentPlot,
                "showLowViews": self._showLowViews,
                "showPreview": self._showPreview}

    def _alignmentData(self, tsId: str) -> AlignmentData | None:
        output = self._outputSet()
        if output is None:
            return None
        for ts in output.iterItems():
            if ts.getTsId() == tsId:
                return alignment_data(ts)
        return None

    def _showAlignmentPlot(self, paramName=None) -> list:
        tsId = self._selectedTsId()
        data = None if tsId is None else self._alignmentData(tsId)
        if data is None:
            return self._missing()
        found = self._previewData(tsId)
        return [AlignmentPlotter(data, None if found is None else found[0])]

    def _showLowViews(self, paramName=None) -> list:
        output = self._outputSet()
        if output is None:
            return self._missing()
        return [self.infoMessage(low_correlation_report(
            [alignment_data(ts) for ts in output.iterItems()]), "Views with low correlation")]


def low_correlation_report(series: list[AlignmentData]) -> str:
    """One line per tilt series naming its flagged views (1-based stack positions).

    Low correlation first, then the views found unusable, with their reasons.
    """
    lines = []
    for data in sorted(series, key=lambda d: d.ts_id):
        unusable = data.unusable_mask
        low = low_correlation_views(data.tilt_angles, data.correlation, data.enabled & ~unusable)
        flagged = ", ".join(str(v) for v in sorted(data.view_numbers[low])) or "none"
        excluded = int((~data.enabled).sum())
        line = f"{data.ts_id}: {flagged}" + (f"  ({excluded} excluded)" if excluded else "")
        if data.unreliable_reason:
            line += f"\n    UNRELIABLE alignment: {data.unreliable_reason}"
        if data.residual is not None and np.isfinite(data.residual).any():
            worst = int(np.nanargmax(data.residual))
            line += (f"\n    self-check: held-out residual median "
                     f"{np.nanmedian(data.residual):.2f} px, worst view "
                     f"{data.view_numbers[worst]} ({data.residual[worst]:.2f} px)")
        for index in np.flatnonzero(unusable):
            line += f"\n    view {data.view_numbers[index]} unusable: {data.unusable[index]}"
        lines.append(line)
    return "\n".join(lines) if lines else "No tilt series."
