"""Links: views correlated with several neighbours in tilt, and shifts solved from all of them.

In the reference view's frame (every view moved by its shift and stretched
by `cos(t_ref) / cos(t)` across the tilt axis), a well aligned series has
every pair of nearby views on top of each other. A *link* `(i, j)` is the
residual shift `s_ij` measured by correlating views `i` and `j` there. With
`rho` the corrections the views still need (their own pixels), a link
measures `s_ij = K_j rho_j - K_i rho_i` (`K` the stretch into the frame), so
the links of each view to its next few views on both sides over-determine
`rho`, which a robust least-squares solve finds (`solve_links`): reweighted
first with Huber's weights (convex: no start can trap it), then Tukey's
biweight, so that a wrong peak loses its say. `held_out` gives each link's
residual under the solve made without it.

Two callers: the final pass on noise-limited data (`final_pass.refine_by_links`,
which applies the corrections) and the self-check (`selfcheck`), which
measures any set of shifts by the corrections its links still ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HUBER = 1.345       # Huber's constant, in robust SDs of a link's misfit
TUKEY = 4.685       # Tukey's biweight constant, in robust SDs of a link's misfit
REWEIGHTS = 4       # robust reweighting: this many Huber rounds, then as many Tukey


def frame_factors(angles: torch.Tensor, reference: int) -> torch.Tensor:
    """`(b,)` float64 stretch of each view into the reference view's frame, `cos(t_ref) / cos(t)`."""
    cos_ref = math.cos(math.radians(float(angles[reference])))
    return cos_ref / torch.cos(torch.deg2rad(angles.detach().cpu().to(torch.float64)))


def stretch_matrices(factors: torch.Tensor, across: torch.Tensor) -> torch.Tensor:
    """`K = I + (k - 1) p p^T` `(b, 2, 2)` float64 for each factor `k` of `factors` `(b,)`."""
    p = across.detach().cpu().to(torch.float64)
    k = factors.detach().cpu().to(torch.float64)
    return torch.eye(2, dtype=torch.float64) + (k - 1.0)[:, None, None] * torch.outer(p, p)


def link_pairs(order: list[int], lags: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Pairs `(order[p], order[p + lag])` for lags 1..`lags`, and each pair's lag `(n,)` int64.

    `order`: the views to link, in tilt order (the reference among them).
    """
    pairs = [(order[p], order[p + lag]) for lag in range(1, lags + 1)
             for p in range(len(order) - lag)]
    lag_of = torch.tensor([lag for lag in range(1, lags + 1) for _ in range(len(order) - lag)],
                          dtype=torch.long)
    return pairs, lag_of


@dataclass(frozen=True)
class LinkSystem:
    """The linear model of a set of links: `s = design @ rho` over the unknown views.

    `unknown` lists the views solved for (the linked views but the reference,
    which stays put); `design` is `(2 n_links, 2 n_unknown)` float64.
    """

    pairs: list[tuple[int, int]]
    unknown: list[int]
    design: torch.Tensor

    @classmethod
    def build(cls, pairs: list[tuple[int, int]], reference: int, stretch: torch.Tensor
              ) -> LinkSystem:
        views = sorted({v for pair in pairs for v in pair})
        unknown = [v for v in views if v != reference]
        column = {v: k for k, v in enumerate(unknown)}
        design = torch.zeros(len(pairs), 2, 2 * len(unknown), dtype=torch.float64)
        for row, (i, j) in enumerate(pairs):
            if j in column:
                design[row, :, 2 * column[j]:2 * column[j] + 2] = stretch[j]
            if i in column:
                design[row, :, 2 * column[i]:2 * column[i] + 2] -= stretch[i]
        return cls(list(pairs), unknown, design.reshape(2 * len(pairs), -1))

    def spread(self, solution: torch.Tensor, n_views: int) -> torch.Tensor:
        """`(n_views, 2)` corrections: the solution for the unknown views, 0 elsewhere."""
        rho = torch.zeros(n_views, 2, dtype=torch.float64)
        if self.unknown:
            rho[self.unknown] = solution.reshape(-1, 2)
        return rho


def solve_links(system: LinkSystem, measured: torch.Tensor, prior: torch.Tensor, *,
                min_sd: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Robust least-squares corrections from links.

    `measured` `(n_links, 2)` link shifts, `prior` `(n_links,)` each link's
    weight before robustness (a link across k views weighs less: its views
    are less alike); `min_sd` the least robust SD (pixels) the weights may
    assume. Returns the solution `(2 n_unknown,)`, the final weights
    `(n_links,)` (0: rejected) and the robust SD of a link's misfit.
    """
    target = measured.reshape(-1).to(torch.float64)
    design = system.design
    weights = prior.clone()
    scale = min_sd
    solution = torch.zeros(design.shape[1], dtype=torch.float64)
    for iteration in range(2 * REWEIGHTS + 1):
        root = weights.repeat_interleave(2).sqrt()[:, None]
        solution = torch.linalg.lstsq(design * root, target[:, None] * root).solution[:, 0]
        if iteration == 2 * REWEIGHTS:
            break
        misfit = (design @ solution - target).reshape(-1, 2).norm(dim=1) * prior.sqrt()
        # robust SD of a link: the median length of a 2-D Gaussian misfit is 1.177 SD
        scale = max(float(misfit.median()) / 1.177, min_sd)
        if iteration < REWEIGHTS:  # Huber first: convex, so a bad start cannot stick
            weights = prior * (HUBER * scale / misfit.clamp_min(1e-12)).clamp(max=1.0)
        else:  # then Tukey's biweight: links far off lose all weight
            u = misfit / (TUKEY * scale)
            weights = prior * torch.where(u < 1, (1 - u.square()).square(), torch.zeros_like(u))
    return solution, weights, scale


def held_out(system: LinkSystem, measured: torch.Tensor, solution: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """`(n_links, 2)` each link's residual under the solve made without it (same weights).

    For weighted least squares the leave-one-out residual of link `l` is
    `(I - H_ll)^-1 r_l`, `H_ll` the link's `(2, 2)` block of the hat matrix
    and `r_l` its residual in the full solve; links the robust solve rejected
    (weight 0) keep their plain residual, which no solve used.
    """
    design = system.design
    residual = (measured.reshape(-1).to(torch.float64) - design @ solution).reshape(-1, 2)
    w = weights.repeat_interleave(2)
    normal = design.T @ (design * w[:, None])
    normal = normal + 1e-9 * torch.eye(normal.shape[0], dtype=torch.float64)
    blocks = design.reshape(-1, 2, design.shape[1])  # (n_links, 2, n_unknown)
    inverse = torch.linalg.inv(normal)
    hat = torch.einsum("lau,uv,lbv->lab", blocks, inverse, blocks) * weights[:, None, None]
    eye = torch.eye(2, dtype=torch.float64)
    out = torch.linalg.solve(eye - hat.clamp(-1e6, 1e6) + 1e-9 * eye, residual[:, :, None])[:, :, 0]
    return torch.where((weights > 0)[:, None], out, residual)
