"""Screen views before correlating: blank, blocked and dark views, opaque areas.

Real tilt series carry views with nothing to correlate (the beam blocked by a
grid bar, a lamella edge or an ice chunk; a dark frame) and views partly in
the shadow of an opaque object (a grid bar advancing with tilt). Both break a
chain of correlations: a view with no specimen pairs with its neighbour at a
random shift, and the edge of a shadow is a strong feature that moves with the
stage, not with the specimen.

The screen works on block averages of the binned views (`block` x `block`
pixels), so it costs a fraction of one pass over the pixels:

- an **opaque** block lies far from its view's specimen level (more than
  `OPAQUE_SPREADS` robust spreads of the block means) and is not busier than
  a typical block (a gold bead is far from the level as well, but its block
  is busy); levels are tracked from the lowest tilts outwards, so they may
  drift with tilt (thicker ice at high tilt) but not jump;
- a **dark** (or bright) view has hardly any block at its specimen level
  (less than `1 - BLOCKED_FRACTION` of them): the beam blocked by a bar or an
  ice chunk, blanked or shifted during the exposure;
- a **constant** view has every pixel equal (an empty frame).

Views judged unusable are returned with a human-readable reason. Opaque areas
of the other views are replaced by the view's specimen mean, with a smooth
edge, so that the correlation sees only specimen. An opaque object holds no
more detail than the specimen it hides: where the far blocks of a series are
busier than its level's (`_busier_than_specimen`), the level is an empty
background (a STEM specimen on vacuum) and nothing is filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .binning import view_extremes

#: A block this many robust spreads from its view's specimen level is opaque (if not busy).
OPAQUE_SPREADS = 8.0
#: A view with less than this fraction of its blocks at a specimen level is unusable.
BLOCKED_FRACTION = 0.9
#: An opaque block needs this many opaque blocks among its eight neighbours.
MIN_OPAQUE_NEIGHBOURS = 3
#: Lowest-|tilt| views whose levels define where the walk starts.
START_VIEWS = 5
#: Opaque blocks busier than the specimen level's in a series by this z (sign test over
#: views) are specimen on an empty background, not an opaque object (`_busier_than_specimen`).
BUSIER_Z = 3.0


@dataclass(frozen=True)
class ViewScreen:
    """What the screen found, per view in the input order.

    Attributes
    ----------
    unusable
        `(b,)` bool: nothing to correlate (constant, blocked, dark or bright).
    reasons
        Why each unusable view is unusable ("" for the others).
    opaque
        `(b, H, W)` bool: opaque blocks of each view (a block is `size` pixels
        of the screened views on a side).
    size
        Block side in pixels of the screened views.
    level, opaque_level
        `(b,)` each view's specimen level and the median of its opaque blocks
        (NaN where none), in the views' units.
    """

    unusable: torch.Tensor
    reasons: list[str]
    opaque: torch.Tensor
    size: int
    level: torch.Tensor | None = None
    opaque_level: torch.Tensor | None = None

    @property
    def opaque_fraction(self) -> torch.Tensor:
        """`(b,)` float32 fraction of each view judged opaque."""
        return self.opaque.flatten(1).to(torch.float32).mean(dim=1)

    def partial_views(self) -> list[int]:
        """Usable views with opaque areas to fill before correlating."""
        fraction = self.opaque_fraction
        return [v for v in range(len(self.reasons)) if not self.unusable[v] and fraction[v] > 0]


def block_size(shape: tuple[int, int]) -> int:
    """Side of the screening blocks for views of `shape`: about 1/32 of the view."""
    return max(4, min(shape) // 16 if min(shape) < 256 else min(shape) // 32)


def screen_views(views: torch.Tensor, angles: torch.Tensor) -> ViewScreen:
    """Screen views `(b, h, w)` taken at tilts `angles` `(b,)` (degrees).

    Coarsely binned views are enough (the tests use block averages). Walking
    outwards in tilt from the lowest tilts, each view's specimen level is the
    median of its blocks that lie within `OPAQUE_SPREADS` robust spreads of
    the previous view's level: levels drift slowly with tilt (thicker ice,
    darker views), opaque areas and blocked views jump.
    """
    b, h, w = views.shape
    size = block_size((h, w))
    stack = views[:, None].to(torch.float32)
    blocks_t = F.avg_pool2d(stack, size)[:, 0]  # (b, H, W)
    busy_t = (F.avg_pool2d(stack.square(), size)[:, 0] - blocks_t.square()).clamp_min(0).sqrt()
    low, high = view_extremes(views)
    blocks = blocks_t.double().cpu().numpy()
    busy = busy_t.double().cpu().numpy()
    low, high = low.double().cpu().numpy(), high.double().cpu().numpy()
    tilts = angles.double().cpu().numpy()
    constant = high <= low
    own = np.median(blocks.reshape(b, -1), axis=1)  # (b,) each view's median block
    ok = ~constant
    opaque = np.zeros(blocks.shape, dtype=bool)
    unusable = constant.copy()
    reasons = [f"blank: constant image (every pixel {low[v]:.6g})" if constant[v] else ""
               for v in range(b)]
    if ok.any():
        spread = 1.4826 * float(np.median(np.abs(blocks - own[:, None, None])[ok]))
        spread = max(spread, 1e-9 * float(np.abs(blocks[ok]).max()), 1e-30)
        typical_busy = float(np.median(busy[ok]))
        limit = OPAQUE_SPREADS * spread
        order = [v for v in np.argsort(tilts, kind="stable").tolist() if ok[v]]
        by_tilt = sorted(order, key=lambda v: abs(tilts[v]))
        start_level = float(np.median(own[by_tilt[:START_VIEWS]]))
        start = next((v for v in by_tilt if abs(own[v] - start_level) <= limit), by_tilt[0])
        p0 = order.index(start)
        level = np.full(b, own[start])
        for direction in (1, -1):
            previous = float(own[start])
            p = p0
            while 0 <= p < len(order):
                view = order[p]
                near = np.abs(blocks[view] - previous) <= limit
                if near.mean() >= 1.0 - BLOCKED_FRACTION:
                    previous = float(np.median(blocks[view][near]))
                level[view] = previous
                p += direction
        far = np.abs(blocks - level[:, None, None]) > limit
        opaque = far & (busy <= 1.5 * typical_busy) & ok[:, None, None]
        # An opaque object covers many blocks: a lone block is the specimen's own.
        mask = torch.from_numpy(opaque).to(torch.float32)[:, None]
        around = F.conv2d(F.pad(mask, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3))[:, 0].numpy()
        opaque &= around - 1 >= MIN_OPAQUE_NEIGHBOURS
        if _busier_than_specimen(busy, opaque, ~far, order):
            opaque[:] = False
        for view in order:
            specimen_fraction = float((~far[view]).mean())
            if specimen_fraction < 1.0 - BLOCKED_FRACTION:
                offset = (own[view] - level[view]) / spread
                kind, side = ("dark", "below") if offset < 0 else ("bright", "above")
                unusable[view] = True
                reasons[view] = (f"{kind}: mean {abs(offset):.1f} sd {side} the neighbouring views, "
                                 f"{100 * (1 - specimen_fraction):.0f}% of it unlike the specimen")
        opaque_level = np.array([float(np.median(blocks[v][opaque[v]])) if opaque[v].any()
                                 else np.nan for v in range(b)])
    else:
        level = np.full(b, np.nan)
        opaque_level = np.full(b, np.nan)
    return ViewScreen(unusable=torch.from_numpy(unusable), reasons=reasons,
                      opaque=torch.from_numpy(opaque), size=size, level=torch.from_numpy(level),
                      opaque_level=torch.from_numpy(opaque_level))


def _busier_than_specimen(busy: np.ndarray, opaque: np.ndarray, level: np.ndarray,
                          views: list[int]) -> bool:
    """Whether the series' "opaque" blocks hold more detail than its specimen-level blocks.

    `busy` `(b, H, W)` block standard deviations, `opaque` and `level` `(b, H, W)`
    bool (blocks judged opaque, blocks at the view's level). An opaque object
    passes nothing through (or, in a projected density, replaces it by a
    constant): its blocks are no busier than the specimen they hide, quieter
    where counting noise falls with the counts. When, view by view, they are
    busier (sign test over the views with both kinds of blocks, z >
    `BUSIER_Z`), the "level" is an empty background (a STEM specimen on
    vacuum, a hole in the support) and the far blocks are the specimen: filling
    them would cut the specimen along the blocks' edges, fixed in the camera.
    """
    signs = []
    for view in views:
        if opaque[view].any() and (level[view] & ~opaque[view]).any():
            ratio = (np.median(busy[view][opaque[view]])
                     / max(np.median(busy[view][level[view] & ~opaque[view]]), 1e-300))
            if ratio != 1.0:
                signs.append(ratio > 1.0)
    if len(signs) < 3:
        return False
    z = (2 * sum(signs) - len(signs)) / np.sqrt(len(signs))
    return bool(z > BUSIER_Z)


def opaque_weight(view: torch.Tensor, opaque_blocks: torch.Tensor, block: float, level: float,
                  opaque_level: float) -> torch.Tensor:
    """Weight `(h, w)` of each pixel of `view` `(h, w)` as specimen: 0 where opaque, 1 in the clear.

    `opaque_blocks` `(H, W)` bool marks blocks of `block` pixels of this view.
    Within those blocks and one block around them, a pixel is opaque where
    its neighbourhood (5 x 5 mean) lies past half way from the specimen
    `level` to the `opaque_level`; the opaque pixels grow by a few pixels
    (the blurred edge) and the weight falls to zero over as many again.
    """
    h, w = view.shape
    mask = opaque_blocks.to(torch.float32)[None, None]  # (1, 1, H, W)
    zone = F.max_pool2d(mask, 3, stride=1, padding=1)  # the blocks and one block around
    rows, cols = zone.shape[-2:]
    zone = F.interpolate(zone, size=(max(1, round(rows * block)), max(1, round(cols * block))),
                         mode="nearest")[..., :h, :w]
    zone = F.pad(zone, (0, w - zone.shape[-1], 0, h - zone.shape[-2]), mode="replicate")
    zone = zone[0, 0].to(view.device) > 0.5
    local = F.avg_pool2d(view[None, None].to(torch.float32), 5, stride=1, padding=2,
                         count_include_pad=False)[0, 0]
    middle = 0.5 * (level + opaque_level)
    beyond = (local - middle) * (1.0 if opaque_level > level else -1.0) > 0
    pixels = (zone & beyond).to(torch.float32)[None, None]
    grow = max(3, round(block / 4))
    pixels = F.max_pool2d(pixels, 2 * grow + 1, stride=1, padding=grow)
    pixels = F.avg_pool2d(F.pad(pixels, (grow,) * 4, mode="replicate"), 2 * grow + 1, stride=1)
    return (1.0 - pixels[0, 0]).clamp(0.0, 1.0)


def fill_opaque(view: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`view` `(h, w)` with its opaque area (`opaque_weight` `(h, w)`) set to the mean of the rest.

    The weight blends the view into that mean over the blurred edge, so that
    neither the edge nor a step is left to correlate.
    """
    weight = weight.to(dtype=view.dtype, device=view.device)
    keep = weight > 0.999
    fill = view[keep].mean() if bool(keep.any()) else view.mean()
    return fill + (view - fill) * weight
