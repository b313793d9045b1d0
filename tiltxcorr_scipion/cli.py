"""Command line: align a tilt series outside Scipion, with IMOD output files.

    tiltxcorr-scipion align STACK.mrc --tlt STACK.tlt --axis 85 [--out PREFIX] [--aligned]
    tiltxcorr-scipion reconstruct STACK.mrc --xf STACK.xf --tlt STACK.tlt --axis 0

Arguments are parsed and checked here, everything else is the shared
per-tilt-series path (`tiltxcorr_scipion.pipeline`), then a table is printed.
Exit status: 0 on success, 2 for bad input or an output that cannot be
written (a one-line ``error:`` message, no traceback, no partial file), 3 when
the self-check found no self-consistent alignment (a warning; the files are
written), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from .options import (
    LEVEL_BY,
    RECONSTRUCTION_NOISE_FILTERS,
    RECONSTRUCTION_WEIGHTINGS,
    CoarseOptions,
    FineOptions,
    OptionError,
    check_aligned_binning,
    check_option,
)

__all__ = ["main", "parse_view_list", "reconstruct_command"]

PROG = "tiltxcorr-scipion"
#: Exit status when the self-check finds no self-consistent alignment (the files are written).
EXIT_UNRELIABLE = 3
EXIT_TEXT = ("Exit status: 0 done, 2 bad input or unwritable output (a one-line message),\n"
             f"{EXIT_UNRELIABLE} done but unreliable: the self-check found no self-consistent "
             "alignment\n(a warning on stderr; the files are written), 130 interrupted.")
DEFAULTS = CoarseOptions()
FINE = FineOptions()
#: The preview's largest width (pipeline.PREVIEW_MAX_WIDTH; not imported: parsing stays light).
PREVIEW_WIDTH = 512

#: Engine option -> its command-line flag (the name every message uses).
OPTION_FLAGS = {
    "low_pass_cutoff": "--low-pass",
    "low_pass_sigma": "--low-pass-sigma",
    "high_pass_sigma": "--high-pass-sigma",
    "high_pass_radius": "--high-pass-radius",
    "taper_fraction": "--taper",
    "pad_fraction": "--pad",
    "binning": "--binning",
    "cumulative": "--cumulative",
    "refine": "--no-refine",
    "max_shift": "--max-shift",
    "interpolation": "--interpolation",
    "fixed_pattern": "--fixed-pattern",
    "x_min_max": "--xminmax",
    "y_min_max": "--yminmax",
    "borders": "--borders",
    "angle_offset": "--angle-offset",
    "absolute_cosine_stretch": "--absolute-cosine-stretch",
    "adaptive": "--no-adaptive",
}


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


# --------------------------------------------------------------------------- parsing
def parse_view_list(text: str) -> tuple[range, ...]:
    """IMOD-style list of 1-based view numbers, ``"1,4-6,40"``, as sorted, merged ranges.

    Ranges stay ranges (``1-1000000000`` costs nothing). pyworkflow's
    ``getListFromRangeString`` is not used: it builds every number in a list
    and lets reversed ranges (``6-4``) pass silently.
    """
    spans: list[tuple[int, int]] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            first, _, last = part.partition("-")
            low, high = int(first), int(last or first)
            if low > high:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of view numbers like 1,4-6,40") from None
        if low < 1:
            raise argparse.ArgumentTypeError(f"view numbers start at 1, got {text!r}")
        spans.append((low, high))
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple(range(low, high + 1) for low, high in merged)


def _option_type(option: str, convert, expected: str = "a number"):
    """An argparse type: convert the text, then check it as the engine would."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        try:
            return check_option(option, value)
        except OptionError as error:
            raise argparse.ArgumentTypeError(error.problem) from None
    return parse


def _int_pair(text: str) -> tuple[int, int]:
    first, _, last = text.replace(" ", "").partition(",")
    return int(first), int(last)


def _xy_pair(expected: str):
    """An argparse type for "X,Y" (or one number for both) -> `(x, y)` positive integers."""
    def parse(text: str) -> tuple[int, int]:
        try:
            values = [int(v) for v in text.replace(" ", "").split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected} like 64,64") from None
        if len(values) == 1:
            values *= 2
        if len(values) != 2 or min(values) < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected} like 64,64")
        return values[0], values[1]
    return parse


def _fine_options(args: argparse.Namespace) -> FineOptions:
    """The fine alignment's options from the arguments (sizes given X,Y become rows, cols)."""
    flip = lambda pair: None if pair is None else (pair[1], pair[0])  # noqa: E731
    try:
        return FineOptions(
            size_of_patches=flip(args.patch_size), overlap_of_patches=args.patch_overlap,
            number_of_patches=flip(args.number_of_patches), iterations=args.iterations,
            length_and_overlap=tuple(args.length_and_overlap),
            solve_axis=not args.fixed_axis,
            rotation_group_size=1 if args.rotation_per_view else args.axis_groups,
            magnification_group_size=args.magnification_groups,
            tilt_group_size=args.tilt_groups, level_specimen=args.level_specimen,
            level_by=args.level_by, whole_view_weight=args.whole_view_weight,
            robust=args.robust, robust_k=args.residual_cutoff)
    except (OptionError, ValueError, TypeError) as error:
        raise UserError(str(error)) from None


def _binning_value(text: str) -> int | str:
    return "auto" if text in ("auto", "0") else int(text)  # 0 means auto, as in the form


