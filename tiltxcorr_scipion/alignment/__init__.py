"""The alignment engine: pure torch, no Scipion.

>>> from tiltxcorr_scipion.alignment import tiltxcorr
>>> shifts = tiltxcorr(tilt_series=ts, tilt_angles=angles, tilt_axis_angle=85.0,
...                    low_pass_cutoff=0.25)  # doctest: +SKIP

`shifts` is `(b, 2)` `(dy, dx)` in input pixels: moving the content of each
view by `+shift` aligns it; the lowest-|tilt| view gets `(0, 0)`.
`align_tilt_series` takes the same arguments and returns a `TiltxcorrResult`
with per-view correlation scores too.
"""

from .core import align_tilt_series, chain_pairs, tiltxcorr
from .result import TiltxcorrResult

__all__ = ["tiltxcorr", "align_tilt_series", "TiltxcorrResult", "chain_pairs"]
