"""The alignment engine: pure torch, no Scipion.

>>> from tiltxcorr_scipion.alignment import tiltxcorr
>>> shifts = tiltxcorr(tilt_series=ts, tilt_angles=angles, tilt_axis_angle=85.0,
...                    low_pass_cutoff=0.25)  # doctest: +SKIP

`shifts` is `(b, 2)` `(dy, dx)` in input pixels: moving the content of each
view by `+shift` aligns it; the lowest-|tilt| view gets `(0, 0)`.
`align_tilt_series` takes the same arguments and returns a `TiltxcorrResult`
with per-view correlation scores, peak significance, the views judged
unusable (blocked, dark, blank) with their reasons, and notes of what the
engine adapted, too. `bin_chunks` and `align_binned_views`
do the same on views that arrive a few at a time (a stack read from disk),
so that only the binned views are ever held in memory.
"""

from ..options import CoarseOptions, OptionError
from .binning import BinnedViews, bin_chunks
from .core import align_binned_views, align_tilt_series, chain_pairs, tiltxcorr
from .result import TiltxcorrResult
from .validation import ViewError

__all__ = [
    "BinnedViews",
    "CoarseOptions",
    "OptionError",
    "TiltxcorrResult",
    "ViewError",
    "align_binned_views",
    "align_tilt_series",
    "bin_chunks",
    "chain_pairs",
    "tiltxcorr",
]
