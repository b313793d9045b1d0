"""Binning: reduce large views before correlating, as IMOD's tiltxcorr does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUTO_MAX_SIZE = 1180  # IMOD reduces views to at most about this many pixels
AUTO_MAX_BINNING = 4


def resolve_binning(binning: int | str, shape: tuple[int, int]) -> int:
    """The binning factor to use: `binning` itself, or for ``"auto"`` the smallest
    factor (up to 4) that brings the larger side to at most 1180 pixels."""
    if binning == "auto" or binning == 0:
        size = max(shape)
        for factor in range(1, AUTO_MAX_BINNING + 1):
            if size / factor <= AUTO_MAX_SIZE:
                return factor
        return AUTO_MAX_BINNING
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise ValueError(f"binning must be 'auto' (or 0) or a positive integer, got {binning!r}")
    return binning


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """`(h // factor, w // factor)`: trailing rows and columns that do not fill a bin are dropped."""
    return shape[0] // factor, shape[1] // factor


def binned_centre(shape: tuple[int, int], factor: int) -> torch.Tensor:
    """The input's geometric centre `(2,)` in binned pixel coordinates.

    Binned pixel j covers input pixels `j*factor .. j*factor + factor - 1`, so
    its centre is input `j*factor + (factor - 1)/2`. When a side is not a
    multiple of `factor` the binned image's own centre differs from this by a
    fraction of a pixel; the stretch must use this one.
    """
    h, w = shape
    return torch.tensor([((h - 1) / 2 - (factor - 1) / 2) / factor,
                         ((w - 1) / 2 - (factor - 1) / 2) / factor], dtype=torch.float64)


def bin_views(views: torch.Tensor, factor: int) -> torch.Tensor:
    """Average `factor x factor` blocks of `(n, h, w)` views, in float32: `(n, h//f, w//f)`."""
    views = views.to(torch.float32)
    if factor == 1:
        return views
    return F.avg_pool2d(views[:, None], kernel_size=factor, stride=factor)[:, 0]


def bin_stack(stack: torch.Tensor, factor: int, chunk_bytes: int = 256 << 20) -> torch.Tensor:
    """Bin a whole `(b, h, w)` stack a few views at a time (no full-size float copy)."""
    b, h, w = stack.shape
    if factor == 1 and stack.dtype == torch.float32:
        return stack
    hb, wb = binned_shape((h, w), factor)
    out = torch.empty(b, hb, wb, dtype=torch.float32, device=stack.device)
    per_chunk = max(1, math.floor(chunk_bytes / (h * w * 4)))
    for start in range(0, b, per_chunk):
        out[start:start + per_chunk] = bin_views(stack[start:start + per_chunk], factor)
    return out
