"""Scipion protocols of the tiltxcorr plugin (found by Scipion's plugin discovery)."""

from .protocol_fine import ProtTiltxcorrFineAlignment
from .protocol_prealignment import ProtTiltxcorrPrealignment

__all__ = ["ProtTiltxcorrFineAlignment", "ProtTiltxcorrPrealignment"]
