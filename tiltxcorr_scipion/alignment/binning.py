"""Binning: average blocks of pixels, centred on the view, as IMOD does.

One convention for everything that bins (the correlation, the aligned stacks):
a side of `n` pixels binned by `f` keeps `n // f` whole blocks, centred on the
view; the `n % f` leftover pixels are trimmed from both edges, the odd one (if
any) from the high edge. IMOD's tiltxcorr and newstack also centre the binned
pixels on the view (they keep the leftover pixels in partial blocks at the
edges instead, which the taper removes anyway). Centring keeps the image
centre, where the tilt axis passes, at the same place in every binning; a
block average keeps the mean density.

Views are binned a chunk at a time as they arrive (`bin_chunks`), so a large
stack never exists in memory at full size, and their pixels are checked on
the way (`ViewError` for NaN or infinite pixels; constant views are left to
the alignment, which flags them and aligns around them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..options import MAX_PIXEL_MAGNITUDE
from .memory import items_per_chunk
from .validation import ViewError

__all__ = ["BinnedViews", "bin_chunks", "bin_stack", "bin_views", "binned_shape", "view_extremes"]


def _trim(n: int, factor: int) -> int:
    """Pixels trimmed from the low edge of an `n`-pixel side binned by `factor`."""
    return (n - (n // factor) * factor) // 2


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """`(h // factor, w // factor)`: the whole blocks of a view binned by `factor`."""
    return shape[0] // factor, shape[1] // factor


def bin_views(views: torch.Tensor, factor: int) -> torch.Tensor:
    """Average `factor x factor` blocks of `(n, h, w)` views, centred: `(n, h//f, w//f)` float32."""
    views = views.to(torch.float32)
    if factor == 1:
        return views
    h, w = views.shape[-2:]
    hb, wb = binned_shape((h, w), factor)
    top, left = _trim(h, factor), _trim(w, factor)
    block = views[:, top:top + hb * factor, left:left + wb * factor]
    return F.avg_pool2d(block[:, None], kernel_size=factor, stride=factor)[:, 0]


@dataclass(frozen=True)
class BinnedViews:
    """Views binned for the correlation, and where their pixels lie in the input.

    Attributes
    ----------
    views
        `(b, hb, wb)` float32 binned views.
    factor
        Binning factor relative to the input views.
    full_shape
        `(h, w)` of the input views.
    origin
        `(row, col)` input pixel where binned pixel `(0, 0)`'s block starts:
        binned pixel `j` averages input pixels `origin + j*factor` to
        `origin + j*factor + factor - 1`.
    """

    views: torch.Tensor
    factor: int
    full_shape: tuple[int, int]
    origin: tuple[int, int]
    # rebinned() results, kept: the stages, the candidates and the self-check's levels ask
    # for the same coarser views, and each binning is a pass over every pixel
    _coarser: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def centre(self) -> torch.Tensor:
        """The input's centre `((h-1)/2, (w-1)/2)` in binned pixel coordinates, `(2,)` float64.

        Input pixel `x` sits at binned coordinate `(x - origin - (factor - 1)/2) / factor`.
        When a leftover is odd the binned view's own centre differs from this
        by a fraction of a pixel; the geometry must use this one.
        """
        h, w = self.full_shape
        f = self.factor
        return torch.tensor([((h - 1) / 2 - self.origin[0] - (f - 1) / 2) / f,
                             ((w - 1) / 2 - self.origin[1] - (f - 1) / 2) / f],
                            dtype=torch.float64, device=self.views.device)

    def rebinned(self, extra: int) -> BinnedViews:
        """These views binned `extra` times more (same centring rule), `factor * extra` in all.

        Made once per factor and kept (the views must not change in place afterwards).
        """
        if extra in self._coarser:
            return self._coarser[extra]
        hb, wb = self.views.shape[-2:]
        self._coarser[extra] = BinnedViews(
            views=bin_views(self.views, extra),
            factor=self.factor * extra,
            full_shape=self.full_shape,
            origin=(self.origin[0] + _trim(hb, extra) * self.factor,
                    self.origin[1] + _trim(wb, extra) * self.factor),
        )
        return self._coarser[extra]


def view_extremes(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's smallest and largest pixel `(b,)`, `(b,)` of `views` `(b, ...)`; a NaN
    shows in both. amin and amax apart: two vectorised passes beat one aminmax (10x)."""
    flat = views.flatten(1)
    return flat.amin(dim=1), flat.amax(dim=1)


