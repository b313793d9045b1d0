"""Scipion protocols of the tiltxcorr plugin (found by Scipion's plugin discovery)."""

from .protocol_fine import ProtTiltxcorrFineAlignment
from .protocol_prealignment import ProtTiltxcorrPrealignment
from .protocol_reconstruct import ProtTiltxcorrReconstruct

__all__ = ["ProtTiltxcorrFineAlignment", "ProtTiltxcorrPrealignment", "ProtTiltxcorrReconstruct"]
