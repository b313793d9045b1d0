"""The engine imports without Scipion; Scipion still finds the plugin and gets the sqlite fix.

Each check runs in a fresh interpreter, since this test session has imported
pyworkflow already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCIPION_MODULES = ("pyworkflow", "pwem", "tomo", "matplotlib")


def _python(code: str) -> dict:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_engine_imports_without_scipion_or_matplotlib():
    loaded = _python(
        "import json, sys\n"
        "import tiltxcorr_scipion.alignment as engine\n"
        "from tiltxcorr_scipion.alignment import tiltxcorr, align_tilt_series\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(SCIPION_MODULES)!r})))")
    assert loaded == []


def test_engine_runs_without_scipion():
    result = _python(
        "import json, sys, torch\n"
        "from tiltxcorr_scipion.alignment import tiltxcorr\n"
        "from tiltxcorr_scipion.simulate import simulate_tilt_series\n"
        "sim = simulate_tilt_series(shape=(128, 128), n_views=21, max_shift=4.0, thickness=5.0, seed=1)\n"
        "shifts = tiltxcorr(sim.images, sim.tilt_angles, sim.tilt_axis_angle)\n"
        "error = float((shifts - sim.shifts).abs().max())\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(SCIPION_MODULES)!r})\n"
        "print(json.dumps({'error': error, 'loaded': loaded}))")
    assert result["loaded"] == []
    assert result["error"] < 1.0  # a sanity check: accuracy is tested in tests/engine


def test_scipion_discovery_finds_the_plugin_and_applies_the_sqlite_fix():
    # A Scipion process (the environment conftest.py set up): plugin discovery alone
    # must register the plugin and install the fix, before any protocol is imported.
    result = _python(
        "import json, sys\n"
        "import pyworkflow as pw\n"
        "from pyworkflow.mapper import sqlite_db\n"
        "plugins = pw.Config.getDomain().getPlugins()\n"
        "plugin = plugins.get('tiltxcorr_scipion')\n"
        "print(json.dumps({\n"
        "    'found': plugin is not None,\n"
        "    'name': plugin._pluginInstance.getName() if plugin else None,\n"
        "    'templates': len(plugin._pluginInstance.getTemplates()) if plugin else 0,\n"
        "    'fixed': sqlite_db.sqlite.Connection.__name__,\n"
        "    'close': sqlite_db.SqliteDb.close.__name__,\n"
        "}))")
    assert result["found"] and result["name"] == "tiltxcorr_scipion"
    assert result["templates"] == 2  # import -> coarse alignment; ... -> tomogram
    assert result["fixed"] == "CursorClosingConnection"
    assert result["close"] == "_close_keeping_others_cached"
