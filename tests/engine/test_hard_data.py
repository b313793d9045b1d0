"""Hard data with default settings: fixed pattern, heavy noise, blocked views, area, IMOD options.

Small simulated series (41 views of 256 px) with known shifts. Errors are
measured as in docs/benchmarks-hard-data.md: RMS over views after removing by
least squares what no tilt series determines (one constant, and across the
axis `X cos t + Z sin t`), on the views that were not blocked.
"""

from dataclasses import replace

import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.alignment.pattern import detect_fixed_pattern
from tiltxcorr_scipion.simulate import RealConditions, simulate_tilt_series

SMALL = dict(shape=(256, 256), n_views=41, seed=3)


def fair_rms(shifts: torch.Tensor, sim, exclude=()) -> float:
    """RMS error (px) after removing what no tilt series determines (`alignment_error`)."""
    return sim.alignment_error(shifts, exclude=exclude)


def align(sim, **options):
    return align_tilt_series(sim.images, sim.tilt_angles, sim.tilt_axis_angle, **options)


@pytest.fixture(scope="module")
def pattern_series():
    return simulate_tilt_series(fixed_pattern=2.0, noise=1.0, **SMALL)


def test_fixed_pattern_is_detected_and_removed(pattern_series):
    result = align(pattern_series)
    assert result.fixed_pattern_removed
    assert any(note.startswith("fixed pattern detected") for note in result.series_notes)
    assert fair_rms(result.shifts, pattern_series) < 0.3


def test_fixed_pattern_forced_off_and_on(pattern_series):
    off = align(pattern_series, fixed_pattern="off", adaptive=False)
    assert not off.fixed_pattern_removed
    assert fair_rms(off.shifts, pattern_series) > 3.0  # the pattern wins the correlation...
    assert off.unreliable  # ...and the self-check says so
    # forced on: removed without being looked for, also on a series without one
    clean = simulate_tilt_series(noise=1.0, **SMALL)
    forced = align(clean, fixed_pattern="on")
    assert forced.fixed_pattern_removed
    assert "fixed_pattern='on'" in " ".join(forced.series_notes)
    assert fair_rms(forced.shifts, clean) < 0.2


def test_pattern_detection_spares_aligned_and_noisy_series():
    small = dict(shape=(192, 192), n_views=21, seed=3)
    usable = torch.ones(21, dtype=torch.bool)
    for kwargs in (dict(noise=1.0, max_shift=0.5),  # nearly aligned: the specimen stays put too
                   dict(noise=0.0, max_shift=0.0, thickness=0.0),  # perfectly aligned
                   dict(noise=15.0), dict(dose=3.0, ctf_defocus=3.0)):
        sim = simulate_tilt_series(**{**small, **kwargs})
        assert not detect_fixed_pattern(sim.images, sim.tilt_angles, usable).present, kwargs
    weak = simulate_tilt_series(**{**small, "noise": 1.0, "fixed_pattern": 0.3})
    assert detect_fixed_pattern(weak.images, weak.tilt_angles, usable).present


def test_heavy_noise_adapts_and_reports_it():
    sim = simulate_tilt_series(noise=8.0, **SMALL)
    result = align(sim)
    plain = align(sim, adaptive=False)
    notes = " ".join(result.series_notes)
    assert "first stage at binning" in notes and "low-pass lowered" in notes
    assert result.first_stage_binning >= 4 and result.final_binning >= 2
    assert result.low_pass_used < 0.25
    assert any(result.notes)  # what was done, per view
    assert fair_rms(result.shifts, sim) < 0.8
    assert fair_rms(result.shifts, sim) < 0.5 * fair_rms(plain.shifts, sim)
    significance = result.peak_significance[~torch.isnan(result.peak_significance)]
    assert significance.numel() == 40 and float(significance.median()) > 6


def test_blocked_view_is_flagged_and_bridged():
    sim = simulate_tilt_series(noise=1.0, blocked_views=(36,), **SMALL)
    result = align(sim)
    assert result.unusable_views() == [36]
    assert result.reasons[36].startswith(("dark:", "bright:"))
    assert all(reason == "" for view, reason in enumerate(result.reasons) if view != 36)
    assert int(result.paired_with[37]) == 35  # the chain bridges the blocked view
    assert "paired across unusable views" in result.notes[37]
    assert "interpolated" in result.notes[36]
    assert fair_rms(result.shifts, sim, exclude=(36,)) < 0.2


def test_dark_view_under_counting_noise():
    sim = simulate_tilt_series(dose=3.0, blocked_views=(30,), order="dose-symmetric", **SMALL)
    result = align(sim)
    assert result.unusable_views() == [30]
    assert result.reasons[30].startswith("dark: mean")
    assert fair_rms(result.shifts, sim, exclude=(30,)) < 0.3


