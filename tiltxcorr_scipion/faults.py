"""Test support: hold a running protocol at a named point, so that a test can kill it there.

A kill can land anywhere in a real run; the tests need it to land at each
point that matters (after the alignment, while writing files, between
registrations) and check that Continue then completes the outputs. With
``TILTXCORR_PAUSE_AT=<point>:<tsId>:<marker file>`` in the environment, the
process that reaches `pause_point(point, tsId)` writes its PID to the marker
file and sleeps until it is killed (at most `MAX_PAUSE_S`). Without the
variable, `pause_point` returns at once.
"""

from __future__ import annotations

import os
import time

__all__ = ["PAUSE_ENV", "pause_point"]

PAUSE_ENV = "TILTXCORR_PAUSE_AT"
MAX_PAUSE_S = 300.0


def pause_point(point: str, ts_id: str) -> None:
    """Sleep here if the environment asks to pause at `point` for tilt series `ts_id`."""
    request = os.environ.get(PAUSE_ENV)
    if not request:
        return
    wanted_point, wanted_ts, marker = request.split(":", 2)
    if (wanted_point, wanted_ts) != (point, ts_id):
        return
    with open(marker, "w") as handle:
        handle.write(str(os.getpid()))
    deadline = time.monotonic() + MAX_PAUSE_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
