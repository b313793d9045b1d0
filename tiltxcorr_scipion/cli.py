"""Command line: coarse tilt-series alignment outside Scipion, with IMOD output files.

    tiltxcorr-scipion align STACK.mrc --tlt STACK.tlt --axis 85 [--out PREFIX] [--aligned]

writes ``PREFIX.prexf`` (view-to-previous transforms, as tiltxcorr writes),
``PREFIX.prexg`` (global, as ``xftoxg -nfit 0`` writes), ``PREFIX.tlt`` and,
with ``--aligned``, the aligned stack ``PREFIX.ali``. Exit status: 0 on
success, 2 for bad input (a one-line ``error:`` message, no traceback),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import numpy as np

__all__ = ["main", "parse_view_list"]

PROG = "tiltxcorr-scipion"


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


# --------------------------------------------------------------------------- progress
class ProgressBar:
    """A one-line text bar on a terminal stream, redrawn in place.

    Drawn only when `enabled`; redraws at most every `interval` seconds, and
    only once the task has run `delay` seconds (short runs stay quiet).
    """

    def __init__(self, label: str, stream: TextIO, *, enabled: bool, width: int = 30,
                 interval: float = 0.1, delay: float = 0.5, unit: str = "") -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self.width, self.interval, self.delay, self.unit = width, interval, delay, unit
        self.start = time.monotonic()
        self.last_draw = -math.inf
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = done >= total
        if now - self.start < self.delay and not self.drawn:
            return  # a short run (so far): stay quiet
        if not final and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        fraction = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label:<10} [{bar}] {done}/{total}{self.unit} "
                          f"{now - self.start:6.1f} s")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


# --------------------------------------------------------------------------- parsing
def parse_view_list(text: str) -> list[int]:
    """IMOD-style list of 1-based view numbers: ``"1,4-6,40"`` -> ``[1, 4, 5, 6, 40]``."""
    views: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                first, last = part.split("-", 1)
                low, high = int(first), int(last)
                if low > high:
                    raise ValueError
                views.update(range(low, high + 1))
            else:
                views.add(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of view numbers like 1,4-6,40") from None
    if any(v < 1 for v in views):
        raise argparse.ArgumentTypeError(f"view numbers start at 1, got {text!r}")
    return sorted(views)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= 0.5):
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.5, got {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _binning(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tiltxcorr-scipion`` (one subcommand: ``align``)."""
    parser = argparse.ArgumentParser(
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
                    "  PREFIX_alignment.png  with --plot: shifts and correlation per view",
        epilog="Filter frequencies are in cycles per pixel of the binned image used for the\n"
               "correlation (0.5 = Nyquist), as IMOD's -radius2/-sigma2/-sigma1/-radius1.\n\n"
               "example:\n"
               f"  {PROG} align TS_01.st --tlt TS_01.rawtlt --axis 85.3 --aligned "
               "--aligned-binning 4\n\n"
               "Exit status: 0 done, 2 bad input (a one-line message), 130 interrupted.")
    align.add_argument("stack", metavar="STACK",
                       help="MRC tilt-series stack (.mrc, .st, ...), views in any tilt order")
    inputs = align.add_argument_group("input")
    inputs.add_argument("--tlt", metavar="FILE",
                        help="tilt angles in degrees, one per line in stack order (IMOD .tlt or "
                             ".rawtlt); default: STACK's name with .tlt, else .rawtlt")
    inputs.add_argument("--axis", metavar="DEG", type=_finite_float, required=True,
                        help="tilt axis angle in degrees from the image Y axis, counter-clockwise "
                             "positive (IMOD's RotationAngle, Scipion's tilt axis angle); required")
    inputs.add_argument("--exclude", metavar="LIST", type=parse_view_list, default=[],
                        help="views to leave out of the alignment, 1-based stack positions like "
                             "1,4-6 (IMOD's -SkipViews); they get the identity transform")
    inputs.add_argument("--pixel-size", metavar="A", type=_positive_float,
                        help="pixel size in Angstrom for the .ali header (default: STACK's header, "
                             "or 1 if the header has none)")

    outputs = align.add_argument_group("output")
    outputs.add_argument("--out", metavar="PREFIX",
                         help="output path prefix (default: STACK without its extension)")
    outputs.add_argument("--aligned", action="store_true",
                         help="also write the aligned stack PREFIX.ali")
    outputs.add_argument("--aligned-binning", metavar="N", type=_positive_int, default=1,
                         help="bin the aligned stack by N (block averaging; header pixel size "
                              "multiplied by N); default 1")
    outputs.add_argument("--plot", action="store_true",
                         help="also write PREFIX_alignment.png (shifts and correlation per view)")
    outputs.add_argument("--overwrite", action="store_true",
                         help="replace existing output files (default: refuse)")
    outputs.add_argument("--progress", dest="progress", action="store_true", default=None,
                         help="draw a progress bar on stderr (default: when stderr is a terminal)")
    outputs.add_argument("--no-progress", dest="progress", action="store_false",
                         help="never draw a progress bar")
    outputs.add_argument("-q", "--quiet", action="store_true",
                         help="print nothing but errors (no per-view table)")

    engine = align.add_argument_group("alignment (IMOD tiltxcorr's options and defaults)")
    engine.add_argument("--low-pass", metavar="F", type=_fraction, default=0.25,
                        help="low-pass cutoff of the correlation filter, cycles/pixel (IMOD "
                             "-radius2); default 0.25")
    engine.add_argument("--low-pass-sigma", metavar="F", type=_fraction, default=0.05,
                        help="Gaussian fall-off beyond the cutoff, cycles/pixel (IMOD -sigma2); "
                             "default 0.05")
    engine.add_argument("--high-pass-sigma", metavar="F", type=_fraction, default=0.03,
                        help="high-pass: inverted Gaussian rising from zero frequency, "
                             "cycles/pixel (IMOD -sigma1); default 0.03")
    engine.add_argument("--high-pass-radius", metavar="F", type=_fraction, default=0.0,
                        help="radius below which the high-pass starts, cycles/pixel (IMOD "
                             "-radius1); default 0")
    engine.add_argument("--taper", metavar="F", type=_fraction, default=0.1,
                        help="edge taper width as a fraction of each side (IMOD -taper); "
                             "default 0.1")
    engine.add_argument("--pad", metavar="F", type=_fraction, default=0.05,
                        help="zero padding per side as a fraction of the size (IMOD -pad); "
                             "default 0.05")
    engine.add_argument("--binning", metavar="N", type=_binning, default="auto",
                        help="bin the views for the correlation: 'auto' (at most 1180 pixels, "
                             "up to 4x, as IMOD) or an integer; shifts stay in stack pixels")
    engine.add_argument("--cumulative", action="store_true",
                        help="correlate each view with the sum of the already aligned lower-tilt "
                             "views (IMOD -cumulative)")
    engine.add_argument("--no-refine", dest="refine", action="store_false",
                        help="locate peaks by a parabolic fit only, not the exact sub-pixel "
                             "refinement")
    engine.add_argument("--max-shift", metavar="PX", type=_positive_float,
                        help="largest shift between neighbouring views, in stack pixels "
                             "(default: any)")
    engine.add_argument("--interpolation", choices=("bicubic", "bilinear"), default="bilinear",
                        help="resampling for the cosine stretch; default bilinear")
    engine.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute: 'cuda' (a GPU), 'cpu', or 'auto' (the GPU if "
                             "torch sees one); default auto")
    return parser