def bin_chunks(chunks: Iterable[torch.Tensor], n_views: int, full_shape: tuple[int, int],
               factor: int, *, device: torch.device | str | None = None,
               views: torch.Tensor | None = None) -> BinnedViews:
    """Bin views that arrive a few at a time, checking their pixels.

    Parameters
    ----------
    chunks
        `(k, h, w)` tensors (any real dtype, any device), consecutive views
        in order, `n_views` in all.
    full_shape
        `(h, w)` of every view.
    device
        Where the binned views are kept (default: the first chunk's device).
    views
        With `factor` 1 and no chunks: `(n_views, h, w)` float32 views to
        check and use as they are.

    Raises
    ------
    ViewError
        After all chunks are read: the views (0-based, in arrival order) with
        NaN or infinite pixels (a corrupt file: no estimate can be made for
        them, and every neighbour would inherit the damage).
    """
    hb, wb = binned_shape(full_shape, factor)
    out = None
    start = 0
    non_finite: list[int] = []
    huge: dict[int, float] = {}

    def check(low, high, first):
        finite = torch.isfinite(low) & torch.isfinite(high)
        non_finite.extend((torch.nonzero(~finite).flatten() + first).tolist())
        largest = torch.maximum(low.abs(), high.abs())
        for k in torch.nonzero(finite & (largest > MAX_PIXEL_MAGNITUDE)).flatten().tolist():
            huge[k + first] = float(largest[k])

    if views is not None:
        out, start = views, views.shape[0]
        check(*view_extremes(views), 0)
    for chunk in chunks:
        if out is None:
            target = chunk.device if device is None else torch.device(device)
            out = torch.empty(n_views, hb, wb, dtype=torch.float32, device=target)
        if tuple(chunk.shape[-2:]) != tuple(full_shape) or start + chunk.shape[0] > n_views:
            raise ValueError(f"views {start}..{start + chunk.shape[0] - 1} have shape "
                             f"{tuple(chunk.shape[1:])}, expected {n_views} views of "
                             f"{tuple(full_shape)}")
        binned = bin_views(chunk.to(out.device), factor)
        check(*view_extremes(binned), start)  # NaN and inf show here
        out[start:start + binned.shape[0]] = binned
        start += binned.shape[0]
    if start != n_views:
        raise ValueError(f"got {start} views, expected {n_views}")
    if non_finite:
        raise ViewError(non_finite, "NaN or infinite pixels (the stack file may be corrupt)",
                        "exclude or repair the view")
    if huge:
        raise ViewError(sorted(huge), f"pixel values up to {max(huge.values()):.3g}, beyond the "
                        f"+-{MAX_PIXEL_MAGNITUDE:.0e} that float32 correlations and resampling "
                        "can hold (the stack file may be corrupt)", "exclude or repair the view")
    top, left = _trim(full_shape[0], factor), _trim(full_shape[1], factor)
    return BinnedViews(views=out, factor=factor, full_shape=tuple(full_shape), origin=(top, left))


def bin_stack(stack: torch.Tensor, factor: int) -> BinnedViews:
    """Bin a whole `(b, h, w)` stack a few views at a time (no full-size float copy).

    Unbinned float32 views are used as they are (checked, not copied): the
    engine never writes into its input.
    """
    b, h, w = stack.shape
    if factor == 1 and stack.dtype == torch.float32 and stack.is_contiguous():
        return bin_chunks([], b, (h, w), 1, views=stack)
    # per view, alive at once: its float32 copy and its binned float32 view
    per_chunk = items_per_chunk(4 * h * w + 4 * (h // factor) * (w // factor), stack.device)
    return bin_chunks(stack.split(per_chunk), b, (h, w), factor)
