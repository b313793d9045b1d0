"""The shipped workflow template, used the way ``scipion template`` uses it.

``scipion template <id> alias=value ...`` (scipion-app's kickoff) finds the
template among the plugins' templates, replaces ``%(ENV)s`` variables, parses
the ``~title|default|type|alias~`` placeholders, assigns the values given on
the command line, writes the resolved workflow JSON, creates the project from
it with pyworkflow's ``create.py`` script and runs the protocols. This test
does the same steps with the same pyworkflow calls (the kickoff module itself
belongs to scipion-app, not installed here), on two simulated tilt series, and
checks the registered alignment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipion_helpers import (
    launch_and_wait,
    read_log,
    read_tilt_series_set,
    shift_errors_px,
    write_simulated_tilt_series,
)

TEMPLATE_ID = "tiltxcorr_scipion-import_tiltxcorr"
TOMOGRAM_TEMPLATE_ID = "tiltxcorr_scipion-import_tiltxcorr_tomogram"
N_VIEWS = 21
SHAPE = (128, 128)
TILT_AXIS = -12.5  # not the template's default (85): it must come from the filled field
PIXEL_SIZE = 2.17
TOLERANCE_PX = 1.0
RUN_TIMEOUT_S = 150.0


def _plugin_templates() -> list:
    """The templates Scipion lists for this plugin (``Plugin.getTemplates()``)."""
    import pyworkflow as pw

    plugin = pw.Config.getDomain().getPlugins()["tiltxcorr_scipion"]
    return plugin._pluginInstance.getTemplates()


def test_plugin_lists_the_templates() -> None:
    templates = {t.getObjId(): t for t in _plugin_templates()}
    for template_id in (TEMPLATE_ID, TOMOGRAM_TEMPLATE_ID):
        assert template_id in templates, f"Plugin.getTemplates() lists {sorted(templates)}"
        description = templates[template_id].description
        assert "tiltxcorr" in description and "Import" in description, description
    assert "tomogram" in templates[TOMOGRAM_TEMPLATE_ID].description


def _resolve_template(values: dict[str, str], template_id: str = TEMPLATE_ID):
    """Find, parse and fill the template as kickoff does; return (template, json path)."""
    from pyworkflow.template import TemplateList

    found = TemplateList()
    found.addPluginTemplates(template_id)
    assert [t.getObjId() for t in found.templates] == [template_id]
    template = found.templates[0]
    template.replaceEnvVariables()
    template.parseContent()
    aliases = {p.getAlias() for p in template.getParams().values()}
    assert aliases == set(values), (
        f"template placeholders {sorted(aliases)} differ from the fields this test fills "
        f"{sorted(values)}")
    assigned = sum(template.setParamValue(alias, value) for alias, value in values.items())
    assert assigned == len(template.getParams()), "kickoff would open its form: fields unset"
    return template, Path(template.createTemplateFile())


def _project_from_template(values: dict[str, str], tmp_path: Path,
                           template_id: str = TEMPLATE_ID):
    """Resolve the template and create its project as kickoff does; chdir into it.

    Returns (project, the previous working directory).
    """
    import pyworkflow as pw
    from pyworkflow.project import Manager

    template, workflow = _resolve_template(values, template_id)
    try:
        protocols = json.loads(workflow.read_text())  # valid JSON, every field replaced
    finally:
        workflow_text = workflow.read_text()
        workflow.unlink()
    assert "~" not in workflow_text
    by_class = {p["object.className"]: p for p in protocols}
    assert by_class["ProtImportTs"]["filesPath"] == values["folder"]
    assert by_class["ProtImportTs"]["tiltAxisAngle"] == float(values["axis"])

    # Create the project from the workflow as kickoff does: pyworkflow's
    # create.py in its own process (a fresh plugin discovery resolves the
    # class names). Then run the chain in workflow order, as a user pressing
    # Execute would: kickoff's default, schedule.py, reaches the same
    # launchProtocol calls after sleeping 30 s per workflow level and polling
    # every 15-20 s, which would triple this test's time.
    (tmp_path / "workflow.json").write_text(workflow_text)
    name = f"template_{uuid.uuid4().hex[:8]}"
    create = Path(pw.__file__).parent / "project" / "scripts" / "create.py"
    done = subprocess.run([sys.executable, str(create), name, str(tmp_path / "workflow.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"create.py failed:\n{done.stdout}\n{done.stderr}"
    cwd = os.getcwd()
    project = Manager().loadProject(name)
    os.chdir(project.getPath())
    return project, cwd


def test_template_workflow_aligns_simulated_data(tmp_path: Path) -> None:
    data = tmp_path / "acquisition"
    sims = {
        ts_id: write_simulated_tilt_series(
            data, ts_id, ext=".st", pixel_size=PIXEL_SIZE, shape=SHAPE, n_views=N_VIEWS,
            tilt_axis_angle=TILT_AXIS, max_shift=8.0, thickness=10.0, noise=0.3, seed=seed)
        for seed, ts_id in enumerate(("grid1_ts03", "grid1_ts07"), start=40)
    }
    values = {
        "folder": str(data), "pattern": "{TS}.st", "voltage": "300", "cs": "2.7",
        "sampling": str(PIXEL_SIZE), "axis": str(TILT_AXIS), "dose": "2.5",
        "lowpass": "0.25", "binning": "1", "threads": "3",
    }
    project, cwd = _project_from_template(values, tmp_path)
    try:
        runs = sorted(project.getRuns(), key=lambda p: p.getObjId())
        classes = [p.getClassName() for p in runs]
        assert classes == ["ProtImportTs", "ProtTiltxcorrPrealignment"], classes
        imported = launch_and_wait(project, runs[0], timeout=RUN_TIMEOUT_S)
        aligned = launch_and_wait(project, runs[1], timeout=RUN_TIMEOUT_S)
        records = read_tilt_series_set(project, aligned, "TiltSeries")
    finally:
        os.chdir(cwd)

    # The filled fields reached the protocols, and the chain is wired.
    assert aligned.inputSetOfTiltSeries.getObjValue().getObjId() == imported.getObjId()
    assert aligned.binning.get() == 1
    assert aligned.lowPassCutoff.get() == pytest.approx(0.25)
    assert sorted(records) == sorted(sims), f"{sorted(records)}\n{read_log(aligned)}"
    for ts_id, record in records.items():
        assert record.has_alignment, f"{ts_id}: not flagged as aligned"
        assert record.sampling_rate == pytest.approx(PIXEL_SIZE), ts_id
        assert record.tilt_axis_angle == pytest.approx(TILT_AXIS), ts_id
        worst = float(np.abs(shift_errors_px(record, sims[ts_id])).max())
        assert worst < TOLERANCE_PX, (
            f"{ts_id}: largest shift error {worst:.2f} px (limit {TOLERANCE_PX} px)")


def test_tomogram_template_workflow_reconstructs(tmp_path: Path) -> None:
    """Import -> coarse alignment (preview) -> tomogram, on one small tilt series."""
    data = tmp_path / "acquisition"
    write_simulated_tilt_series(data, "grid2_ts01", pixel_size=PIXEL_SIZE, shape=SHAPE,
                                n_views=N_VIEWS, tilt_axis_angle=TILT_AXIS, max_shift=8.0,
                                thickness=10.0, noise=0.3, seed=45)
    values = {"folder": str(data), "pattern": "{TS}.mrc", "voltage": "300", "cs": "2.7",
              "sampling": str(PIXEL_SIZE), "axis": str(TILT_AXIS), "dose": "2.5",
              "threads": "2", "thickness": "32", "tomobinning": "2"}
    project, cwd = _project_from_template(values, tmp_path, TOMOGRAM_TEMPLATE_ID)
    try:
        runs = sorted(project.getRuns(), key=lambda p: p.getObjId())
        classes = [p.getClassName() for p in runs]
        assert classes == ["ProtImportTs", "ProtTiltxcorrPrealignment",
                           "ProtTiltxcorrReconstruct"], classes
        for run in runs:
            launch_and_wait(project, run, timeout=RUN_TIMEOUT_S)
        reconstruction = runs[2]
        assert reconstruction.inputSetOfTiltSeries.getObjValue().getObjId() == \
            runs[1].getObjId()
        assert reconstruction.binning.get() == 2 and reconstruction.thickness.get() == 32
        tomograms = reconstruction.Tomograms
        found = {t.getTsId(): (t.getSamplingRate(), t.getDim()) for t in tomograms.iterItems()}
        tomograms.close()
        assert runs[1].previewTomogram.get() is True
    finally:
        os.chdir(cwd)
    nx, ny = SHAPE[1] // 2, SHAPE[0] // 2
    assert found == {"grid2_ts01": (pytest.approx(2 * PIXEL_SIZE), (nx, ny, 16))}, found
