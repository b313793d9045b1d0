"""pytest plugin for `peer_check.py`: torch-tiltxcorr's tests run against another `tiltxcorr`.

Loaded with ``-p peer_swap`` before the test modules are imported, it sets
``torch_tiltxcorr.tiltxcorr`` to this project's function (``PEER_SWAP=ours``, the
default) or leaves the peer's own (``PEER_SWAP=peer``, the anchor). The tests then
``from torch_tiltxcorr import tiltxcorr`` as they always do: a plain import swap, their
code unmodified. ``PEER_SWAP_SRC`` may name the sdist's ``src`` folder, used when
torch-tiltxcorr is not installed.
"""

from __future__ import annotations

import os
import sys

source = os.environ.get("PEER_SWAP_SRC")
try:
    import torch_tiltxcorr
except ImportError:
    if not source:
        raise
    sys.path.insert(0, source)
    import torch_tiltxcorr

if os.environ.get("PEER_SWAP", "ours") == "ours":
    from tiltxcorr_scipion.alignment import tiltxcorr

    torch_tiltxcorr.tiltxcorr = tiltxcorr
