"""Alignment options: their defaults, limits and checks, in one torch-free place.

The engine (`tiltxcorr_scipion.alignment`), the Scipion form and the command
line all take their defaults from here, and check values with the same code,
so they cannot drift apart. Plain Python and numpy: importing this module loads
neither torch nor Scipion (plugin discovery and ``--help`` stay fast).

Frequencies are in cycles per pixel of the binned image the correlation runs
on (0.5 is Nyquist), as IMOD tiltxcorr's ``-radius1/-sigma1/-radius2/-sigma2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "AUTO_BINNING_MAX_FACTOR",
    "AUTO_BINNING_MAX_SIZE",
    "FIXED_PATTERN_CHOICES",
    "MIN_AREA_SIZE",
    "MAX_PIXEL_MAGNITUDE",
    "MAX_TILT_DEG",
    "MIN_TILT_RANGE_DEG",
    "MIN_BINNED_SIZE",
    "MIN_ENABLED_VIEWS",
    "RECONSTRUCTION_NOISE_FILTERS",
    "RECONSTRUCTION_WEIGHTINGS",
    "FINE_DEFAULTS",
    "CoarseOptions",
    "FineOptions",
    "OptionError",
    "check_aligned_binning",
    "check_binned_size",
    "check_option",
    "filter_response",
    "resolve_binning",
    "tilt_range_problem",
]

#: A tomogram's weighting (`alignment.reconstruct`): "exact" (the default: one over the
#: density of all views' lines for an object as thick as the tomogram, then IMOD's RADIAL
#: cutoff and fall-off) or "ramp" (IMOD tilt's ramp as it is).
RECONSTRUCTION_WEIGHTINGS = ("exact", "ramp")
#: A tomogram's noise filter (`alignment.reconstruct`): "fsc" (the default: every frequency
#: weighted by the Fourier shell correlation of two half reconstructions, even and odd
#: views, turned into the full set's (2 F / (1 + F)): a Wiener-like filter set by the data,
#: which leaves a noiseless series as it is) or "none" (the plain weighted back-projection,
#: as IMOD's tilt gives it).
RECONSTRUCTION_NOISE_FILTERS = ("fsc", "none")
#: IMOD refuses to stretch beyond this tilt (1 / cos(82 deg) is already 7.2).
MAX_TILT_DEG = 82.0
#: Pixels beyond this magnitude overflow float32 correlations and Fourier shifts (a corrupt
#: file: detector counts, int16 or float data stay far below).
MAX_PIXEL_MAGNITUDE = 1e15
#: Tilt angles spanning fewer degrees than this are not a tilt series (unread, or radians).
MIN_TILT_RANGE_DEG = 5.0
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


def tilt_range_problem(tilt_angles) -> str | None:
    """Why these tilt angles (degrees, the enabled views') cannot be right, with the likely cause.

    None when they span at least `MIN_TILT_RANGE_DEG`. All equal: the angles
    were not read (no tilt file, an import that did not set them); a few
    degrees within +-pi/2: they are radians.
    """
    angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    angles = angles[np.isfinite(angles)]
    if angles.size < 2:
        return None
    low, high = float(angles.min()), float(angles.max())
    if high - low >= MIN_TILT_RANGE_DEG:
        return None
    if high == low:
        return (f"all {angles.size} tilt angles are {low:g} degrees: a tilt series cannot be "
                "aligned without its tilt angles (likely cause: they were not read, e.g. a "
                "missing or wrong .tlt file, or an import that did not set them)")
    text = (f"the tilt angles span only {high - low:.2f} degrees ({low:g} to {high:g}), "
            f"less than the {MIN_TILT_RANGE_DEG:g} any tilt series covers")
    if max(abs(low), abs(high)) <= math.pi / 2 + 1e-6:
        return (text + f" (likely cause: they are in radians; {low:g} to {high:g} radians "
                f"are {math.degrees(low):.1f} to {math.degrees(high):.1f} degrees)")
    return text + " (likely cause: the wrong tilt file, or angles in radians)"


def check_binned_size(shape: tuple[int, int], binning: int | str) -> int:
    """The binning factor for views of `shape` `(h, w)`; a ValueError when they are too small for it."""
    factor = resolve_binning(binning, shape)
    binned = (shape[0] // factor, shape[1] // factor)
    if min(binned) >= MIN_BINNED_SIZE:
        return factor
    if factor == 1:
        raise ValueError(f"views of {shape[0]} x {shape[1]} pixels are too small: the taper "
                         f"and the correlation need at least {MIN_BINNED_SIZE} pixels on "
                         "each side")
    raise ValueError(f"views of {shape[0]} x {shape[1]} pixels binned by {factor} are "
                     f"{binned[0]} x {binned[1]}: at least {MIN_BINNED_SIZE} pixels per side "
                     "are needed; use a smaller binning")


def check_aligned_binning(binning, view_shape: tuple[int, int]) -> int:
    """Binning of an aligned stack as an int; a ValueError if not >= 1 or larger than the views."""
    if isinstance(binning, bool) or not isinstance(binning, (int, np.integer)) or binning < 1:
        raise ValueError(f"aligned-stack binning must be an integer >= 1, got {binning!r}")
    h, w = view_shape
    if min(h, w) // int(binning) < 1:
        raise ValueError(f"aligned-stack binning {binning} is larger than the {w} x {h} views")
    return int(binning)


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


def _flag(option: str, value) -> bool:
    if not isinstance(value, bool):
        raise OptionError(option, f"must be True or False, got {value!r}")
    return value


def _binning(option: str, value) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return "auto"
    return resolve_binning(value, (1, 1))


def _max_shift(option: str, value) -> float | None:
    return None if value is None else _number(option, value, 0.0, math.inf, low_open=True)


def _interpolation(option: str, value) -> str:
    if value not in ("bicubic", "bilinear"):
        raise OptionError(option, f"must be 'bicubic' or 'bilinear', got {value!r}")
    return value


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


def _fixed_pattern(option: str, value) -> str:
    if value not in FIXED_PATTERN_CHOICES:
        raise OptionError(option, f"must be one of {', '.join(FIXED_PATTERN_CHOICES)}, "
                                  f"got {value!r}")
    return value


def _borders(option: str, value) -> tuple[int, int]:
    borders = _int_pair(option, value)
    if min(borders) < 0:
        raise OptionError(option, f"must be two pixel counts >= 0, got {value!r}")
    return borders


def _area_range(option: str, value) -> tuple[int, int] | None:
    if value is None:
        return None
    first, last = _int_pair(option, value)
    if first < 0 or last - first < MIN_AREA_SIZE:
        raise OptionError(option, f"must be (first, last) pixels numbered from 0 with last - "
                                  f"first >= {MIN_AREA_SIZE}, got {value!r}")
    return first, last


_FREQUENCY = lambda option, value: _number(option, value, 0.0, 0.5)  # noqa: E731
_SIGMA = lambda option, value: _number(option, value, 0.0, math.inf)  # noqa: E731

#: How each option's value is checked (and normalised) on its own.
_CHECKS = {
    "low_pass_cutoff": _FREQUENCY,
    "low_pass_sigma": _SIGMA,
    "high_pass_sigma": _SIGMA,
    "high_pass_radius": _FREQUENCY,
    "taper_fraction": lambda option, value: _number(option, value, 0.0, 0.5, high_open=True),
    "pad_fraction": lambda option, value: _number(option, value, 0.0, 0.5),
    "binning": _binning,
    "cumulative": _flag,
    "reference_memory": lambda option, value: _number(option, value, 0.0, 1.0),
    "refine": _flag,
    "max_shift": _max_shift,
    "interpolation": _interpolation,
    "fixed_pattern": _fixed_pattern,
    "x_min_max": _area_range,
    "y_min_max": _area_range,
    "borders": _borders,
    "angle_offset": lambda option, value: _number(option, value, -90.0, 90.0, low_open=True,
                                                  high_open=True),
    "absolute_cosine_stretch": _flag,
    "adaptive": _flag,
}


def check_option(option: str, value):
    """`value` checked (and normalised: binning 0 -> "auto") for `option`, or an `OptionError`.

    For callers that check one value as it is entered (a command-line
    argument); `CoarseOptions` checks every field this way, then the fields
    against each other.
    """
    if option not in _CHECKS:
        raise OptionError(option, f"unknown option; known: {', '.join(sorted(_CHECKS))}")
    return _CHECKS[option](option, value)


def filter_response(frequency, *, high_pass_sigma: float, high_pass_radius: float,
                    low_pass_cutoff: float, low_pass_sigma: float) -> np.ndarray:
    """IMOD's correlation filter at `frequency` (cycles/pixel, a number or array), float64.

    Frequencies in cycles per binned pixel, as tiltxcorr's -sigma1, -radius1,
    -radius2, -sigma2:

    - high-pass: with `high_pass_radius` 0, an inverted Gaussian
      `1 - exp(-f^2 / (2 sigma1^2))` rising from 0 at zero frequency; with a
      radius r1 > 0, 1 above r1 and a Gaussian fall-off of sd sigma1 below it;
    - low-pass: 1 up to `low_pass_cutoff` (r2), then a Gaussian roll-off of sd
      sigma2 (a hard edge if sigma2 = 0); r2 = 0 disables the low-pass.

    The engine builds its filter from this (``alignment.fourier.imod_filter``)
    and the options check refuses filters that pass nothing with it.
    """
    f = np.asarray(frequency, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if high_pass_radius > 0:
            below = (np.exp(-((f - high_pass_radius) ** 2) / (2 * high_pass_sigma ** 2))
                     if high_pass_sigma > 0 else np.zeros_like(f))
            response = np.where(f < high_pass_radius, below, 1.0)
        elif high_pass_sigma > 0:
            response = 1 - np.exp(-(f ** 2) / (2 * high_pass_sigma ** 2))
        else:
            response = np.ones_like(f)
        if low_pass_cutoff > 0:
            roll_off = (np.exp(-((f - low_pass_cutoff) ** 2) / (2 * low_pass_sigma ** 2))
                        if low_pass_sigma > 0 else np.zeros_like(f))
            response = response * np.where(f > low_pass_cutoff, roll_off, 1.0)
    return response


#: A filter whose strongest response is below this passes too little to correlate.
MIN_FILTER_PEAK = 0.2


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
        for item in fields(self):
            # frozen: normalised values are set through object.__setattr__
            object.__setattr__(self, item.name, check_option(item.name, getattr(self, item.name)))
        filters = {name: getattr(self, name) for name in (
            "high_pass_sigma", "high_pass_radius", "low_pass_cutoff", "low_pass_sigma")}
        if 0 < self.low_pass_cutoff <= self.high_pass_radius:
            raise OptionError("high_pass_radius", f"must be below the low-pass cutoff "
                              f"({self.low_pass_cutoff:g}), got {self.high_pass_radius:g}: "
                              "the correlation filter would pass (almost) nothing")
        peak = float(filter_response(np.linspace(0.0, 0.5, 501), **filters).max())
        if peak < MIN_FILTER_PEAK:
            raise OptionError(
                "high_pass_radius" if self.high_pass_radius > 0 else "high_pass_sigma",
                f"the correlation filter passes almost nothing (at most {peak:.2f} of any "
                f"frequency up to 0.5/px): the high-pass (radius {self.high_pass_radius:g}, "
                f"sigma {self.high_pass_sigma:g}) must stay well below the low-pass cutoff "
                f"({self.low_pass_cutoff:g}, fall-off {self.low_pass_sigma:g})")

    def area(self, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The area to correlate in views of `shape` `(h, w)` input pixels, at zero tilt.

        Returns `((first_row, last_row), (first_col, last_col))`, both ends
        included, or None for the whole view. Raises an `OptionError` when
        the area does not fit in the views (IMOD: "Impossible amount to trim
        by or incorrect coordinates").
        """
        if self.x_min_max is None and self.y_min_max is None and self.borders == (0, 0):
            return None  # the whole view: its size is check_binned_size's to judge
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


@dataclass(frozen=True)
class FineOptions:
    """Settings of patch tracking and of the geometry solve, with their defaults.

    Tracking (IMOD tiltxcorr's patch tracking; IMOD option names in brackets)
    -------------------------------------------------------------------------
    size_of_patches
        Patch size in input pixels, one number or `(rows, cols)`
        [SizeOfPatchesXandY, given there as X, Y]. None: an eighth of the
        smaller binned image side, at least 48 binned pixels.
    overlap_of_patches
        Minimum fractional overlap between neighbouring patches, which sets
        their number [OverlapOfPatchesXandY].
    number_of_patches
        `(rows, cols)` number of patches, instead of the overlap
        [NumberOfPatchesXandY].
    borders
        Input pixels left out at each image edge when laying out the patches
        [BordersInXandY].
    iterations
        Correlations per patch and view: each one after the first re-samples
        the patch where the previous one put it [IterateCorrelations].
    length_and_overlap
        `(length, overlap)`: contours longer than `length` views are cut into
        pieces of `length` views overlapping by at least `overlap`; None keeps
        whole contours [LengthAndOverlap; imodchopconts].
    min_contour_length
        Shorter contours (pieces) are dropped: a 3-D point needs views.
    min_relative_score
        A track ends where its correlation coefficient falls below this
        fraction of the median over the patches of the same view pair.
    max_jump
        A track ends where it moves more than this fraction of the patch size
        away from the median motion of the patches of the same view pair.
    min_contrast
        A patch is blank where its filtered standard deviation is below this
        fraction of that of the typical (90th percentile) patch of the
        reference view; blank patches are not tracked.
    low_pass_cutoff, low_pass_sigma, high_pass_sigma
        IMOD's correlation filter (-radius2, -sigma2, -sigma1) in cycles per
        binned pixel.
    taper_fraction, pad_fraction
        Edge taper and zero padding of each patch, as fractions of its size.
    binning
        Tracking binning: ``"auto"`` (the larger side at most 640 pixels) or a
        factor. Positions are always returned in input pixels.
    interpolation
        ``"bilinear"`` or ``"bicubic"`` resampling of the stretched patches.

    Geometry solve (IMOD tiltalign's model)
    ---------------------------------------
    rotation_group_size
        None: one tilt axis angle for the series. k >= 1: an in-plane rotation
        for each group of k views adjacent in tilt (1: every view) [RotOption].
    magnification_group_size
        None: all views at the same magnification; k >= 1: one magnification
        per group of k views, the reference view's group fixed at 1 [MagOption].
    tilt_group_size
        None: tilt angles stay nominal (only the common offset is found).
        k >= 1: one tilt change per group of k views, the reference view's
        group fixed [TiltOption].
    solve_axis
        Refine the tilt axis angle (False keeps the nominal one).
    robust
        Down-weight points and whole tracks with outlying residuals (Tukey's
        biweight, as tiltalign's RobustFitting and WeightWholeTracks).
    robust_k
        Tukey's constant in robust scale units (tiltalign's default 4.685);
        smaller values down-weight more points.
    max_iterations
        Levenberg-Marquardt iterations per fit.

    Whole pipeline
    --------------
    passes
        Track and solve this many times; each pass after the first tracks
        again with the refined axis, tilts and shifts.
    level_specimen
        Add the tilt angle offset that levels the specimen to the refined
        tilt angles (tiltalign/etomo's AngleOffset); False: report it only.
    level_by
        What "level" means: ``"surfaces"``, the slab's top and bottom found
        in a back-projection (IMOD's tomopitch, automated; `find_slab`), with
        the plane of the points as the fallback when no slab stands out; or
        ``"points"``, the plane of the solved points (tiltalign's).
    whole_view_weight
        Weight (0..1) of the whole-view shifts in the reported ones, where
        the patches were tracked at coarser pixels than the coarse engine
        correlates whole views at (the tracking bins views larger than 640
        pixels, the coarse engine those larger than 1180): after the solve,
        the coarse method is run again with the solved tilt axis and tilt
        angles, and its shifts (matched to the solve's on what no tilt series
        fixes, see `geometry.unfixed_motions`) are averaged with the solve's
        with this weight; the points are then re-fitted. Both estimates are
        chains of view pairs that drift at random; at coarser pixels the
        patches' drifts more, and on most simulated series the average
        drifted less than either (docs/fine-alignment.md). 0: the solve's
        shifts alone.
    check_shifts
        Let the views choose the reported shifts: the fine alignment's, the
        first coarse alignment's (put into the solved geometry) and their
        average are each checked by reprojection (every view against the
        tomogram made without it, `alignment.reprojection_check`); another
        candidate replaces the fine alignment's only where its squared
        residuals are smaller view by view (signed ranks, as the coarse
        self-check's `SIGNIFICANT`). False: the fine alignment's shifts.
    """

    size_of_patches: int | tuple[int, int] | None = None
    overlap_of_patches: float = 0.33
    number_of_patches: tuple[int, int] | None = None
    borders: int = 0
    iterations: int = 3
    length_and_overlap: tuple[int, int] | None = (16, 4)
    min_contour_length: int = 4
    min_relative_score: float = 0.4
    max_jump: float = 0.1
    min_contrast: float = 0.25
    low_pass_cutoff: float = 0.125
    low_pass_sigma: float = 0.03
    high_pass_sigma: float = 0.03
    taper_fraction: float = 0.15
    pad_fraction: float = 0.05
    binning: int | str = "auto"
    interpolation: str = "bilinear"

    rotation_group_size: int | None = None
    magnification_group_size: int | None = None
    tilt_group_size: int | None = None
    solve_axis: bool = True
    robust: bool = True
    robust_k: float = 4.685
    max_iterations: int = 50

    passes: int = 2
    level_specimen: bool = True
    level_by: str = "surfaces"
    whole_view_weight: float = 0.5
    check_shifts: bool = True

    def __post_init__(self) -> None:
        # Checked here, so that a form or command line learns of a bad value before
        # the coarse alignment runs; the engine functions check what they use again.
        for name in ("low_pass_cutoff", "low_pass_sigma", "high_pass_sigma", "taper_fraction",
                     "pad_fraction", "interpolation"):
            check_option(name, getattr(self, name))
        object.__setattr__(self, "binning", check_option("binning", self.binning))
        _number("overlap_of_patches", self.overlap_of_patches, 0.0, 1.0, high_open=True)
        _number("min_relative_score", self.min_relative_score, 0.0, 1.0)
        _number("whole_view_weight", self.whole_view_weight, 0.0, 1.0)
        for name in ("max_jump", "min_contrast", "robust_k"):
            _number(name, getattr(self, name), 0.0, math.inf, low_open=True)
        for name in ("iterations", "min_contour_length", "max_iterations", "passes", "borders"):
            value = getattr(self, name)
            low = 0 if name == "borders" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(name, f"must be an integer >= {low}, got {value!r}")
        for name in ("rotation_group_size", "magnification_group_size", "tilt_group_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise OptionError(name, f"must be None or an integer >= 1, got {value!r}")
        for name in ("size_of_patches", "number_of_patches"):
            value = getattr(self, name)
            if value is None:
                continue
            pair = (value, value) if isinstance(value, int) else _int_pair(name, value)
            if min(pair) < 1:
                raise OptionError(name, f"must be positive, got {value!r}")
        if self.length_and_overlap is not None:
            length, overlap = _int_pair("length_and_overlap", self.length_and_overlap)
            if length < 2 or not 0 <= overlap < length:
                raise OptionError("length_and_overlap", "must be a length >= 2 views and an "
                                  f"overlap below it, got {self.length_and_overlap!r}")
        for name in ("solve_axis", "robust", "level_specimen"):
            _flag(name, getattr(self, name))
        if self.level_by not in LEVEL_BY:
            raise OptionError("level_by", f"must be one of {', '.join(map(repr, LEVEL_BY))}, "
                              f"got {self.level_by!r}")


#: What `FineOptions.level_by` takes: the slab's surfaces, or the plane of the points.
LEVEL_BY = ("surfaces", "points")

#: The fine alignment's defaults, read by `track_patches`, `solve_geometry` and
#: `fiducialless_alignment`.
FINE_DEFAULTS = FineOptions()

#: Thickness (stack pixels) of a tomogram made to look at an alignment (the preview, the fine
#: alignment's shift check): this many times the slab a fine alignment found, else this
#: fraction of the views' larger side.
PREVIEW_SLAB_MARGIN = 1.5
PREVIEW_THICKNESS_FRACTION = 0.25

#: What the fine alignment aims for, in degrees: the tilt axis angle and the tilt angle offset
#: within these of the truth (docs/fine-alignment.md). A tilt series whose reported standard
#: error exceeds one of them is flagged.
AXIS_TARGET_DEG = 0.1
OFFSET_TARGET_DEG = 0.3


def uncertainty_warning(axis_error: float, offset_error: float) -> str | None:
    """Why a fine alignment's geometry is less certain than the targets, or None.

    `axis_error` and `offset_error` are one standard error in degrees (NaN:
    not estimated, e.g. the axis was not solved; never flagged).
    """
    reasons = [f"{name} uncertainty {error:.2f} deg exceeds the {target:g} deg target"
               for name, error, target in (("tilt axis", axis_error, AXIS_TARGET_DEG),
                                           ("tilt angle offset", offset_error,
                                            OFFSET_TARGET_DEG))
               if math.isfinite(error) and error > target]
    return "; ".join(reasons) or None


def plus_minus(error: float) -> str:
    """` +- 0.04` for a standard error in degrees, empty when none was estimated."""
    return f" +- {error:.2f}" if math.isfinite(error) else ""
