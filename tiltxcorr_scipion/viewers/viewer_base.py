"""What the plugin's viewers share: a form that picks one tilt series of the output, and the
preview tomogram with its reprojection check, redrawn from the protocol's files."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pyworkflow.protocol.params as params
import pyworkflow.viewer as pwviewer
from pyworkflow.gui.plotter import Plotter

from .. import constants as cts
from ..pipeline import Preview

NO_OUTPUT = "(no aligned tilt series yet)"


def registered_views(tilt_series) -> dict[str, np.ndarray]:
    """Stack-ordered ``view_numbers``, ``tilt_angles``, ``enabled`` and ``reprojection``
    (the ``_tiltxcorrReprojection`` residuals, px, NaN where unset) of a registered tilt
    series."""
    rows = []
    for item in tilt_series.iterItems():  # one reused object: copy values out at once
        value = getattr(item, cts.REPROJECTION_ATTR, None)
        value = None if value is None else value.get()
        rows.append((int(item.getIndex()), float(item.getTiltAngle()), bool(item.isEnabled()),
                     np.nan if value is None else float(value)))
    rows.sort(key=lambda row: row[0])
    columns = list(zip(*rows, strict=True)) if rows else [()] * 4
    return {"view_numbers": np.array(columns[0], dtype=np.int64),
            "tilt_angles": np.array(columns[1], dtype=np.float64),
            "enabled": np.array(columns[2], dtype=bool),
            "reprojection": np.array(columns[3], dtype=np.float64)}


def read_preview(path: str, record: dict, views: dict[str, np.ndarray]) -> Preview:
    """The `pipeline.Preview` a protocol made, read back: its MRC at `path`, the protocol's
    ``previewResults`` entry `record` (binning, limit) and `registered_views` of the tilt
    series (stack order).

    The check holds what `plots.draw_preview` reads and the tilt images keep:
    ``residual_px`` (the registered ``_tiltxcorrReprojection``), ``flagged`` (above the
    limit) and ``limit_px``.
    """
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        volume = mrc.data
        nz, ny, nx = volume.shape
        xy = np.array(volume[nz // 2], dtype=np.float32)
        xz = np.array(volume[:, ny // 2, :], dtype=np.float32)
        voxel_size = float(mrc.voxel_size.x)
    residual = views["reprojection"]
    limit = float(record["limit"])
    check = SimpleNamespace(residual_px=residual, limit_px=limit,
                            flagged=np.nan_to_num(residual, nan=-1.0) > limit)
    return Preview(path=path, binning=int(record["binning"]), shape=(nz, ny, nx),
                   voxel_size=voxel_size, xy_slice=xy, xz_slice=xz, check=check)


def preview_figure(ts_id: str, preview: Preview, views: dict[str, np.ndarray], figure=None):
    """The preview's XY and XZ slices and the reprojection check per view, in one figure
    (`views`: `registered_views`, in the order of the check's arrays)."""
    from matplotlib.figure import Figure

    from ..plots import draw_preview

    if figure is None:
        figure = Figure(figsize=(11.0, 4.0), dpi=100)
    grid = figure.add_gridspec(1, 1)
    draw_preview(figure, grid[0, 0], preview, views["tilt_angles"], views["enabled"],
                 views["view_numbers"])
    nz, ny, nx = preview.shape
    figure.suptitle(f"{ts_id}: preview tomogram {nx} x {ny} x {nz} (binning "
                    f"{preview.binning}, {preview.voxel_size:.2f} A/voxel)", fontsize=10)
    return figure


class PreviewPlotter(Plotter):
    """A Scipion plot window holding one tilt series' preview tomogram figure."""

    def __init__(self, ts_id: str, preview: Preview, views: dict[str, np.ndarray],
                 **kwargs) -> None:
        Plotter.__init__(self, figsize=(11, 4),
                         windowTitle=f"tiltxcorr preview tomogram: {ts_id}", **kwargs)
        self.tightLayoutOn = False
        preview_figure(ts_id, preview, views, self.getFigure())


class TiltSeriesResultsViewer(pwviewer.ProtocolViewer):
    """Base of the plugin's viewers: the output ``TiltSeries`` and a tilt-series choice.

    Targets nothing itself; subclasses set ``_targets`` and ``_label``, call
    `_defineTiltSeriesChoice` (and `_definePreviewChoice`) in their ``_defineParams``
    and read the choice with `_selectedTsId`.
    """

    _environments = [pwviewer.DESKTOP_TKINTER]
    _targets = []

    def _outputSet(self):
        return getattr(self.protocol, cts.OUTPUT_TILT_SERIES, None)

    def _tsIds(self) -> list[str]:
        output = self._outputSet()
        if output is None:
            return []
        return sorted(str(ts.getTsId()) for ts in output.iterItems())

    def _defineTiltSeriesChoice(self, form, help: str) -> None:
        """The "Visualization" section and its tilt-series combo (the output's, sorted)."""
        self._choices = self._tsIds() or [NO_OUTPUT]
        form.addSection(label="Visualization")
        form.addParam("tiltSeriesChoice", params.EnumParam, choices=self._choices, default=0,
                      display=params.EnumParam.DISPLAY_COMBO, label="Tilt series", help=help)

    def _definePreviewChoice(self, form) -> None:
        form.addParam("showPreview", params.LabelParam,
                      label="Show the preview tomogram and the reprojection check",
                      help="The preview tomogram the protocol reconstructed from the alignment "
                           "(extra/<tsId>_preview.mrc): its central XY section and its XZ slice "
                           "across the tilt axis (a blurred, tilted or doubled XZ slice shows a "
                           "bad alignment), and each view's reprojection residual: the shift "
                           "between the view and the projection of a tomogram made without it, "
                           "in pixels of the tilt series; views above the limit in red.")

    def _selectedTsId(self) -> str | None:
        choices = getattr(self, "_choices", None) or self._tsIds()
        index = self.tiltSeriesChoice.get() or 0
        if not choices or choices[0] == NO_OUTPUT or index >= len(choices):
            return None
        return choices[index]

    def _missing(self, what: str = "aligned tilt series") -> list:
        return [self.infoMessage(f"The protocol has no {what} to show yet.", "No output")]

    def _projectPath(self, path: str) -> str:
        """A path the protocol stored relative to its project, usable from any folder."""
        if os.path.isabs(path):
            return path
        return os.path.join(self.protocol.getProject().getPath(), path)

    def _previewData(self, tsId: str) -> tuple[Preview, dict[str, np.ndarray]] | None:
        """The preview of `tsId` (its MRC and the registered residuals) and the tilt
        series' `registered_views`, or None."""
        record = self.protocol._previewResults().get(tsId)
        output = self._outputSet()
        if record is None or output is None:
            return None
        path = self._projectPath(record["path"])
        if not os.path.exists(path):
            return None
        views = None
        for ts in output.iterItems():
            if ts.getTsId() == tsId:
                views = registered_views(ts)
                break
        output.close()
        return None if views is None else (read_preview(path, record, views), views)

    def _showPreview(self, paramName=None) -> list:
        tsId = self._selectedTsId()
        found = None if tsId is None else self._previewData(tsId)
        if found is None:
            return self._missing("preview tomogram" + (f" for {tsId}" if tsId else ""))
        return [PreviewPlotter(tsId, *found)]