def test_blank_view_at_the_series_level_is_found_by_correlation():
    sim = simulate_tilt_series(noise=1.0, **SMALL)
    images = sim.images.clone()
    noise = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    images[33] = images[33].mean() + images[32].std() * noise  # no specimen, same mean and sd
    result = align(replace(sim, images=images))
    assert result.unusable_views() == [33]
    # the plain path is kept here; the self-check finds the view (the adaptive path's
    # bridging says "blank: no significant correlation ...")
    assert result.reasons[33].startswith("matches its neighbouring views less than they match")
    assert fair_rms(result.shifts, sim, exclude=(33,)) < 0.2
    plain = align(replace(sim, images=images), adaptive=False)  # every run is checked
    assert plain.unusable_views() == [33] and plain.path == "plain"


def test_blocked_view_with_beads_grid_bar_and_thick_specimen():
    sim = simulate_tilt_series(order="dose-symmetric", gold_beads=10, grid_bar=(150.0, 125.0),
                               thickness=20.0, noise=1.0, blocked_views=(35,), **SMALL)
    result = align(sim)
    assert result.unusable_views() == [35]
    assert any("opaque areas" in note for note in result.series_notes)
    assert fair_rms(result.shifts, sim, exclude=(35,)) < 0.5


def test_a_bright_specimen_on_vacuum_is_not_taken_for_an_opaque_area():
    # STEM: the specimen (a needle) is bright on a dark, empty background, so the view's
    # level is the vacuum and the needle's flat interior lies far from it, like a shadow.
    # Filled, the needle was cut along the screen's blocks, an edge fixed in the camera
    # (1.68 px; 4.6 px on the scoreboard's 77 x 256 needle). Its blocks are busier than
    # the level's, which no opaque object is: nothing is filled.
    from tiltxcorr_scipion.simulate_volume import simulate_volume_series

    series = simulate_volume_series(seed=1, shape=(128, 128), specimen="needle",
                                    contrast="stem", jumps="large", jump_size=6.0, n_views=41,
                                    tilt_range=(-70.0, 70.0), tilt_axis_angle=90.0, noise=0.3)
    result = align_tilt_series(series.views, series.tilt_angles, series.tilt_axis_angle)
    assert not any("opaque areas" in note for note in result.series_notes)
    assert series.alignment_error(result.shifts) < 0.5
    assert not result.unreliable


def test_area_to_correlate_like_a_lamella():
    sim = simulate_tilt_series(noise=1.0, **SMALL)
    images = sim.images.clone()
    generator = torch.Generator().manual_seed(1)
    for rows in (slice(0, 80), slice(176, 256)):  # only a band along the axis holds specimen
        images[:, rows] = images.mean() + 3 * images.std() * torch.randn(
            41, 80, 256, generator=generator)
    lamella = replace(sim, images=images)
    whole = fair_rms(align(lamella).shifts, sim)
    area = align(lamella, y_min_max=(90, 165))
    assert fair_rms(area.shifts, sim) < 0.3 < whole
    borders = align(lamella, borders=(0, 90))
    assert torch.allclose(borders.shifts, area.shifts, atol=0.05)


def test_angle_offset_sets_the_stretch_and_the_reference():
    sim = simulate_tilt_series(noise=1.0, tilt_range=(-50.0, 70.0), thickness=5.0, **SMALL)
    nominal = replace(sim, tilt_angles=sim.tilt_angles - 10.0)  # the specimen is tilted by 10
    without = align(nominal)
    with_offset = align(nominal, angle_offset=10.0)
    assert with_offset.reference_view == int(torch.argmin(sim.tilt_angles.abs()))
    assert without.reference_view == int(torch.argmin(nominal.tilt_angles.abs()))
    assert fair_rms(with_offset.shifts, sim) < 0.1
    assert fair_rms(with_offset.shifts, sim) < 0.7 * fair_rms(without.shifts, sim)


def test_relative_stretch_sums_unstretched_views():
    sim = simulate_tilt_series(noise=1.0, **SMALL)
    absolute = align(sim)
    relative = align(sim, absolute_cosine_stretch=False)
    # references of views seen at other tilts, unstretched, match a view less well
    high = sim.tilt_angles.abs() > 40
    assert float(relative.correlation[high].mean()) < float(absolute.correlation[high].mean())
    assert not torch.allclose(relative.shifts, absolute.shifts, atol=0.01)
    assert fair_rms(relative.shifts, sim) < 0.3


