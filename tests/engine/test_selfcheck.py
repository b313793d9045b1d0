"""The self-check: measured on every run, it picks the path and flags what it cannot trust."""

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.alignment.binning import bin_stack
from tiltxcorr_scipion.alignment.core import PLAIN, Path, align_path, prepare_views
from tiltxcorr_scipion.alignment.correlate import CorrelationFilter
from tiltxcorr_scipion.alignment.selfcheck import Judge
from tiltxcorr_scipion.options import CoarseOptions
from tiltxcorr_scipion.simulate import simulate_tilt_series
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

SMALL = dict(shape=(256, 256), n_views=41, seed=5)


def align(sim, **options):
    return align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle, **options)


@pytest.fixture(scope="module")
def clean():
    return simulate_tilt_series(noise=1.0, thickness=10.0, **SMALL)


def test_clean_series_keep_the_plain_path_with_small_residuals(clean):
    result = align(clean)
    assert result.path == "plain"
    assert not result.unreliable and result.unreliable_reason == ""
    assert clean.alignment_error(result.shifts) < 0.1
    residual = result.residual[torch.isfinite(result.residual)]
    assert residual.numel() == 41 and float(residual.max()) < 0.3
    assert any(note.startswith("self-check at binning") for note in result.series_notes)
    # the plain path is measured too, and says the same
    plain = align(clean, adaptive=False, fixed_pattern="off")
    assert plain.path == "plain" and not plain.unreliable
    assert torch.allclose(plain.shifts, result.shifts)


def test_pure_noise_is_flagged_unreliable():
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(31, 128, 128, generator=generator)
    angles = torch.linspace(-60.0, 60.0, 31)
    for options in ({}, dict(adaptive=False)):
        result = align_tilt_series(images, angles, 85.0, **options)
        assert result.unreliable, options
        assert "agree" in result.unreliable_reason


def test_a_view_replaced_by_another_views_image_is_flagged(clean):
    images = clean.images.clone()
    order = torch.argsort(clean.tilt_angles).tolist()
    bad, source = order[30], order[5]  # +30 degrees holds the image taken at -45
    images[bad] = images[source]
    result = align_tilt_series(images, clean.tilt_angles, clean.tilt_axis_angle)
    assert result.unusable_views() == [bad]
    assert result.reasons[bad].startswith("matches its neighbouring views less than they match")
    assert not result.unreliable
    assert clean.alignment_error(result.shifts, exclude=(bad,)) < 0.15


def test_a_clearly_better_candidate_is_kept_over_the_plain_path():
    # heavy noise: the plain chain loses the specimen, other paths do not
    sim = simulate_tilt_series(noise=15.0, **SMALL)
    plain = align(sim, adaptive=False, fixed_pattern="off")
    assert sim.alignment_error(plain.shifts) > 3.0
    assert plain.unreliable  # it says so itself
    result = align(sim)
    assert result.path != "plain"
    assert not result.unreliable
    assert sim.alignment_error(result.shifts) < 2.0  # (the best candidate here: 1.6 px)


def test_fixed_pattern_removal_must_be_confirmed_by_the_measure():
    # a needle along the tilt axis, aligned already, looks alike at every tilt: its
    # pixel-scale detail passes for a camera pattern; the measure keeps it unremoved
    sim = simulate_volume_series(specimen="needle", contrast="stem", shape=(64, 64),
                                 n_views=41, tilt_range=(-60.0, 60.0), tilt_axis_angle=90.0,
                                 jumps="none", seed=1)
    result = align_tilt_series(sim.views, sim.tilt_angles, sim.tilt_axis_angle)
    assert not result.fixed_pattern_removed
    assert sim.alignment_error(result.shifts) < 0.5


def test_judge_measures_a_known_displacement():
    sim = simulate_tilt_series(noise=1.0, thickness=10.0, **SMALL)
    opts = CoarseOptions()
    angles = sim.tilt_angles.double()
    binned = bin_stack(sim.images, 1)
    prepared = prepare_views(binned, angles, opts)
    judge = Judge(binned, angles, prepared.unusable, sim.tilt_axis_angle, CorrelationFilter(),
                  taper_fraction=0.1, interpolation="bilinear")
    shifts = align_path(prepared, PLAIN, sim.tilt_axis_angle, opts).shifts
    good = judge.measure(shifts, 0)
    assert good.consistent and good.error < 0.1
    moved = shifts.clone()
    view = int(torch.argsort(angles)[33])
    moved[view] += torch.tensor([0.0, 2.0])  # one view 2 px off
    check = judge.measure(moved, 0)
    assert check.consistent
    correction = check.correction[view].norm()
    assert abs(float(correction) - 2.0) < 0.3  # the links ask for the 2 px back
    assert float(torch.median(check.correction[torch.isfinite(check.correction[:, 0])]
                              .norm(dim=1))) < 0.1
    finite = torch.isfinite(check.correction[:, 0])
    assert int(torch.argmax(torch.where(finite, check.correction.norm(dim=1), 0.0))) == view


def test_path_describes_itself():
    assert PLAIN.describe() == "plain"
    assert Path(binning=4, adaptive=True, remove_pattern=True).describe() == (
        "adaptive, 4x binned, fixed pattern removed")


def test_a_path_that_loses_a_view_is_not_better():
    """Smaller corrections on the other views do not buy a view set aside (the outlier's own
    links leave the error): the grid-barred series' 4x binned plain path misaligned its
    60-degree view by 23 px and, on one CI machine, was kept with that view lost."""
    from tiltxcorr_scipion.alignment.selfcheck import LinkCheck, _better

    generator = torch.Generator().manual_seed(0)
    n = 21
    pairs = [(i, i + 1) for i in range(n - 1)]

    def check(scale, outliers=()):
        return LinkCheck(binning=1, pairs=pairs, held_out=torch.zeros(n - 1),
                         agree=torch.ones(n - 1, dtype=torch.bool),
                         correction=scale * (1 + torch.rand(n, 2, generator=generator)),
                         ncc=torch.full((n - 1,), 0.9), lags=torch.ones(n - 1),
                         outliers=outliers)

    kept, challenger = check(1.0), check(0.2)
    assert _better(challenger, kept)  # clearly smaller on every view
    assert not _better(check(0.2, outliers=(20,)), kept)  # ...unless it loses a view
    assert _better(check(0.2), check(1.0, outliers=(20,)))  # aligning a lost view is no loss


def test_no_stretch_needs_the_links_too():
    """Neighbours of a STEM cluster (particles on a support, a slab) overlap a little
    better unstretched, but the unstretched path's own links ask for more corrections
    than the plain path's: the figures disagree on the model, so the settled plain path
    stays (0.325 px; the unstretched one, kept before on the overlap alone: 0.516 px)."""
    series = simulate_volume_series(seed=3, shape=(256, 256), specimen="cluster",
                                    contrast="stem", jumps="large", n_views=61,
                                    tilt_axis_angle=0.0, noise=0.5)
    result = align_tilt_series(series.views, series.tilt_angles, series.tilt_axis_angle)
    assert result.path == "plain"
    assert "plain, no cosine stretch: links agree" in result.series_notes[-1]
    assert series.alignment_error(result.shifts) < 0.4
    assert not result.unreliable