def _positive_number(convert, what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (np.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _add_common_arguments(parser: argparse.ArgumentParser, *, plot_help: str) -> None:
    """The stack, its angles and the outputs: what ``align`` and ``fine`` share."""
    parser.add_argument("stack", metavar="STACK",
                       help="MRC tilt-series stack (.mrc, .st, ...), views in any tilt order")
    inputs = parser.add_argument_group("input")
    inputs.add_argument("--tlt", metavar="FILE",
                        help="tilt angles in degrees, one per line in stack order (IMOD .tlt or "
                             ".rawtlt); default: STACK's name with .tlt, else .rawtlt")
    inputs.add_argument("--axis", metavar="DEG", type=_finite_float, required=True,
                        help="tilt axis angle in degrees from the image Y axis, counter-clockwise "
                             "positive (IMOD's RotationAngle, Scipion's tilt axis angle); required")
    inputs.add_argument("--exclude", metavar="LIST", type=parse_view_list, default=(),
                        help="views to leave out of the alignment, 1-based stack positions like "
                             "1,4-6 (IMOD's -SkipViews); they get the identity transform")
    inputs.add_argument("--pixel-size", metavar="A", type=_positive_number(float, "a positive "
                                                                           "number"),
                        help="pixel size in Angstrom for the .ali header (default: STACK's header, "
                             "or 1 if the header has none)")

    outputs = parser.add_argument_group("output")
    outputs.add_argument("--out", metavar="PREFIX",
                         help="output path prefix (default: STACK without its extension); a "
                              "folder (ending in /) writes FOLDER/STACKNAME.*")
    outputs.add_argument("--aligned", action="store_true",
                         help="also write the aligned stack PREFIX.ali")
    outputs.add_argument("--aligned-binning", metavar="N", default=1,
                         type=_positive_number(int, "an integer >= 1"),
                         help="bin the aligned stack by N (block averaging; header pixel size "
                              "multiplied by N); default 1")
    outputs.add_argument("--plot", action="store_true",
                         help=f"also write PREFIX_alignment.png ({plot_help})")
    outputs.add_argument("--preview", action="store_true",
                         help="also write PREFIX_preview.mrc: a tomogram of the alignment at most "
                              f"{PREVIEW_WIDTH} voxels wide, and check each view against the "
                              "tomogram made without it (reported, and drawn in the plot)")
    outputs.add_argument("--preview-thickness", metavar="PX",
                         type=_positive_number(float, "a positive number"),
                         help="preview thickness in stack pixels (default: a quarter of the "
                              "larger side; 1.5 times the slab a fine alignment found)")
    outputs.add_argument("--overwrite", action="store_true",
                         help="replace existing output files (default: refuse)")
    outputs.add_argument("--progress", dest="progress", action="store_true", default=None,
                         help="draw a progress bar on stderr (default: when stderr is a terminal)")
    outputs.add_argument("--no-progress", dest="progress", action="store_false",
                         help="never draw a progress bar")
    outputs.add_argument("-q", "--quiet", action="store_true",
                         help="print nothing but errors (no per-view table)")



class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2), as every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tiltxcorr-scipion`` (subcommands ``align`` and ``fine``)."""
    parser = _Parser(
        prog=PROG,
        description="Coarse tilt-series alignment by stretched cross-correlation (IMOD "
                    "tiltxcorr's method, in PyTorch), writing IMOD files to continue in etomo.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    align = commands.add_parser(
        "align", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="align a tilt series; write PREFIX.prexf, PREFIX.prexg, PREFIX.tlt",
        description="Align a tilt series and write, next to PREFIX:\n"
                    "  PREFIX.prexf  view-to-previous transforms, as IMOD tiltxcorr writes them\n"
                    "  PREFIX.prexg  global transforms, as 'xftoxg -nfit 0' makes them from the\n"
                    "                .prexf (give it to 'newstack -xform'); they equal the\n"
                    "                alignment minus its mean shift\n"
                    "  PREFIX.tlt    the tilt angles, one per line\n"
                    "  PREFIX.ali    with --aligned: the aligned stack (Fourier-shifted, the\n"
                    "                lowest-tilt view unmoved), binned by --aligned-binning\n"
                    "  PREFIX_alignment.png  with --plot: shifts and correlation per view\n"
                    "Files appear only when complete; if one cannot be written, none is left.",
        epilog="Filter frequencies are in cycles per pixel of the binned image used for the\n"
               "correlation (0.5 = Nyquist), as IMOD's -radius2/-sigma2/-sigma1/-radius1.\n"
               "Views are numbered by their 1-based position in the stack, as in IMOD.\n\n"
               "example:\n"
               f"  {PROG} align TS_01.st --tlt TS_01.rawtlt --axis 85.3 --aligned "
               "--aligned-binning 4\n\n"
               + EXIT_TEXT)
    _add_common_arguments(align, plot_help="shifts and correlation per view")

    engine = align.add_argument_group("alignment (IMOD tiltxcorr's options and defaults)")
    frequency = lambda option: _option_type(option, float)  # noqa: E731
    engine.add_argument("--low-pass", dest="low_pass_cutoff", metavar="F",
                        type=frequency("low_pass_cutoff"),
                        default=DEFAULTS.low_pass_cutoff,
                        help="low-pass cutoff of the correlation filter, cycles/pixel (IMOD "
                             f"-radius2); default {DEFAULTS.low_pass_cutoff:g}")
    engine.add_argument("--low-pass-sigma", dest="low_pass_sigma", metavar="F",
                        type=frequency("low_pass_sigma"),
                        default=DEFAULTS.low_pass_sigma,
                        help="Gaussian fall-off beyond the cutoff, cycles/pixel (IMOD -sigma2); "
                             f"default {DEFAULTS.low_pass_sigma:g}")
    engine.add_argument("--high-pass-sigma", dest="high_pass_sigma", metavar="F",
                        type=frequency("high_pass_sigma"),
                        default=DEFAULTS.high_pass_sigma,
                        help="high-pass: inverted Gaussian rising from zero frequency, "
                             f"cycles/pixel (IMOD -sigma1); default {DEFAULTS.high_pass_sigma:g}")
    engine.add_argument("--high-pass-radius", dest="high_pass_radius", metavar="F",
                        type=frequency("high_pass_radius"),
                        default=DEFAULTS.high_pass_radius,
                        help="radius below which the high-pass starts, cycles/pixel (IMOD "
                             f"-radius1); default {DEFAULTS.high_pass_radius:g}")
    engine.add_argument("--taper", dest="taper_fraction", metavar="F",
                        type=frequency("taper_fraction"),
                        default=DEFAULTS.taper_fraction,
                        help="edge taper width as a fraction of each side (IMOD -taper); "
                             f"default {DEFAULTS.taper_fraction:g}")
    engine.add_argument("--pad", dest="pad_fraction", metavar="F",
                        type=frequency("pad_fraction"),
                        default=DEFAULTS.pad_fraction,
                        help="zero padding per side as a fraction of the size (IMOD -pad); "
                             f"default {DEFAULTS.pad_fraction:g}")
    engine.add_argument("--binning", dest="binning", metavar="N",
                        type=_option_type("binning", _binning_value),
                        default=DEFAULTS.binning,
                        help="bin the views for the correlation: 'auto' or 0 (at most 1180 pixels, "
                             "up to 4x, as IMOD) or an integer; shifts stay in stack pixels")
    engine.add_argument("--cumulative", action="store_true", default=DEFAULTS.cumulative,
                        help="correlate each view with the sum of the already aligned lower-tilt "
                             "views (IMOD -cumulative)")
    engine.add_argument("--no-refine", dest="refine", action="store_false",
                        default=DEFAULTS.refine,
                        help="locate peaks by a parabolic fit only, not the exact sub-pixel "
                             "refinement")
    engine.add_argument("--max-shift", dest="max_shift", metavar="PX",
                        type=_option_type("max_shift", float),
                        default=DEFAULTS.max_shift,
                        help="largest shift between neighbouring views, in stack pixels "
                             "(default: any)")
    engine.add_argument("--interpolation", choices=("bicubic", "bilinear"),
                        default=DEFAULTS.interpolation,
                        help=f"resampling for the cosine stretch; default {DEFAULTS.interpolation}")
    engine.add_argument("--fixed-pattern", dest="fixed_pattern", choices=("auto", "on", "off"),
                        default=DEFAULTS.fixed_pattern,
                        help="fixed-pattern noise (gain-reference residue, IMOD "
                             "ExcludeCentralPeak): 'auto' detects and removes it, 'on' always "
                             f"removes, 'off' leaves it; default {DEFAULTS.fixed_pattern}")
    engine.add_argument("--xminmax", dest="x_min_max", metavar="FIRST,LAST",
                        type=_option_type("x_min_max", _int_pair, "two integers like 10,200"),
                        default=DEFAULTS.x_min_max,
                        help="columns of the area to correlate, numbered from 0, as placed on the "
                             "zero-tilt view (IMOD XMinAndMax); default: the whole width")
    engine.add_argument("--yminmax", dest="y_min_max", metavar="FIRST,LAST",
                        type=_option_type("y_min_max", _int_pair, "two integers like 10,200"),
                        default=DEFAULTS.y_min_max,
                        help="rows of the area to correlate (IMOD YMinAndMax); default: the "
                             "whole height")
    engine.add_argument("--borders", dest="borders", metavar="X,Y",
                        type=_option_type("borders", _int_pair, "two integers like 10,200"),
                        default=DEFAULTS.borders,
                        help="pixels left out of the correlation on each side in X and Y (IMOD "
                             "BordersInXandY); default 0,0")
    engine.add_argument("--angle-offset", dest="angle_offset", metavar="DEG",
                        type=_option_type("angle_offset", float), default=DEFAULTS.angle_offset,
                        help="degrees added to every tilt angle for the stretch (IMOD "
                             "AngleOffset), e.g. a lamella's milling angle; default 0")
    engine.add_argument("--absolute-cosine-stretch", dest="absolute_cosine_stretch",
                        action=argparse.BooleanOptionalAction,
                        default=DEFAULTS.absolute_cosine_stretch,
                        help="final pass: stretch every view into the reference view's frame "
                             "before summing references (IMOD AbsoluteCosineStretch); "
                             "--no-absolute-cosine-stretch sums them unstretched, IMOD's default "
                             "for cumulative references; default on")
    engine.add_argument("--no-adaptive", dest="adaptive", action="store_false",
                        default=DEFAULTS.adaptive,
                        help="use exactly the given filter and binning, as IMOD; by default the "
                             "engine measures each peak's significance and adapts to noisy data "
                             "(views are screened and flagged either way)")
    engine.add_argument("--exclude-bad", action="store_true",
                        help="leave the views found unusable (blocked, dark, blank) out of the "
                             "files as --exclude does (IMOD's SkipViews); by default they keep "
                             "their best estimate and are only listed")
    engine.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute: 'cuda' (a GPU), 'cpu', or 'auto' (the GPU if "
                             "torch sees one); default auto")

    fine = commands.add_parser(
        "fine", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fiducial-less fine alignment: refine the tilt axis, the tilt angles (offset) "
             "and the shifts; write PREFIX.xf, .tlt, .fid",
        description="Fiducial-less fine alignment, IMOD's patch-tracking route: a coarse "
                    "alignment, a grid of\npatches tracked through the series (tiltxcorr), "
                    "and tiltalign's projection model fitted\nto the tracks. Writes, next to "
                    "PREFIX:\n"
                    "  PREFIX.xf             the transforms, as tiltalign writes them (the tilt "
                    "axis turned\n                        onto Y; give them to 'newstack "
                    "-xform')\n"
                    "  PREFIX.tlt            the refined tilt angles (the offset that levels "
                    "the specimen\n                        included unless --no-level)\n"
                    "  PREFIX.fid            the tracks as an IMOD model (tiltalign, 3dmod)\n"
                    "  PREFIX_residuals.txt  RMS residual and points per view\n"
                    "  PREFIX_landmarks.tsv  the tracks as Scipion tomo's landmark table\n"
                    "  PREFIX_alignment.png  with --plot: residuals and tracks\n"
                    "  PREFIX.ali            with --aligned: the aligned stack\n"
                    "Files appear only when complete; if one cannot be written, none is left.",
        epilog="Sizes are in pixels of STACK; views are numbered by their 1-based position in "
               "the stack.\n\nexample:\n"
               f"  {PROG} fine TS_01.st --tlt TS_01.rawtlt --axis 84.5 --plot\n\n"
               + EXIT_TEXT)
    _add_common_arguments(fine, plot_help="residual per view, tracks and the solved axis")
    tracking = fine.add_argument_group("patch tracking (IMOD tiltxcorr's options)")
    tracking.add_argument("--patch-size", metavar="X,Y", type=_xy_pair("a patch size"),
                          help="patch size in pixels (SizeOfPatchesXandY; one number for both); "
                               "default: an eighth of the smaller side as tracked (at most "
                               "640 px), at least 48 of those pixels")
    tracking.add_argument("--patch-overlap", metavar="F", type=float,
                          default=FINE.overlap_of_patches,
                          help="fractional overlap of neighbouring patches "
                               f"(OverlapOfPatchesXandY); default {FINE.overlap_of_patches:g}")
    tracking.add_argument("--number-of-patches", metavar="X,Y", type=_xy_pair("patch counts"),
                          help="patches in X and Y, instead of the overlap "
                               "(NumberOfPatchesXandY)")
    tracking.add_argument("--iterations", metavar="N", type=int, default=FINE.iterations,
                          help="correlations per patch and view (IterateCorrelations); "
                               f"default {FINE.iterations}")
    tracking.add_argument("--length-and-overlap", metavar="L,O", type=_xy_pair("two view counts"),
                          default=FINE.length_and_overlap,
                          help="cut tracks into pieces of L views overlapping by O "
                               "(LengthAndOverlap, imodchopconts); default "
                               f"{','.join(str(v) for v in FINE.length_and_overlap)}")
    solve = fine.add_argument_group("geometry solve (IMOD tiltalign's model)")
    axis = solve.add_mutually_exclusive_group()
    axis.add_argument("--fixed-axis", action="store_true",
                      help="keep the tilt axis angle --axis (default: refine one angle)")
    axis.add_argument("--axis-groups", metavar="N", type=int,
                      help="an in-plane rotation per group of N views (RotOption 3)")
    axis.add_argument("--rotation-per-view", action="store_true",
                      help="an in-plane rotation per view (RotOption 1)")
    solve.add_argument("--magnification-groups", metavar="N", type=int,
                       help="a magnification per group of N views (MagOption)")
    solve.add_argument("--tilt-groups", metavar="N", type=int,
                       help="a tilt angle change per group of N views (TiltOption)")
    solve.add_argument("--no-level", dest="level_specimen", action="store_false",
                       help="report the tilt angle offset that levels the specimen but leave it "
                            "out of the written tilt angles")
    solve.add_argument("--level-by", choices=LEVEL_BY, default=FINE.level_by,
                       help="level the specimen by the slab's surfaces found in a "
                            "back-projection (IMOD's tomopitch, automated; the points' plane "
                            "when no slab stands out) or by the plane of the solved points "
                            f"(tiltalign's); default {FINE.level_by}")
    solve.add_argument("--whole-view-weight", metavar="W", type=float,
                       default=FINE.whole_view_weight,
                       help="where patches are tracked at coarser pixels than whole views "
                            "(views over 640 px): weight (0..1) of the shifts of the whole "
                            "views, correlated again with the solved axis and tilt angles, "
                            "averaged with the solve's (0: the solve's alone); default "
                            f"{FINE.whole_view_weight:g}")
    solve.add_argument("--no-robust", dest="robust", action="store_false",
                       help="plain least squares (default: robust fitting, as tiltalign's "
                            "RobustFitting and WeightWholeTracks)")
    solve.add_argument("--residual-cutoff", metavar="K", type=float, default=FINE.robust_k,
                       help="robust fitting's cutoff in robust standard deviations (Tukey's "
                            f"constant); default {FINE.robust_k:g}")
    solve.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to compute; default auto")
    _add_reconstruct_parser(commands)
    return parser


def _add_reconstruct_parser(commands) -> None:
    rec = commands.add_parser(
        "reconstruct", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a tomogram from a stack and its transforms (weighted back-projection, as IMOD "
             "tilt); write PREFIX.mrc",
        description="Reconstruct a tomogram by weighted back-projection (IMOD tilt's method: "
                    "radial filter,\noptional SIRT-like filter) straight from the raw stack and "
                    "its transforms, and write\n"
                    "  PREFIX.mrc  float32 volume: Z the beam direction, Y along the tilt axis, "
                    "X across it,\n"
                    "              voxel size = pixel size x binning (what IMOD's tilt and "
                    "trimvol -rx\n"
                    "              give; docs/reconstruction.md)\n"
                    "The file appears only when complete.",
        epilog="Sizes are in pixels of STACK; views are numbered by their 1-based position in "
               "the stack.\n--axis is the tilt axis in the frame of the transformed views: the "
               "acquisition's angle\nafter a pure-shift .prexg, 0 after a tiltalign-style .xf "
               "that turns the axis onto Y.\n\nexample:\n"
               f"  {PROG} reconstruct TS_01.st --xf TS_01.xf --tlt TS_01.tlt --axis 0 "
               "--thickness 400 --binning 4\n"
               f"  {PROG} reconstruct TS_01.st --xf TS_01.prexg --tlt TS_01.rawtlt --axis 85.3\n\n"
               "Exit status: 0 done, 2 bad input or unwritable output (a one-line message), "
               "130 interrupted.")
    rec.add_argument("stack", metavar="STACK", help="MRC tilt-series stack (the raw views)")
    inputs = rec.add_argument_group("input")
    inputs.add_argument("--xf", metavar="FILE", required=True,
                        help="IMOD transforms, one line A11 A12 A21 A22 DX DY per view in stack "
                             "order (.xf, .prexg); required")
    inputs.add_argument("--tlt", metavar="FILE", required=True,
                        help="tilt angles in degrees, one per line in stack order; required")
    inputs.add_argument("--axis", metavar="DEG", type=_finite_float, required=True,
                        help="tilt axis angle in the transformed views, degrees from Y, "
                             "counter-clockwise positive; required")
    inputs.add_argument("--exclude", metavar="LIST", type=parse_view_list, default=(),
                        help="views to leave out, 1-based stack positions like 1,4-6")
    inputs.add_argument("--pixel-size", metavar="A",
                        type=_positive_number(float, "a positive number"),
                        help="pixel size in Angstrom (default: STACK's header, else 1)")
    geometry = rec.add_argument_group("reconstruction (IMOD tilt's options)")
    geometry.add_argument("--thickness", metavar="N",
                          type=_positive_number(int, "an integer >= 1"),
                          help="thickness in stack pixels (THICKNESS; default: a quarter of "
                               "the views' larger side)")
    geometry.add_argument("--binning", metavar="N", default=1,
                          type=_positive_number(int, "an integer >= 1"),
                          help="bin the views by N first (voxels N stack pixels wide); default 1")
    geometry.add_argument("--z-shift", metavar="PX", type=_finite_float, default=0.0,
                          help="move the specimen up by PX stack pixels (SHIFT's Z); default 0")
    geometry.add_argument("--offset", metavar="DEG", type=_finite_float, default=0.0,
                          help="degrees added to every tilt angle (OFFSET); default 0")
    geometry.add_argument("--radial", metavar="CUTOFF,FALLOFF", type=_radial_pair,
                          default=(0.35, 0.035),
                          help="radial filter: linear to CUTOFF, then a Gaussian fall-off of sd "
                               "FALLOFF, cycles/pixel (above 1: Fourier pixels); default "
                               "0.35,0.035")
    geometry.add_argument("--fake-sirt", metavar="N", type=_positive_number(int, "an integer "
                                                                             ">= 1"),
                          default=0,
                          help="a SIRT-like filter equal to N iterations (FakeSIRTiterations); "
                               "default: plain weighted back-projection")
    geometry.add_argument("--weighting", choices=RECONSTRUCTION_WEIGHTINGS, default="exact",
                          help="exact: each view weighted by the density of all views' lines "
                               "for an object as thick as the tomogram (keeps a slab's broad "
                               "density), then the radial filter; ramp: IMOD tilt's ramp as "
                               "it is; default exact")
    geometry.add_argument("--noise-filter", choices=RECONSTRUCTION_NOISE_FILTERS,
                          default="fsc",
                          help="fsc: every frequency weighted by how well tomograms from the "
                               "even and the odd views agree there (a Wiener filter measured "
                               "on the data: a noiseless series is left as it is); none: the "
                               "plain weighted back-projection, as IMOD's tilt; default fsc")
    geometry.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                          help="where to compute; default auto")
    outputs = rec.add_argument_group("output")
    outputs.add_argument("--out", metavar="PREFIX",
                         help="output path prefix: writes PREFIX.mrc (default: STACK without its "
                              "extension plus _rec); a folder (ending in /) writes "
                              "FOLDER/STACKNAME_rec.mrc")
    outputs.add_argument("--overwrite", action="store_true",
                         help="replace an existing output file (default: refuse)")
    outputs.add_argument("--progress", dest="progress", action="store_true", default=None,
                         help="draw a progress bar on stderr (default: when stderr is a terminal)")
    outputs.add_argument("--no-progress", dest="progress", action="store_false",
                         help="never draw a progress bar")
    outputs.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _radial_pair(text: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v >= 0 for v in values) or values[0] == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a cutoff and fall-off like "
                                         "0.35,0.035")
    return values


def _reconstruct_inputs(args: argparse.Namespace):
    """The stack, transforms, angles and enabled views of ``reconstruct``; or a UserError."""
    from .convert.imod import read_tlt, read_xf
    from .convert.mrc import MrcStack, StackReadError

    try:
        source = MrcStack.open(args.stack)
        for path in (args.xf, args.tlt):
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such file")
        transforms, angles = read_xf(args.xf), read_tlt(args.tlt)
    except (StackReadError, ValueError) as error:
        raise UserError(str(error)) from None
    n = source.n_views
    for path, count in ((args.xf, len(transforms)), (args.tlt, len(angles))):
        if count != n:
            raise UserError(f"{args.stack} has {n} views but {path} has {count} lines: give "
                            "one per view, in stack order")
    beyond = [span.stop - 1 for span in args.exclude if span.stop - 1 > n]
    if beyond:
        raise UserError(f"--exclude {beyond[0]}: {args.stack} has only {n} views")
    enabled = np.ones(n, dtype=bool)
    for span in args.exclude:
        enabled[span.start - 1:span.stop - 1] = False
    return source, transforms, angles, enabled


def _reconstruct_output(args: argparse.Namespace) -> str:
    """PREFIX.mrc, checked: its folder exists, it is not the input, it is new (or --overwrite)."""
    from .convert.files import remove_temporaries

    folder, name = _output_folder_and_name(args.stack, args.out)
    if args.out is None or args.out.endswith(os.sep) or os.path.isdir(args.out):
        name += "_rec"
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {name}.mrc: folder {folder} does not exist")
    path = os.path.join(folder, name + ".mrc")
    if _same_file(path, args.stack):
        raise UserError(f"{path} is the input stack: choose another --out")
    remove_temporaries(folder, [os.path.basename(path)])
    if os.path.exists(path) and not args.overwrite:
        raise UserError(f"{os.path.relpath(path)} already exists; use --overwrite to replace "
                        "it, or choose another --out")
    return path


def reconstruct_command(args: argparse.Namespace) -> int:
    """Run ``reconstruct``: check the inputs, back-project, write PREFIX.mrc (or nothing)."""
    from .alignment.reconstruct import tomogram_frame
    from .pipeline import (
        PREVIEW_THICKNESS_FRACTION,
        TiltSeriesFailure,
        TiltSeriesViews,
        reconstruct_views,
    )

    source, transforms, angles, enabled = _reconstruct_inputs(args)
    h, w = source.view_shape
    b = args.binning
    if b > min(h, w):
        raise UserError(f"--binning {b}: the views are only {h} x {w} pixels")
    thickness = args.thickness or max(b, round(PREVIEW_THICKNESS_FRACTION * max(h, w)))
    if thickness < b:
        raise UserError(f"--thickness {thickness}: less than one voxel at --binning {b}")
    out_path = _reconstruct_output(args)
    views = TiltSeriesViews.from_stack(source, angles, enabled=enabled,
                                       pixel_size=args.pixel_size)
    device = _device(args.device)
    show = bool(sys.stderr.isatty() if args.progress is None else args.progress) and not args.quiet
    started = time.monotonic()
    bar, update = _progress_bar("back-projecting", "rows", show, bool(args.progress))
    try:
        reconstruct_views(views, transforms, angles, args.axis, thickness=thickness, binning=b,
                          path=out_path, z_shift=args.z_shift, tilt_angle_offset=args.offset,
                          radial=args.radial, fake_sirt_iterations=args.fake_sirt,
                          weighting=args.weighting, noise_filter=args.noise_filter,
                          device=device, progress=update)
    except TiltSeriesFailure as failure:
        advice = (("repair it or leave it out with --exclude "
                   + ",".join(str(v) for v in failure.views)) if failure.views
                  else failure.advice)
        raise UserError(f"{args.stack}: {failure.cause}"
                        + (f"; {advice}" if advice else "")) from None
    finally:
        bar.close()
    if not args.quiet:
        nz, ny, nx = tomogram_frame((h, w), args.axis, thickness=thickness, binning=b).shape
        sys.stdout.write(f"wrote {os.path.relpath(out_path)} ({nx} x {ny} x {nz} voxels of "
                         f"{views.sampling_rate * b:g} A, binned by {b}) from "
                         f"{int(enabled.sum())} of {len(enabled)} views in "
                         f"{time.monotonic() - started:.1f} s on {device.type}\n")
    return 0


# --------------------------------------------------------------------------- the command
def _engine_options(args: argparse.Namespace) -> CoarseOptions:
    """The engine options of the parsed arguments, checked together (e.g. the filter band)."""
    try:
        return CoarseOptions(**{option: getattr(args, option) for option in OPTION_FLAGS})
    except OptionError as error:
        raise UserError(error.describe(OPTION_FLAGS.get(error.option, error.option))) from None


def _default_tlt(stack: str) -> str:
    base = os.path.splitext(stack)[0]
    for ext in (".tlt", ".rawtlt"):
        if os.path.isfile(base + ext):
            return base + ext
    raise UserError(f"no tilt angles for {stack}: neither {base}.tlt nor {base}.rawtlt exists; "
                    "give the file with --tlt")


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _output_folder_and_name(stack: str, out: str | None) -> tuple[str, str]:
    """Where the outputs go: ``--out`` as a prefix, or a folder (``dir/``) for STACKNAME.*."""
    stack_name = os.path.splitext(os.path.basename(stack))[0]
    if out is None:
        return os.path.dirname(os.path.abspath(stack)), stack_name
    if out.endswith(os.sep) or os.path.isdir(out):
        return os.path.abspath(out), stack_name
    return os.path.dirname(os.path.abspath(out)), os.path.basename(out)


def _device(choice: str):
    from .pipeline import select_device

    if choice == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA GPU on this machine; "
                            "use --device cpu")
    return select_device({"auto": None, "cpu": False, "cuda": True}[choice])[0]


def _progress_bar(label: str, unit: str, enabled: bool, forced: bool):
    """A tqdm bar on stderr, drawn after 0.5 s (at once with --progress), or a no-op.

    With `unit` ``"stages"`` it shows the name of the stage under way instead
    (the fine alignment reports stages, not counts).
    """
    from tqdm import tqdm

    if unit == "stages":
        bar = tqdm(total=None, disable=not enabled, file=sys.stderr, delay=0.0 if forced else 0.5,
                   bar_format=f"{label:<10} {{desc}} {{elapsed_s:6.1f}} s", mininterval=0.1)
        return bar, bar.set_description_str

    bar = tqdm(total=0, disable=not enabled, file=sys.stderr, delay=0.0 if forced else 0.5,
               ascii=".#", bar_format=f"{label:<10} [{{bar:30}}] {{n_fmt}}/{{total_fmt}} {unit} "
                                      "{elapsed_s:6.1f} s", mininterval=0.1)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def _print_table(out: TextIO, outcome, low: np.ndarray) -> None:
    views = outcome.views
    out.write(" view    tilt       dx       dy   correlation  residual\n")
    for i in views.stack_order:
        score = outcome.correlation[i]
        residual = outcome.residual[i]
        residual_text = f"{residual:8.2f}" if np.isfinite(residual) else f"{'-':>8}"
        if outcome.unusable[i]:
            note = "UNUSABLE" + (", excluded" if not views.enabled[i] else "")
            text = "       -" if not np.isfinite(score) else f"{score:8.3f}"
        elif not views.enabled[i]:
            note, text = "excluded", "       -"
        elif i == outcome.reference_position:
            note, text = "reference", "       -"
        else:
            note, text = ("LOW" if low[i] else ""), f"{score:8.3f}"
        out.write(f"{views.stack_positions[i]:5d} {views.tilt_angles[i]:7.2f} "
                  f"{outcome.shifts[i, 1]:8.2f} {outcome.shifts[i, 0]:8.2f}   {text}     "
                  f"{residual_text}  {note}".rstrip() + "\n")


def _read_inputs(args: argparse.Namespace):
    """The stack (checked header), its tilt angles and file, the enabled views; or a UserError."""
    from .convert.imod import read_tlt
    from .convert.mrc import MrcStack, StackReadError

    stack = args.stack
    try:
        source = MrcStack.open(stack)
        tlt_path = args.tlt if args.tlt is not None else _default_tlt(stack)
        if not os.path.isfile(tlt_path):
            raise UserError(f"{tlt_path}: no such file; give the tilt angles with --tlt")
        angles = read_tlt(tlt_path)
    except (StackReadError, ValueError) as error:
        raise UserError(str(error)) from None
    n = source.n_views
    if len(angles) != n:
        raise UserError(f"{stack} has {n} views but {tlt_path} has {len(angles)} tilt angles: "
                        "give one angle per view, in stack order")
    beyond = [span.stop - 1 for span in args.exclude if span.stop - 1 > n]
    if beyond:
        raise UserError(f"--exclude {beyond[0]}: {stack} has only {n} views")
    enabled = np.ones(n, dtype=bool)
    for span in args.exclude:
        enabled[span.start - 1:span.stop - 1] = False
    if args.aligned:
        try:
            check_aligned_binning(args.aligned_binning, source.view_shape)
        except ValueError as error:
            raise UserError(f"--aligned-binning: {error}") from None
    return source, tlt_path, angles, enabled


def _plan_outputs(args: argparse.Namespace, tlt_path: str, *, fine: bool
                  ) -> tuple[dict[str, str], bool]:
    """The output files by kind, and whether the input .tlt is kept as the output one."""
    from .convert.files import remove_temporaries
    from .pipeline import output_paths

    folder, name = _output_folder_and_name(args.stack, args.out)
    try:
        paths = output_paths(folder, name, plot=args.plot, aligned=args.aligned, fine=fine,
                             preview=args.preview)
    except ValueError as error:
        raise UserError(f"cannot write {args.out or name}.*: {error}") from None
    keep_input_tlt = _same_file(paths["tlt"], tlt_path)
    if keep_input_tlt and fine:
        raise UserError(f"the refined tilt angles would replace the input {tlt_path}: give "
                        "another --out, or keep the raw angles in a .rawtlt file as IMOD does")
    if keep_input_tlt:
        del paths["tlt"]
    if _same_file(paths.get("ali", ""), args.stack):
        raise UserError(f"{paths['ali']} is the input stack: choose another --out")
    # partial files a killed earlier run of this command left beside these outputs
    remove_temporaries(folder, [os.path.basename(path) for path in paths.values()])
    existing = [path for path in paths.values() if os.path.exists(path)]
    if existing and not args.overwrite:
        raise UserError(f"{os.path.relpath(existing[0])} already exists; use --overwrite to "
                        "replace it, or choose another --out")
    return paths, keep_input_tlt


def _run(args: argparse.Namespace, views, options, paths: dict[str, str], progress_unit: str):
    """Align and write every file (or none); returns the outcome and the alignment's seconds."""
    from .pipeline import TiltSeriesFailure, align_views, write_outputs

    device = _device(args.device)
    show = bool(sys.stderr.isatty() if args.progress is None else args.progress) and not args.quiet
    started = time.monotonic()
    bar, update = _progress_bar("aligning", progress_unit, show, bool(args.progress))
    try:
        outcome = align_views(views, options, args.axis, device=device, progress=update)
        for warning in outcome.warnings:
            sys.stderr.write(f"{PROG}: warning: {warning}\n")
        if getattr(args, "exclude_bad", False):
            outcome = outcome.exclude_unusable()
        bar.close()
        elapsed = time.monotonic() - started
        bar, update = _progress_bar("writing", "views", show, bool(args.progress))
        write_outputs(outcome, paths, aligned_binning=args.aligned_binning, progress=update,
                      preview_thickness=args.preview_thickness)
    except TiltSeriesFailure as failure:
        if failure.views:  # say how, with this command
            advice = ("repair it or leave it out with --exclude "
                      + ",".join(str(v) for v in failure.views))
        else:
            advice = failure.advice
        raise UserError(f"{args.stack}: {failure.cause}"
                        + (f"; {advice}" if advice else "")) from None
    except ValueError as error:
        raise UserError(f"{args.stack}: {error}") from None
    finally:
        bar.close()
    return outcome, elapsed


def align_command(args: argparse.Namespace) -> int:
    """Run ``align``: check everything, align, write all files or none, then report."""
    from .pipeline import TiltSeriesViews

    options = _engine_options(args)
    source, tlt_path, angles, enabled = _read_inputs(args)
    try:
        options.area(source.view_shape)
    except OptionError as error:
        raise UserError(error.describe(OPTION_FLAGS[error.option])) from None
    paths, keep_input_tlt = _plan_outputs(args, tlt_path, fine=False)
    views = TiltSeriesViews.from_stack(source, angles, enabled=enabled,
                                       pixel_size=args.pixel_size)
    outcome, elapsed = _run(args, views, options, paths, "pairs")
    if not args.quiet:
        _report(sys.stdout, outcome, elapsed, paths, keep_input_tlt, tlt_path)
    return _unreliable_status(args, outcome)


def fine_command(args: argparse.Namespace) -> int:
    """Run ``fine``: coarse alignment, patch tracking and geometry solve; files; a report."""
    from .pipeline import TiltSeriesViews

    options = _fine_options(args)
    source, tlt_path, angles, enabled = _read_inputs(args)
    paths, _ = _plan_outputs(args, tlt_path, fine=True)
    views = TiltSeriesViews.from_stack(source, angles, enabled=enabled,
                                       pixel_size=args.pixel_size)
    outcome, elapsed = _run(args, views, options, paths, "stages")
    if not args.quiet:
        _report_fine(sys.stdout, outcome, elapsed, paths)
    return _unreliable_status(args, outcome)


def _unreliable_status(args: argparse.Namespace, outcome) -> int:
    """0, or `EXIT_UNRELIABLE` with a warning when the self-check found the alignment unreliable.

    The files are written either way: the plot shows what went wrong.
    """
    if not outcome.unreliable:
        return 0
    sys.stderr.write(f"{PROG}: warning: {args.stack}: unreliable alignment: "
                     f"{outcome.unreliable_reason}; the files are written, but check the plot "
                     "before using them\n")
    return EXIT_UNRELIABLE


def _report(out: TextIO, outcome, elapsed: float, paths: dict[str, str], keep_input_tlt: bool,
            tlt_path: str) -> None:
    from .plots import low_correlation_views

    views = outcome.views
    low = low_correlation_views(views.tilt_angles, outcome.correlation,
                                views.enabled & ~outcome.unusable)
    _print_table(out, outcome, low)
    out.write(f"aligned {int(views.enabled.sum())} of {views.n_views} views in {elapsed:.1f} s on "
              f"{outcome.device.split(':')[0]} (correlation binned by {outcome.binning}; reference "
              f"view {outcome.reference_number} at "
              f"{views.tilt_angles[outcome.reference_position]:.2f} deg)\n")
    if low.any():
        out.write("low correlation, check these views: "
                  + ", ".join(str(v) for v in np.sort(views.stack_positions[low])) + "\n")
    for note in outcome.series_notes:
        out.write(f"note: {note}\n")
    if outcome.unreliable:
        out.write(f"UNRELIABLE: {outcome.unreliable_reason}\n")
    for i in views.stack_order[outcome.unusable[views.stack_order]]:
        out.write(f"unusable view {views.stack_positions[i]}: {outcome.reasons[i]}"
                  + (" (excluded: --exclude-bad)" if not views.enabled[i] else "") + "\n")
    _write_excluded(out, outcome)
    for kind in ("prexf", "prexg", "tlt", "ali", "png"):
        if kind in paths:
            out.write(f"wrote {os.path.relpath(paths[kind])}\n")
        elif kind == "tlt" and keep_input_tlt:
            out.write(f"wrote {os.path.relpath(tlt_path)} (the input, kept)\n")
    _report_preview(out, outcome)


def _report_preview(out: TextIO, outcome) -> None:
    """The preview's file and size, and the reprojection check's verdict."""
    preview = outcome.preview
    if preview is None:
        return
    nz, ny, nx = preview.shape
    out.write(f"wrote {os.path.relpath(preview.path)} (preview tomogram {nx} x {ny} x {nz}, "
              f"binned by {preview.binning})\n")
    check, views = preview.check, outcome.views
    worst = check.worst_view
    if worst is None:
        return
    flagged = np.sort(views.stack_positions[check.flagged.numpy()])
    unchecked = np.sort(views.stack_positions[check.unchecked.numpy()])
    line = (f"reprojection check: worst view {views.stack_positions[worst]} "
            f"{float(check.residual_px[worst]):.2f} px (limit {check.limit_px:g} px); "
            + ("flagged: " + ", ".join(str(v) for v in flagged) if flagged.size
               else "no view flagged"))
    if unchecked.size:
        line += "; unchecked (no ray all other views saw): " + ", ".join(map(str, unchecked))
    if check.thickness < preview.thickness - 0.5:
        line += (f"; checked in {check.thickness:.0f} px thick tomograms (the tilt steps "
                 f"leave ghosts in thicker ones)")
    out.write(line + "\n")


def _write_excluded(out: TextIO, outcome) -> None:
    """One line per view the pipeline excluded by itself (beyond the stretch's limit)."""
    views = outcome.views
    for i in views.stack_order:
        if outcome.excluded[i]:
            out.write(f"excluded view {views.stack_positions[i]}: {outcome.excluded[i]}\n")


def _report_fine(out: TextIO, outcome, elapsed: float, paths: dict[str, str]) -> None:
    views, fine = outcome.views, outcome.fine
    out.write(" view    tilt  refined   residual  points\n")
    counts = np.isfinite(fine.tracks[..., 0]).sum(axis=0)
    for i in views.stack_order:
        note = "" if views.enabled[i] else "  excluded"
        residual = (f"{fine.residuals[i]:10.3f}" if np.isfinite(fine.residuals[i])
                    else f"{'-':>10}")
        out.write(f"{views.stack_positions[i]:5d} {views.tilt_angles[i]:7.2f} "
                  f"{fine.tilt_angles[i]:8.2f} {residual} {counts[i]:7d}{note}\n")
    out.write(f"{fine.axis_text(outcome.tilt_axis_angle)}, {fine.offset_text()}, "
              f"mean residual {fine.mean_residual:.3f} px, "
              f"{fine.n_contours} tracks ({fine.n_rejected_contours} rejected); "
              f"{elapsed:.1f} s on {outcome.device.split(':')[0]}\n")
    if fine.shifts_text():
        out.write(f"{fine.shifts_text()}\n")
    _write_excluded(out, outcome)
    warning = fine.uncertainty_warning()
    if warning:
        out.write(f"UNCERTAIN: {warning}: check the geometry before using it\n")
    for kind in ("xf", "tlt", "fid", "residuals", "landmarks", "png", "ali"):
        if kind in paths:
            out.write(f"wrote {os.path.relpath(paths[kind])}\n")
    _report_preview(out, outcome)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiltxcorr-scipion`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "align":
            return align_command(args)
        if args.command == "fine":
            return fine_command(args)
        if args.command == "reconstruct":
            return reconstruct_command(args)
        parser.error(f"unknown command {args.command!r}")
    except UserError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``| head``): the files are written;
        # stop quietly, as a Unix tool killed by SIGPIPE does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
