"""Alignment plots: a real PNG of the expected size, and the low-score flags."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from tiltxcorr_scipion.plots import (
    correlation_threshold,
    low_correlation_views,
    plot_alignment,
    save_alignment_plot,
)


def series(n: int = 41, seed: int = 0, noise: float = 0.02):
    """Angles, shifts, enabled, correlation of a plausible series (score falls with tilt)."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(-60, 60, n)
    shifts = np.cumsum(rng.normal(0, 3, (n, 2)), axis=0)
    reference = int(np.argmin(np.abs(angles)))
    shifts -= shifts[reference]
    correlation = 0.9 - 0.4 * (angles / 60) ** 2 + rng.normal(0, noise, n)
    correlation[reference] = np.nan
    return angles, shifts, np.ones(n, dtype=bool), correlation


def test_png_is_a_real_image_of_the_expected_size(tmp_path):
    angles, shifts, enabled, correlation = series()
    enabled[[0, 39]] = False
    correlation[~enabled] = np.nan
    path = save_alignment_plot(str(tmp_path / "TS_01_alignment.png"), "TS_01", angles, shifts,
                               enabled, correlation)
    assert path == str(tmp_path / "TS_01_alignment.png")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (650, 800)
    assert image[..., :3].std() > 0.05  # drawn, not blank
    assert (image[..., :3].min(axis=-1) < 0.5).mean() > 0.01  # lines and text


def test_a_bad_view_is_flagged_and_only_it():
    angles, shifts, enabled, correlation = series(noise=0.01)
    assert not low_correlation_views(angles, correlation, enabled).any()
    correlation[33] = 0.35  # a bad view, and the view correlated against it
    correlation[34] = 0.45
    enabled[5] = False
    correlation[5] = np.nan
    flagged = np.flatnonzero(low_correlation_views(angles, correlation, enabled))
    assert flagged.tolist() == [33, 34]
    threshold = correlation_threshold(angles, correlation, enabled)
    assert np.isnan(threshold[[5, 20]]).all()  # excluded and reference views: no threshold


def test_noisy_low_scores_are_not_flagged_for_being_low():
    # a thick, noisy specimen: every score low, none out of line with its neighbours
    angles, shifts, enabled, correlation = series(seed=3, noise=0.03)
    correlation = 0.25 * correlation
    assert not low_correlation_views(angles, correlation, enabled).any()
    correlation[10] = -0.05
    assert np.flatnonzero(low_correlation_views(angles, correlation, enabled)).tolist() == [10]


def test_figure_marks_excluded_and_low_views():
    angles, shifts, enabled, correlation = series()
    enabled[2] = False
    correlation[2] = np.nan
    correlation[30] = 0.1
    figure = plot_alignment("TS_07", angles, shifts, enabled, correlation)
    assert isinstance(figure, Figure)
    shift_axes, corr_axes = figure.axes
    assert "TS_07" in figure._suptitle.get_text()
    assert "1 excluded" in shift_axes.get_title() and "view 31" in shift_axes.get_title()
    assert corr_axes.get_xlabel() == "tilt angle (degrees)"
    assert [t.get_text() for t in corr_axes.texts] == ["31"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_series_plot(tmp_path, n):
    angles = np.arange(n) * 3.0
    correlation = np.full(n, 0.8)
    correlation[0] = np.nan
    save_alignment_plot(str(tmp_path / "t.png"), "t", angles, np.zeros((n, 2)),
                        np.ones(n, dtype=bool), correlation)


def test_bad_inputs_are_refused(tmp_path):
    angles, shifts, enabled, correlation = series(n=5)
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        plot_alignment("t", angles, shifts[:, :1], enabled, correlation)
    with pytest.raises(ValueError, match="correlation has 4 values for 5"):
        plot_alignment("t", angles, shifts, enabled, correlation[:4])
    with pytest.raises(ValueError, match="does not exist"):
        save_alignment_plot(str(tmp_path / "no" / "t.png"), "t", angles, shifts, enabled,
                            correlation)


def test_view_numbers_name_the_views_in_any_order():
    # arrays in tilt order, views named by their stack positions
    angles, shifts, enabled, correlation = series(n=11, noise=0.005)
    correlation[7] = 0.05
    stack_positions = np.array([11, 9, 7, 5, 3, 1, 2, 4, 6, 8, 10])
    figure = plot_alignment("TS", angles, shifts, enabled, correlation,
                            view_numbers=stack_positions)
    shift_axes, corr_axes = figure.axes
    assert [t.get_text() for t in corr_axes.texts] == ["4"]
    assert "view 4" in shift_axes.get_title()