# --------------------------------------------------------------------------- the command
def _default_tlt(stack: str) -> str:
    base = os.path.splitext(stack)[0]
    for ext in (".tlt", ".rawtlt"):
        if os.path.isfile(base + ext):
            return base + ext
    raise UserError(f"no tilt angles for {stack}: neither {base}.tlt nor {base}.rawtlt exists; "
                    "give the file with --tlt")


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _device(choice: str):
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")
    return torch.device(choice)


def _read_stack(path: str, skip: set[int]):
    """`(n, h, w)` shape, the kept views as float32 `(k, h, w)`, and the header pixel size."""
    from .convert.aligned_stack import open_stack

    try:
        handle = open_stack(path)
    except ValueError as error:
        raise UserError(str(error)) from None
    with handle:
        data = handle.data
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise UserError(f"{path} holds a {data.ndim}-D volume; expected a stack of 2-D views")
        n = data.shape[0]
        keep = [i for i in range(n) if i + 1 not in skip]
        views = np.empty((len(keep), *data.shape[1:]), dtype=np.float32)
        for j, i in enumerate(keep):
            views[j] = data[i]
            if not np.all(np.isfinite(views[j])):
                raise UserError(f"{path}: view {i + 1} contains NaN or infinite pixels; repair it "
                                f"or leave it out with --exclude {i + 1}")
        pixel_size = float(handle.voxel_size.x)
    return data.shape, keep, views, pixel_size


