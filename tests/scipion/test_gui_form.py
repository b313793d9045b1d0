"""The protocol's form in pyworkflow's real Tk GUI, on a virtual X screen.

The test starts Xvfb (Debian's ``xvfb``, installed by ``make test``) on a free
display, opens `ProtTiltxcorrPrealignment`'s form in pyworkflow's
``FormWindow`` with a real imported SetOfTiltSeries as input, checks that the
main parameters are shown with their labels, presses the tilt-axis wizard
button and checks the field gets the acquisition's value, then takes a
screenshot (``xwd`` + ImageMagick ``convert``) of the form.

The screenshot goes to the test's temporary folder. To refresh the README's
copy, run with ``TILTXCORR_UPDATE_DOCS=1``: it is then written to
``docs/protocol_form.png``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipion_helpers import (
    create_project,
    import_tilt_series,
    new_prealignment,
    write_simulated_tilt_series,
)

REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "protocol_form.png"
ACQUISITION_AXIS = 72.5  # the import's tilt axis, the value the wizard must fetch
GUI_TIMEOUT_MS = 60_000

#: Parameters a user must find on the first tab, with a word their label must hold.
MAIN_PARAMS = {
    "inputSetOfTiltSeries": "tilt series",
    "tiltAxisAngle": "tilt axis",
    "lowPassCutoff": "low-pass",
    "lowPassSigma": "low-pass",
    "highPassSigma": "high-pass",
    "cumulativeCorrelation": "cumulative",
    "binning": "binning",
    "subpixelRefinement": "sub-pixel",
    "writeAlignedStacks": "aligned",
}



def _screenshot(display: str, geometry: tuple[int, int, int, int], path: Path) -> None:
    """Grab the screen with xwd and crop the `(x, y, w, h)` window into a PNG."""
    x, y, w, h = geometry
    path.parent.mkdir(parents=True, exist_ok=True)
    xwd = subprocess.run(["xwd", "-root", "-silent", "-display", display],
                         capture_output=True, check=True, timeout=30)
    subprocess.run(["convert", "xwd:-", "-crop", f"{w}x{h}+{x}+{y}", "+repage", "-strip",
                    f"png:{path}"], input=xwd.stdout, check=True, timeout=30)


def _open_form_and_run(prot, display: str, screenshot: Path) -> dict:
    """Open the protocol's FormWindow, inspect it, press the wizard, take a screenshot.

    Everything happens in one Tk callback scheduled before ``show()`` (which
    enters the Tk main loop); a watchdog leaves the loop after
    `GUI_TIMEOUT_MS` whatever happens. Returns what was seen.
    """
    import pyworkflow.gui as pwgui
    import pyworkflow.gui.project  # noqa: F401  (before gui.form: circular import otherwise)
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.utils import Message

    seen: dict = {}
    master = pwgui.Window("main")
    form = FormWindow("Protocol: tiltxcorr coarse prealignment", prot, lambda *a: None,
                      master, hostList=["localhost"])

    def inspect() -> None:
        try:
            form.root.geometry("+0+0")  # no window manager: keep it on screen
            form.root.update()
            seen["labels"] = {name: widget.label.cget("text")
                              for name, widget in form.widgetDict.items()
                              if hasattr(widget, "label")}
            axis_widget = form.widgetDict["tiltAxisAngle"]
            seen["axis_before"] = axis_widget.var.get()
            buttons = [b for b in (axis_widget.btnFrame.winfo_children()
                                   if axis_widget.btnFrame else [])
                       if b.cget("text") == Message.LABEL_BUTTON_WIZ]
            seen["wizard_buttons"] = len(buttons)
            if buttons:
                buttons[0].invoke()  # what a click does
                form.root.update()
            seen["axis_after"] = axis_widget.var.get()
            seen["axis_param_after"] = prot.tiltAxisAngle.get()
            form.root.update()
            seen["geometry"] = (form.root.winfo_rootx(), form.root.winfo_rooty(),
                                form.root.winfo_width(), form.root.winfo_height())
            _screenshot(display, seen["geometry"], screenshot)
        except BaseException as error:  # Tk would only print it
            seen["error"] = error
        finally:
            form.root.quit()

    def watchdog() -> None:
        seen["timed_out"] = True
        form.root.quit()

    form.root.after(500, inspect)
    form.root.after(GUI_TIMEOUT_MS, watchdog)
    try:
        form.show()
    finally:
        tk_root = master.root.master
        for widget in (form.root, master.root, tk_root):
            try:
                widget.destroy()
            except Exception:  # already gone
                pass
    return seen


def test_protocol_form_and_tilt_axis_wizard(x_display: str, tmp_path: Path) -> None:
    project = create_project("gui_form")
    data = tmp_path / "data"
    write_simulated_tilt_series(data, "TS_01", shape=(64, 64), n_views=7,
                                tilt_axis_angle=ACQUISITION_AXIS)
    imported = import_tilt_series(project, data, "{TS}.mrc", tilt_axis_angle=ACQUISITION_AXIS)
    prot = new_prealignment(project, imported)
    project.saveProtocol(prot)
    assert prot.tiltAxisAngle.get() is None, "the axis field must start empty"

    screenshot = DOCS_SCREENSHOT if os.environ.get("TILTXCORR_UPDATE_DOCS") else (
        tmp_path / "protocol_form.png")
    seen = _open_form_and_run(prot, x_display, screenshot)
    assert not seen.get("timed_out"), f"the form did not answer in {GUI_TIMEOUT_MS} ms: {seen}"
    if "error" in seen:
        raise seen["error"]

    definition = prot._definition
    for name, word in MAIN_PARAMS.items():
        assert name in seen["labels"], f"{name} not on the form; shown: {sorted(seen['labels'])}"
        label = seen["labels"][name]
        assert label == definition.getParam(name).label.get(), (name, label)
        assert word in label.lower(), f"{name}: label {label!r} lacks {word!r}"
        assert definition.getParam(name).help.get(), f"{name} has no help text"

    assert seen["axis_before"] in ("", None), seen["axis_before"]
    assert seen["wizard_buttons"] == 1, "no wizard button next to the tilt axis angle"
    assert float(seen["axis_after"]) == pytest.approx(ACQUISITION_AXIS)
    assert seen["axis_param_after"] == pytest.approx(ACQUISITION_AXIS)

    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == seen["geometry"][2:], (image.size, seen["geometry"])
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert image.size[0] >= 600 and image.size[1] >= 450, image.size  # the form's minimum size
    assert pixels.std() > 10, "the screenshot is blank"


def test_tilt_axis_wizard_without_input_explains() -> None:
    from tiltxcorr_scipion.wizards import tilt_axis_angle_from_input

    with pytest.raises(ValueError, match="choose the input set first"):
        tilt_axis_angle_from_input(None)
