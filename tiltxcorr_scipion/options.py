"""Alignment options: their defaults, limits and checks, in one torch-free place.

The engine (`tiltxcorr_scipion.alignment`), the Scipion form and the command
line all take their defaults from here, and check values with the same code,
so they cannot drift apart. Plain Python: importing this module loads neither
torch nor Scipion (plugin discovery and ``--help`` stay fast).

Frequencies are in cycles per pixel of the binned image the correlation runs
on (0.5 is Nyquist), as IMOD tiltxcorr's ``-radius1/-sigma1/-radius2/-sigma2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = [
    "AUTO_BINNING_MAX_FACTOR",
    "AUTO_BINNING_MAX_SIZE",
    "FIXED_PATTERN_CHOICES",
    "MIN_AREA_SIZE",
    "MAX_TILT_DEG",
    "MIN_BINNED_SIZE",
    "MIN_ENABLED_VIEWS",
    "CoarseOptions",
    "OptionError",
    "resolve_binning",
]

#: IMOD refuses to stretch beyond this tilt (1 / cos(82 deg) is already 7.2).
MAX_TILT_DEG = 82.0
#: Automatic binning reduces views to at most about this many pixels, as IMOD does...
AUTO_BINNING_MAX_SIZE = 1180
#: ...binning by at most this factor.
AUTO_BINNING_MAX_FACTOR = 4
#: Smallest side (pixels, after binning) the taper and the correlation can work with.
MIN_BINNED_SIZE = 24
#: Fewer enabled views than this cannot give a meaningful alignment of a tilt series.
MIN_ENABLED_VIEWS = 3
#: Choices of `CoarseOptions.fixed_pattern`.
FIXED_PATTERN_CHOICES = ("auto", "on", "off")
#: IMOD needs at least this many pixels between the ends of XMinAndMax / YMinAndMax.
MIN_AREA_SIZE = 24


class OptionError(ValueError):
    """An option value that cannot be used; `option` names the field (engine spelling).

    Callers with their own spelling (a form label, a ``--flag``) re-word the
    message with `describe`: ``str(error)`` is ``"<option>: <problem>"``.
    """

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem

    def describe(self, name: str) -> str:
        """The message with the option called `name` (e.g. ``"--taper"``)."""
        return f"{name}: {self.problem}"


def resolve_binning(binning: int | str, shape: tuple[int, int]) -> int:
    """The binning factor to use for views of `shape` `(h, w)`.

    `binning` is an integer >= 1, or ``"auto"`` (or 0): the smallest factor,
    up to `AUTO_BINNING_MAX_FACTOR`, that brings the larger side to at most
    `AUTO_BINNING_MAX_SIZE` pixels, as IMOD's tiltxcorr chooses it.
    """
    if binning == "auto" or (type(binning) is int and binning == 0):
        size = max(shape)
        for factor in range(1, AUTO_BINNING_MAX_FACTOR + 1):
            if size / factor <= AUTO_BINNING_MAX_SIZE:
                return factor
        return AUTO_BINNING_MAX_FACTOR
    if type(binning) is not int or binning < 1:
        raise OptionError("binning", f"must be 'auto' (or 0) or a positive integer, got {binning!r}")
    return binning


def _number(option: str, value, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> float:
    """`value` as a float within `[low, high]` (ends open as asked), or an `OptionError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(option, f"must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise OptionError(option, f"must be in {interval}, got {value:g}")
    return float(value)


def _int_pair(option: str, value) -> tuple[int, int]:
    """`value` as a pair of integers, or an `OptionError`."""
    try:
        first, last = value
    except (TypeError, ValueError):
        raise OptionError(option, f"must be a pair of integers, got {value!r}") from None
    for item in (first, last):
        if isinstance(item, bool) or not isinstance(item, int):
            if not (isinstance(item, float) and item.is_integer()):
                raise OptionError(option, f"must be a pair of integers, got {value!r}")
    return int(first), int(last)


@dataclass(frozen=True)
class CoarseOptions:
    """Options of the coarse alignment (`align_tilt_series`), with IMOD's defaults.

    Creating one checks every value (`OptionError` names the bad one), so a
    caller can check a whole set of options before any work starts.

    Attributes
    ----------
    low_pass_cutoff, low_pass_sigma, high_pass_sigma, high_pass_radius
        IMOD's correlation filter (``-radius2``, ``-sigma2``, ``-sigma1``,
        ``-radius1``), cycles per binned pixel; IMOD's recommended 0.25,
        0.05, 0.03 and 0. ``low_pass_cutoff`` 0 disables the low-pass.
    taper_fraction
        Width of the edge taper, as a fraction of each side (at least 5 px);
        IMOD ``-taper``.
    pad_fraction
        Zero padding on each side, as a fraction of the size (at most 20 px);
        IMOD ``-pad``.
    binning
        ``"auto"`` (or 0): bin so that the views are at most 1180 pixels, up
        to 4x, as IMOD does; or an integer factor. Shifts are always in input
        pixels.
    cumulative
        IMOD's CumulativeCorrelation: the final pass correlates each view with
        the equally weighted sum of the already aligned lower-tilt views of
        its branch (``reference_memory`` is then 1).
    reference_memory
        In the final pass each view is correlated with a weighted sum of the
        lower-tilt views of its branch: the neighbour weighs 1, the next
        ``reference_memory``, then its square... 0 uses the neighbour alone.
    refine
        Locate each peak exactly on the band-limited correlation (Newton's
        method on its Fourier series); False: parabolic fit on a coarse grid.
    max_shift
        Largest shift (input pixels) accepted between neighbouring views;
        None: any shift the correlation can hold.
    interpolation
        ``"bilinear"`` or ``"bicubic"`` resampling for the cosine stretch.
    fixed_pattern
        A pattern fixed in the camera frame (gain-reference residue), which
        correlates at zero shift in every pair and pulls the alignment
        there. ``"auto"``: detected (a pixel-sharp correlation at exactly
        zero shift between different views) and then removed; ``"on"``:
        always removed; ``"off"``: left alone. Removing means subtracting
        the mean high-passed view, which holds the pattern once the specimen
        has moved about, scaled to each view. IMOD's ExcludeCentralPeak
        answers the same problem by ignoring the correlation peak on a
        strip through zero shift; like it, ``"on"`` hurts a series that is
        aligned already (the specimen then stays put as well).
    x_min_max, y_min_max
        IMOD's XMinAndMax / YMinAndMax: first and last column (X) / row (Y)
        of the area to correlate, in input pixels numbered from 0, both
        included, as placed on the zero-tilt view; at tilt `t` the area's
        centre moves towards the tilt axis, its distance across the axis
        times `cos(t)`, so that it holds the same specimen (IMOD's rule),
        and it is kept inside the view. None: the whole width / height less
        `borders`. Each overrides that direction's border.
    borders
        IMOD's BordersInXandY: `(x, y)` input pixels trimmed off each edge
        of the area to correlate (0, 0: the whole view).
    angle_offset
        IMOD's AngleOffset: degrees added to every tilt angle (a specimen
        tilted at zero stage tilt, e.g. a lamella's milling angle). The
        stretch, the choice of the reference view (smallest |tilt + offset|)
        and the +-82 degree limit all use the offset tilts.
    absolute_cosine_stretch
        IMOD's AbsoluteCosineStretch: the final pass stretches every view into
        the reference view's frame (by `cos(t_ref) / cos(t)`, IMOD's code for
        this option) before summing views into references; this engine has
        always done so, hence True by default. False: IMOD's default for
        cumulative references: the lower-tilt views are summed unstretched
        and each view is stretched onto its lower-tilt neighbour only.
    adaptive
        Measure the significance of every correlation peak and adapt to the
        data: the first stage on coarser views while its peaks are weak,
        then redone against averaged references (each view against the sum
        of the views before it) where they stay weak; a low-pass where
        neighbouring views stop agreeing (never above `low_pass_cutoff`),
        frequencies weighted by their measured signal-to-noise ratio, the
        final pass binned accordingly; a wider search for views whose
        first-stage peak was not significant; blank views found by their
        lack of correlation. False: the given filter and binning only, as
        IMOD (views are still screened, flagged and bridged).
    """

    low_pass_cutoff: float = 0.25
    low_pass_sigma: float = 0.05
    high_pass_sigma: float = 0.03
    high_pass_radius: float = 0.0
    taper_fraction: float = 0.1
    pad_fraction: float = 0.05
    binning: int | str = "auto"
    cumulative: bool = False
    reference_memory: float = 0.75
    refine: bool = True
    max_shift: float | None = None
    interpolation: str = "bilinear"
    fixed_pattern: str = "auto"
    x_min_max: tuple[int, int] | None = None
    y_min_max: tuple[int, int] | None = None
    borders: tuple[int, int] = (0, 0)
    angle_offset: float = 0.0
    absolute_cosine_stretch: bool = True
    adaptive: bool = True

    def __post_init__(self) -> None:
        for name in ("low_pass_cutoff", "high_pass_radius"):
            _number(name, getattr(self, name), 0.0, 0.5)
        for name in ("low_pass_sigma", "high_pass_sigma"):
            _number(name, getattr(self, name), 0.0, math.inf)
        _number("taper_fraction", self.taper_fraction, 0.0, 0.5, high_open=True)
        _number("pad_fraction", self.pad_fraction, 0.0, 0.5)
        _number("reference_memory", self.reference_memory, 0.0, 1.0)
        if self.binning != "auto":
            resolve_binning(self.binning, (1, 1))  # raises for a bad value
        for name in ("cumulative", "refine"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.max_shift is not None:
            _number("max_shift", self.max_shift, 0.0, math.inf, low_open=True)
        if self.interpolation not in ("bicubic", "bilinear"):
            raise OptionError("interpolation",
                              f"must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.fixed_pattern not in FIXED_PATTERN_CHOICES:
            raise OptionError("fixed_pattern", f"must be one of {', '.join(FIXED_PATTERN_CHOICES)}, "
                                               f"got {self.fixed_pattern!r}")
        for name in ("absolute_cosine_stretch", "adaptive"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"must be True or False, got {getattr(self, name)!r}")
        _number("angle_offset", self.angle_offset, -90.0, 90.0, low_open=True, high_open=True)
        borders = _int_pair("borders", self.borders)
        if min(borders) < 0:
            raise OptionError("borders", f"must be two pixel counts >= 0, got {self.borders!r}")
        object.__setattr__(self, "borders", borders)
        for name in ("x_min_max", "y_min_max"):
            value = getattr(self, name)
            if value is None:
                continue
            first, last = _int_pair(name, value)
            if first < 0 or last - first < MIN_AREA_SIZE:
                raise OptionError(name, f"must be (first, last) pixels numbered from 0 with last - "
                                        f"first >= {MIN_AREA_SIZE}, got {value!r}")
            object.__setattr__(self, name, (first, last))

    def area(self, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The area to correlate in views of `shape` `(h, w)` input pixels, at zero tilt.

        Returns `((first_row, last_row), (first_col, last_col))`, both ends
        included, or None for the whole view. Raises an `OptionError` when
        the area does not fit in the views (IMOD: "Impossible amount to trim
        by or incorrect coordinates").
        """
        h, w = shape
        bx, by = self.borders
        cols = self.x_min_max if self.x_min_max is not None else (bx, w - 1 - bx)
        rows = self.y_min_max if self.y_min_max is not None else (by, h - 1 - by)
        for name, (first, last), size in (("x_min_max" if self.x_min_max else "borders", cols, w),
                                          ("y_min_max" if self.y_min_max else "borders", rows, h)):
            if first < 0 or last > size - 1 or last - first < MIN_AREA_SIZE:
                raise OptionError(name, f"pixels {first}..{last} do not fit in views of {h} rows x "
                                        f"{w} columns with at least {MIN_AREA_SIZE + 1} pixels "
                                        "between the ends")
        if cols == (0, w - 1) and rows == (0, h - 1):
            return None
        return rows, cols

    @classmethod
    def from_kwargs(cls, **kwargs) -> CoarseOptions:
        """`CoarseOptions(**kwargs)`, with an unknown name reported as an `OptionError`."""
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                raise OptionError(name, f"unknown option; known: {', '.join(sorted(known))}")
        return cls(**kwargs)
