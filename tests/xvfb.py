"""A virtual X screen (Debian's Xvfb) for the tests that open Scipion's Tk GUI.

One screen serves the whole test session (fixture ``x_display`` in
conftest.py): pyworkflow keeps Tk state between windows, and if the X server
of an earlier test were gone, Xlib's I/O error handler would end the whole
pytest process at the next GUI test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def require_x_programs() -> None:
    """Fail (not skip) with the fix when Xvfb, xwd or ImageMagick's convert is missing."""
    missing = [name for name in ("Xvfb", "xwd", "convert") if shutil.which(name) is None]
    if not missing:
        version = subprocess.run(["convert", "-version"], capture_output=True, text=True)
        if "ImageMagick" not in version.stdout:
            missing.append("convert (ImageMagick; the one on PATH is not)")
    if missing:
        pytest.fail(
            f"this GUI test needs {', '.join(missing)}: Debian packages xvfb, x11-apps and "
            "imagemagick. Install them with `bash scripts/install-system-deps.sh` (run by "
            "`make test`) or `apt-get install xvfb x11-apps imagemagick`.", pytrace=False)


@contextmanager
def virtual_display(screen: str = "1600x1024x24") -> Iterator[str]:
    """Run Xvfb on a display it picks itself (``-displayfd``), with ``DISPLAY`` set.

    Yields the display name; Xvfb is stopped and ``DISPLAY`` restored afterwards.
    """
    require_x_programs()
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    saved = os.environ.get("DISPLAY")
    try:
        number = b""
        while not number.endswith(b"\n"):  # Xvfb writes the number once it accepts clients
            chunk = os.read(read_fd, 16)
            if not chunk:
                error = xvfb.stderr.read().decode(errors="replace") if xvfb.poll() is not None else ""
                pytest.fail(f"Xvfb did not start: {error[-2000:]}", pytrace=False)
            number += chunk
        os.environ["DISPLAY"] = f":{number.decode().strip()}"
        yield os.environ["DISPLAY"]
    finally:
        os.close(read_fd)
        if saved is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = saved
        xvfb.terminate()
        try:
            xvfb.wait(timeout=10)
        except subprocess.TimeoutExpired:
            xvfb.kill()
