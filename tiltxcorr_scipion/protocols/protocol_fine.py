"""Scipion protocol: fiducial-less fine alignment (patch tracking + geometry solve).

Thin, as the coarse protocol: the form, and per tilt series
`pipeline.align_views` with `FineOptions` -> `pipeline.write_outputs` ->
registration. Streaming, steps, failures and resume are `ProtTiltxcorrBase`'s.
Conventions (transforms, tilt angles, the model's frame) are in
``docs/fine-alignment.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import Transform
from pyworkflow import BETA
from pyworkflow.object import Float, Pointer, Set, String
from tomo.objects import LandmarkModel, SetOfLandmarkModels, SetOfTiltSeries

from .. import constants as cts
from ..faults import pause_point
from ..options import (
    AXIS_TARGET_DEG,
    LEVEL_BY,
    OFFSET_TARGET_DEG,
    FineOptions,
    OptionError,
    plus_minus,
)
from ..pipeline import (
    AlignmentOutcome,
    TiltSeriesViews,
    align_views,
    output_paths,
    select_device,
    write_outputs,
)
from .protocol_base import ProtTiltxcorrBase

DEFAULTS = FineOptions()

#: Choices of the form's tilt-axis solve, in order (EnumParam stores the index).
AXIS_CHOICES = ["fixed (the nominal angle)", "one angle for the series",
                "one angle per group of views", "one angle per view"]
AXIS_FIXED, AXIS_ONE, AXIS_GROUPS, AXIS_PER_VIEW = range(4)


def _pair(text, what: str, option: str) -> tuple[int, int] | None:
    """Two integers from a form's "X Y" text (one number stands for both), or None if empty."""
    numbers = str(text or "").replace(",", " ").split()
    if not numbers:
        return None
    try:
        values = [int(float(n)) for n in numbers]
    except ValueError:
        raise OptionError(option, f"must be {what}, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise OptionError(option, f"must be {what}, got {text!r}")
    return values[0], values[1]


def fine_options_from_form(values: Mapping) -> FineOptions:
    """`FineOptions` from the fine protocol's form values (missing ones: the defaults).

    Raises `OptionError` (its `option` is the engine's field name) for a bad value.
    """
    get = values.get
    kwargs: dict = {}
    size = _pair(get("patchSize"), "a patch size in pixels (X Y)", "size_of_patches")
    if size is not None:
        kwargs["size_of_patches"] = (size[1], size[0])  # form X Y -> engine (rows, cols)
    counts = _pair(get("numberOfPatches"), "two patch counts (X Y)", "number_of_patches")
    if counts is not None:
        kwargs["number_of_patches"] = (counts[1], counts[0])
    if get("patchOverlap") is not None:
        kwargs["overlap_of_patches"] = float(get("patchOverlap"))
    if get("trackingIterations") is not None:
        kwargs["iterations"] = int(get("trackingIterations"))
    if get("lengthAndOverlap") is not None:
        kwargs["length_and_overlap"] = _pair(get("lengthAndOverlap"),
                                             "a length and an overlap in views",
                                             "length_and_overlap")
    axis = get("axisOption")
    if axis is not None:
        kwargs["solve_axis"] = int(axis) != AXIS_FIXED
        kwargs["rotation_group_size"] = {AXIS_GROUPS: int(get("axisGroupSize") or 1),
                                         AXIS_PER_VIEW: 1}.get(int(axis))
    if get("solveMagnification"):
        kwargs["magnification_group_size"] = int(get("magnificationGroupSize") or 1)
    if get("solveTiltChanges"):
        kwargs["tilt_group_size"] = int(get("tiltGroupSize") or 1)
    if get("levelBy") is not None:
        kwargs["level_by"] = LEVEL_BY[int(get("levelBy"))]
    for param, option in (("levelSpecimen", "level_specimen"), ("robustFitting", "robust")):
        if get(param) is not None:
            kwargs[option] = bool(get(param))
    if get("residualCutoff") is not None:
        kwargs["robust_k"] = float(get("residualCutoff"))
    if get("wholeViewWeight") is not None:
        kwargs["whole_view_weight"] = float(get("wholeViewWeight"))
    return FineOptions(**kwargs)


def fine_result_line(tsId: str, result: dict) -> str:
    """One tilt series' geometry from the protocol's ``fineResults`` entry, for people.

    A tilt series whose axis or offset is less certain than the targets
    (``uncertain``, `options.uncertainty_warning`) is flagged first.
    """
    offset = result.get("offsetText", f"tilt angle offset {result['offset']:+.2f} deg")
    axis_error = result.get("axisError")
    axis = f"tilt axis {result['axis']:.2f}{plus_minus(_number(axis_error))} deg"
    flag = f"UNCERTAIN ({result['uncertain']}): " if result.get("uncertain") else ""
    return (f"{flag}{tsId}: {axis}, {offset}, mean residual "
            f"{result['residual']:.2f} px, {result['contours']} tracks "
            f"({result['rejected']} rejected)")


def _number(value) -> float:
    """A stored standard error (None when not estimated) as a float (NaN)."""
    return float("nan") if value is None else float(value)


def _stored(value: float) -> float | None:
    """A standard error for JSON and Scipion's Float (None when not estimated)."""
    return float(value) if math.isfinite(value) else None


#: Form parameters `fine_options_from_form` reads.
FORM_PARAMS = ("patchSize", "numberOfPatches", "patchOverlap", "trackingIterations",
               "lengthAndOverlap", "axisOption", "axisGroupSize", "solveMagnification",
               "magnificationGroupSize", "solveTiltChanges", "tiltGroupSize", "levelSpecimen",
               "levelBy", "robustFitting", "residualCutoff", "wholeViewWeight")


class ProtTiltxcorrFineAlignment(ProtTiltxcorrBase):
    """Fiducial-less fine alignment of tilt series: patch tracking and a geometry solve.

    A grid of patches is followed through the tilt series by stretched
    cross-correlation (IMOD tiltxcorr's patch tracking), and the tracks are
    fitted with the projection model of IMOD's tiltalign: the 3-D position of
    every patch, a shift per view, the tilt axis angle (one, or per group of
    views), optionally per-view rotations and magnifications, and the tilt
    angle offset that levels the specimen. Bad tracks are down-weighted
    (robust fitting). The input may carry a coarse alignment or not: then the
    coarse alignment runs first. Registered: the refined transforms (rotation
    and shift, IMOD's forward convention, the tilt axis turned onto Y as
    tiltalign's), the refined tilt angles and axis, and the tracks as landmark
    models with residuals and an IMOD model file.
    """

    _label = "tiltxcorr fiducial-less fine alignment"
    _devStatus = BETA
    _possibleOutputs = {
        cts.OUTPUT_TILT_SERIES: SetOfTiltSeries,
        cts.OUTPUT_LANDMARK_MODELS: SetOfLandmarkModels,
        cts.OUTPUT_LANDMARK_TILT_SERIES: SetOfTiltSeries,
        cts.OUTPUT_FAILED_TILT_SERIES: SetOfTiltSeries,
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fineResults = String()  # JSON {tsId: {axis, offset, residual, ...}}

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        self._defineInputParams(form)
        group = form.addGroup("Patch tracking",
                              help="IMOD tiltxcorr's patch tracking: a grid of patches "
                                   "followed from the lowest-tilt view outwards.")
        group.addParam("patchSize", params.NumericListParam, default="", allowsNull=True,
                       label="Patch size (X Y, px; empty = auto)",
                       help="Size of the patches in pixels of the tilt series (IMOD "
                            "SizeOfPatchesXandY). Empty: an eighth of the smaller side of the "
                            "views as tracked (binned to at most 640 px), at least 48 of those "
                            "pixels.")
        group.addParam("patchOverlap", params.FloatParam, default=DEFAULTS.overlap_of_patches,
                       validators=[params.GE(0), params.LT(1)],
                       label="Patch overlap (fraction)",
                       help="Minimum fractional overlap of neighbouring patches, which sets "
                            "their number (IMOD OverlapOfPatchesXandY).")
        group.addParam("numberOfPatches", params.NumericListParam, default="",
                       allowsNull=True, expertLevel=params.LEVEL_ADVANCED,
                       label="Number of patches (X Y; empty = from the overlap)",
                       help="Patches in X and Y instead of the overlap (IMOD "
                            "NumberOfPatchesXandY).")
        group.addParam("trackingIterations", params.IntParam, default=DEFAULTS.iterations,
                       validators=[params.GE(1)], label="Tracking iterations",
                       help="Correlations per patch and view, each one re-sampling the patch "
                            "where the previous put it (IMOD IterateCorrelations).")
        group.addParam("lengthAndOverlap", params.NumericListParam,
                       default=" ".join(str(v) for v in DEFAULTS.length_and_overlap),
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Contour length and overlap (views)",
                       help="Tracks longer than this many views are cut into pieces "
                            "overlapping by at least the second number (IMOD "
                            "LengthAndOverlap, imodchopconts).")

        group = form.addGroup("What to solve", help="IMOD tiltalign's model.")
        group.addParam("axisOption", params.EnumParam, choices=AXIS_CHOICES,
                       default=AXIS_ONE, display=params.EnumParam.DISPLAY_COMBO,
                       label="Tilt axis angle",
                       help="Fixed: keep the nominal angle. One angle: refine the tilt axis "
                            "angle for the series (IMOD RotOption 0/-1). Per group / per view: "
                            "also an in-plane rotation per group of views adjacent in tilt, "
                            "or per view (RotOption 3 / 1).")
        group.addParam("axisGroupSize", params.IntParam, default=5, validators=[params.GE(1)],
                       condition=f"axisOption == {AXIS_GROUPS}",
                       label="Views per rotation group")
        group.addParam("solveMagnification", params.BooleanParam, default=False,
                       label="Magnification per view?",
                       help="Solve a scale per group of views relative to the lowest-tilt "
                            "view's group (IMOD MagOption).")
        group.addParam("magnificationGroupSize", params.IntParam, default=1,
                       validators=[params.GE(1)], condition="solveMagnification",
                       label="Views per magnification group")
        group.addParam("solveTiltChanges", params.BooleanParam, default=False,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Tilt angle changes?",
                       help="Solve a change of tilt angle per group of views, the lowest-tilt "
                            "view's group fixed (IMOD TiltOption).")
        group.addParam("tiltGroupSize", params.IntParam, default=5, validators=[params.GE(1)],
                       expertLevel=params.LEVEL_ADVANCED, condition="solveTiltChanges",
                       label="Views per tilt group")
        group.addParam("levelSpecimen", params.BooleanParam, default=DEFAULTS.level_specimen,
                       label="Apply the tilt angle offset?",
                       help="The offset that levels the specimen (see 'Level the specimen by'; "
                            "tiltalign/etomo's AngleOffset) is always reported. Yes: it "
                            "is added to the registered tilt angles, so tomograms come out "
                            "level.")
        group.addParam("levelBy", params.EnumParam,
                       choices=["the slab's surfaces", "the plane of the points"],
                       default=LEVEL_BY.index(DEFAULTS.level_by),
                       display=params.EnumParam.DISPLAY_HLIST,
                       label="Level the specimen by",
                       help="The slab's surfaces: its top and bottom found in a back-projection of "
                            "the aligned series (IMOD's tomopitch step, automated); when no slab "
                            "stands out, the plane of the points, and the log says why. The plane "
                            "of the points: the plane through the solved 3-D points (tiltalign's "
                            "AngleOffset); in a thick specimen it tilts at random by a few tenths "
                            "of a degree.")
        group.addParam("robustFitting", params.BooleanParam, default=DEFAULTS.robust,
                       label="Robust fitting?",
                       help="Down-weight points and whole tracks with outlying residuals "
                            "(Tukey's biweight, as tiltalign's RobustFitting and "
                            "WeightWholeTracks).")
        group.addParam("residualCutoff", params.FloatParam, default=DEFAULTS.robust_k,
                       validators=[params.GT(0)], condition="robustFitting",
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Residual cutoff (robust units)",
                       help="Residuals beyond this many robust standard deviations get zero "
                            "weight (Tukey's constant; tiltalign's default 4.685). Smaller "
                            "values reject more.")
        group.addParam("wholeViewWeight", params.FloatParam, default=DEFAULTS.whole_view_weight,
                       validators=[params.Range(0.0, 1.0)], expertLevel=params.LEVEL_ADVANCED,
                       label="Whole-view weight of the shifts",
                       help="Where the patches are tracked at coarser pixels than the whole "
                            "views are correlated at (views over 640 pixels), the views are "
                            "correlated whole again after the solve, with the solved tilt axis "
                            "and tilt angles, and those shifts are averaged with the solve's "
                            "with this weight (the points are then re-fitted): each chain of "
                            "view pairs drifts at random, and on most simulated series their "
                            "average drifted less than either. 0: the solve's shifts alone.")
        form.addSection(label="Output")
        self._definePreviewParams(form)
        self._defineReliabilityParams(form)
        self._defineComputeParams(form)

    def _options(self) -> FineOptions:
        return fine_options_from_form({name: self.getAttributeValue(name)
                                       for name in FORM_PARAMS})

    # ------------------------------------------------------------------ one tilt series
    def _processOneTiltSeries(self, views: TiltSeriesViews, inTs, items, started: float):
        tsId = views.ts_id
        device, deviceMessage = select_device(self._useGpu(), self._bookedGpus())
        self.info(f"Tilt series {tsId}: {deviceMessage}")
        outcome = align_views(views, self._options(), views.tilt_axis(self.tiltAxisAngle.get()),
                              device=device,
                              progress=lambda stage: self.info(f"Tilt series {tsId}: {stage}"))
        self._logExcluded(outcome)
        paths = output_paths(self._getExtraPath(), tsId, fine=True,
                             preview=self._wantsPreview())
        fileSeconds = write_outputs(outcome, paths, preview_thickness=self._previewThickness())
        preview = outcome.preview
        self._recordPreview(outcome.views, preview)
        pause_point("files written", tsId)
        if self._unreliableFailed(outcome, inTs, items):
            return
        registering = time.perf_counter()
        fine = outcome.fine
        with self._lock:
            # The landmark model first: TiltSeries is the "done" mark of a Continue. All of a
            # tilt series' outputs or none (a full disk undoes the first ones).
            results = self._fineResults()

            def storeResults():
                results[tsId] = {"axis": outcome.tilt_axis_angle,
                                 "offset": fine.tilt_angle_offset,
                                 "offsetText": fine.offset_text(),
                                 "axisError": _stored(fine.tilt_axis_angle_error),
                                 "offsetError": _stored(fine.tilt_angle_offset_error),
                                 "uncertain": fine.uncertainty_warning(),
                                 "residual": fine.mean_residual, "contours": fine.n_contours,
                                 "rejected": fine.n_rejected_contours}
                self.fineResults.set(json.dumps(results))
                self._store(self.fineResults)

            steps = []
            if not self._hasLandmarkModel(tsId):
                steps.append((cts.OUTPUT_LANDMARK_MODELS,
                              lambda: self._registerLandmarkModel(outcome, inTs, items, paths)))
            steps.append((cts.OUTPUT_TILT_SERIES,
                          lambda: self._registerAligned(outcome, inTs, items, preview)))
            steps.append((None, storeResults))
            self._registerAtomically(tsId, steps, files=paths.values())
        registered = time.perf_counter()
        self.info(
            f"Tilt series {tsId}: aligned {int(views.enabled.sum())}/{views.n_views} views: "
            f"{fine.axis_text(outcome.tilt_axis_angle)}, {fine.offset_text()}, mean residual "
            f"{fine.mean_residual:.2f} px, {fine.n_contours} tracks ({fine.n_rejected_contours} rejected). Time: read "
            f"{outcome.timings['read']:.2f} s, alignment engine {outcome.timings['engine']:.2f} s, "
            f"extra files {sum(fileSeconds.values()):.2f} s, registration "
            f"{registered - registering:.2f} s, total {registered - started:.2f} s")
        if fine.shifts_text():
            self.info(f"Tilt series {tsId}: {fine.shifts_text()}")
        if fine.uncertainty_warning():
            self.warning(f"Tilt series {tsId}: UNCERTAIN: {fine.uncertainty_warning()}: check "
                         "its geometry before using it")

    def _registerAligned(self, outcome: AlignmentOutcome, inTs, items, preview=None):
        fine = outcome.fine

        def editTs(outTs):
            acquisition = outTs.getAcquisition()
            acquisition.setTiltAxisAngle(outcome.tilt_axis_angle)
            # the notes: standard errors of the refined geometry, and whether they exceed
            # the targets (pyworkflow stores extra attributes of set items as columns)
            acquisition.tiltAxisAngleError = Float(_stored(fine.tilt_axis_angle_error))
            acquisition.tiltAngleOffsetError = Float(_stored(fine.tilt_angle_offset_error))
            acquisition.tiltAngleOffset = Float(float(fine.tilt_angle_offset))
            acquisition.alignmentNote = String(
                f"fine alignment: {fine.axis_text(outcome.tilt_axis_angle)}, "
                f"{fine.offset_text()}"
                + (f"; UNCERTAIN: {fine.uncertainty_warning()}"
                   if fine.uncertainty_warning() else ""))
            outTs.setAlignment2D()

        def editImage(i, outTi):
            outTi.setTransform(Transform(matrix=outcome.transforms[i].copy()))
            outTi.setTiltAngle(float(fine.tilt_angles[i]))
            outTi.setEnabled(bool(outcome.views.enabled[i]))
            setattr(outTi, cts.REPROJECTION_ATTR, self._reprojectionResidual(preview, i))

        outSet = self._appendTiltSeries(cts.OUTPUT_TILT_SERIES, "", inTs, items, editTs=editTs,
                                        editImage=editImage)
        outSet.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)

    def _hasLandmarkModel(self, tsId: str) -> bool:
        models = getattr(self, cts.OUTPUT_LANDMARK_MODELS, None)
        if models is None:
            return False
        found = models.getLandmarkModelFromTsId(tsId) is not None
        models.close()
        return found

    def _registerLandmarkModel(self, outcome: AlignmentOutcome, inTs, items,
                               paths: dict[str, str]):
        """The tracks as a tomo LandmarkModel: its table and its IMOD model (caller holds the lock).

        The tracks were measured on the views as the input had them (its earlier
        alignment applied, if any): ``applyTSTransformation`` True ("on the
        transformed images", tomo's and imod's meaning), and the models' tilt
        series are LandmarkTiltSeries, a copy of exactly the input tilt series
        that have a model, earlier transforms included: imod's viewer and
        fiducial alignment apply those transforms and find the points in place,
        and nothing waits for a series that failed.
        """
        self._appendTiltSeries(cts.OUTPUT_LANDMARK_TILT_SERIES, "landmarks", inTs, items)
        fine, views = outcome.fine, outcome.views

        def newModels():
            models = self._createSetOfLandmarkModels(suffix="")
            models.setSetOfTiltSeries(Pointer(self, extended=cts.OUTPUT_LANDMARK_TILT_SERIES))
            models.setHasResidualInfo(True)
            models.setStreamState(Set.STREAM_OPEN)
            return models

        def add(models):
            model = LandmarkModel(tsId=views.ts_id, fileName=paths["landmarks"],
                                  modelName=paths["fid"],
                                  size=int(round(views.sampling_rate * fine.patch_size[0])),
                                  applyTSTransformation=True,
                                  hasResidualInfo=True)
            contours = np.isfinite(fine.tracks[..., 0]).any(axis=1)
            model.setCount(int(contours.sum()))
            models.append(model)

        self._appendToOutput(cts.OUTPUT_LANDMARK_MODELS, newModels, add)

    def _fineResults(self) -> dict:
        text = self.fineResults.get()
        return json.loads(text) if text else {}

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = super()._validate()
        try:
            self._options()
        except OptionError as error:
            errors.append(str(error))
        return errors

    def _summary(self):
        summary = super()._summary()
        results = self._fineResults()
        uncertain = sorted(tsId for tsId, result in results.items() if result.get("uncertain"))
        if uncertain:
            summary.append(f"Less certain than the targets (tilt axis {AXIS_TARGET_DEG:g} deg, "
                           f"offset {OFFSET_TARGET_DEG:g} deg, one standard error): "
                           f"{len(uncertain)} tilt series ({', '.join(uncertain)}); check "
                           "their geometry before using it.")
        for tsId, result in sorted(results.items()):
            summary.append(fine_result_line(tsId, result))
        return summary

    def _methods(self):
        return [
            "Tilt series were aligned without fiducials in tiltxcorr-scipion (PyTorch), "
            "following IMOD's patch-tracking route [Kremer1996, Mastronarde2017]: after a "
            "coarse cross-correlation alignment, a grid of patches was tracked through each "
            "tilt series by stretched cross-correlation, and the tracks were fitted with "
            "tiltalign's projection model, solving for the 3-D patch positions, per-view "
            "shifts, the tilt axis angle and the tilt angle offset"
            + (" with robust fitting" if self.getAttributeValue("robustFitting", True) else "")
            + "; the offset levels "
            + ("the plane of the solved points"
               if LEVEL_BY[int(self.getAttributeValue("levelBy") or 0)] == "points" else
               "the specimen slab's surfaces, found by maximum likelihood among the features "
               "of a filtered back-projection (the plane of the solved points where no slab "
               "stood out)")
            + "." + self._whole_view_method()
            + " The reported shifts were then chosen by a reprojection check (each view against "
            "the tomogram made without it): the fine alignment's, their average with the coarse "
            "alignment's, or the coarse alignment's, a later one only where its residuals were "
            "smaller view by view (Wilcoxon signed-rank test)." + self._uncertainty_method()]

    def _uncertainty_method(self) -> str:
        results = self._fineResults()
        text = (" One-standard-error estimates of the tilt axis angle and of the offset were "
                "taken from the data: for the axis, a jackknife of the robust solve over "
                "blocks of the tracked patches and a linearised bootstrap over the views, "
                "with the disagreement of the axes solved from the upper and the lower half of "
                "the points beyond their noise added as the model's misfit; for "
                "the offset, a linearised bootstrap over blocks of the "
                "back-projection's features (surfaces) or of the solved points (their plane).")
        if results:
            text += " Per tilt series: " + "; ".join(
                f"{tsId} tilt axis {r['axis']:.2f}{plus_minus(_number(r.get('axisError')))} deg, "
                f"offset {r['offset']:+.2f}{plus_minus(_number(r.get('offsetError')))} deg"
                + (" (less certain than the 0.1/0.3 deg targets)" if r.get("uncertain") else "")
                for tsId, r in sorted(results.items())) + "."
        return text

    def _whole_view_method(self) -> str:
        weight = float(self.getAttributeValue("wholeViewWeight", 0.0) or 0.0)
        if weight <= 0:
            return ""
        return (" Where the patches were tracked at coarser pixels than whole views are "
                "correlated at, the reported shifts average the solve's (weight "
                f"{1 - weight:g}) with those of a second whole-view cross-correlation run with "
                f"the solved geometry (weight {weight:g}).")

    def _citations(self):
        return [cts.CITE_KREMER_1996, cts.CITE_MASTRONARDE_2017]
