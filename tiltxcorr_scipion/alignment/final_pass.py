"""Final pass: every view against a weighted sum of lower-tilt views, in one frame.

Also the measurement that tunes it to noisy data: how far in frequency
neighbouring views agree (`neighbour_frc`), which sets the low-pass and the
binning of this pass.
"""

from __future__ import annotations

import math

import torch

from .correlate import PairCorrelator, pairs_per_chunk
from .first_stage import Z_LOW
from .geometry import stretch_images
from .links import LinkSystem, frame_factors, link_pairs, solve_links, stretch_matrices
from .memory import items_per_chunk
from .resample import WARP_BYTES_PER_PIXEL

RESIDUAL_SEARCH = 6.0   # pixels: the final pass looks for residual shifts this far from its estimate
COARSE_BAND = 0.12      # cycles/pixel: its short search needs only low frequencies
FRC_THRESHOLD = 0.1     # neighbouring views agree up to where their ring correlation falls below this
FRC_BIN = 0.02          # width of the frequency rings (cycles per working pixel)
LINK_LAGS = 6           # noisy data: each view linked to this many next usable views in tilt
LINK_LAG_POWER = 1.0    # ...a link across k views weighs k**-power (longer: less alike)
LINK_ROUNDS = 2         # ...solved this many times, each from the views moved by the last
LINK_MIN_SD = 0.4       # pixels: the SD the weights assume at least (high tilts misfit more)


def usable_extent(estimates: torch.Tensor, unusable: torch.Tensor) -> float:
    """Largest |shift| component of the usable views (of all, if none is usable).

    Windows are inset by it so that no usable view brings in pixels from
    outside its frame; an unusable view's estimate (a guess: a blank view
    has no peak) must not shrink the window of all the others.
    """
    keep = ~unusable.to(device=estimates.device, dtype=torch.bool)
    chosen = estimates[keep] if bool(keep.any()) else estimates
    return float(chosen.abs().max()) if chosen.numel() else 0.0


