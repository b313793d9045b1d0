"""Isolate Scipion for the test session.

pyworkflow's Config reads its environment when it is first imported, so the
variables are set here, at conftest import, before any test module imports
pyworkflow. Everything Scipion writes goes to one temporary folder: nothing in
the home directory, no network notifications.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

_SCIPION_ROOT = Path(tempfile.mkdtemp(prefix="tiltxcorr-scipion-tests-")).resolve()

os.environ["SCIPION_DOMAIN"] = "pwem"
os.environ["SCIPION_HOME"] = str(_SCIPION_ROOT / "scipion-home")
os.environ["SCIPION_USER_DATA"] = str(_SCIPION_ROOT / "user-data")
os.environ["SCIPION_PYTHON"] = sys.executable
os.environ["SCIPION_NOTIFY"] = "False"
os.environ["SCIPION_TEST_NOSYNC"] = "1"
os.environ["MPLCONFIGDIR"] = str(_SCIPION_ROOT / "matplotlib")
os.environ.setdefault("MPLBACKEND", "Agg")
for _name in ("SCIPION_HOME", "SCIPION_USER_DATA", "MPLCONFIGDIR"):
    Path(os.environ[_name]).mkdir(parents=True, exist_ok=True)


def _write_hosts_conf() -> None:
    import pyworkflow as pw
    from pyworkflow.protocol import HostConfig

    hosts = Path(pw.Config.SCIPION_HOSTS)
    hosts.parent.mkdir(parents=True, exist_ok=True)
    if not hosts.exists():
        HostConfig.writeBasic(str(hosts))


_write_hosts_conf()


def pytest_report_header(config):
    return f"scipion test root: {_SCIPION_ROOT}"


@pytest.fixture(scope="session")
def _xvfb_server():
    """One Xvfb for every GUI test of the session; stopped at the end."""
    from xvfb import virtual_display

    with virtual_display() as display:
        yield display


@pytest.fixture
def x_display(_xvfb_server):
    """The session's virtual screen (``DISPLAY`` set), with pyworkflow's Tk state reset.

    pyworkflow caches Tk images in a module dict; they belong to the Tk
    interpreter that made them, which an earlier GUI test has destroyed.
    """
    from pyworkflow.gui import gui as pyworkflow_gui

    pyworkflow_gui.image_cache.clear()
    yield _xvfb_server
    pyworkflow_gui.image_cache.clear()
