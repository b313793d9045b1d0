"""Scipion protocol: coarse tilt-series alignment by stretched cross-correlation.

Thin: the form, and per tilt series `pipeline.align_views` ->
`pipeline.write_outputs` -> registration. Streaming, steps, failures and
resume are `ProtTiltxcorrBase`'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import Transform
from pyworkflow import BETA
from pyworkflow.object import Float, String
from tomo.objects import SetOfTiltSeries

from .. import constants as cts
from ..faults import pause_point
from ..options import CoarseOptions, OptionError, check_aligned_binning, check_binned_size
from ..pipeline import (
    AlignmentOutcome,
    TiltSeriesViews,
    align_views,
    output_paths,
    select_device,
    write_outputs,
)
from .protocol_base import ProtTiltxcorrBase

DEFAULTS = CoarseOptions()

#: Form parameter -> `CoarseOptions` field, for the values that map one to one. The form's
#: binning 0 means "auto" and an empty or non-positive maximum shift means no limit.
FORM_OPTIONS = {
    "lowPassCutoff": "low_pass_cutoff",
    "lowPassSigma": "low_pass_sigma",
    "highPassSigma": "high_pass_sigma",
    "highPassRadius": "high_pass_radius",
    "taperFraction": "taper_fraction",
    "padFraction": "pad_fraction",
    "binning": "binning",
    "cumulativeCorrelation": "cumulative",
    "subpixelRefinement": "refine",
    "maxShift": "max_shift",
    "fixedPattern": "fixed_pattern",
    "pxTrim": "borders",
    "angleOffset": "angle_offset",
    "absoluteCosineStretch": "absolute_cosine_stretch",
    "adaptive": "adaptive",
}
#: Form parameters of IMOD's area to correlate (XMinAndMax, YMinAndMax), by option.
AREA_PARAMS = {"x_min_max": ("xmin", "xmax"), "y_min_max": ("ymin", "ymax")}
#: Choices of the form's fixed-pattern list, in order (EnumParam stores the index).
FIXED_PATTERN_LABELS = ["auto: detect and remove", "on: always remove", "off: leave alone"]
FIXED_PATTERN_VALUES = ["auto", "on", "off"]


def coarse_options_from_form(values: Mapping) -> CoarseOptions:
    """`CoarseOptions` from form values by parameter name (missing ones: the defaults).

    Raises `OptionError` (its `option` is the engine's field name) for a bad value.
    """
    kwargs = {}
    for param, option in FORM_OPTIONS.items():
        value = values.get(param)
        if param == "maxShift":
            kwargs[option] = float(value) if value is not None and float(value) > 0 else None
        elif value is None:
            continue
        elif param == "binning":
            kwargs[option] = "auto" if int(value) == 0 else int(value)
        elif param == "fixedPattern":
            kwargs[option] = FIXED_PATTERN_VALUES[int(value)]
        elif param == "pxTrim":
            numbers = str(value).replace(",", " ").split()
            try:
                kwargs[option] = tuple(int(float(n)) for n in numbers)
            except ValueError:
                raise OptionError(option, f"must be two pixel counts (X Y), got {value!r}") from None
        elif isinstance(getattr(DEFAULTS, option), bool):
            kwargs[option] = bool(value)
        else:
            kwargs[option] = float(value)
    for option, (first_param, last_param) in AREA_PARAMS.items():
        first, last = values.get(first_param), values.get(last_param)
        if first is None and last is None:
            continue
        if first is None or last is None:
            raise OptionError(option, "give both the first and the last pixel, or neither")
        kwargs[option] = (int(first), int(last))
    return CoarseOptions(**kwargs)


class ProtTiltxcorrPrealignment(ProtTiltxcorrBase):
    """Coarse alignment of tilt series by cross-correlating consecutive views.

    Each view is stretched perpendicular to the tilt axis by the cosine ratio of
    its tilt to its lower-tilt neighbour's, filtered, tapered and cross-correlated
    with it (IMOD tiltxcorr's method), and the shifts are accumulated from the
    lowest-tilt view, which stays in place. The result is registered as a 2-D
    transform on every tilt image (IMOD's forward convention, shifts in pixels
    of the tilt series); the images themselves are not interpolated unless asked.

    Works on sets still being acquired (streaming): each tilt series is aligned
    as soon as all its views have arrived. Tilt series that cannot be aligned
    (unreadable stack, NaN pixels, too few enabled views...) go to the output
    FailedTiltSeries, the reason in the log, and do not stop the others.
    """

    _label = "tiltxcorr coarse prealignment"
    _devStatus = BETA
    _possibleOutputs = {
        cts.OUTPUT_TILT_SERIES: SetOfTiltSeries,
        cts.OUTPUT_FAILED_TILT_SERIES: SetOfTiltSeries,
        cts.OUTPUT_INTERPOLATED_TILT_SERIES: SetOfTiltSeries,
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unusableViews = String()  # JSON {tsId: {view: reason}}, for the summary

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        self._defineInputParams(form)
        group = form.addGroup("Correlation filter",
                              help="Filters applied to the cross-correlation, in cycles "
                                   "per pixel of the (binned) images: 0.5 is the finest "
                                   "detail the images can hold.")
        group.addParam("lowPassCutoff", params.FloatParam,
                       default=DEFAULTS.low_pass_cutoff,
                       validators=[params.GT(0), params.LE(0.5)],
                       label="Low-pass cutoff (1/px)",
                       help="Frequencies above this are removed before correlating (IMOD "
                            "-radius2). Lower it (e.g. 0.15) for noisy, low-dose data; "
                            "IMOD's default is 0.25.")
        group.addParam("lowPassSigma", params.FloatParam,
                       default=DEFAULTS.low_pass_sigma, validators=[params.GE(0)],
                       label="Low-pass fall-off (1/px)",
                       help="Width (sigma) of the Gaussian edge of the low-pass filter (IMOD "
                            "-sigma2): a soft edge avoids ringing. Default 0.05.")
        group.addParam("highPassSigma", params.FloatParam,
                       default=DEFAULTS.high_pass_sigma, validators=[params.GE(0)],
                       label="High-pass sigma (1/px)",
                       help="Suppresses the lowest frequencies (IMOD -sigma1): slow gradients "
                            "of ice thickness and illumination, which would otherwise pull the "
                            "correlation peak towards zero shift. Default 0.03; 0 disables it.")
        group.addParam("highPassRadius", params.FloatParam,
                       default=DEFAULTS.high_pass_radius, validators=[params.GE(0)],
                       label="High-pass radius (1/px)",
                       help="Frequencies below this radius are removed entirely before the "
                            "Gaussian high-pass rises (IMOD -radius1). Default 0.")

        form.addParam("cumulativeCorrelation", params.BooleanParam,
                      default=DEFAULTS.cumulative,
                      label="Cumulative correlation",
                      help="In the final pass, correlate each view with the equally weighted "
                           "sum of all already aligned lower-tilt views of its side (IMOD "
                           "-cumulative). By default the reference already sums several "
                           f"lower-tilt views with weights falling by "
                           f"{DEFAULTS.reference_memory:g} per view, which beats "
                           "noise without blurring thick specimens; equal weights average "
                           "noise further (very noisy, thin specimens) but blur thick ones.")
        form.addParam("binning", params.IntParam, default=0,
                      validators=[params.GE(0)],
                      label="Binning (0 = auto)",
                      help="Reduce the images by this factor before correlating. 0 = "
                           "automatic (as tiltxcorr: down to at most ~1180 pixels, at most "
                           "4x). Shifts are always reported in the tilt series' own pixels.")
        form.addParam("subpixelRefinement", params.BooleanParam,
                      default=DEFAULTS.refine,
                      label="Sub-pixel refinement",
                      help="Locate each correlation peak exactly: climb to the maximum of the "
                           "filtered correlation itself (Newton's method on its Fourier "
                           "series), to about 0.005 px on clean data. No: a parabola through "
                           "the grid maximum, faster but biased towards whole pixels.")

        form.addParam("fixedPattern", params.EnumParam, choices=FIXED_PATTERN_LABELS,
                      default=FIXED_PATTERN_VALUES.index(DEFAULTS.fixed_pattern),
                      display=params.EnumParam.DISPLAY_COMBO,
                      label="Fixed-pattern noise",
                      help="A pattern fixed in the camera frame (gain-reference residue) "
                           "correlates at zero shift in every pair and pulls the alignment "
                           "there. auto: detected (a pixel-sharp correlation spike at exactly "
                           "zero shift between different views) and removed; on: always "
                           "removed; off: left alone. IMOD's ExcludeCentralPeak answers the "
                           "same problem by ignoring the central peak.")
        form.addParam("disableUnusableViews", params.BooleanParam, default=True,
                      label="Disable blocked, dark or blank views?",
                      help="Views with no usable specimen (a grid bar or lamella edge in "
                           "the way, a dark or blank frame, no significant correlation "
                           "with their neighbours) are detected, aligned around (the next "
                           "view pairs with the last good one) and given a best estimate. "
                           "Yes: they are disabled in the output, with the reason stored on "
                           "the tilt image and listed in the summary, as AreTomo removes "
                           "dark views. No: they keep their best estimate, enabled and "
                           "flagged. The plots show them either way.")

        group = form.addGroup("Advanced", expertLevel=params.LEVEL_ADVANCED)
        group.addParam("adaptive", params.BooleanParam, default=DEFAULTS.adaptive,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Adapt to the data?",
                       help="Measure how significant each correlation peak is and adapt: "
                            "coarser first stage while peaks are weak, a low-pass where "
                            "neighbouring views stop agreeing (never above the cutoff above), "
                            "references averaged over more views, a wider search where the "
                            "first stage was unsure. No: exactly the filter and binning "
                            "given, as IMOD (views are still screened and flagged).")
        group.addParam("angleOffset", params.FloatParam, default=DEFAULTS.angle_offset,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Tilt angle offset (deg)",
                       help="Degrees added to every tilt angle for the stretch (IMOD "
                            "AngleOffset): for a specimen tilted at zero stage tilt, e.g. a "
                            "lamella's milling angle.")
        group.addParam("absoluteCosineStretch", params.BooleanParam,
                       default=DEFAULTS.absolute_cosine_stretch,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Absolute cosine stretch?",
                       help="IMOD AbsoluteCosineStretch: the final pass stretches every view "
                            "into the reference view's frame before summing references (this "
                            "engine's default). No: lower-tilt views summed unstretched, each "
                            "view stretched onto its neighbour only (IMOD's default for "
                            "cumulative correlation).")
        group.addParam("pxTrim", params.NumericListParam,
                       default=" ".join(str(b) for b in DEFAULTS.borders),
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Borders to trim (X Y, px)",
                       help="Pixels left out of the correlation on each side in X and Y (IMOD "
                            "BordersInXandY). 0 0: the whole view.")
        line = group.addLine("Area to correlate in X (px)", expertLevel=params.LEVEL_ADVANCED,
                             help="First and last column of the area to correlate, numbered "
                                  "from 0, as placed on the zero-tilt view (IMOD XMinAndMax); "
                                  "at other tilts it moves towards the axis by cos(tilt) to "
                                  "hold the same specimen (useful for lamellae). Empty: the "
                                  "whole width less the borders.")
        line.addParam("xmin", params.IntParam, allowsNull=True, label="first",
                      expertLevel=params.LEVEL_ADVANCED)
        line.addParam("xmax", params.IntParam, allowsNull=True, label="last",
                      expertLevel=params.LEVEL_ADVANCED)
        line = group.addLine("Area to correlate in Y (px)", expertLevel=params.LEVEL_ADVANCED,
                             help="First and last row of the area to correlate (IMOD "
                                  "YMinAndMax); see the X line.")
        line.addParam("ymin", params.IntParam, allowsNull=True, label="first",
                      expertLevel=params.LEVEL_ADVANCED)
        line.addParam("ymax", params.IntParam, allowsNull=True, label="last",
                      expertLevel=params.LEVEL_ADVANCED)
        group.addParam("taperFraction", params.FloatParam,
                       default=DEFAULTS.taper_fraction,
                       validators=[params.GE(0), params.LT(0.5)],
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Edge taper (fraction)",
                       help="Fraction of the image size over which the edges are smoothly "
                            "tapered to the mean, so the image borders do not correlate "
                            "(IMOD -taper, default 10%).")
        group.addParam("padFraction", params.FloatParam,
                       default=DEFAULTS.pad_fraction,
                       validators=[params.GE(0), params.LE(0.5)],
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Padding (fraction)",
                       help="Fraction of the image size added as padding on each side before "
                            "the FFT (IMOD -pad, default 5%).")
        group.addParam("maxShift", params.FloatParam, default=None, allowsNull=True,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Maximum shift (px)",
                       help="Largest shift between two consecutive views to look for, in "
                            "pixels of the tilt series. Empty = no limit. Useful when a strong "
                            "repetitive feature (a grid bar) gives false peaks.")

        form.addSection(label="Output")
        form.addParam("writeAlignedStacks", params.BooleanParam, default=False,
                      label="Also write aligned (interpolated) stacks?",
                      help="Besides registering the alignment (no interpolation), write an "
                           "aligned MRC stack per tilt series with the shifts applied, "
                           "registered as a second output (InterpolatedTiltSeries).")
        form.addParam("alignedBinning", params.IntParam, default=1,
                      validators=[params.GE(1)], condition="writeAlignedStacks",
                      label="Binning of the aligned stacks",
                      help="The aligned stacks are binned by this factor; their sampling rate "
                           "is the input's times this factor.")

        self._definePreviewParams(form)
        self._defineReliabilityParams(form)
        self._defineComputeParams(form)

    def _options(self) -> CoarseOptions:
        names = list(FORM_OPTIONS) + [p for pair in AREA_PARAMS.values() for p in pair]
        return coarse_options_from_form({name: self.getAttributeValue(name) for name in names})

    # ------------------------------------------------------------------ one tilt series
    def _processOneTiltSeries(self, views: TiltSeriesViews, inTs, items, started: float):
        tsId = views.ts_id
        device, deviceMessage = select_device(self._useGpu(), self._bookedGpus())
        self.info(f"Tilt series {tsId}: {deviceMessage}")
        outcome = align_views(views, self._options(), views.tilt_axis(self.tiltAxisAngle.get()),
                              device=device)
        self._logExcluded(outcome)
        self._reportVerdicts(outcome)
        if self.getAttributeValue("disableUnusableViews", True):
            outcome = outcome.exclude_unusable()
        writeAligned = bool(self.getAttributeValue("writeAlignedStacks", False))
        paths = output_paths(self._getExtraPath(), tsId, aligned=writeAligned,
                             preview=self._wantsPreview())
        fileSeconds = write_outputs(outcome, paths, aligned_binning=self._alignedBinning(),
                                    preview_thickness=self._previewThickness())
        preview = outcome.preview
        self._recordPreview(outcome.views, preview)
        pause_point("files written", tsId)
        if self._unreliableFailed(outcome, inTs, items):
            return
        registering = time.perf_counter()
        with self._lock:
            # The aligned stack first: TiltSeries is the "done" mark of a Continue. All of a
            # tilt series' outputs or none (a full disk undoes the first).
            steps = []
            if writeAligned and not self._hasTiltSeries(cts.OUTPUT_INTERPOLATED_TILT_SERIES,
                                                        tsId):
                steps.append((cts.OUTPUT_INTERPOLATED_TILT_SERIES,
                              lambda: self._registerInterpolated(outcome, inTs, items,
                                                                 paths["ali"])))
            steps.append((None, lambda: pause_point("interpolated registered", tsId)))
            steps.append((cts.OUTPUT_TILT_SERIES,
                          lambda: self._registerAligned(outcome, inTs, items, preview)))
            self._registerAtomically(tsId, steps, files=paths.values())
        registered = time.perf_counter()
        nEnabled = int(views.enabled.sum())
        corr = outcome.correlation[np.isfinite(outcome.correlation)]
        files = ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in fileSeconds.items())
        self.info(
            f"Tilt series {tsId}: aligned {nEnabled}/{views.n_views} views (binning "
            f"{outcome.binning}, axis {outcome.tilt_axis_angle:.2f} deg, median correlation "
            f"{np.median(corr) if corr.size else float('nan'):.3f}). Time: read "
            f"{outcome.timings['read']:.2f} s, alignment engine {outcome.timings['engine']:.2f} s, "
            f"extra files {sum(fileSeconds.values()):.2f} s ({files}), registration "
            f"{registered - registering:.2f} s, total {registered - started:.2f} s")

    def _reportVerdicts(self, outcome: AlignmentOutcome):
        """Log what the engine found; keep the unusable views for the summary."""
        tsId = outcome.views.ts_id
        for note in outcome.series_notes:
            self.info(f"Tilt series {tsId}: {note}")
        unusable = {}
        for i in np.flatnonzero(outcome.unusable):
            number = int(outcome.views.stack_positions[i])
            unusable[str(number)] = outcome.reasons[i]
            self.warning(f"Tilt series {tsId}: view {number} is unusable: {outcome.reasons[i]}")
        for i, note in enumerate(outcome.notes):
            if note:
                self.info(f"Tilt series {tsId}: view {outcome.views.stack_positions[i]}: {note}")
        if unusable:
            with self._lock:
                found = self._unusableViews()
                found[tsId] = unusable
                self.unusableViews.set(json.dumps(found))
                self._store(self.unusableViews)

    def _unusableViews(self) -> dict[str, dict[str, str]]:
        text = self.unusableViews.get()
        return json.loads(text) if text else {}

    def _alignedBinning(self) -> int:
        return int(self.getAttributeValue("alignedBinning", 1) or 1)

    def _registerAligned(self, outcome: AlignmentOutcome, inTs, items, preview=None):
        def editTs(outTs):
            outTs.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)
            outTs.setAlignment2D()
            setattr(outTs, cts.UNRELIABLE_ATTR, String(outcome.unreliable_reason or None))

        def editImage(i, outTi):
            outTi.setTransform(Transform(matrix=outcome.transforms[i].copy()))
            outTi.setEnabled(bool(outcome.views.enabled[i]))
            value = outcome.correlation[i]
            setattr(outTi, cts.CORRELATION_ATTR, Float(float(value) if np.isfinite(value) else None))
            residual = outcome.residual[i]
            setattr(outTi, cts.RESIDUAL_ATTR,
                    Float(float(residual) if np.isfinite(residual) else None))
            setattr(outTi, cts.UNUSABLE_ATTR,
                    String(outcome.reasons[i] if outcome.unusable[i] else None))
            setattr(outTi, cts.REPROJECTION_ATTR, self._reprojectionResidual(preview, i))

        outSet = self._appendTiltSeries(cts.OUTPUT_TILT_SERIES, "", inTs, items, editTs=editTs,
                                        editImage=editImage)
        outSet.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)

    def _registerInterpolated(self, outcome: AlignmentOutcome, inTs, items, path: str):
        samplingRate = outcome.views.sampling_rate * self._alignedBinning()

        def editTs(outTs):
            outTs.setSamplingRate(samplingRate)
            outTs.setInterpolated(True)
            outTs.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)

        def editImage(i, outTi):
            outTi.setEnabled(bool(outcome.views.enabled[i]))
            outTi.setLocation(items[i].getIndex(), path)
            outTi.setSamplingRate(samplingRate)
            outTi.setTransform(None)
            if items[i].hasOddEven():
                outTi.setOddEven([])

        self._appendTiltSeries(cts.OUTPUT_INTERPOLATED_TILT_SERIES, "interpolated", inTs, items,
                               editSet=lambda outSet: outSet.setSamplingRate(samplingRate),
                               editTs=editTs, editImage=editImage)

    # ------------------------------------------------------------------ info
    def _validate(self):
        """Everything checkable before a step runs: options, and binnings against view sizes."""
        errors = super()._validate()
        try:
            options = self._options()
        except OptionError as error:
            errors.append(error.describe(f"'{self._labelOf(error.option)}'"))
            return errors
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return errors
        for ts in inSet.iterItems():
            width, height, _ = ts.getDim() or (None, None, None)
            if not width or not height:
                continue  # sizes unknown until the stack is read: the step will check
            try:
                check_binned_size((height, width), options.binning)
                options.area((height, width))
                if self.getAttributeValue("writeAlignedStacks", False):
                    check_aligned_binning(self._alignedBinning(), (height, width))
            except OptionError as error:
                errors.append(f"Tilt series {ts.getTsId()}: "
                              f"{error.describe(repr(self._labelOf(error.option)))}")
                break
            except ValueError as error:
                errors.append(f"Tilt series {ts.getTsId()}: {error}")
                break
        return errors

    def _labelOf(self, option: str) -> str:
        """The form label of an engine option (the name users see in messages)."""
        if option in AREA_PARAMS:
            return f"Area to correlate in {option[0].upper()}"
        param = next((p for p, o in FORM_OPTIONS.items() if o == option), None)
        return self.getParam(param).getLabel() if param else option

    def _summary(self):
        summary = super()._summary()
        for tsId, views in sorted(self._unusableViews().items()):
            action = ("disabled" if self.getAttributeValue("disableUnusableViews", True)
                      else "flagged")
            summary.append(f"{tsId}: unusable views {action}: " + "; ".join(
                f"{view} ({reason})" for view, reason in sorted(views.items(),
                                                               key=lambda kv: int(kv[0]))))
        return summary

    def _methods(self):
        kw = vars(self._options())
        binning = "automatic binning" if kw["binning"] == "auto" else f"binning {kw['binning']}"
        axis = self.tiltAxisAngle.get()
        axisText = (f"a tilt axis angle of {axis:g} degrees" if axis is not None
                    else "the tilt axis angle recorded at acquisition")
        text = (
            "Tilt series were coarsely aligned by cross-correlation of consecutive views, "
            "each stretched perpendicular to the tilt axis by the ratio of the cosines of "
            "their tilt angles, as in IMOD's tiltxcorr [Kremer1996, Mastronarde2017], with "
            f"{axisText}, {binning}, a high-pass filter of sigma {kw['high_pass_sigma']:g} "
            f"and radius {kw['high_pass_radius']:g}, and a low-pass cutoff of "
            f"{kw['low_pass_cutoff']:g} with fall-off {kw['low_pass_sigma']:g} "
            "(cycles/pixel), edges tapered over "
            f"{100 * kw['taper_fraction']:g}% and padded by {100 * kw['pad_fraction']:g}% of "
            "the image size"
            + (", correlating each view with the cumulative sum of the aligned lower-tilt "
               "views" if kw["cumulative"] else "")
            + (", with sub-pixel peak refinement" if kw["refine"] else "")
            + (f", shifts limited to {kw['max_shift']:g} pixels" if kw["max_shift"] else "")
            + ". Each alignment was checked from the data alone: every view, aligned, was "
              "correlated again with its three nearest views in tilt on both sides and the "
              "links solved robustly; "
            + ("where IMOD's plain path left links disagreeing or asking for corrections, "
               "candidate paths (noise-adapted stages, coarser binning, fixed-pattern removal) "
               "were compared by the same measure and the best kept"
               if kw["adaptive"] else "IMOD's plain path alone was used")
            + ". The computation used tiltxcorr-scipion's PyTorch implementation in Scipion.")
        return [text]

    def _citations(self):
        return [cts.CITE_KREMER_1996, cts.CITE_MASTRONARDE_2017]
