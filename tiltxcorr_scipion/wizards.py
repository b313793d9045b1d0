"""Wizards of the protocol form (found by Scipion in ``<plugin>.wizards``).

The tilt-axis wizard fills ``tiltAxisAngle`` of `ProtTiltxcorrPrealignment`
with the tilt axis angle recorded in the input set's acquisition. The value is
read by `tilt_axis_angle_from_input`, a plain function that tests and scripts
can call without a GUI; the wizard class only moves it into the form.
"""

from __future__ import annotations

import math

import pyworkflow.wizard as pwizard

from .protocols import ProtTiltxcorrPrealignment

#: Form parameter the wizard fills.
TILT_AXIS_PARAM = "tiltAxisAngle"


def _axis_of(item) -> float | None:
    """Tilt axis angle (degrees) of a set's or a tilt series' acquisition, or None if unset."""
    acquisition = item.getAcquisition() if hasattr(item, "getAcquisition") else None
    if acquisition is None:
        return None
    value = acquisition.getTiltAxisAngle()
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def tilt_axis_angle_from_input(tilt_series_set) -> float:
    """The tilt axis angle (degrees) recorded in a SetOfTiltSeries' acquisition.

    The convention is Scipion tomo's (and IMOD's RotationAngle): the angle from
    the image Y axis to the tilt axis, counter-clockwise positive. The set's
    own acquisition is used; when it has none, the first tilt series' is.

    Parameters
    ----------
    tilt_series_set
        A ``tomo.objects.SetOfTiltSeries`` (or None).

    Raises
    ------
    ValueError
        No input, or no tilt axis angle in its acquisition; the message says
        what to do.
    """
    if tilt_series_set is None:
        raise ValueError("No input tilt series selected: choose the input set first, "
                         "then use the wizard.")
    value = _axis_of(tilt_series_set)
    if value is None:
        first = tilt_series_set.getFirstItem() if tilt_series_set.getSize() else None
        value = _axis_of(first) if first is not None else None
    if value is None:
        raise ValueError(
            f"The input {tilt_series_set.getObjLabel() or tilt_series_set} records no tilt axis "
            "angle in its acquisition: type the angle (degrees from the Y axis, "
            "counter-clockwise positive) or re-import with it.")
    return value


class TiltxcorrTiltAxisWizard(pwizard.Wizard):
    """Fill the tilt axis angle from the input tilt series' acquisition."""

    _targets = [(ProtTiltxcorrPrealignment, [TILT_AXIS_PARAM])]

    def show(self, form, *params) -> None:
        """Set the form's tilt axis field, or explain in a dialog why it cannot."""
        protocol = form.protocol
        pointer = getattr(protocol, "inputSetOfTiltSeries", None)
        try:
            value = tilt_axis_angle_from_input(pointer.get() if pointer is not None else None)
        except ValueError as error:
            form.showError(str(error))
            return
        form.setVar(TILT_AXIS_PARAM, value)