def neighbour_frc(views: torch.Tensor, angles: torch.Tensor, reference: int, branches,
                  unusable: torch.Tensor, estimates: torch.Tensor, across: torch.Tensor,
                  centre: torch.Tensor, *, extra: int, interpolation: str
                  ) -> tuple[float, torch.Tensor]:
    """Frequency (cycles per working pixel) up to which neighbouring views agree; inf if beyond.

    The views `(b, h, w)` (binned `extra` times more than the working
    views) are moved by `estimates` `(b, 2)` (their pixels), stretched into
    the reference view's frame and Fourier transformed inside a margin. The
    ring correlation of consecutive usable views of each branch, summed over
    all such pairs, estimates `SNR / (1 + SNR)` per frequency ring; the
    answer is where it first falls below `FRC_THRESHOLD` (linear between
    rings), or inf if it never does below the views' Nyquist frequency; and
    the ring correlation itself `(rings,)`, ring `i` centred on
    `(i + 0.5) * FRC_BIN` cycles per working pixel.
    """
    h, w = views.shape[-2:]
    cos_ref = math.cos(math.radians(float(angles[reference])))
    factors = cos_ref / torch.cos(torch.deg2rad(angles))
    margin = min(h, w) // 8 + int(usable_extent(estimates, unusable))
    margin = min(margin, min(h, w) // 4)
    window = torch.zeros(h, w, dtype=torch.float32, device=views.device)
    window[margin:h - margin, margin:w - margin] = 1.0
    pairs = []
    for branch in branches:
        usable = [v for v in branch if not unusable[v]]
        pairs += list(zip(usable[:-1], usable[1:], strict=True))
    if not pairs:
        return math.inf, torch.zeros(0, dtype=torch.float64)
    ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    ring_width = FRC_BIN * extra  # cycles per level pixel
    rings = (torch.sqrt(ky ** 2 + kx ** 2) / ring_width).long().flatten()
    n_rings = int(rings.max()) + 1
    numerator = torch.zeros(n_rings, dtype=torch.float64)
    power_a = torch.zeros(n_rings, dtype=torch.float64)
    power_b = torch.zeros(n_rings, dtype=torch.float64)
    needed = sorted({v for pair in pairs for v in pair})
    spectra = {}
    # per view: the stretch's temporaries, the windowed view and its spectrum (about as large)
    chunk = items_per_chunk((WARP_BYTES_PER_PIXEL + 2 * 4) * h * w, views.device)
    for first in range(0, len(needed), chunk):
        idx = torch.tensor(needed[first:first + chunk])
        warped = stretch_images(views[idx.to(views.device)], factors[idx], across, centre,
                                pre_shifts=estimates[idx].to(views.device), mode=interpolation)
        warped = (warped - (warped * window).sum(dim=(-2, -1), keepdim=True) / window.sum()) * window
        spec = torch.fft.rfft2(warped).cpu()
        for k, view in enumerate(idx.tolist()):
            spectra[view] = spec[k]
    for a, b in pairs:
        fa, fb = spectra[a].flatten(), spectra[b].flatten()
        numerator.index_add_(0, rings, (fa * fb.conj()).real.double())
        power_a.index_add_(0, rings, fa.abs().square().double())
        power_b.index_add_(0, rings, fb.abs().square().double())
    frc = numerator / (power_a * power_b).sqrt().clamp_min(1e-300)
    nyquist_ring = int(0.5 / ring_width)
    for ring in range(1, min(n_rings, nyquist_ring)):
        if float(frc[ring]) < FRC_THRESHOLD:
            above, below = float(frc[ring - 1]), float(frc[ring])
            fraction = (above - FRC_THRESHOLD) / max(above - below, 1e-12)
            centre_above = (ring - 1 + 0.5) * FRC_BIN
            return centre_above + min(max(fraction, 0.0), 1.0) * FRC_BIN, frc[:nyquist_ring]
    return math.inf, frc[:nyquist_ring]


def _frame_spectra(views, factors, estimates, correlator: PairCorrelator, window, across, centre,
                   interpolation, weights: dict[int, torch.Tensor] | None = None,
                   index: list[int] | None = None) -> torch.Tensor:
    """Band spectra `(b, rows, cols)` of the views moved by `estimates` and stretched by `factors`.

    `index`: only these views, in this order (`(len(index), rows, cols)`).
    `weights`: for some views, a weight `(h, w)` per pixel (0: leave out),
    moved and stretched with the view and laid on the window. Pixels whose
    source lies outside a view repeat its border (not its mean, which costs
    a pass over the pixels): the callers' windows are inset by the largest
    shift (at most a quarter of the view), so those pixels carry no weight
    unless a view is moved further than that.
    """
    n_views = views.shape[0] if index is None else len(index)
    chunk = pairs_per_chunk(correlator.shape, correlator.fft_shape, views.device)
    out = None
    for first in range(0, n_views, chunk):
        wanted = (list(range(first, min(first + chunk, n_views))) if index is None
                  else index[first:first + chunk])
        idx = torch.tensor(wanted, dtype=torch.long)
        if wanted == list(range(wanted[0], wanted[0] + len(wanted))):
            block = slice(wanted[0], wanted[0] + len(wanted))  # a view of the views, not a copy
        else:
            block = idx
        warped = stretch_images(views[block if isinstance(block, slice) else idx.to(views.device)],
                                factors[block], across, centre,
                                pre_shifts=estimates[block].to(views.device), mode=interpolation,
                                fill_outside=False)
        own = [k for k, v in enumerate(idx.tolist()) if weights and v in weights]
        if own:
            windows = window.expand(len(idx), -1, -1).clone()
            chosen = idx[own]
            maps = torch.stack([weights[v] for v in chosen.tolist()]).to(views.device)
            windows[own] = windows[own] * stretch_images(
                maps, factors[chosen], across, centre,
                pre_shifts=estimates[chosen].to(views.device), mode="bilinear")
            spectra = correlator.spectra(warped, window=windows)
        else:
            spectra = correlator.spectra(warped, window=window)
        if len(idx) == n_views:  # one chunk: the spectra as they are
            return spectra
        if out is None:  # filled chunk by chunk: no second copy of every spectrum
            out = torch.empty(n_views, *spectra.shape[1:], dtype=spectra.dtype,
                              device=spectra.device)
        out[first:first + len(idx)] = spectra
    return out


def refine_by_links(views, angles, reference, estimates, correlator: PairCorrelator, across,
                    centre, *, unusable, refine, interpolation, box: torch.Tensor | None = None,
                    lags: int = LINK_LAGS, rounds: int = LINK_ROUNDS,
                    lag_power: float = LINK_LAG_POWER
                    ) -> tuple[torch.Tensor, int]:
    """Noise-limited data: solve the shifts from links to several neighbours on both sides.

    A chain (each view against views of lower tilt) adds the errors of its
    links up view after view: on noisy data the shifts drift along each
    branch. Here every usable view is correlated, in the reference view's
    frame (views moved by their estimates and stretched by `cos(t_ref) /
    cos(t)`), with each of its next `lags` usable views in tilt order, across
    the reference view too, and the residual shifts `rho` are the robust
    least-squares solution of all links (`links.solve_links`: Huber, then
    Tukey), with `rho = 0` for the reference view. `rounds` times, each from
    the views moved by the previous round's shifts. Unusable views are not
    linked: they move with the usable views around them.

    Returns the shifts `(b, 2)` float64 (the views' pixels) and the number of
    links used in the last round.
    """
    factors = frame_factors(angles, reference)
    order = [v for v in torch.argsort(angles, stable=True).tolist() if not unusable[v]]
    pairs, lag_of = link_pairs(order, lags)
    if not pairs:
        return estimates, 0
    prior = lag_of.to(torch.float64) ** -lag_power
    system = LinkSystem.build(pairs, reference, stretch_matrices(factors, across))
    margin = usable_extent(estimates, unusable) + RESIDUAL_SEARCH
    window = correlator.inset_mask(margin)
    if box is not None:
        window = window * correlator.box_mask(box)
    shifts = estimates.clone()
    used = 0
    for _ in range(rounds):
        spectra = _frame_spectra(views, factors, shifts, correlator, window, across, centre,
                                 interpolation)
        measured, _, _ = measure_links(spectra, pairs, correlator, radius=RESIDUAL_SEARCH,
                                       refine=refine)
        solution, weights, _ = solve_links(system, measured, prior, min_sd=LINK_MIN_SD)
        used = int((weights > 0).sum())
        shifts = shifts + _spread_to_unusable(system.spread(solution, angles.numel()), angles,
                                              order)
    return shifts, used


def measure_links(spectra: torch.Tensor, pairs: list[tuple[int, int]],
                  correlator: PairCorrelator, *, radius: float, refine: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual shifts `(n, 2)` float64, NCC and significance `(n,)` of view pairs `(i, j)`.

    `spectra` `(b, rows, cols)`: band spectra of the views in one frame; the
    shift moves view `j` onto view `i`, searched within `radius` pixels.
    """
    energies = correlator.energy(spectra)
    first = torch.tensor([i for i, _ in pairs])
    second = torch.tensor([j for _, j in pairs])
    device = spectra.device
    chunk = pairs_per_chunk(correlator.shape, correlator.fft_shape, device)
    measured = torch.zeros(len(pairs), 2, dtype=torch.float64)
    ncc = torch.zeros(len(pairs), dtype=torch.float64)
    z = torch.zeros(len(pairs), dtype=torch.float64)
    for start in range(0, len(pairs), chunk):
        i, j = first[start:start + chunk].to(device), second[start:start + chunk].to(device)
        s, c, _, q = correlator.correlate(spectra[i], spectra[j], refine=refine,
                                          max_shift=radius, coarse_band=COARSE_BAND,
                                          moving_energy=energies[j], significance=True)
        measured[start:start + chunk] = s.cpu().to(torch.float64)
        ncc[start:start + chunk] = c.cpu().to(torch.float64)
        z[start:start + chunk] = q
    return measured, ncc, z


def _spread_to_unusable(rho: torch.Tensor, angles: torch.Tensor, usable: list[int]) -> torch.Tensor:
    """`rho` `(b, 2)` with each unusable view given the usable views' value, linear in tilt.

    Unusable views were placed against the chain's references: they move with
    the usable views around them, so they stay where their own peak put them.
    """
    tilts = angles.detach().cpu().to(torch.float64)
    known = torch.tensor(usable)
    x = tilts[known]
    out = rho.clone()
    for view in range(rho.shape[0]):
        if view in usable:
            continue
        above = int(torch.searchsorted(x.contiguous(), tilts[view]))
        if above == 0 or above == len(usable):  # beyond the usable views: the nearest one
            out[view] = rho[usable[min(above, len(usable) - 1)]]
            continue
        lower, upper = usable[above - 1], usable[above]
        span = float(tilts[upper] - tilts[lower])
        fraction = 0.0 if span == 0 else float(tilts[view] - tilts[lower]) / span
        out[view] = (1 - fraction) * rho[lower] + fraction * rho[upper]
    return out


def refine_in_reference_frame(views, angles, reference, branches, estimates, correlator: PairCorrelator,
                              across, centre, *, memory, refine, interpolation, unusable,
                              search=None, absolute: bool = True, box: torch.Tensor | None = None,
                              keep_if_weak: torch.Tensor | None = None, progress=None):
    """Final pass: each view against a weighted sum of its branch's lower-tilt views.

    Every view is moved by its current estimate and stretched into the frame
    of the reference view (by `cos(t_ref) / cos(t)`), once. In that common
    frame, the reference for a view is the sum of the usable views before it
    in its branch, weighted 1, `memory`, `memory**2`... from the neighbour
    inwards: averaging several views beats the noise, and errors no longer
    add up view after view as in a chain of neighbours. Residual shifts are
    small, so the fixed taper causes no bias. The residuals `rho` then follow
    from the measured `s` by `rho_m = K_m^-1 (s_m + sum_j w_j K_j rho_j)`.

    With `absolute=False` (IMOD's default for cumulative references) the
    references sum the views unstretched and each view is stretched onto its
    lower-tilt neighbour only: `K_j` becomes the identity and `K_m` the
    neighbour stretch.

    Parameters
    ----------
    unusable
        `(b,)` bool: views measured but never part of a reference.
    search
        `(b,)` search radius per view in pixels (default `RESIDUAL_SEARCH`).
    box
        `(4,)` area box (see `PairCorrelator.box_profiles`) at the reference's tilt.
    keep_if_weak
        `(b,)` bool: views whose estimate stands when their peak here is not
        significant (below `Z_LOW`: e.g. most of the view stretched out of
        the frame); they get no residual.

    Returns shifts `(b, 2)` float64 (binned pixels), NCC `(b,)`, peak `(b,)`
    and significance `(b,)` of each view against its reference (NaN for the
    reference view), and the views whose estimate was kept `(b,)` bool.
    """
    device = views.device
    n_views = angles.numel()
    cos_ref = math.cos(math.radians(float(angles[reference])))
    factors = cos_ref / torch.cos(torch.deg2rad(angles))  # (b,) stretch into the reference frame
    if search is None:
        search = torch.full((n_views,), RESIDUAL_SEARCH, dtype=torch.float64)
    # Views moved by up to max|estimate|: the window keeps clear of pixels that
    # some view lacks, and of the search range, so no padding is needed either.
    margin = usable_extent(estimates, unusable) + RESIDUAL_SEARCH
    window = correlator.inset_mask(margin)
    if box is not None:
        window = window * correlator.box_mask(box)

    inner_of = {}
    for branch in branches:
        inner = branch[0]
        for view in branch[1:]:
            inner_of[view] = inner
            if not unusable[view]:
                inner = view
    if absolute:
        moving_factors = factors
        reference_factors = factors
    else:
        moving_factors = factors.clone()
        for view, inner in inner_of.items():
            moving_factors[view] = math.cos(math.radians(float(angles[inner]))) / math.cos(
                math.radians(float(angles[view])))
        reference_factors = torch.ones_like(factors)

    chunk = pairs_per_chunk(correlator.shape, correlator.fft_shape, device)

    def frame(index: list[int], view_factors) -> torch.Tensor:  # (k, rows, cols)
        return _frame_spectra(views, view_factors, estimates, correlator, window, across, centre,
                              interpolation, index=index)

    measured = torch.zeros(n_views, 2, dtype=torch.float64)
    ncc = torch.full((n_views,), float("nan"), dtype=torch.float64)
    peak = torch.full((n_views,), float("nan"), dtype=torch.float64)
    z = torch.full((n_views,), float("nan"), dtype=torch.float64)
    weights_of: dict[int, dict[int, float]] = {}
    done = 0
    total = sum(len(branch) - 1 for branch in branches)
    band = (correlator.band_rows, correlator.band_cols)
    # Spectra are made a chunk of views at a time as each branch reaches them, never all
    # at once: a view's spectrum serves as a moving view, then (with `absolute`) in the
    # reference of the next (a stored set of 61 spectra of 1024 px cost 0.15 s to fill).
    starts = {}  # with `absolute`: the first view of each branch, in the reference frame
    for branch in branches:
        if absolute and branch[0] not in starts:
            starts[branch[0]] = frame([branch[0]], reference_factors)[0]
    for branch in branches:
        # refs[k] = spectra[inner] + memory * refs[k - 1]: one pass per view; the
        # normalisation by the weights' sum changes neither peak nor NCC.
        previous = torch.zeros(band, dtype=torch.complex64, device=device)
        weights: dict[int, float] = {}
        pending_inner = branch[0]
        last = starts.get(branch[0])  # with `absolute`: the spectrum of the view before a block
        refs = torch.empty(chunk, *band, dtype=torch.complex64, device=device)
        for first in range(1, len(branch), chunk):
            block = branch[first:first + chunk]
            moving = frame(block, moving_factors)
            # the spectrum each view's reference adds: its predecessor's in the reference frame
            inner = (None if absolute
                     else frame(branch[first - 1:first - 1 + len(block)], reference_factors))
            norms: list[float] = []
            for k, view in enumerate(block):
                slot = refs[k]
                if pending_inner is not None:  # a usable view joins the references
                    added = inner[k] if inner is not None else last if k == 0 else moving[k - 1]
                    torch.add(added, previous, alpha=memory, out=slot)
                    weights = {j: w * memory for j, w in weights.items()}
                    weights[pending_inner] = 1.0
                else:
                    slot.copy_(previous)
                previous = slot
                pending_inner = None if unusable[view] else view
                norm = sum(weights.values())
                weights_of[view] = {j: w / norm for j, w in weights.items()}
                norms.append(norm)
            s, c, p, q = correlator.correlate(
                refs[:len(block)], moving, refine=refine, max_shift=search[block],
                coarse_band=COARSE_BAND, moving_energy=correlator.energy(moving),
                significance=True)
            measured[block], ncc[block] = s.cpu(), c.cpu()
            z[block] = q
            peak[block] = p.cpu() / torch.tensor(norms, dtype=torch.float64)
            done += len(block)
            previous = previous.clone()  # refs is overwritten by the next chunk
            last = moving[-1] if absolute else None
            if progress is not None:
                progress(done, total)

    # Residuals, branch by branch from the reference outwards.
    moving_k = stretch_matrices(moving_factors, across)
    reference_k = stretch_matrices(reference_factors, across)
    kept = torch.zeros(n_views, dtype=torch.bool)
    if keep_if_weak is not None:
        kept = keep_if_weak.cpu() & ~(z >= Z_LOW)
        kept[reference] = False
    residual = torch.zeros(n_views, 2, dtype=torch.float64)
    for branch in branches:
        for view in branch[1:]:
            if kept[view]:
                continue
            pulled = sum((w * (reference_k[j] @ residual[j]) for j, w in weights_of[view].items()),
                         torch.zeros(2, dtype=torch.float64))
            residual[view] = torch.linalg.solve(moving_k[view], measured[view] + pulled)
    return estimates + residual, ncc, peak, z, kept
