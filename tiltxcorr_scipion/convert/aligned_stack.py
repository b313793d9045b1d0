"""Aligned (interpolated) tilt-series stacks: apply the transforms, bin, write MRC.

The input is read and the output written one view at a time
(`convert.mrc`), so memory stays at a few copies of one view whatever the
stack size. Shift-only transforms are applied exactly in Fourier space,
others by bicubic interpolation, pixels from beyond the view filled with its
mean (`alignment.resample`); binning averages blocks, centred on the view
(`alignment.binning`), as ``newstack -bin`` does. The file appears under its
name only once complete (`convert.files.atomic_output`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from ..alignment.binning import bin_views, binned_shape
from ..alignment.resample import apply_imod_transforms
from ..options import MAX_PIXEL_MAGNITUDE, check_aligned_binning
from .files import atomic_output
from .mrc import MrcStack, StackWriter

__all__ = ["write_aligned_stack"]


def write_aligned_stack(in_path: str, out_path: str, transforms: np.ndarray, binning: int,
                        pixel_size: float, *,
                        progress: Callable[[int, int], None] | None = None) -> None:
    """Write the aligned, binned stack of a tilt series as MRC (mode 2, float32).

    Parameters
    ----------
    in_path
        MRC stack `(n, h, w)`, read one view at a time.
    out_path
        Output MRC stack `(n, h // binning, w // binning)`; replaced (only
        once complete) if it exists.
    transforms
        `(n, 3, 3)` IMOD forward transforms in stack order, pixels of the
        input; the identity (a disabled view) leaves the view unmoved.
    binning
        Integer >= 1 (block averaging).
    pixel_size
        Input pixel size in Angstrom; the header gets ``pixel_size * binning``.
    progress
        Optional ``callable(done, total)``, called after each view.

    Raises
    ------
    ValueError
        Unreadable input (`StackReadError`), a transform count that does not
        match the views, NaN pixels or bad arguments; the message names the
        file and what to change.
    OutputError
        The output could not be written (full disk, no permission); no
        partial file is left.
    """
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel size must be a positive number of Angstrom, got {pixel_size!r}")
    matrices = np.asarray(transforms, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3):
        raise ValueError(f"transforms must have shape (n, 3, 3), got {matrices.shape}")
    if not np.all(np.isfinite(matrices)):
        raise ValueError("transforms contain NaN or infinite values")
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise ValueError(f"{out_path} is the input stack: choose another output file name")
    source = MrcStack.open(in_path)
    n, h, w = source.shape
    binning = check_aligned_binning(binning, (h, w))
    if len(matrices) != n:
        raise ValueError(f"{in_path} has {n} views but {len(matrices)} transforms were given: "
                         "give one transform per view, in stack order")

    with atomic_output(out_path) as temporary, StackWriter(
            temporary, (n, *binned_shape((h, w), binning)), pixel_size * binning,
            f"tiltxcorr-scipion: aligned, binned by {binning}") as out:
        for i in range(n):
            view = torch.from_numpy(source.read([i + 1]))  # (1, h, w)
            _check_pixels(view, i + 1)
            aligned = apply_imod_transforms(view, matrices[i:i + 1], mode="fourier")
            out.write(bin_views(aligned, binning)[0].numpy())
            if progress is not None:
                progress(i + 1, n)


def _check_pixels(view: torch.Tensor, number: int) -> None:
    """A ValueError naming view `number` when its pixels cannot go into an aligned stack.

    NaN, infinite or huge (beyond `MAX_PIXEL_MAGNITUDE`: a Fourier shift and the
    header's statistics overflow) pixels. The aligned stack holds every view,
    excluded ones too (unmoved), so excluding it does not help.
    """
    finite = torch.isfinite(view)
    largest = float(view[finite].abs().max()) if bool(finite.any()) else 0.0
    if bool(finite.all()) and largest <= MAX_PIXEL_MAGNITUDE:
        return
    what = ("NaN or infinite pixels" if not bool(finite.all())
            else f"pixel values up to {largest:.3g}, too large for float32 resampling")
    raise ValueError(f"view {number} holds {what}; the aligned stack holds every view, "
                     "excluded ones too: repair the view, or write no aligned stack")
