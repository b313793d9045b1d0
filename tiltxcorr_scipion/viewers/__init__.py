"""Scipion viewers of the plugin (found by pyworkflow in ``<plugin>.viewers``)."""

from .viewer_prealignment import TiltxcorrPrealignmentViewer

__all__ = ["TiltxcorrPrealignmentViewer"]
