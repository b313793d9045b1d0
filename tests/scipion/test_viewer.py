"""The viewer and the per-tilt-series extra files, from a real protocol run's output set."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from scipion_helpers import (
    create_project,
    disable_views,
    edit_tilt_series_set,
    import_tilt_series,
    launch_and_wait,
    new_prealignment,
    read_tilt_series_set,
    reload_protocol,
    write_simulated_tilt_series,
)

from tiltxcorr_scipion import constants as cts
from tiltxcorr_scipion.convert.imod import read_tlt, read_xf
from tiltxcorr_scipion.viewers import TiltxcorrPrealignmentViewer
from tiltxcorr_scipion.viewers.viewer_prealignment import (
    AlignmentPlotter,
    alignment_data,
    alignment_figure,
)

AXIS = 85.0
DISABLED = [3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("viewer-data")
    sim = write_simulated_tilt_series(data, "TS_01", shape=(128, 128), n_views=21,
                                      tilt_range=(-60.0, 60.0), tilt_axis_angle=AXIS,
                                      max_shift=6.0, thickness=5.0, order="dose-symmetric",
                                      seed=7)
    project = create_project("viewer")
    imp = import_tilt_series(project, data, "*.mrc", tilt_axis_angle=AXIS, sampling_rate=2.0)
    edit_tilt_series_set(project, imp, disable_views({"TS_01": DISABLED}))
    prot = launch_and_wait(project, new_prealignment(project, imp, numberOfThreads=1))
    return project, prot, sim


def output_tilt_series(project, prot):
    prot = reload_protocol(project, prot)
    return prot, next(iter(getattr(prot, cts.OUTPUT_TILT_SERIES).iterItems()))


def test_alignment_data_reads_the_output_set(run):
    project, prot, _ = run
    record = read_tilt_series_set(project, prot)["TS_01"]
    _, ts = output_tilt_series(project, prot)
    data = alignment_data(ts)
    assert data.ts_id == "TS_01"
    np.testing.assert_array_equal(data.view_numbers, np.arange(1, 22))  # stack order
    np.testing.assert_allclose(data.shifts, record.by_stack_index(record.shifts_dy_dx()))
    np.testing.assert_allclose(data.tilt_angles, record.by_stack_index(record.tilt_angles))
    assert data.enabled.tolist() == [i not in DISABLED for i in range(1, 22)]
    np.testing.assert_allclose(data.shifts[2], 0.0)  # disabled: identity
    scored = np.isfinite(data.correlation)
    assert not scored[2] and scored.sum() == 21 - 1 - len(DISABLED)  # reference has none too
    assert np.all(data.correlation[scored] > 0.5)


def test_figure_from_the_output(run):
    project, prot, _ = run
    _, ts = output_tilt_series(project, prot)
    figure = alignment_figure(alignment_data(ts))
    shift_axes, corr_axes, residual_axes = figure.axes  # residuals: the correlation's twin
    assert residual_axes.get_ylabel() == "self-check residual (px)"
    assert "TS_01" in figure._suptitle.get_text()
    assert "21 views, 1 excluded, no low correlation" == shift_axes.get_title()


def test_protocol_viewer_builds_the_plot_and_the_report(run):
    project, prot, _ = run
    prot, _ = output_tilt_series(project, prot)
    viewer = TiltxcorrPrealignmentViewer(project=project, protocol=prot)
    viewer.setProtocol(prot)
    assert viewer._choices == ["TS_01"]
    (plot,) = viewer._showAlignmentPlot()
    assert isinstance(plot, AlignmentPlotter)
    # shifts, correlation and its residual twin; the preview's XY, XZ and reprojection check
    assert len(plot.getFigure().axes) == 6
    plot.close()
    (message,) = viewer._showLowViews()
    first, *more = message.getMessage().splitlines()
    assert first == "TS_01: none  (1 excluded)"
    assert [line.split(", worst view")[0] for line in more] == [
        "    self-check: held-out residual median 0.00 px"]


def test_extra_files_written_by_the_protocol(run):
    """The protocol calls the IMOD writer and the plot writer for each tilt series."""
    project, prot, _ = run
    prot = reload_protocol(project, prot)
    extra = Path(prot._getExtraPath())
    record = read_tilt_series_set(project, prot)["TS_01"]
    registered = record.transforms[np.argsort(record.stack_indices, kind="stable")]
    prexg = read_xf(str(extra / "TS_01.prexg"))
    # .prexg = registered transforms minus their mean shift (xftoxg -nfit 0)
    np.testing.assert_allclose(prexg[:, :2, 2] + registered[:, :2, 2].mean(axis=0),
                               registered[:, :2, 2], atol=2e-3)
    assert read_xf(str(extra / "TS_01.prexf")).shape == (21, 3, 3)
    np.testing.assert_allclose(read_tlt(str(extra / "TS_01.tlt")),
                               record.by_stack_index(record.tilt_angles), atol=0.005)
    image = matplotlib.image.imread(str(extra / f"TS_01{cts.PLOT_SUFFIX}"))
    assert image.shape[:2] == (950, 800) and image[..., :3].std() > 0.05  # with the preview


# --------------------------------------------------------------------------- the real GUI



def test_viewer_opens_in_scipions_gui(run, x_display, tmp_path):
    """Scipion finds the viewer for the protocol; its form and plot window open under Tk."""
    import os
    import subprocess

    import matplotlib.pyplot as plt
    import pyworkflow as pw
    import pyworkflow.gui as pwgui
    import pyworkflow.gui.project  # noqa: F401  (before the form module: circular import)
    from pyworkflow.gui.plotter import Plotter
    from pyworkflow.viewer import DESKTOP_TKINTER

    project, prot, _ = run
    prot = reload_protocol(project, prot)
    assert TiltxcorrPrealignmentViewer in pw.Config.getDomain().findViewers(prot, DESKTOP_TKINTER)

    Plotter.setBackend("TkAgg")  # what Scipion's project window does
    seen: dict = {}
    master = pwgui.Window("main")
    viewer = TiltxcorrPrealignmentViewer(project=project, protocol=prot)
    # TILTXCORR_UPDATE_DOCS=1 refreshes the README's copy, as for the form screenshot
    shot = (Path(__file__).resolve().parents[2] / "docs" / "viewer.png"
            if os.environ.get("TILTXCORR_UPDATE_DOCS") else tmp_path / "viewer.png")

    def inspect() -> None:
        try:
            form = viewer.formWindow
            form.root.geometry("+0+0")
            form.root.update()
            seen["choice"] = form.widgetDict["tiltSeriesChoice"].var.tkVar.get()
            seen["labels"] = {name: widget.label.cget("text")
                              for name, widget in form.widgetDict.items()
                              if hasattr(widget, "label")}
            viewer._visualizeParam("showAlignmentPlot")  # what the eye button does
            form.root.update()
            seen["figures"] = [len(plt.figure(n).axes) for n in plt.get_fignums()]
            for number in plt.get_fignums():  # beside the form, for the screenshot
                plt.figure(number).canvas.manager.window.wm_geometry(
                    f"+{form.root.winfo_width() + 10}+0")
            form.root.update()
            xwd = subprocess.run(["xwd", "-root", "-silent"], capture_output=True, check=True,
                                 timeout=30)
            subprocess.run(["convert", "xwd:-", "-crop", "1420x700+0+0", "+repage", "-strip",
                            f"png:{shot}"], input=xwd.stdout, check=True, timeout=30)
        except BaseException as error:  # Tk would only print it
            seen["error"] = error
        finally:
            master.root.quit()

    master.root.after(1000, inspect)
    master.root.after(60_000, lambda: (seen.setdefault("timed_out", True), master.root.quit()))
    try:
        viewer.visualize(prot, windows=master)
    finally:
        plt.close("all")
        for widget in (getattr(viewer.formWindow, "root", None), master.root):
            try:
                widget.destroy()
            except Exception:  # already gone
                pass
        Plotter.setBackend("Agg")
    assert not seen.get("timed_out"), seen
    if "error" in seen:
        raise seen["error"]
    assert seen["choice"] == "TS_01"
    assert seen["labels"]["showAlignmentPlot"] == "Show shifts and correlation per view"
    assert seen["figures"] == [6]  # one plot window: shifts, correlation, twin; the preview
    image = matplotlib.image.imread(str(shot))
    assert image.shape[:2] == (700, 1420) and image[..., :3].std() > 0.05
