"""Scipion viewer for ProtTiltxcorrFineAlignment: the solved geometry of each tilt series.

"Analyze results" opens a small form: pick a tilt series, then show its plot
(the one the protocol wrote in ``extra/``: RMS residual per view against the
refined tilt angle, the tracked points on the reference view with the
rejected ones and the solved tilt axis), its residual table (view, refined
tilt, points, RMS residual), or the geometry of every tilt series at once
(axis, tilt angle offset, mean residual, tracks, worst views). The tracks
themselves are the protocol's ``LandmarkModels`` output, which Scipion's
landmark-model viewers (scipion-em-imod's 3dmod) open.
"""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.gui.plotter import Plotter

from ..pipeline import output_paths
from ..protocols import ProtTiltxcorrFineAlignment
from ..protocols.protocol_fine import fine_result_line
from .viewer_base import TiltSeriesResultsViewer

__all__ = ["FinePlotter", "TiltxcorrFineAlignmentViewer", "fine_report", "read_residual_table"]

def read_residual_table(path: str) -> np.ndarray:
    """The residual table the protocol writes: `(n, 4)` view, tilt, points, RMS residual (px)."""
    table = np.loadtxt(path, comments="#", ndmin=2)
    if table.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 columns (view, tilt, points, residual), "
                         f"found {table.shape[1]}")
    return table


class FinePlotter(Plotter):
    """A Scipion plot window holding the fine-alignment plot the protocol wrote."""

    def __init__(self, ts_id: str, png: str, **kwargs) -> None:
        Plotter.__init__(self, figsize=(10, 5), windowTitle=f"tiltxcorr fine alignment: {ts_id}",
                         **kwargs)
        self.tightLayoutOn = False
        axes = self.getFigure().add_axes((0, 0, 1, 1))
        axes.imshow(matplotlib.image.imread(png))
        axes.set_axis_off()


def fine_report(results: dict, tables: dict[str, np.ndarray], worst: int = 3) -> str:
    """One block per tilt series: axis, offset, mean residual, tracks, and its worst views.

    `results` is the protocol's ``fineResults`` ({tsId: {axis, offset, offsetText,
    residual, contours, rejected}}), `tables` the residual tables by tsId (missing: no
    worst views listed).
    """
    lines = []
    for ts_id, result in sorted(results.items()):
        lines.append(fine_result_line(ts_id, result))
        table = tables.get(ts_id)
        if table is not None:
            solved = table[np.isfinite(table[:, 3])]
            top = solved[np.argsort(solved[:, 3], kind="stable")[::-1][:worst]]
            views = ", ".join(f"view {int(row[0])} ({row[1]:+.1f} deg) {row[3]:.2f} px"
                              for row in top)
            lines.append(f"    highest residuals: {views}")
    return "\n".join(lines) if lines else "No tilt series aligned yet."


class TiltxcorrFineAlignmentViewer(TiltSeriesResultsViewer):
    """Residuals per view, tracks and solved axis per tilt series; the geometry of all."""

    _label = "tiltxcorr fine alignment results"
    _targets = [ProtTiltxcorrFineAlignment]

    def _defineParams(self, form) -> None:
        self._defineTiltSeriesChoice(form, help="The tilt series whose results to show.")
        form.addParam("showFinePlot", params.LabelParam,
                      label="Show residuals, tracks and tilt axis",
                      help="Left: the RMS residual of each view (pixels) against its refined "
                           "tilt angle, the three worst labelled with their view numbers; "
                           "excluded views as grey crosses. Right: the tracked points on the "
                           "reference view (red crosses: rejected by robust fitting) and the "
                           "solved tilt axis.")
        form.addParam("showResidualTable", params.LabelParam,
                      label="Show the residual table",
                      help="Per view (1-based stack position): refined tilt angle, number of "
                           "tracked points, RMS residual in pixels.")
        form.addParam("showGeometry", params.LabelParam,
                      label="List the solved geometry, all tilt series",
                      help="Tilt axis angle, tilt angle offset, mean residual and tracks of "
                           "every tilt series, with the views of highest residual.")
        self._definePreviewChoice(form)

    def _getVisualizeDict(self) -> dict:
        return {"showFinePlot": self._showFinePlot,
                "showResidualTable": self._showResidualTable,
                "showGeometry": self._showGeometry,
                "showPreview": self._showPreview}

    def _files(self, tsId: str) -> dict[str, str]:
        return output_paths(self._projectPath(self.protocol._getExtraPath()), tsId, fine=True)

    def _showFinePlot(self, paramName=None) -> list:
        tsId = self._selectedTsId()
        if tsId is None:
            return self._missing()
        png = self._files(tsId)["png"]
        if not os.path.exists(png):
            return self._missing(f"plot for {tsId} ({png})")
        return [FinePlotter(tsId, png)]

    def _showResidualTable(self, paramName=None) -> list:
        tsId = self._selectedTsId()
        if tsId is None:
            return self._missing()
        path = self._files(tsId)["residuals"]
        if not os.path.exists(path):
            return self._missing(f"residual table for {tsId} ({path})")
        with open(path) as handle:
            return [self.infoMessage(handle.read().rstrip(), f"Residuals: {tsId}")]

    def _showGeometry(self, paramName=None) -> list:
        results = self.protocol._fineResults()
        tables = {}
        for tsId in results:
            path = self._files(tsId)["residuals"]
            if os.path.exists(path):
                tables[tsId] = read_residual_table(path)
        return [self.infoMessage(fine_report(results, tables), "Fine alignment: geometry")]
