"""Scipion viewers of the plugin (found by pyworkflow in ``<plugin>.viewers``)."""

from .viewer_fine import TiltxcorrFineAlignmentViewer
from .viewer_prealignment import TiltxcorrPrealignmentViewer

__all__ = ["TiltxcorrFineAlignmentViewer", "TiltxcorrPrealignmentViewer"]