def test_simulated_conditions():
    base = simulate_tilt_series(shape=(64, 64), n_views=9, seed=1)
    assert not RealConditions().active
    for kwargs in (dict(dose=3.0), dict(ctf_defocus=3.0), dict(fixed_pattern=1.0),
                   dict(gold_beads=5), dict(grid_bar=(10.0, 40.0)), dict(blocked_views=(8,))):
        sim = simulate_tilt_series(shape=(64, 64), n_views=9, seed=1, **kwargs)
        assert not torch.equal(sim.images, base.images), kwargs
        assert torch.equal(sim.shifts, base.shifts) and torch.equal(sim.tilt_angles,
                                                                    base.tilt_angles)
    counts = simulate_tilt_series(shape=(64, 64), n_views=9, seed=1, dose=3.0, pixel_size=4.0)
    assert torch.equal(counts.images, counts.images.round())  # electron counts
    assert abs(float(counts.images[4].mean()) - 48.0) < 10.0  # 3 e/A^2 on 16 A^2 pixels
    pattern = simulate_tilt_series(shape=(64, 64), n_views=9, seed=1, fixed_pattern=1.0)
    difference = pattern.images - base.images  # the same in every view
    assert torch.allclose(difference, difference[0].expand_as(difference), atol=1e-5)
    blocked = simulate_tilt_series(shape=(64, 64), n_views=9, seed=1, blocked_views=(8,),
                                   noise=1.0)
    assert float(blocked.images[8].mean()) > float(blocked.images[7].mean()) + 5 * float(
        blocked.images[8].std())  # opaque: far from the specimen level, flat but for noise
    with pytest.raises(ValueError, match="blocked view 12"):
        simulate_tilt_series(shape=(64, 64), n_views=9, blocked_views=(12,))


def test_links_on_both_sides_remove_a_chain_drift():
    """refine_by_links: a random-walk drift along each branch (what a chain of noisy
    neighbour links leaves) is solved away; a view whose content is garbage loses its
    links' weight and does not pull its neighbours."""
    from tiltxcorr_scipion.alignment.correlate import CorrelationFilter, PairCorrelator
    from tiltxcorr_scipion.alignment.final_pass import refine_by_links
    from tiltxcorr_scipion.alignment.geometry import axis_directions

    sim = simulate_tilt_series(noise=1.0, **SMALL)
    images = sim.images.clone()
    garbage = 30
    images[garbage] = torch.roll(images[garbage], shifts=(40, -25), dims=(0, 1))  # content moved
    angles = sim.tilt_angles.double()
    reference = int(angles.abs().argmin())
    order = torch.argsort(angles).tolist()
    p = order.index(reference)
    walk = torch.zeros(len(order), 2, dtype=torch.float64)
    steps = 0.35 * torch.randn(len(order), 2, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64)
    for branch in (order[p + 1:], order[p - 1::-1]):  # errors add up from the reference outwards
        walk[branch] = torch.cumsum(steps[branch], dim=0)
    truth = sim.shifts.double()
    start = truth + walk
    _, across = axis_directions(sim.tilt_axis_angle)
    correlator = PairCorrelator((256, 256), CorrelationFilter(low_pass_cutoff=0.15,
                                                              low_pass_sigma=0.05),
                                taper_fraction=0.1, pad_fraction=0.0, device=torch.device("cpu"))
    centre = torch.tensor([127.5, 127.5], dtype=torch.float64)
    unusable = torch.zeros(41, dtype=torch.bool)
    solved, links = refine_by_links(images, angles, reference, start, correlator, across, centre,
                                    unusable=unusable, refine=True, interpolation="bilinear")
    before = fair_rms(start.float(), sim, exclude=(garbage,))
    after = fair_rms(solved.float(), sim, exclude=(garbage,))
    assert before > 0.9 and after < 0.15 * before, (before, after)  # not pulled by the garbage
    all_links = sum(41 - lag for lag in range(1, 7))
    assert links <= all_links - 6  # most of the garbage view's 12 links lost their weight
    # an unusable view is not linked: it moves with the usable views on either side of it
    unusable[garbage] = True
    moved, _ = refine_by_links(images, angles, reference, start, correlator, across, centre,
                               unusable=unusable, refine=True, interpolation="bilinear")
    rho = moved - start
    order = torch.argsort(angles).tolist()
    below, above = order[order.index(garbage) - 1], order[order.index(garbage) + 1]
    torch.testing.assert_close(rho[garbage], 0.5 * (rho[below] + rho[above]))
    assert float(rho[garbage].norm()) > 0.1  # it did move (the drift at its tilt)