def _print_table(out: TextIO, angles, shifts, enabled, correlation, low) -> None:
    out.write(" view    tilt       dx       dy   correlation\n")
    for i in range(len(angles)):
        if not enabled[i]:
            note, score = "excluded", "       -"
        elif not np.isfinite(correlation[i]):
            note, score = "reference", "       -"
        else:
            note, score = ("LOW" if low[i] else ""), f"{correlation[i]:8.3f}"
        out.write(f"{i + 1:5d} {angles[i]:7.2f} {shifts[i, 1]:8.2f} {shifts[i, 0]:8.2f}"
                  f"   {score}  {note}\n".rstrip() + "\n")


def align_command(args: argparse.Namespace) -> int:
    """Run ``align``: read, align, write; raise `UserError` for bad input."""
    stack = args.stack
    if not os.path.isfile(stack):
        raise UserError(f"{stack}: no such file; give the path of an MRC tilt-series stack")
    tlt_path = args.tlt if args.tlt is not None else _default_tlt(stack)
    if not os.path.isfile(tlt_path):
        raise UserError(f"{tlt_path}: no such file; give the tilt angles with --tlt")
    prefix = args.out if args.out is not None else os.path.splitext(stack)[0]
    out_dir = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(out_dir):
        raise UserError(f"cannot write {prefix}.*: folder {out_dir} does not exist")
    paths = {"prexf": prefix + ".prexf", "prexg": prefix + ".prexg", "tlt": prefix + ".tlt"}
    if args.aligned:
        paths["ali"] = prefix + ".ali"
    if args.plot:
        paths["png"] = prefix + "_alignment.png"
    keep_input_tlt = _same_file(paths["tlt"], tlt_path)
    if _same_file(paths.get("ali", ""), stack):
        raise UserError(f"{paths['ali']} is the input stack: choose another --out")
    if not args.overwrite:
        existing = [p for key, p in paths.items()
                    if os.path.exists(p) and not (key == "tlt" and keep_input_tlt)]
        if existing:
            raise UserError(f"{existing[0]} already exists; use --overwrite to replace it, "
                            "or choose another --out")

    from .convert.imod import read_tlt

    try:
        angles = read_tlt(tlt_path)
    except ValueError as error:
        raise UserError(str(error)) from None
    skip = set(args.exclude)
    shape, keep, views, header_pixel_size = _read_stack(stack, skip)
    n = shape[0]
    if len(angles) != n:
        raise UserError(f"{stack} has {n} views but {tlt_path} has {len(angles)} tilt angles: "
                        "give one angle per view, in stack order")
    beyond = sorted(v for v in skip if v > n)
    if beyond:
        raise UserError(f"--exclude {beyond[0]}: {stack} has only {n} views")
    if len(keep) < 2:
        raise UserError(f"only {len(keep)} view(s) left to align in {stack}: at least 2 are "
                        "needed; exclude fewer views")

    import torch

    from .alignment import align_tilt_series

    device = _device(args.device)
    # --progress: always, from the start; by default only on a terminal, after 0.5 s
    show_bar = args.progress if args.progress is not None else sys.stderr.isatty()
    show_bar = bool(show_bar) and not args.quiet
    delay = 0.0 if args.progress else 0.5
    bar = ProgressBar("aligning", sys.stderr, enabled=show_bar, unit=" pairs", delay=delay)
    started = time.monotonic()
    try:
        result = align_tilt_series(
            torch.from_numpy(views).to(device), torch.from_numpy(angles[keep]), args.axis,
            low_pass_cutoff=args.low_pass, low_pass_sigma=args.low_pass_sigma,
            high_pass_sigma=args.high_pass_sigma, high_pass_radius=args.high_pass_radius,
            taper_fraction=args.taper, pad_fraction=args.pad, binning=args.binning,
            cumulative=args.cumulative, refine=args.refine, max_shift=args.max_shift,
            interpolation=args.interpolation, progress=bar)
    except ValueError as error:
        raise UserError(f"{stack}: {error}") from None
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    del views

    shifts = np.zeros((n, 2))
    correlation = np.full(n, np.nan)
    enabled = np.zeros(n, dtype=bool)
    shifts[keep] = result.shifts.detach().cpu().double().numpy()
    correlation[keep] = result.correlation.detach().cpu().double().numpy()
    enabled[keep] = True
    transforms = np.tile(np.eye(3), (n, 1, 1))
    transforms[:, 0, 2] = shifts[:, 1]  # DX = dx
    transforms[:, 1, 2] = shifts[:, 0]  # DY = dy

    from .convert.imod import global_to_previous, write_tlt, write_xf, xftoxg

    previous = global_to_previous(transforms)
    write_xf(paths["prexf"], previous)
    write_xf(paths["prexg"], xftoxg(previous))
    if not keep_input_tlt:
        write_tlt(paths["tlt"], angles)

    if args.aligned:
        from .convert.aligned_stack import write_aligned_stack

        pixel_size = args.pixel_size or (header_pixel_size if header_pixel_size > 0 else 1.0)
        bar = ProgressBar("writing", sys.stderr, enabled=show_bar, unit=" views", delay=delay)
        try:
            write_aligned_stack(stack, paths["ali"], transforms, args.aligned_binning, pixel_size,
                                progress=bar)
        except ValueError as error:
            raise UserError(str(error)) from None
        finally:
            bar.close()

    from .plots import low_correlation_views

    low = low_correlation_views(angles, correlation, enabled)
    if args.plot:
        from .plots import save_alignment_plot

        save_alignment_plot(paths["png"], os.path.basename(prefix), angles, shifts, enabled,
                            correlation)

    if not args.quiet:
        out = sys.stdout
        _print_table(out, angles, shifts, enabled, correlation, low)
        reference = keep[result.reference_view]
        out.write(f"aligned {len(keep)} of {n} views in {elapsed:.1f} s on {device.type} "
                  f"(correlation binned by {result.binning}; reference view {reference + 1} "
                  f"at {angles[reference]:.2f} deg)\n")
        if low.any():
            out.write("low correlation, check these views: "
                      + ", ".join(str(i + 1) for i in np.flatnonzero(low)) + "\n")
        for key in ("prexf", "prexg", "tlt", "ali", "png"):
            if key in paths:
                note = " (the input, kept)" if key == "tlt" and keep_input_tlt else ""
                out.write(f"wrote {paths[key]}{note}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiltxcorr-scipion`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "align":
            return align_command(args)
        parser.error(f"unknown command {args.command!r}")
    except UserError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
