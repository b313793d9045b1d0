"""The specimen slab in a back-projection: its tilt about the tilt axis, thickness, surfaces.

The tilt angle offset that levels a specimen is not determined by the projections (a common
rotation of the points about the tilt axis and of the tilt angles changes none); it is a
choice of what "level" means. tiltalign levels the plane through the solved points; IMOD then
levels tomograms by the slab's surfaces (tomopitch, from boundary models a user draws on the
top and bottom of the section in sample tomograms). For a thick slab the two differ: a plane
through N features spread evenly over a slab of thickness T and width W tilts at random by
about `(T / W) / sqrt(N)` radians, 0.3 degree for 650 features in a slab of 120 x 880 pixels,
while the surfaces are sharp.

`find_slab` does tomopitch's job without a user: it back-projects the aligned series (filtered
back-projection, slices across the tilt axis, with the solved geometry), takes the local
maxima as features, and fits the slab model to their heights by maximum likelihood: heights
uniform between two parallel planes, blurred by a Gaussian, plus a small uniform fraction of
outliers (noise peaks, gold or contamination off the slab). The fit uses every feature, not
only those at the surfaces, but the surfaces decide the tilt.

The tilt's standard error is clustered by block of the slab (`feature_blocks`): the features of
one object (the local maxima along a filament, the blobs of one particle, a membrane) lie at
one height and err together, so counted one by one they made it too small where the content is
made of such objects (the `volume` image model of the family benchmark, docs/fine-alignment.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .geometry import axis_directions
from .projection import ERROR_BLOCKS, GeometrySolution

#: Views are binned so that their larger side is about this many pixels.
TARGET_SIDE = 256
#: Slices across the tilt axis that are back-projected.
SLICES = 48
#: Half the searched height, as a fraction of the views' smaller side.
HALF_HEIGHT_FRACTION = 0.2
#: The surfaces' blur is at least this fraction of the height sampling (the features'
#: sub-sample heights are uncertain at that scale; a sharper box over-fits the extremes).
MIN_BLUR_FRACTION = 0.25
#: A slab thinner than this many times its surfaces' blur has no surfaces to level by.
MIN_THICKNESS_PER_BLUR = 3.0
#: Fewer features than this give no slab.
MIN_FEATURES = 40
#: A feature is a local maximum this many standard deviations above the mean.
FEATURE_THRESHOLD_SD = 3.0


class SlabNotFound(ValueError):
    """The back-projection shows no slab that can be trusted (the reason says why)."""


@dataclass(frozen=True)
class SlabFit:
    """The specimen slab, in the frame of the geometry it was found with.

    Attributes
    ----------
    tilt
        Degrees: the slab's surfaces rise by `tan(tilt)` per pixel across the
        tilt axis (`z = tan(tilt) x + ...`). Adding `-tilt` to the tilt angle
        offset levels them.
    along_axis_tilt
        Degrees: the same along the tilt axis (IMOD tomopitch's X-axis tilt);
        reported, not corrected (no tilt angle does).
    thickness
        Distance between the surfaces in input pixels.
    centre
        Height of the slab's middle at the tilt axis, input pixels.
    blur
        Standard deviation of the features' heights across a surface, pixels.
    outlier_fraction
        Fraction of the features that fit neither surface nor the inside.
    n_features
        Features the fit used.
    tilt_error
        One standard error of `tilt` in degrees, from the features: the
        likelihood's curvature with the spread of the features' own gradients
        summed by block of the slab (the sandwich, `_sandwich_error`: a
        linearised bootstrap over blocks of features, right also where the
        slab model is only near the truth and where neighbouring features
        err together).
    """

    tilt: float
    along_axis_tilt: float
    thickness: float
    centre: float
    blur: float
    outlier_fraction: float
    n_features: int
    tilt_error: float = float("nan")


def find_slab(tilt_series: torch.Tensor, geometry: GeometrySolution) -> SlabFit:
    """Find the specimen slab in a back-projection of the series aligned by `geometry`.

    Parameters
    ----------
    tilt_series
        `(b, h, w)` RAW views, stack order, as `geometry` was solved for.
    geometry
        The solved geometry; the slab is measured in its frame (its
        `tilt_angles`, offset included).

    Returns
    -------
    SlabFit

    Raises
    ------
    SlabNotFound
        Too few features, a slab whose surfaces are not distinct (thinner
        than 3 times their blur), or one that reaches the edge of the
        searched height (it may be thicker than 40% of the views' smaller side).
    """
    b, h, w = tilt_series.shape
    binning = max(1, round(max(h, w) / TARGET_SIDE))
    step = float(binning)
    heights = _grid(HALF_HEIGHT_FRACTION * min(h, w), step)
    along, across = axis_directions(geometry.tilt_axis_angle)
    half_u, half_v = (0.8 * _inscribed(along, h, w), 0.9 * _inscribed(across, h, w))
    slices = torch.linspace(-half_u, half_u, SLICES, dtype=torch.float64)
    lateral = _grid(half_v, step)
    profile_h = _grid(half_v + float(heights[-1]), step)

    views = F.avg_pool2d(tilt_series.detach().float()[:, None], binning)[:, 0]
    views = (views - views.mean(dim=(1, 2), keepdim=True)) \
        / views.std(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    profiles, inside = _line_profiles(views, geometry, slices, profile_h, along, across, binning)
    # NaN off the image, after filtering: a voxel is valid where every view saw it
    profiles = _ramp_filter(profiles).masked_fill(~inside, math.nan)

    tilts = torch.deg2rad(geometry.tilt_angles.to(torch.float64)).cpu()
    volume = torch.zeros(SLICES, len(lateral), len(heights), device=views.device)
    for i in range(b):
        position = (lateral[:, None] * math.cos(tilts[i]) + heights[None, :] * math.sin(tilts[i])
                    - profile_h[0]) / step
        low = position.floor().clamp(0, len(profile_h) - 2)
        frac = (position - low).to(views.device, torch.float32)
        low = low.long().to(views.device).reshape(-1)
        a = profiles[i][:, low].view(SLICES, *position.shape)
        c = profiles[i][:, low + 1].view(SLICES, *position.shape)
        volume += a + (c - a) * frac
    valid = torch.isfinite(volume)
    return _fit(*_features(volume, valid, slices, lateral, heights), span=2 * float(heights[-1]),
                height_limit=float(heights[-1]), min_blur=MIN_BLUR_FRACTION * step)


def _grid(half: float, step: float) -> torch.Tensor:
    n = int(half // step)
    return torch.arange(-n, n + 1, dtype=torch.float64) * step


def _inscribed(direction: torch.Tensor, h: int, w: int) -> float:
    """How far from the centre along `direction` (row, col) the view extends."""
    limits = [half / abs(float(d))
              for half, d in zip(((h - 1) / 2, (w - 1) / 2), direction.tolist(), strict=True)
              if abs(float(d)) > 1e-9]
    return min(limits)


def _line_profiles(views, geometry, slices, profile_h, along, across, binning):
    """Each view sampled along the line where each slice projects: `(b, slices, n_h)`."""
    # raw position of (u along the axis, height h across it in the aligned view)
    aligned = slices[:, None, None] * along + profile_h[None, :, None] * across  # (s, n_h, 2)
    b = geometry.shifts.shape[0]
    raw = geometry.to_raw(aligned[:, :, None].expand(-1, -1, b, -1)).permute(2, 0, 1, 3)
    binned = (raw + 0.5) / binning - 0.5
    hb, wb = views.shape[1:]
    norm = torch.stack([binned[..., 1] / (wb - 1) * 2 - 1, binned[..., 0] / (hb - 1) * 2 - 1], -1)
    inside = (norm.abs() <= 1).all(-1).to(views.device)
    sampled = F.grid_sample(views[:, None], norm.to(views.device, torch.float32),
                            align_corners=True, padding_mode="zeros")[:, 0]
    return sampled, inside


def _ramp_filter(profiles: torch.Tensor) -> torch.Tensor:
    """Filtered back-projection's ramp along each line, rolled off by a cosine (Hann)."""
    n = profiles.shape[-1]
    size = 2 * n
    freq = torch.fft.rfftfreq(size, device=profiles.device)
    ramp = freq * (0.5 + 0.5 * torch.cos(2 * math.pi * freq))
    spectrum = torch.fft.rfft(profiles, n=size) * ramp
    return torch.fft.irfft(spectrum, n=size)[..., :n]


def _features(volume, valid, slices, lateral, heights):
    """Local maxima of the back-projection (features' polarity from its skew): u, x, z."""
    values = volume[valid]
    if values.numel() < 27:
        raise SlabNotFound("the views overlap too little for a back-projection")
    centred = values - values.mean()
    polarity = 1.0 if float((centred ** 3).mean()) >= 0 else -1.0
    field = torch.where(valid, polarity * (volume - values.mean()),
                        torch.full_like(volume, -math.inf))
    peak = field[None, None]
    for kernel in ((5, 1, 1), (1, 5, 1), (1, 1, 5)):  # a 5^3 box, one axis at a time
        peak = F.max_pool3d(peak, kernel, stride=1, padding=tuple(k // 2 for k in kernel))
    peak = peak[0, 0]
    threshold = FEATURE_THRESHOLD_SD * float(values.std())
    found = ((field == peak) & (field > threshold)).nonzero().cpu()
    if len(found) < MIN_FEATURES:
        raise SlabNotFound(f"only {len(found)} features stand out in the back-projection "
                           f"(at least {MIN_FEATURES} needed)")
    # sub-sample height: the parabola through the peak and its neighbours in z
    k = found[:, 2].clamp(1, len(heights) - 2)
    s, x = found[:, 0], found[:, 1]
    field = field.cpu()
    mid, below, above = field[s, x, k], field[s, x, k - 1], field[s, x, k + 1]
    curve = below - 2 * mid + above
    ok = torch.isfinite(below) & torch.isfinite(above) & (curve < 0)
    shift = torch.where(ok, 0.5 * (below - above) / torch.where(ok, curve, -1.0), 0.0)
    step = float(heights[1] - heights[0])
    z = heights[k] + shift.clamp(-0.5, 0.5).double() * step
    return slices[s], lateral[x], z


def _fit(u, x, z, *, span: float, height_limit: float, min_blur: float) -> SlabFit:
    """Maximum likelihood slab: heights uniform between two planes, Gaussian blur, outliers."""
    design = torch.stack([x, u, torch.ones_like(x)], 1)
    start = torch.linalg.lstsq(design, z[:, None]).solution[:, 0]
    level = z - design @ start
    width = float(torch.quantile(level, 0.98) - torch.quantile(level, 0.02))
    params = torch.tensor([float(start[0]), float(start[1]), float(start[2]),
                           math.log(max(width, 1.0)), math.log(2.0), -4.0],
                          dtype=torch.float64, requires_grad=True)
    root2 = math.sqrt(2.0)

    def feature_costs(values: torch.Tensor) -> torch.Tensor:
        """`(n,)` negative log likelihood of each feature's height; `values` `(6,)`, or
        `(n, 6)`: one copy per feature."""
        slope_x, slope_u, centre, log_w, log_s, logit_out = values.unbind(-1)
        thickness, blur, out = log_w.exp(), log_s.exp().clamp(min=min_blur), torch.sigmoid(logit_out)
        height = z - slope_x * x - slope_u * u - centre
        inside = 0.5 * (torch.erf((height + thickness / 2) / (root2 * blur))
                        - torch.erf((height - thickness / 2) / (root2 * blur))) / thickness
        return -torch.log((1 - out) * inside + out / span + 1e-300)

    def negative_log_likelihood() -> torch.Tensor:
        return feature_costs(params).sum()

    optimiser = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9)

    def closure():
        optimiser.zero_grad()
        loss = negative_log_likelihood()
        loss.backward()
        return loss

    optimiser.step(closure)
    slope_x, slope_u, centre, log_w, log_s, logit_out = params.detach().tolist()
    # a fit that ran away (noise only: no slab) must not overflow the conversions below
    if not all(map(math.isfinite, (slope_x, slope_u, centre, log_w, log_s, logit_out))) \
            or max(abs(log_w), abs(log_s)) > 50:
        raise SlabNotFound("the slab fit did not converge")
    slope_error = _sandwich_error(feature_costs, params.detach(), 0, feature_blocks(u, x))
    thickness = math.exp(log_w)
    blur = max(math.exp(log_s), min_blur)
    if thickness < MIN_THICKNESS_PER_BLUR * blur:
        raise SlabNotFound(f"the features lie in a layer {thickness:.1f} px thick whose heights "
                           f"spread by {blur:.1f} px: no distinct surfaces")
    if abs(centre) + thickness / 2 > 0.95 * height_limit:
        raise SlabNotFound(f"the slab ({thickness:.0f} px thick) reaches the edge of the "
                           f"searched height (+-{height_limit:.0f} px)")
    return SlabFit(tilt=math.degrees(math.atan(slope_x)),
                   tilt_error=math.degrees(slope_error / (1.0 + slope_x * slope_x)),
                   along_axis_tilt=math.degrees(math.atan(slope_u)),
                   thickness=thickness, centre=centre, blur=blur,
                   outlier_fraction=float(torch.sigmoid(torch.tensor(logit_out))),
                   n_features=len(z))


def feature_blocks(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`(n,)` the block (`ERROR_BLOCKS` x `ERROR_BLOCKS` over the features' extent along `u`
    and across `x` the tilt axis) each feature falls in: the clusters of the slab's standard
    error, as blocks of the view cluster the points' (`projection.error_blocks`)."""
    def cell(values: torch.Tensor) -> torch.Tensor:
        low, high = float(values.min()), float(values.max())
        return ((values - low) / max(high - low, 1e-9) * ERROR_BLOCKS).floor() \
            .clamp(0, ERROR_BLOCKS - 1).long()
    return cell(u) * ERROR_BLOCKS + cell(x)


def _sandwich_error(feature_costs, values: torch.Tensor, which: int,
                    clusters: torch.Tensor | None = None) -> float:
    """Standard error of parameter `which` of the fit minimising `feature_costs(values).sum()`.

    `H^+ (sum_c g_c g_c^T) H^+ C / (C - 1)` with `H` the Hessian of the total cost and
    `g_c` the gradient of cluster `c`'s features at the optimum (`clusters` `(n,)` labels;
    None: each feature its own, the Huber-White sandwich with `n / (n - k)`); a parameter
    held at a bound (the blur at its floor) has no curvature and drops out.
    """
    hessian = torch.autograd.functional.hessian(lambda v: feature_costs(v).sum(), values)
    # every feature's own gradient in one backward pass: one copy of the values per feature
    copies = values.detach()[None].repeat(len(feature_costs(values.detach())), 1)
    copies.requires_grad_(True)
    (scores,) = torch.autograd.grad(feature_costs(copies).sum(), copies)  # (n, k)
    n = scores.shape[0]
    if clusters is None:
        inflation = n / max(n - len(values), 1)
    else:
        labels, index = torch.unique(clusters, return_inverse=True)
        scores = torch.zeros(len(labels), scores.shape[1], dtype=scores.dtype) \
            .index_add_(0, index, scores)  # (c, k)
        inflation = len(labels) / max(len(labels) - 1, 1)
    bread = torch.linalg.pinv(hessian, hermitian=True, rtol=1e-10)
    covariance = bread @ (scores.T @ scores) @ bread * inflation
    return math.sqrt(max(float(covariance[which, which]), 0.0))
