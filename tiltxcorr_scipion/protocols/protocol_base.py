"""What every protocol of the plugin shares: one step per tilt series.

`ProtTiltxcorrBase` follows its input set (closed, or still open in
streaming), inserts one step per tilt series, keeps output sets, sets aside
tilt series that cannot be processed, and resumes after a crash. A subclass
defines its form and `_processOneTiltSeries`, which aligns (or reconstructs)
one tilt series, writes its files and registers it (`_appendTiltSeries`,
or its own registration into the output named by `_primaryOutput`).

Rules the base keeps:
- a tilt series is registered in the primary output (`TiltSeries`, or
  `Tomograms` for the reconstruction) only once all its files exist, so
  Continue's "already done" (in the primary output or `FailedTiltSeries`)
  means done;
- output sets are written under the protocol's lock, one writer at a time;
- one tilt series is registered in all its outputs or in none
  (`_registerAtomically`): a full disk undoes what was appended and forgets
  an output set created for it, ids included, and fails that tilt series
  naming the file; if even the undo cannot write, the run fails saying the
  project database cannot be written (Continue then completes the rest);
- a new output set becomes an output only once its file holds its first
  tilt series (`_appendToOutput`), so no output names a file without tables;
- the outputs are closed by whoever finishes last: the last tilt-series step,
  or the stream follower when the input closes with nothing left to do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
import traceback

import numpy as np
import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol
from pyworkflow.object import Float, Set, String
from pyworkflow.protocol import STEPS_PARALLEL, ProtStreamingBase
from pyworkflow.protocol.executor import StepExecutor, ThreadStepExecutor
from pyworkflow.utils import cleanPath
from tomo.objects import TiltImage, TiltSeries
from tomo.protocols import ProtTomoBase

from .. import _plugin  # noqa: F401  (applies the sqlite fix in this process)
from .. import constants as cts
from ..convert.files import remove_temporaries
from ..options import MAX_TILT_DEG, MIN_ENABLED_VIEWS, tilt_range_problem
from ..pipeline import PREVIEW_MAX_WIDTH, TiltSeriesFailure, TiltSeriesViews, available_cpus

logger = logging.getLogger(__name__)

FEW_VIEWS_WARNING = 10


class NewOutputSetError(RuntimeError):
    """Writing the first tilt series into a new output set's file failed (see __cause__)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cannot write {path}")
        self.path = path


