"""The alignment engine: pure torch, no Scipion.

>>> from tiltxcorr_scipion.alignment import tiltxcorr
>>> shifts = tiltxcorr(tilt_series=ts, tilt_angles=angles, tilt_axis_angle=85.0,
...                    pixel_spacing_angstroms=1.35, lowpass_angstroms=10.0)  # doctest: +SKIP

`shifts` is `(b, 2)` `(dy, dx)` in input pixels: moving the content of each
view by `+shift` aligns it; the lowest-|tilt| view gets `(0, 0)`. `tiltxcorr`
is a drop-in for torch-tiltxcorr's function (its keywords, its DFT centre on
even sizes; docs/engine.md).
`align_tilt_series` takes the same arguments and returns a `TiltxcorrResult`
with per-view correlation scores, peak significance, the views judged
unusable (blocked, dark, blank) with their reasons, and notes of what the
engine adapted, too. `bin_chunks` and `align_binned_views`
do the same on views that arrive a few at a time (a stack read from disk),
so that only the binned views are ever held in memory.

Fiducial-less fine alignment (IMOD's patch tracking + tiltalign):

>>> result = fiducialless_alignment(ts, angles, 85.0)  # doctest: +SKIP
>>> result.tilt_axis_angle, result.tilt_angle_offset, result.shifts  # doctest: +SKIP

or step by step: `track_patches` (tracks in raw pixels), `solve_geometry`
(axis, shifts, tilt offset, optional rotations and magnifications), `find_slab`
(the specimen slab's surfaces in a back-projection, to level it by them).

Tomograms: `reconstruct` (weighted back-projection from raw views and their
transforms, as IMOD's tilt) and `reprojection_check` (each view against the
tomogram made without it), docs/reconstruction.md.
"""

from ..options import FINE_DEFAULTS, CoarseOptions, FineOptions, OptionError
from .binning import BinnedViews, bin_chunks
from .core import align_binned_views, align_tilt_series, chain_pairs, tiltxcorr
from .fine import FiducialLessResult, fiducialless_alignment
from .patches import PatchTracks, track_patches
from .projection import GeometrySolution, relevel, solve_geometry
from .reconstruct import ReprojectionCheck, reconstruct, reprojection_check
from .result import TiltxcorrResult
from .slab import SlabFit, SlabNotFound, find_slab
from .validation import ViewError

__all__ = [
    "FINE_DEFAULTS",
    "BinnedViews",
    "CoarseOptions",
    "FiducialLessResult",
    "FineOptions",
    "GeometrySolution",
    "OptionError",
    "PatchTracks",
    "ReprojectionCheck",
    "SlabFit",
    "SlabNotFound",
    "TiltxcorrResult",
    "ViewError",
    "align_binned_views",
    "align_tilt_series",
    "bin_chunks",
    "chain_pairs",
    "fiducialless_alignment",
    "find_slab",
    "reconstruct",
    "relevel",
    "reprojection_check",
    "solve_geometry",
    "tiltxcorr",
    "track_patches",
]
