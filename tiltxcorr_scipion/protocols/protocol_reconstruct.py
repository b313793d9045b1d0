"""Scipion protocol: a tomogram from every aligned tilt series (weighted back-projection).

Thin: the form, and per tilt series `pipeline.reconstruct_views` -> registration
of a tomo ``Tomogram``. Streaming, steps, threads/GPU, failures and Continue are
`ProtTiltxcorrBase`'s; the geometry conventions are in ``docs/reconstruction.md``.

The input is any SetOfTiltSeries whose tilt images carry IMOD forward transforms
(ours, coarse or fine; scipion-em-imod's; AreTomo's), or interpolated (already
aligned) stacks. The tilt axis the engine needs is the one in the frame of the
*transformed* views: the tilt series' recorded axis (IMOD's RotationAngle of the
raw images, or the form's) turned by the transforms' rotation, so a pure-shift
coarse alignment keeps the acquisition's angle and a tiltalign-style alignment,
whose transforms turn the axis onto Y, gives 0 (`pipeline.transformed_tilt_axis`).

Registered as scipion-em-imod's ``ProtImodTomoReconstruction`` registers its
tomograms: ``Tomogram(tsId)``, the tilt series' information copied (acquisition,
tsId), the file, the sampling rate (the tilt series' times the binning) and
tomo's default origin (the volume's centre), moved by the Z shift.
"""

from __future__ import annotations

import time

import pyworkflow.protocol.params as params
from pyworkflow import BETA
from tomo.objects import SetOfTiltSeries, SetOfTomograms, Tomogram

from .. import constants as cts
from ..convert.transforms import identity_transforms
from ..faults import pause_point
from ..options import RECONSTRUCTION_NOISE_FILTERS, RECONSTRUCTION_WEIGHTINGS
from ..pipeline import TiltSeriesViews, reconstruct_views, select_device, transformed_tilt_axis
from .protocol_base import ProtTiltxcorrBase

__all__ = ["ProtTiltxcorrReconstruct"]

#: IMOD tilt's RADIAL defaults (cutoff in cycles/pixel, Gaussian fall-off).
RADIAL_DEFAULTS = (0.35, 0.035)


