"""What the plugin's viewers share: a form that picks one tilt series of the output."""

from __future__ import annotations

import pyworkflow.protocol.params as params
import pyworkflow.viewer as pwviewer

from .. import constants as cts

NO_OUTPUT = "(no aligned tilt series yet)"


class TiltSeriesResultsViewer(pwviewer.ProtocolViewer):
    """Base of the plugin's viewers: the output ``TiltSeries`` and a tilt-series choice.

    Targets nothing itself; subclasses set ``_targets`` and ``_label``, call
    `_defineTiltSeriesChoice` in their ``_defineParams`` and read the choice
    with `_selectedTsId`.
    """

    _environments = [pwviewer.DESKTOP_TKINTER]
    _targets = []

    def _outputSet(self):
        return getattr(self.protocol, cts.OUTPUT_TILT_SERIES, None)

    def _tsIds(self) -> list[str]:
        output = self._outputSet()
        if output is None:
            return []
        return sorted(str(ts.getTsId()) for ts in output.iterItems())

    def _defineTiltSeriesChoice(self, form, help: str) -> None:
        """The "Visualization" section and its tilt-series combo (the output's, sorted)."""
        self._choices = self._tsIds() or [NO_OUTPUT]
        form.addSection(label="Visualization")
        form.addParam("tiltSeriesChoice", params.EnumParam, choices=self._choices, default=0,
                      display=params.EnumParam.DISPLAY_COMBO, label="Tilt series", help=help)

    def _selectedTsId(self) -> str | None:
        choices = getattr(self, "_choices", None) or self._tsIds()
        index = self.tiltSeriesChoice.get() or 0
        if not choices or choices[0] == NO_OUTPUT or index >= len(choices):
            return None
        return choices[index]

    def _missing(self, what: str = "aligned tilt series") -> list:
        return [self.infoMessage(f"The protocol has no {what} to show yet.", "No output")]
