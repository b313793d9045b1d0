"""Scipion protocol: coarse tilt-series alignment by stretched cross-correlation.

The protocol only declares parameters, inserts steps and registers outputs;
reading stacks, turning form values into engine arguments and the transform
maths live in `tiltxcorr_scipion.convert` (unit-tested without Scipion).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from datetime import datetime

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import Transform
from pwem.protocols import EMProtocol
from pyworkflow import BETA
from pyworkflow.object import Float, Set, String
from pyworkflow.protocol import STEPS_PARALLEL, ProtStreamingBase
from pyworkflow.protocol.executor import StepExecutor, ThreadStepExecutor
from tomo.objects import SetOfTiltSeries, TiltImage, TiltSeries
from tomo.protocols import ProtTomoBase

from tiltxcorr_scipion import constants as cts
from tiltxcorr_scipion.convert.engine_args import (
    FORM_DEFAULTS,
    MIN_ENABLED_VIEWS,
    AlignmentOutcome,
    TiltSeriesFailure,
    ViewTable,
    align_view_table,
    engine_kwargs_from_form,
    resolve_tilt_axis,
    select_device,
    torch_threads_per_step,
    view_table_from_items,
)

logger = logging.getLogger(__name__)

FEW_VIEWS_WARNING = 10


class ProtTiltxcorrPrealignment(EMProtocol, ProtTomoBase, ProtStreamingBase):
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
    stepsExecutionMode = STEPS_PARALLEL

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.failureReasons = String()  # JSON {tsId: reason}, persisted for the summary
        # Tilt series whose steps are inserted but not done, when the input was closed at
        # launch (None in streaming mode, where a closing step follows the generator).
        self._pendingTsIds: set[str] | None = None

    @classmethod
    def worksInStreaming(cls):
        return True

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputSetOfTiltSeries", params.PointerParam,
                      pointerClass="SetOfTiltSeries", important=True,
                      label="Tilt series",
                      help="The tilt series to align. A set still being acquired (streaming) "
                           "is followed: each tilt series is aligned once all its views have "
                           "arrived. Excluded (disabled) views are kept in the output, "
                           "unaligned. If the tilt series already carry an alignment, it is "
                           "applied to the images first and the new shifts are added to it.")
        form.addParam("tiltAxisAngle", params.FloatParam, default=None, allowsNull=True,
                      label="Tilt axis angle (deg; empty = from input)",
                      help="Angle of the tilt axis in the raw images, from the Y axis, "
                           "counter-clockwise positive (IMOD's RotationAngle). Leave empty "
                           "to use the value stored in each tilt series' acquisition "
                           "(from the import or the mdoc). The wizard fills in the input's "
                           "value.")

        group = form.addGroup("Correlation filter",
                              help="Filters applied to the cross-correlation, in cycles "
                                   "per pixel of the (binned) images: 0.5 is the finest "
                                   "detail the images can hold.")
        group.addParam("lowPassCutoff", params.FloatParam,
                       default=FORM_DEFAULTS["lowPassCutoff"],
                       validators=[params.GT(0), params.LE(0.5)],
                       label="Low-pass cutoff (1/px)",
                       help="Frequencies above this are removed before correlating (IMOD "
                            "-radius2). Lower it (e.g. 0.15) for noisy, low-dose data; "
                            "IMOD's default is 0.25.")
        group.addParam("lowPassSigma", params.FloatParam,
                       default=FORM_DEFAULTS["lowPassSigma"], validators=[params.GE(0)],
                       label="Low-pass fall-off (1/px)",
                       help="Width (sigma) of the Gaussian edge of the low-pass filter (IMOD "
                            "-sigma2): a soft edge avoids ringing. Default 0.05.")
        group.addParam("highPassSigma", params.FloatParam,
                       default=FORM_DEFAULTS["highPassSigma"], validators=[params.GE(0)],
                       label="High-pass sigma (1/px)",
                       help="Suppresses the lowest frequencies (IMOD -sigma1): slow gradients "
                            "of ice thickness and illumination, which would otherwise pull the "
                            "correlation peak towards zero shift. Default 0.03; 0 disables it.")
        group.addParam("highPassRadius", params.FloatParam,
                       default=FORM_DEFAULTS["highPassRadius"], validators=[params.GE(0)],
                       label="High-pass radius (1/px)",
                       help="Frequencies below this radius are removed entirely before the "
                            "Gaussian high-pass rises (IMOD -radius1). Default 0.")

        form.addParam("cumulativeCorrelation", params.BooleanParam,
                      default=FORM_DEFAULTS["cumulativeCorrelation"],
                      label="Cumulative correlation",
                      help="In the final pass, correlate each view with the equally weighted "
                           "sum of all already aligned lower-tilt views of its side (IMOD "
                           "-cumulative). By default the reference already sums several "
                           "lower-tilt views with weights falling by 0.75 per view, which beats "
                           "noise without blurring thick specimens; equal weights average "
                           "noise further (very noisy, thin specimens) but blur thick ones.")
        form.addParam("binning", params.IntParam, default=FORM_DEFAULTS["binning"],
                      validators=[params.GE(0)],
                      label="Binning (0 = auto)",
                      help="Reduce the images by this factor before correlating. 0 = "
                           "automatic (as tiltxcorr: down to at most ~1180 pixels, at most "
                           "4x). Shifts are always reported in the tilt series' own pixels.")
        form.addParam("subpixelRefinement", params.BooleanParam,
                      default=FORM_DEFAULTS["subpixelRefinement"],
                      label="Sub-pixel refinement",
                      help="Locate each correlation peak exactly: climb to the maximum of the "
                           "filtered correlation itself (Newton's method on its Fourier "
                           "series), to about 0.005 px on clean data. No: a parabola through "
                           "the grid maximum, faster but biased towards whole pixels.")

        group = form.addGroup("Advanced", expertLevel=params.LEVEL_ADVANCED)
        group.addParam("taperFraction", params.FloatParam,
                       default=FORM_DEFAULTS["taperFraction"],
                       validators=[params.GE(0), params.LT(0.5)],
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Edge taper (fraction)",
                       help="Fraction of the image size over which the edges are smoothly "
                            "tapered to the mean, so the image borders do not correlate "
                            "(IMOD -taper, default 10%).")
        group.addParam("padFraction", params.FloatParam,
                       default=FORM_DEFAULTS["padFraction"],
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

        form.addHidden(params.USE_GPU, params.BooleanParam, default=False,
                       label="Use GPU?",
                       help="Align on a CUDA GPU (each tilt series step books one GPU from "
                            "the list). Falls back to the CPU, with a log line, when CUDA is not "
                            "available.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0",
                       label="GPU IDs",
                       help="Yes: align on CUDA GPUs, each tilt series step booking one GPU "
                            "from this list, e.g. '0 1': N GPUs align N tilt series at a time. "
                            "If torch sees no CUDA device the steps say so in the log and run "
                            "on the CPU. No: CPU only; the threads below set how many tilt "
                            "series are aligned at a time.")
        form.addParallelSection(threads=3, mpi=0)

    # ------------------------------------------------------------------ steps
    def setStepsExecutor(self, executor=None):
        """Use the plain executor when the input is closed and holds one tilt series to align.

        The thread executor notices a finished step only at its next 3-s poll; with a
        single tilt series there is nothing to run in parallel, so the step runs in the
        main thread and the protocol ends as soon as it is done. Any other case
        (several tilt series, streaming, queues) keeps Scipion's executor.
        """
        if type(executor) is ThreadStepExecutor:
            try:
                inSet = self.inputSetOfTiltSeries.get()
                inSet.loadAllProperties()
                if not inSet.isStreamOpen() and inSet.getSize() == 1:
                    executor = StepExecutor(executor.hostConfig, gpuList=executor.gpuList)
                inSet.close()
            except Exception as exc:  # keep Scipion's choice if the input cannot be read now
                logger.debug(f"keeping the thread executor: {exc}")
        super().setStepsExecutor(executor)

    def _insertAllSteps(self):
        # Steps carry this run's time stamp, so a "continue" never mistakes them for the
        # previous run's finished steps: which tilt series remain is decided from the
        # outputs instead (all those not in TiltSeries nor FailedTiltSeries).
        self._runStamp = datetime.now().isoformat(timespec="seconds")
        inSet = self.inputSetOfTiltSeries.get()
        inSet.loadAllProperties()  # the stream state as the producer wrote it last
        nThreads = max(1, self.numberOfThreads.get() or 1)
        self._processedTsIds = self._tsIdsInOutputs()
        if self._processedTsIds:
            self.info(f"Continuing: {len(self._processedTsIds)} tilt series already in the "
                      f"outputs are skipped: {sorted(self._processedTsIds)}")
        if inSet.isStreamOpen():
            # One executor thread runs the generator; the others align.
            workers = max(1, nThreads - 2)
            self._setTorchThreads(workers)
            if nThreads < 3:
                self.warning("The input is still open (streaming): with fewer than 3 threads "
                             "tilt series are aligned only after the input is closed.")
            ProtStreamingBase._insertAllSteps(self)
            return
        # Closed input: all steps now, no generator polling. The last alignment step to
        # finish closes the outputs (no separate closing step: the thread executor
        # would notice it only after another of its 3-s polls).
        tsIds = [tsId for tsId in self._inputTsIds(inSet) if tsId not in self._processedTsIds]
        workers = min(max(1, nThreads - 1), max(1, len(tsIds)))
        self._setTorchThreads(workers)
        self._pendingTsIds = set(tsIds)
        for tsId in tsIds:
            self._insertAlignStep(tsId)
        if not tsIds:
            self._insertFunctionStep(self.closeOutputSetsStep, self._runStamp, needsGPU=False)

    def stepsGeneratorStep(self):
        """Follow an open input: insert one alignment step per complete tilt series."""
        inSet = self.inputSetOfTiltSeries.get()
        queued = set(self._tsIdsInOutputs())
        lastSizes: dict[str, int] = {}
        stepIds: list[int] = []
        while True:
            with self._lock:
                inSet.loadAllProperties()
                closed = not inSet.isStreamOpen()
                sizes = {ts.getTsId(): ts.getSize() or 0 for ts in inSet.iterItems()}
                inSet.close()
            ready = [tsId for tsId, n in sizes.items()
                     if tsId not in queued and n > 0 and (closed or lastSizes.get(tsId) == n)]
            for tsId in ready:
                stepIds.append(self._insertAlignStep(tsId))
                queued.add(tsId)
                self.info(f"Tilt series {tsId}: {sizes[tsId]} views, alignment step queued")
            pending = [tsId for tsId in sizes if tsId not in queued]
            if closed and not pending:
                self.info("Input closed and every tilt series queued.")
                self._insertFunctionStep(self.closeOutputSetsStep, self._runStamp,
                                         prerequisites=stepIds, needsGPU=False)
                break
            lastSizes = sizes
            time.sleep(cts.STREAM_POLL_SECONDS)

    def _insertAlignStep(self, tsId: str) -> int:
        return self._insertFunctionStep(self.alignTiltSeriesStep, tsId, self._runStamp,
                                        prerequisites=[], needsGPU=self._useGpu())

    def alignTiltSeriesStep(self, tsId: str, runStamp: str | None = None):
        """Read, align and register one tilt series; failures go to FailedTiltSeries."""
        try:
            self._alignTiltSeries(tsId)
        finally:
            self._closeIfLast(tsId)

    def _closeIfLast(self, tsId: str):
        with self._lock:
            if self._pendingTsIds is None:
                return
            self._pendingTsIds.discard(tsId)
            last = not self._pendingTsIds
        if last:
            self.closeOutputSetsStep()

    def _alignTiltSeries(self, tsId: str):
        t0 = time.perf_counter()
        try:
            inTs, items = self._readInputTiltSeries(tsId)
        except Exception as exc:  # the input metadata itself is unreadable
            self._fail(tsId, None, None, f"cannot read its metadata: {exc}")
            return
        try:
            table = view_table_from_items(inTs, items)
            axis = resolve_tilt_axis(self.tiltAxisAngle.get(), table.acquisition_axis, tsId)
            device, deviceMsg = select_device(self._useGpu(), self._bookedGpus())
            self.info(f"Tilt series {tsId}: {deviceMsg}")
            outcome = align_view_table(table, axis, self._engineKwargs(), device=device)
        except TiltSeriesFailure as exc:
            self._fail(tsId, inTs, items, str(exc))
            return
        except Exception as exc:  # unexpected: keep the traceback in the log
            logger.error(traceback.format_exc())
            self._fail(tsId, inTs, items, f"tilt series {tsId}: unexpected error: {exc!r}")
            return
        t1 = time.perf_counter()
        self._registerAligned(inTs, items, outcome)
        t2 = time.perf_counter()
        extraTimes = self._writeExtraFiles(table, outcome, inTs, items)
        t3 = time.perf_counter()
        nEnabled = int(table.enabled.sum())
        corr = outcome.correlation[np.isfinite(outcome.correlation)]
        self.info(
            f"Tilt series {tsId}: aligned {nEnabled}/{table.n_views} views (binning "
            f"{outcome.binning}, axis {outcome.tilt_axis_angle:.2f} deg, median correlation "
            f"{np.median(corr) if corr.size else float('nan'):.3f}). Time: read "
            f"{outcome.timings['read']:.2f} s, alignment engine {outcome.timings['engine']:.2f} s, "
            f"registration {t2 - t1:.2f} s, extra files {t3 - t2:.2f} s{extraTimes}, "
            f"total {t3 - t0:.2f} s")

    def closeOutputSetsStep(self, runStamp: str | None = None):
        with self._lock:
            self._closeOutputSet()
        failed = self._failureReasons()
        aligned = getattr(self, cts.OUTPUT_TILT_SERIES, None)
        if failed:
            self.warning(f"{len(failed)} tilt series could not be aligned: "
                         + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        if aligned is None and failed:
            raise RuntimeError(f"No tilt series could be aligned ({len(failed)} failed); "
                               "see the FailedTiltSeries output and the log for the causes.")

    # ------------------------------------------------------------------ helpers
    def _useGpu(self) -> bool:
        return bool(self.getAttributeValue(params.USE_GPU, False))

    def _bookedGpus(self) -> list[int]:
        executor = getattr(self, "_stepsExecutor", None)
        if executor is None:
            return []
        try:
            return [int(g) for g in executor.getGpuList()]
        except Exception:  # no GPU booked for this thread
            return []

    def _setTorchThreads(self, parallelSteps: int):
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        nThreads = torch_threads_per_step(parallelSteps, cpus)
        torch.set_num_threads(nThreads)
        self.info(f"{parallelSteps} tilt series at a time x {nThreads} torch thread(s) each "
                  f"({cpus} CPUs available)")

    def _engineKwargs(self) -> dict:
        values = {name: self.getAttributeValue(name, default)
                  for name, default in FORM_DEFAULTS.items()}
        return engine_kwargs_from_form(values)

    @staticmethod
    def _inputTsIds(inSet) -> list[str]:
        return [ts.getTsId() for ts in inSet.iterItems(orderBy="id")]

    def _tsIdsInOutputs(self) -> set[str]:
        done = set()
        for name in (cts.OUTPUT_TILT_SERIES, cts.OUTPUT_FAILED_TILT_SERIES):
            outSet = getattr(self, name, None)
            if outSet is not None:
                with self._lock:
                    done.update(ts.getTsId() for ts in outSet.iterItems())
                    outSet.close()
        return done

    def _readInputTiltSeries(self, tsId: str):
        with self._lock:
            inSet = self.inputSetOfTiltSeries.get()
            ts = inSet.getTiltSeriesFromTsId(tsId)
            if ts is None:
                raise ValueError(f"tilt series {tsId} is not in the input set")
            items = [ti.clone() for ti in ts.iterItems(orderBy="id")]
            tsClone = ts.clone()
            inSet.close()
        return tsClone, items

    def _getOutputSet(self, name: str, suffix: str) -> SetOfTiltSeries:
        """The output set ``name``, created (open, related to the input) on first use."""
        outSet = getattr(self, name, None)
        if outSet is not None:
            outSet.enableAppend()
            return outSet
        outSet = self._createSetOfTiltSeries(suffix=suffix)
        outSet.copyInfo(self.inputSetOfTiltSeries.get())
        outSet.setStreamState(Set.STREAM_OPEN)
        self._defineOutputs(**{name: outSet})
        self._defineSourceRelation(self.inputSetOfTiltSeries, outSet)
        return outSet

    def _registerAligned(self, inTs: TiltSeries, items: list, outcome: AlignmentOutcome):
        with self._lock:
            outSet = self._getOutputSet(cts.OUTPUT_TILT_SERIES, "")
            outTs = TiltSeries()
            outTs.copyInfo(inTs)
            outTs.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)
            outSet.append(outTs)
            for i, ti in enumerate(items):
                outTi = TiltImage()
                outTi.copyInfo(ti, copyId=True)
                outTi.setLocation(ti.getLocation())
                outTi.setAcquisition(ti.getAcquisition())
                outTi.setEnabled(ti.isEnabled())
                outTi.setTransform(Transform(matrix=outcome.transforms[i].copy()))
                value = outcome.correlation[i]
                setattr(outTi, cts.CORRELATION_ATTR,
                        Float(float(value) if np.isfinite(value) else None))
                outTs.append(outTi)
            outTs.setAlignment2D()
            outSet.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)
            self._commitTiltSeries(cts.OUTPUT_TILT_SERIES, outSet, outTs)

    def _commitTiltSeries(self, name: str, outSet: SetOfTiltSeries, outTs: TiltSeries):
        outTs.write()
        outSet.update(outTs)
        outSet.write()
        self._store(outSet)
        outSet.close()  # let other processes read it

    def _fail(self, tsId: str, inTs, items, reason: str):
        if not reason.startswith("tilt series"):
            reason = f"tilt series {tsId}: {reason}"
        self.error(f"FAILED {reason}")
        with self._lock:
            failed = self._failureReasons()
            failed[tsId] = reason
            self.failureReasons.set(json.dumps(failed))
            self._store(self.failureReasons)
            if inTs is None:
                return
            outSet = self._getOutputSet(cts.OUTPUT_FAILED_TILT_SERIES, "failed")
            outTs = TiltSeries()
            outTs.copyInfo(inTs)
            outSet.append(outTs)
            for ti in items:
                outTi = TiltImage()
                outTi.copyInfo(ti, copyId=True)
                outTi.setLocation(ti.getLocation())
                outTi.setAcquisition(ti.getAcquisition())
                outTi.setEnabled(ti.isEnabled())
                outTs.append(outTi)
            self._commitTiltSeries(cts.OUTPUT_FAILED_TILT_SERIES, outSet, outTs)

    def _failureReasons(self) -> dict[str, str]:
        text = self.failureReasons.get()
        return json.loads(text) if text else {}

    def _writeExtraFiles(self, table: ViewTable, outcome: AlignmentOutcome, inTs, items) -> str:
        """IMOD files, the plot and (if asked) the aligned stack; returns a timing note."""
        tsId = table.ts_id
        notes = []
        stackOrder = np.argsort(table.stack_indices, kind="stable")
        # imported here: plugin discovery (every Scipion process) need not load
        # matplotlib or torch
        from tiltxcorr_scipion.convert.imod import write_imod_files
        from tiltxcorr_scipion.plots import save_alignment_plot

        try:
            write_imod_files(self._getExtraPath(), tsId, outcome.transforms[stackOrder],
                             table.tilt_angles[stackOrder])
        except Exception as exc:
            self.warning(f"Tilt series {tsId}: IMOD files not written: {exc}")
        t = time.perf_counter()
        try:
            # view numbers are stack positions, as in the viewer and the IMOD files
            save_alignment_plot(self._getExtraPath(f"{tsId}{cts.PLOT_SUFFIX}"), tsId,
                                table.tilt_angles, outcome.shifts, table.enabled,
                                outcome.correlation, view_numbers=table.stack_indices)
        except Exception as exc:
            self.warning(f"Tilt series {tsId}: alignment plot not written: {exc}")
        notes.append(f"plot {time.perf_counter() - t:.2f} s")
        if self.getAttributeValue("writeAlignedStacks", False):
            t = time.perf_counter()
            self._writeInterpolated(table, outcome, inTs, items, stackOrder)
            notes.append(f"aligned stack {time.perf_counter() - t:.2f} s")
        return f" ({', '.join(notes)})" if notes else ""

    def _writeInterpolated(self, table: ViewTable, outcome: AlignmentOutcome, inTs, items,
                           stackOrder: np.ndarray):
        tsId = table.ts_id
        if len(set(table.file_names)) != 1 or not np.array_equal(
                np.sort(table.stack_indices), np.arange(1, table.n_views + 1)):
            self.warning(f"Tilt series {tsId}: views are not one complete stack; "
                         "aligned stack not written")
            return
        from tiltxcorr_scipion.convert.aligned_stack import write_aligned_stack

        binning = int(self.getAttributeValue("alignedBinning", 1) or 1)
        outPath = self._getExtraPath(f"{tsId}{cts.ALIGNED_STACK_SUFFIX}")
        try:
            # pixel_size is the input's: the writer puts pixel_size * binning in the header.
            write_aligned_stack(table.file_names[0], outPath, outcome.transforms[stackOrder],
                                binning, table.sampling_rate)
        except Exception as exc:
            self.warning(f"Tilt series {tsId}: aligned stack not written: {exc}")
            return
        with self._lock:
            outSet = self._getOutputSet(cts.OUTPUT_INTERPOLATED_TILT_SERIES, "interpolated")
            outSet.setSamplingRate(table.sampling_rate * binning)
            outTs = TiltSeries()
            outTs.copyInfo(inTs)
            outTs.setSamplingRate(table.sampling_rate * binning)
            outTs.setInterpolated(True)
            outTs.getAcquisition().setTiltAxisAngle(outcome.tilt_axis_angle)
            outSet.append(outTs)
            for ti in items:
                outTi = TiltImage()
                outTi.copyInfo(ti, copyId=True)
                outTi.setLocation(ti.getIndex(), outPath)
                outTi.setAcquisition(ti.getAcquisition())
                outTi.setSamplingRate(table.sampling_rate * binning)
                outTi.setEnabled(ti.isEnabled())
                outTi.setTransform(None)
                if ti.hasOddEven():
                    outTi.setOddEven([])
                outTs.append(outTi)
            self._commitTiltSeries(cts.OUTPUT_INTERPOLATED_TILT_SERIES, outSet, outTs)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return ["Choose the input tilt series."]
        override = self.tiltAxisAngle.get()
        noAxis, tooHigh = [], []
        for ts in inSet.iterItems():
            acq = ts.getAcquisition()
            if override is None and (acq is None or acq.getTiltAxisAngle() is None):
                noAxis.append(ts.getTsId())
            angles = [ti.getTiltAngle() for ti in ts.iterItems() if ti.isEnabled()]
            if angles and max(abs(a) for a in angles) > cts.MAX_TILT_DEG:
                tooHigh.append(ts.getTsId())
        if noAxis:
            errors.append(f"No tilt axis angle for {', '.join(noAxis[:5])}: enter it in the "
                          "form ('Tilt axis angle').")
        if tooHigh:
            errors.append(f"Tilt series {', '.join(tooHigh[:5])} have enabled views beyond "
                          f"+-{cts.MAX_TILT_DEG:g} deg, where cosine stretching is undefined: "
                          "exclude those views first.")
        if inSet.isStreamOpen() and (self.numberOfThreads.get() or 1) < 3:
            errors.append("The input is still being acquired (streaming): use at least 3 "
                          "threads (one follows the input, the others align).")
        return errors

    def _warnings(self):
        warnings = []
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return warnings
        if inSet.hasAlignment():
            warnings.append("The input tilt series already have an alignment: it is applied "
                            "to the images before correlating and the new shifts are composed "
                            "with it (new @ previous).")
        few = [ts.getTsId() for ts in inSet.iterItems()
               if 0 < sum(1 for ti in ts.iterItems() if ti.isEnabled()) < FEW_VIEWS_WARNING]
        if few:
            warnings.append(f"Tilt series {', '.join(few[:5])} have fewer than "
                            f"{FEW_VIEWS_WARNING} enabled views: the alignment may be poor "
                            f"(fewer than {MIN_ENABLED_VIEWS} fail).")
        return warnings

    def _summary(self):
        summary = []
        aligned = getattr(self, cts.OUTPUT_TILT_SERIES, None)
        if aligned is not None:
            summary.append(f"Aligned tilt series: {aligned.getSize()}")
        failed = self._failureReasons()
        if failed:
            summary.append(f"Failed tilt series: {len(failed)} ({', '.join(sorted(failed))}); "
                           "see the FailedTiltSeries output and the log.")
        if not summary:
            summary.append("Output not ready yet.")
        axis = self.tiltAxisAngle.get()
        summary.append("Tilt axis angle: " + (f"{axis:g} deg (form)" if axis is not None
                                               else "from each tilt series' acquisition"))
        return summary

    def _methods(self):
        kw = self._engineKwargs()
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
            + ". The computation used tiltxcorr-scipion's PyTorch implementation in Scipion.")
        return [text]

    def _citations(self):
        return [cts.CITE_KREMER_1996, cts.CITE_MASTRONARDE_2017]