class ProtTiltxcorrReconstruct(ProtTiltxcorrBase):
    """Reconstruct a tomogram from each aligned tilt series by weighted back-projection.

    Each tilt series is read a few views at a time, its registered alignment
    (IMOD forward transforms: ours, scipion-em-imod's, AreTomo's) applied, the
    views radially weighted as IMOD's tilt does (linear ramp to the cutoff, then
    a Gaussian fall-off; optionally the SIRT-like filter) and back-projected,
    slab by slab, into a volume with Z along the beam, oriented as
    scipion-em-imod's reconstruction registers its tomograms. Excluded (disabled)
    views are left out. The tomograms are registered as a SetOfTomograms
    (``Tomograms``) that tomo's and other plugins' protocols read as IMOD's.

    Works on sets still being acquired (streaming): each tilt series is
    reconstructed as soon as all its views have arrived. Tilt series that cannot
    be reconstructed (unreadable stack, too few enabled views...) go to the
    output FailedTiltSeries, the reason in the log, and do not stop the others.
    """

    _label = "tiltxcorr reconstruction"
    _devStatus = BETA
    _primaryOutput = cts.OUTPUT_TOMOGRAMS
    _doneVerb = "reconstructed"
    _stepNoun = "reconstruction"
    _possibleOutputs = {
        cts.OUTPUT_TOMOGRAMS: SetOfTomograms,
        cts.OUTPUT_FAILED_TILT_SERIES: SetOfTiltSeries,
    }

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        self._defineInputParams(form, inputHelp=(
            "The aligned tilt series to reconstruct: their tilt images' transforms (IMOD's "
            "forward convention, as every Scipion alignment registers them: this plugin's "
            "coarse or fine alignment, scipion-em-imod's, AreTomo's) are applied to the raw "
            "images; interpolated (already aligned) stacks are used as they are. A set still "
            "being acquired (streaming) is followed. Excluded (disabled) views are left out."))
        form.addParam("thickness", params.IntParam, default=300, validators=[params.GT(0)],
                      important=True,
                      label="Thickness (px of the tilt series)",
                      help="Size of the tomogram along Z (the beam), in pixels of the tilt "
                           "series (IMOD tilt's THICKNESS when not binned); the tomogram has "
                           "thickness // binning slices.")
        form.addParam("binning", params.IntParam, default=1, validators=[params.GE(1)],
                      important=True,
                      label="Binning",
                      help="Reduce the views by this factor before back-projecting: the "
                           "tomogram's voxels are this many pixels of the tilt series wide "
                           "(its sampling rate is the tilt series' times the binning).")
        form.addParam("zShift", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Z shift (px of the tilt series)",
                      help="Move the reconstructed volume along Z (IMOD tilt's SHIFT in Z: "
                           "positive moves the specimen up, i.e. the tomogram holds a slab "
                           "lower in the specimen). The registered origin follows, as "
                           "scipion-em-imod's does.")
        form.addParam("tiltAngleOffset", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Tilt angle offset (deg)",
                      help="Degrees added to every tilt angle (IMOD tilt's OFFSET). A fine "
                           "alignment that levels the specimen has already added its offset to "
                           "the registered tilt angles: leave 0 then.")
        group = form.addGroup("Radial filter", expertLevel=params.LEVEL_ADVANCED,
                              help="The weighting of the back-projection (IMOD tilt's RADIAL): "
                                   "linear in frequency up to the cutoff, then a Gaussian "
                                   "fall-off.")
        group.addParam("weighting", params.EnumParam, choices=list(RECONSTRUCTION_WEIGHTINGS),
                       default=0, display=params.EnumParam.DISPLAY_HLIST,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Weighting",
                       help="exact (default): each view weighted by one over the density of "
                            "all views' lines for an object as thick as the tomogram, then "
                            "the cutoff and fall-off below: as IMOD's ramp at high frequency, "
                            "but the slab's broad density is kept. ramp: IMOD tilt's weighting "
                            "as it is (docs/reconstruction.md).")
        group.addParam("noiseFilter", params.EnumParam,
                       choices=list(RECONSTRUCTION_NOISE_FILTERS), default=0,
                       display=params.EnumParam.DISPLAY_HLIST,
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Noise filter",
                       help="fsc (default): every frequency weighted by how well two "
                            "tomograms, from the even and from the odd views, agree there "
                            "(2F / (1 + F) of their Fourier shell correlation F): a Wiener "
                            "filter measured on the data, which leaves a noiseless series as "
                            "it is. none: the plain weighted back-projection, as IMOD's tilt "
                            "gives it (docs/reconstruction.md).")
        group.addParam("radialCutoff", params.FloatParam, default=RADIAL_DEFAULTS[0],
                       validators=[params.GT(0), params.LE(0.5)],
                       expertLevel=params.LEVEL_ADVANCED,
                       label="Cutoff (cycles/px)",
                       help="End of the linear ramp, in cycles per pixel of the binned views "
                            "(0.5: no low-pass). IMOD's default 0.35.")
        group.addParam("radialFalloff", params.FloatParam, default=RADIAL_DEFAULTS[1],
                       validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                       label="Fall-off (cycles/px)",
                       help="Standard deviation of the Gaussian beyond the cutoff (IMOD's "
                            "second RADIAL value with FalloffIsTrueSigma). IMOD's default 0.035.")
        group.addParam("fakeSirtIterations", params.IntParam, default=0,
                       validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                       label="SIRT-like filter (iterations)",
                       help="Modify the radial filter to give a reconstruction like this many "
                            "iterations of SIRT (IMOD tilt's FakeSIRTiterations): less noise "
                            "and more low-frequency contrast. 0: plain weighted back-projection.")
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ one tilt series
    def _binning(self) -> int:
        return int(self.getAttributeValue("binning", 1) or 1)

    def _weighting(self) -> str:
        return RECONSTRUCTION_WEIGHTINGS[int(self.getAttributeValue("weighting", 0) or 0)]

    def _noiseFilter(self) -> str:
        return RECONSTRUCTION_NOISE_FILTERS[int(self.getAttributeValue("noiseFilter", 0) or 0)]

    def _tomogramPath(self, tsId: str) -> str:
        return self._getExtraPath(f"{tsId}.mrc")

    def _processOneTiltSeries(self, views: TiltSeriesViews, inTs, items, started: float):
        tsId = views.ts_id
        device, deviceMessage = select_device(self._useGpu(), self._bookedGpus())
        self.info(f"Tilt series {tsId}: {deviceMessage}")
        axis = views.tilt_axis(self.tiltAxisAngle.get())
        if views.previous is not None:
            axis = transformed_tilt_axis(axis, views.previous, views.enabled)
        transforms = identity_transforms(views.n_views) if views.previous is None else \
            views.previous
        binning = self._binning()
        path = self._tomogramPath(tsId)
        reconstruct_views(
            views, transforms, views.tilt_angles, axis,
            thickness=int(self.getAttributeValue("thickness", 300)), binning=binning, path=path,
            z_shift=float(self.getAttributeValue("zShift", 0.0) or 0.0),
            tilt_angle_offset=float(self.getAttributeValue("tiltAngleOffset", 0.0) or 0.0),
            radial=(float(self.getAttributeValue("radialCutoff", RADIAL_DEFAULTS[0])),
                    float(self.getAttributeValue("radialFalloff", RADIAL_DEFAULTS[1]))),
            fake_sirt_iterations=int(self.getAttributeValue("fakeSirtIterations", 0) or 0),
            weighting=self._weighting(), noise_filter=self._noiseFilter(),
            device=device)
        pause_point("files written", tsId)
        reconstructed = time.perf_counter()
        with self._lock:
            self._registerAtomically(tsId, [(cts.OUTPUT_TOMOGRAMS, lambda: self._registerTomogram(
                inTs, path, views.sampling_rate * binning))], files=[path])
        registered = time.perf_counter()
        self.info(f"Tilt series {tsId}: reconstructed from {int(views.enabled.sum())}/"
                  f"{views.n_views} views (tilt axis {axis:.2f} deg in the aligned views, "
                  f"binning {binning}) into {path}. Time: reconstruction "
                  f"{reconstructed - started:.2f} s, registration "
                  f"{registered - reconstructed:.2f} s")

    def _registerTomogram(self, inTs, path: str, samplingRate: float):
        """Register one tomogram as scipion-em-imod does (the caller holds the lock)."""
        zShift = float(self.getAttributeValue("zShift", 0.0) or 0.0)

        def add(outSet):
            if not outSet.getSize():
                outSet.setSamplingRate(samplingRate)  # the set's too: binned
            tomogram = Tomogram(tsId=inTs.getTsId())
            tomogram.copyInfo(inTs)  # acquisition, tsId, sampling rate
            tomogram.setFileName(path)
            tomogram.setSamplingRate(samplingRate)
            tomogram.setCtfCorrected(bool(inTs.ctfCorrected()))
            tomogram.setOrigin(None)  # tomo's default: the volume's centre (reads the file)
            if zShift:
                x, y, z = tomogram.getShiftsFromOrigin()
                # the origin in angstroms; the shift in pixels of the tilt series
                tomogram.setShiftsInOrigin(x=x, y=y,
                                           z=z - zShift * float(inTs.getSamplingRate()))
            outSet.append(tomogram)

        self._appendToOutput(cts.OUTPUT_TOMOGRAMS,
                             lambda: self._newOutputSet("", self._createSetOfTomograms), add)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = super()._validate()
        thickness = self.getAttributeValue("thickness", 300) or 0
        if thickness // self._binning() < 1:
            errors.append(f"The thickness ({thickness} px) must be at least the binning "
                          f"({self._binning()}).")
        return errors

    def _warnings(self):
        inSet = self.inputSetOfTiltSeries.get()
        if inSet is None:
            return []
        if not inSet.hasAlignment() and not inSet.interpolated():
            return ["The input tilt series carry no alignment and are not interpolated: "
                    "they are reconstructed as they are, which blurs the tomogram unless the "
                    "views are already aligned."]
        return []

    def _summary(self):
        summary = super()._summary()
        tomograms = getattr(self, cts.OUTPUT_TOMOGRAMS, None)
        if tomograms is not None:
            summary.append(f"Tomograms: {tomograms.getSize()}, {tomograms.getSamplingRate():.2f} "
                           f"A/voxel (binning {self._binning()}), thickness "
                           f"{self.getAttributeValue('thickness', 300)} px of the tilt series")
        return summary

    def _methods(self):
        sirt = int(self.getAttributeValue("fakeSirtIterations", 0) or 0)
        return [
            "Tomograms were reconstructed in tiltxcorr-scipion (PyTorch) by weighted "
            "back-projection of the aligned tilt series, as IMOD's tilt does "
            f"[Mastronarde2017], with binning {self._binning()}, a thickness of "
            f"{self.getAttributeValue('thickness', 300)} pixels, "
            + ("exact weighting (one over the density of the views' central lines for an "
               "object as thick as the tomogram) " if self._weighting() == "exact" else
               "IMOD's ramp weighting ")
            + "and a radial filter "
            f"(cutoff {self.getAttributeValue('radialCutoff', RADIAL_DEFAULTS[0]):g}, fall-off "
            f"{self.getAttributeValue('radialFalloff', RADIAL_DEFAULTS[1]):g} cycles/pixel)"
            + (f" modified to mimic {sirt} SIRT iterations" if sirt else "")
            + ("; each frequency was then weighted by the Fourier shell correlation of "
               "reconstructions from the even and the odd views (2F / (1 + F))"
               if self._noiseFilter() == "fsc" else "") + "."]

    def _citations(self):
        return [cts.CITE_MASTRONARDE_2017]