class ProtTiltxcorrBase(EMProtocol, ProtTomoBase, ProtStreamingBase):
    """Base of the plugin's alignment protocols (not shown in the GUI itself)."""

    _label = None  # abstract: pyworkflow lists only protocols with a label
    stepsExecutionMode = STEPS_PARALLEL
    #: The output whose tilt series are done (with FailedTiltSeries): Continue skips them.
    _primaryOutput = cts.OUTPUT_TILT_SERIES
    #: What the protocol does to a tilt series, for messages ("No tilt series could be ...").
    _doneVerb = "aligned"
    #: What its step per tilt series is called in the log ("alignment step queued").
    _stepNoun = "alignment"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.failureReasons = String()  # JSON {tsId: reason}, persisted for the summary
        self.unreliableKept = String()  # JSON {tsId: reason}: unreliable, kept as asked
        self.previewResults = String()  # JSON {tsId: preview and reprojection check}
        self._pendingTsIds: set[str] = set()  # steps inserted, not finished
        self._inputClosed = False  # no further tilt series will be queued

    @classmethod
    def worksInStreaming(cls):
        return True

    # ------------------------------------------------------------------ form pieces
    def _defineInputParams(self, form, inputHelp: str | None = None):
        form.addSection(label="Input")
        form.addParam("inputSetOfTiltSeries", params.PointerParam,
                      pointerClass="SetOfTiltSeries", important=True,
                      label="Tilt series",
                      help=inputHelp or (
                          "The tilt series to align. A set still being acquired (streaming) "
                          "is followed: each tilt series is aligned once all its views have "
                          "arrived. Excluded (disabled) views are kept in the output, "
                          "unaligned. If the tilt series already carry an alignment, it is "
                          "applied to the images first and the new alignment is composed "
                          "with it."))
        form.addParam("tiltAxisAngle", params.FloatParam, default=None, allowsNull=True,
                      label="Tilt axis angle (deg; empty = from input)",
                      help="Angle of the tilt axis in the raw images, from the Y axis, "
                           "counter-clockwise positive (IMOD's RotationAngle). Leave empty "
                           "to use the value stored in each tilt series' acquisition "
                           "(from the import or the mdoc). The wizard fills in the input's "
                           "value.")

    def _defineReliabilityParams(self, form):
        form.addParam("keepUnreliable", params.BooleanParam, default=False,
                      label="Keep unreliable tilt series?",
                      help="The alignment checks itself: each view is correlated again with its "
                           "nearest views in tilt on both sides, after alignment, and the links "
                           "must agree (docs: self-check). When no candidate path gives a "
                           "self-consistent alignment, the tilt series is unreliable. No (the "
                           "default): it goes to FailedTiltSeries with the reason, its plot and "
                           "files are still written. Yes: it stays in the output, flagged (the "
                           "summary and the tilt series' _tiltxcorrUnreliable attribute say why).")

    def _unreliableFailed(self, outcome, inTs, items) -> bool:
        """Send an unreliable alignment to FailedTiltSeries (or keep it, flagged, if asked).

        Returns True when the tilt series was failed and must not be registered.
        """
        if not outcome.unreliable:
            return False
        tsId = outcome.views.ts_id
        if self.getAttributeValue("keepUnreliable", False):
            self.warning(f"Tilt series {tsId}: unreliable alignment, kept as asked: "
                         f"{outcome.unreliable_reason}")
            with self._lock:
                kept = self._unreliableKept()
                kept[tsId] = outcome.unreliable_reason
                self.unreliableKept.set(json.dumps(kept))
                self._store(self.unreliableKept)
            return False
        self._fail(tsId, inTs, items, f"unreliable alignment: {outcome.unreliable_reason}")
        return True

    def _logExcluded(self, outcome):
        """Log the input's warnings and the views the pipeline excluded by itself (beyond +-82)."""
        for warning in outcome.warnings:
            self.warning(f"Tilt series {outcome.views.ts_id}: {warning}")
        for i, reason in enumerate(outcome.excluded):
            if reason:
                self.warning(f"Tilt series {outcome.views.ts_id}: view "
                             f"{outcome.views.stack_positions[i]} {reason}")

    def _unreliableKept(self) -> dict[str, str]:
        text = self.unreliableKept.get()
        return json.loads(text) if text else {}

    # ------------------------------------------------------------------ preview tomogram
    def _definePreviewParams(self, form):
        form.addParam("previewTomogram", params.BooleanParam, default=True,
                      label="Preview tomogram?",
                      help="Yes: reconstruct a small tomogram from each aligned tilt series "
                           f"(weighted back-projection, binned to at most {PREVIEW_MAX_WIDTH} "
                           "voxels wide) into extra/<tsId>_preview.mrc, draw its central XY "
                           "and XZ slices in the tilt series' plot, and check every view "
                           "against it: the view is compared with the projection, at its "
                           "geometry, of a tomogram made without it. The shift between them "
                           "(the reprojection residual, in pixels of the tilt series) is "
                           "stored on each tilt image, plotted, and the worst view of each "
                           "tilt series is in the summary. Crescents around gold, doubled "
                           "features or a tilted XZ slice show a bad alignment at a glance.")
        form.addParam("previewThickness", params.IntParam, default=None, allowsNull=True,
                      condition="previewTomogram",
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Preview thickness (px; empty = auto)",
                      help="Thickness of the preview tomogram in pixels of the tilt series. "
                           "Empty or 0: chosen by the engine (docs/reconstruction.md).")

    def _wantsPreview(self) -> bool:
        return bool(self.getAttributeValue("previewTomogram", False))

    def _previewThickness(self) -> float | None:
        """The form's preview thickness (stack pixels), None for the engine's default."""
        thickness = self.getAttributeValue("previewThickness")
        return float(thickness) if thickness and int(thickness) > 0 else None

    def _recordPreview(self, views: TiltSeriesViews, preview):
        """Keep what the summary says of a preview: worst view, flagged views, the file.

        `preview` is `outcome.preview`, made by `write_outputs` (None: nothing to keep).
        """
        if preview is None:
            return
        check = preview.check
        residual = np.asarray(check.residual_px, dtype=np.float64)
        finite = np.isfinite(residual)
        record = {"path": preview.path, "binning": int(preview.binning),
                  "limit": float(check.limit_px),
                  "flagged": sorted(int(v) for v in views.stack_positions[np.asarray(
                      check.flagged, dtype=bool) & finite]),
                  "unchecked": sorted(int(v) for v in views.stack_positions[np.asarray(
                      check.unchecked, dtype=bool)])}
        if finite.any():
            worst = int(np.nanargmax(np.where(finite, residual, np.nan)))
            record.update(worstView=int(views.stack_positions[worst]),
                          worstTilt=float(views.tilt_angles[worst]),
                          worstResidual=float(residual[worst]))
        self.info(f"Tilt series {views.ts_id}: {preview_line(record)}")
        with self._lock:
            results = self._previewResults()
            results[views.ts_id] = record
            self.previewResults.set(json.dumps(results))
            self._store(self.previewResults)

    def _previewResults(self) -> dict[str, dict]:
        text = self.previewResults.get()
        return json.loads(text) if text else {}

    @staticmethod
    def _reprojectionResidual(preview, i: int) -> Float:
        """Item i's reprojection residual (px) for its tilt image; unset without one."""
        if preview is None:
            return Float(None)
        value = float(preview.check.residual_px[i])
        return Float(value if np.isfinite(value) else None)

    def _defineComputeParams(self, form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=False,
                       label="Use GPU?",
                       help="Compute on a CUDA GPU (each tilt series step books one GPU from "
                            "the list). Falls back to the CPU, with a log line, when CUDA is not "
                            "available.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0",
                       label="GPU IDs",
                       help="Yes: compute on CUDA GPUs, each tilt series step booking one GPU "
                            "from this list, e.g. '0 1': N GPUs process N tilt series at a time. "
                            "If torch sees no CUDA device the steps say so in the log and run "
                            "on the CPU. No: CPU only; the threads below set how many tilt "
                            "series are processed at a time.")
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
        # Which tilt series remain is decided from the outputs (all those in neither
        # TiltSeries nor FailedTiltSeries), so a Continue aligns exactly the rest.
        inSet = self.inputSetOfTiltSeries.get()
        inSet.loadAllProperties()  # the stream state as the producer wrote it last
        streaming = inSet.isStreamOpen()
        # Closed at once: a statement left open holds a read lock on the input's
        # sqlite, which would stall the producer's next write.
        tsIds = [] if streaming else self._inputTsIds(inSet)
        inSet.close()
        nThreads = max(1, self.numberOfThreads.get() or 1)
        done = self._tsIdsInOutputs()
        if done:
            self.info(f"Continuing: {len(done)} tilt series already in the outputs are "
                      f"skipped: {sorted(done)}")
        removed = remove_temporaries(self._getExtraPath())
        if removed:
            self.info(f"Removed {len(removed)} partial file(s) left by an interrupted run: "
                      + ", ".join(removed))
        if streaming:
            # One executor thread runs the stream follower; the others do the work.
            self._setTorchThreads(max(1, nThreads - 2))
            if nThreads < 3:
                self.warning("The input is still open (streaming): with fewer than 3 threads "
                             f"tilt series are {self._doneVerb} only after the input is closed.")
            ProtStreamingBase._insertAllSteps(self)
            return
        tsIds = [tsId for tsId in tsIds if tsId not in done]
        self._setTorchThreads(min(max(1, nThreads - 1), max(1, len(tsIds))))
        self._inputClosed = True
        for tsId in tsIds:
            self._insertAlignStep(tsId)
        if not tsIds:  # nothing left to align: a step still has to close the outputs
            self._insertFunctionStep(self.closeOutputSetsStep, needsGPU=False)

    def stepsGeneratorStep(self):
        """Follow an open input: insert one step per complete tilt series."""
        inSet = self.inputSetOfTiltSeries.get()
        queued = self._tsIdsInOutputs()
        lastSizes: dict[str, int] = {}
        while True:
            with self._lock:
                inSet.loadAllProperties()
                closed = not inSet.isStreamOpen()
                sizes = {ts.getTsId(): ts.getSize() or 0 for ts in inSet.iterItems()}
                inSet.close()
            # A tilt series is complete once its view count holds between two looks.
            ready = [tsId for tsId, n in sizes.items()
                     if tsId not in queued and n > 0 and (closed or lastSizes.get(tsId) == n)]
            for tsId in ready:
                self._insertAlignStep(tsId)
                queued.add(tsId)
                self.info(f"Tilt series {tsId}: {sizes[tsId]} views, {self._stepNoun} step queued")
            if closed and all(tsId in queued for tsId in sizes):
                self.info("Input closed and every tilt series queued.")
                with self._lock:
                    self._inputClosed = True
                    last = not self._pendingTsIds
                if last:
                    self._closeOutputs()
                break
            lastSizes = sizes
            time.sleep(cts.STREAM_POLL_SECONDS)

    def _insertAlignStep(self, tsId: str) -> int:
        with self._lock:
            self._pendingTsIds.add(tsId)
        return self._insertFunctionStep(self.alignTiltSeriesStep, tsId, prerequisites=[],
                                        needsGPU=self._useGpu())

    def alignTiltSeriesStep(self, tsId: str):
        """Process (align or reconstruct), write and register one tilt series.

        A failure sends it to FailedTiltSeries. (The name, kept in run databases and
        logs, predates the reconstruction protocol, which runs the same step.)
        """
        try:
            started = time.perf_counter()
            try:
                inTs, items = self._readInputTiltSeries(tsId)
            except Exception as exc:  # the input metadata itself is unreadable
                self._fail(tsId, None, None, f"cannot read its metadata: {exc}")
                return
            try:
                self._processOneTiltSeries(TiltSeriesViews.from_tilt_series(inTs, items),
                                           inTs, items, started)
            except TiltSeriesFailure as exc:
                self._fail(tsId, inTs, items, str(exc))
            except Exception as exc:  # unexpected: keep the traceback in the log
                logger.error(traceback.format_exc())
                self._fail(tsId, inTs, items, f"unexpected error: {exc!r}")
        finally:
            self._tiltSeriesDone(tsId)

    def _processOneTiltSeries(self, views: TiltSeriesViews, inTs, items, started: float):
        """Align (reconstruct) one tilt series, write its files, then register it (subclasses)."""
        raise NotImplementedError

    def _tiltSeriesDone(self, tsId: str):
        with self._lock:
            self._pendingTsIds.discard(tsId)
            last = self._inputClosed and not self._pendingTsIds
        if last:
            self._closeOutputs()

    def closeOutputSetsStep(self):
        """Close the outputs when a (continued) run has nothing left to align."""
        self._closeOutputs()

    def _closeOutputs(self):
        with self._lock:
            self._closeOutputSet()
        failed = self._failureReasons()
        if failed:
            self.warning(f"{len(failed)} tilt series could not be {self._doneVerb}: "
                         + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        if getattr(self, self._primaryOutput, None) is None and failed:
            raise RuntimeError(f"No tilt series could be {self._doneVerb} ({len(failed)} "
                               "failed); see the FailedTiltSeries output and the log for the "
                               "causes.")

    # ------------------------------------------------------------------ outputs
    def _newOutputSet(self, suffix: str, create=None) -> Set:
        """A new output set (open, with the input's info), not yet one of the run's outputs.

        `create(suffix=...)` makes it (default: a SetOfTiltSeries).
        """
        outSet = (create or self._createSetOfTiltSeries)(suffix=suffix)
        outSet.copyInfo(self.inputSetOfTiltSeries.get())
        outSet.setStreamState(Set.STREAM_OPEN)
        return outSet

    def _hasTiltSeries(self, name: str, tsId: str) -> bool:
        outSet = getattr(self, name, None)
        if outSet is None:
            return False
        found = any(ts.getTsId() == tsId for ts in outSet.iterItems())
        outSet.close()
        return found

    def _appendToOutput(self, name: str, create, add):
        """Add to output `name` with `add(outSet)` and commit; `create()` makes it on first use.

        A set created here becomes an output only once its file holds what was
        added: a full disk before that leaves no output naming a file without
        tables (which no reader of the project could open), and its
        half-written file is removed. The caller holds the lock.
        """
        outSet = getattr(self, name, None)
        created = outSet is None
        if created:
            outSet = create()
        else:
            outSet.enableAppend()
        try:
            add(outSet)
            outSet.write()
        except Exception as error:
            if not created:
                raise
            outSet.close()
            cleanPath(outSet.getFileName())
            raise NewOutputSetError(outSet.getFileName()) from error
        if created:
            self._defineOutputs(**{name: outSet})
            self._defineSourceRelation(self.inputSetOfTiltSeries, outSet)
        else:
            self._store(outSet)
        outSet.close()  # let other processes read it
        return outSet

    def _appendTiltSeries(self, name: str, suffix: str, inTs, items, *, editSet=None,
                          editTs=None, editImage=None):
        """Copy a tilt series and its images into output `name`, with changes, and commit it.

        `editSet(outSet)` changes the output set first (appending applies its
        sampling rate); `editTs(outTs)` changes the copied tilt series before it
        is added; `editImage(i, outTi)` changes the copy of item i. The caller
        holds the lock.
        """
        def add(outSet):
            if editSet is not None:
                editSet(outSet)
            outTs = TiltSeries()
            outTs.copyInfo(inTs)
            if editTs is not None:
                editTs(outTs)
            outSet.append(outTs)
            for i, ti in enumerate(items):
                outTi = TiltImage()
                outTi.copyInfo(ti, copyId=True)
                outTi.setLocation(ti.getLocation())
                outTi.setAcquisition(ti.getAcquisition())
                outTi.setEnabled(ti.isEnabled())
                if editImage is not None:
                    editImage(i, outTi)
                outTs.append(outTi)
            outTs.write()
            outSet.update(outTs)

        return self._appendToOutput(name, lambda: self._newOutputSet(suffix), add)

    def _fail(self, tsId: str, inTs, items, reason: str):
        if not reason.startswith("tilt series"):
            reason = f"tilt series {tsId}: {reason}"
        self.error(f"FAILED {reason}")
        with self._lock:
            failed = self._failureReasons()
            before = self.failureReasons.get()

            def storeReason():
                failed[tsId] = reason
                self.failureReasons.set(json.dumps(failed))
                self._store(self.failureReasons)

            steps = []
            if inTs is not None:
                steps.append((cts.OUTPUT_FAILED_TILT_SERIES, lambda: self._appendTiltSeries(
                    cts.OUTPUT_FAILED_TILT_SERIES, "failed", inTs, items)))
            steps.append((None, storeReason))
            try:
                self._registerAtomically(tsId, steps, failing=True)
            except TiltSeriesFailure as failure:  # undone, but not recorded as failed either
                self.failureReasons.set(before)
                raise RuntimeError(f"tilt series {tsId} could not be recorded as failed "
                                   f"({failure.cause}); free space, then Continue: it will "
                                   "be aligned again") from None

    # ------------------------------------------------------------------ atomic registration
    def _registerAtomically(self, tsId: str, steps, *, failing: bool = False, files=()):
        """Register one tilt series in several outputs: in all of them or in none.

        `steps` are `(output name or None, callable)`; each callable appends the
        tilt series to that output (or stores something else). The caller
        holds the lock. When one raises (a full disk), every output that holds
        `tsId` loses it again (FailedTiltSeries only when `failing`), an output
        set created by this registration is forgotten, its ids too (the next
        set created gets new ones, not the rolled-back ones), and a
        `TiltSeriesFailure` names the file and the cause. When the undo
        cannot write either, a RuntimeError says the project database cannot
        be written: the run stops, and Continue, once space is freed, aligns
        exactly the tilt series in neither TiltSeries nor FailedTiltSeries.
        `files` (the tilt series' files in extra/) are removed on a failure:
        none of its outputs is kept, and the space they free lets the failure
        itself be recorded.
        """
        existed = {name: getattr(self, name, None) is not None
                   for name in self._possibleOutputs}
        for name, step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - any failure is undone the same way
                cause = self._writeErrorText(error, name)
                try:
                    self._undoRegistration(tsId, existed, failing)
                except Exception as undo:  # noqa: BLE001
                    raise RuntimeError(
                        f"tilt series {tsId}: its outputs could not be registered ({cause}) "
                        f"nor undone ({self._writeErrorText(undo, None)}): the project "
                        "database cannot be written; free space, then Continue") from None
                for path in files:
                    if os.path.exists(path):
                        os.remove(path)
                raise TiltSeriesFailure(tsId, f"its outputs could not be registered: {cause}; "
                                              "none of them was kept") from None

    def _writeErrorText(self, error: BaseException, name: str | None) -> str:
        """What failed while writing `name`'s output (or the project's database), and where."""
        outSet = getattr(self, name, None) if name else None
        target = outSet.getFileName() if outSet is not None else self.getDbPath()
        if isinstance(error, NewOutputSetError):
            target, error = error.path, error.__cause__
        full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
            isinstance(error, sqlite3.OperationalError) and "full" in str(error))
        if full:
            return f"disk full writing {target}"
        return f"{type(error).__name__} writing {target}: {error}"

    def _undoRegistration(self, tsId: str, existed: dict[str, bool], failing: bool):
        """Take `tsId` out of every output again; forget outputs that did not exist before."""
        connection = getattr(getattr(self.mapper, "db", None), "connection", None)
        if connection is not None:
            connection.rollback()  # what the failed commit left of this transaction
        for name in self._possibleOutputs:
            if name == cts.OUTPUT_FAILED_TILT_SERIES and not failing:
                continue
            outSet = getattr(self, name, None)
            if outSet is None:
                continue
            if not existed[name]:  # created for this tilt series: forget it whole
                outSet.close()
                if name in self._outputs:
                    self._outputs.remove(name)
                delattr(self, name)
                if outSet.hasObjId():
                    self.mapper.delete(outSet)  # its row, if the insert was committed
                outSet.cleanObjId()
                self.mapper.store(self._outputs)
                self.mapper.commit()
                continue
            mapper = outSet._getMapper()
            stale = [item.clone() for item in outSet.iterItems(where=f"_tsId=='{tsId}'")]
            for item in stale:
                mapper.delete(item)
            if stale:
                outSet._size.set(max(0, (outSet.getSize() or 0) - len(stale)))
                mapper.commit()
                outSet.write()
                self._store(outSet)
            outSet.close()

    def _failureReasons(self) -> dict[str, str]:
        text = self.failureReasons.get()
        return json.loads(text) if text else {}

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

        from ..pipeline import torch_threads_per_step

        cpus = available_cpus()
        nThreads = torch_threads_per_step(parallelSteps, cpus)
        torch.set_num_threads(nThreads)
        self.info(f"{parallelSteps} tilt series at a time x {nThreads} torch thread(s) each "
                  f"({cpus} CPUs available)")

    @staticmethod
    def _inputTsIds(inSet) -> list[str]:
        return [ts.getTsId() for ts in inSet.iterItems(orderBy="id")]

    def _tsIdsInOutputs(self) -> set[str]:
        done = set()
        for name in (self._primaryOutput, cts.OUTPUT_FAILED_TILT_SERIES):
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

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return ["Choose the input tilt series."]
        override = self.tiltAxisAngle.get()
        noAxis = []
        for ts in inSet.iterItems():
            acq = ts.getAcquisition()
            if override is None and (acq is None or acq.getTiltAxisAngle() is None):
                noAxis.append(ts.getTsId())
        if noAxis:
            errors.append(f"No tilt axis angle for {', '.join(noAxis[:5])}: enter it in the "
                          "form ('Tilt axis angle').")
        if inSet.isStreamOpen() and (self.numberOfThreads.get() or 1) < 3:
            errors.append("The input is still being acquired (streaming): use at least 3 "
                          "threads (one follows the input, the others do the work).")
        return errors

    def _warnings(self):
        warnings = []
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return warnings
        if inSet.hasAlignment():
            warnings.append("The input tilt series already have an alignment: it is applied "
                            "to the images before correlating and the new alignment is "
                            "composed with it (new @ previous).")
        few, tooHigh, impossible = [], [], []
        for ts in inSet.iterItems():
            angles = [ti.getTiltAngle() for ti in ts.iterItems() if ti.isEnabled()]
            if 0 < len(angles) < FEW_VIEWS_WARNING:
                few.append(ts.getTsId())
            if angles and max(abs(a) for a in angles) > MAX_TILT_DEG:
                tooHigh.append(ts.getTsId())
            problem = tilt_range_problem(angles)
            if problem:
                impossible.append(f"{ts.getTsId()}: {problem}")
        if tooHigh:
            warnings.append(f"Tilt series {', '.join(tooHigh[:5])} have enabled views beyond "
                            f"+-{MAX_TILT_DEG:g} deg, where cosine stretching is undefined: "
                            "those views are excluded automatically (and say so in the log).")
        if impossible:
            warnings.append("These tilt series will fail, their tilt angles cannot be right: "
                            + "; ".join(impossible[:5]))
        if few:
            warnings.append(f"Tilt series {', '.join(few[:5])} have fewer than "
                            f"{FEW_VIEWS_WARNING} enabled views: the alignment may be poor "
                            f"(fewer than {MIN_ENABLED_VIEWS} fail).")
        return warnings

    def _summary(self):
        summary = []
        done = getattr(self, self._primaryOutput, None)
        if done is not None:
            summary.append(f"{self._doneVerb.capitalize()} tilt series: {done.getSize()}")
        failed = self._failureReasons()
        if failed:
            summary.append(f"Failed tilt series: {len(failed)} ({', '.join(sorted(failed))}); "
                           "see the FailedTiltSeries output and the log.")
        for tsId, reason in sorted(self._unreliableKept().items()):
            summary.append(f"{tsId}: UNRELIABLE alignment, kept as asked: {reason}")
        for tsId, record in sorted(self._previewResults().items()):
            summary.append(f"{tsId}: {preview_line(record)}")
        if not summary:
            summary.append("Output not ready yet.")
        axis = self.tiltAxisAngle.get()
        summary.append("Tilt axis angle: " + (f"{axis:g} deg (form)" if axis is not None
                                               else "from each tilt series' acquisition"))
        return summary


def preview_line(record: dict) -> str:
    """One tilt series' preview and reprojection check, from `previewResults`, for people."""
    text = f"preview tomogram {record['path']} (binning {record['binning']}); reprojection check: "
    if "worstView" in record:
        text += (f"worst view {record['worstView']} ({record['worstTilt']:+.1f} deg) "
                 f"{record['worstResidual']:.2f} px, ")
    flagged, unchecked = record.get("flagged") or [], record.get("unchecked") or []
    text += (f"flagged (> {record['limit']:g} px): {', '.join(map(str, flagged))}"
             if flagged else f"none above {record['limit']:g} px")
    return text + (f"; unchecked (no ray all other views saw): {', '.join(map(str, unchecked))}"
                   if unchecked else "")
