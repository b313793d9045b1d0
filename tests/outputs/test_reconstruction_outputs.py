"""Tomograms from the pipeline: the preview of an alignment, `reconstruct_views`, the plot row.

Real MRC stacks on disk, read back with mrcfile (a third-party reader): the voxel size,
the volume header and the orientation (a bead where docs/reconstruction.md puts it).
"""

from __future__ import annotations

import math
import os

import mrcfile
import numpy as np
import pytest
import torch

from tiltxcorr_scipion.convert.mrc import MrcStack
from tiltxcorr_scipion.options import CoarseOptions, FineOptions
from tiltxcorr_scipion.pipeline import (
    TiltSeriesFailure,
    TiltSeriesViews,
    align_views,
    frame_tilt_axis,
    output_paths,
    preview_tomogram,
    reconstruct_views,
    write_outputs,
)
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

PIXEL = 2.5
AXIS = 85.0
BEAD = (20.0, -12.0, 9.0)  # x across the axis, y along it, z height (stack pixels)


@pytest.fixture(scope="module")
def cell_stack(tmp_path_factory):
    """A 41-view cell series with gold (256 x 256) as an MRC stack, and its truth."""
    folder = tmp_path_factory.mktemp("recon")
    sim = simulate_volume_series(shape=(256, 256), n_views=41, tilt_axis_angle=AXIS,
                                 specimen="cell", thickness=40.0, contrast="cryo",
                                 jumps="walk", jump_size=2.0, gold_beads=6, noise=0.5, seed=3)
    path = str(folder / "TS_07.st")
    with mrcfile.new(path) as mrc:
        mrc.set_data(sim.views.numpy())
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL
    return path, sim


@pytest.fixture(scope="module")
def bead_stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bead")
    sim = simulate_volume_series(shape=(128, 160), n_views=31, tilt_axis_angle=AXIS,
                                 specimen="beads", bead_positions=torch.tensor([BEAD]),
                                 contrast="stem", jumps="walk", jump_size=2.0, seed=2)
    path = str(folder / "BEAD.st")
    with mrcfile.new(path) as mrc:
        mrc.set_data(sim.views.numpy())
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL
    return path, sim


def views_of(path, sim, **kwargs) -> TiltSeriesViews:
    return TiltSeriesViews.from_stack(MrcStack.open(path), sim.tilt_angles.numpy(), **kwargs)


def true_errors(shifts: np.ndarray, sim) -> np.ndarray:
    """`(n, 2)` per-view errors `(dy, dx)` of estimated shifts, after removing what no tilt series
    fixes (a constant, a 3-D translation: `geometry.unfixed_motions`) by least squares."""
    from tiltxcorr_scipion.alignment.geometry import unfixed_motions

    motions = unfixed_motions(sim.tilt_angles, sim.tilt_axis_angle).numpy().reshape(-1, 4)
    difference = (np.asarray(shifts) - sim.shifts.double().numpy()).reshape(-1)
    fit = np.linalg.lstsq(motions, difference, rcond=None)[0]
    return (difference - motions @ fit).reshape(-1, 2)


def shift_transforms(shifts) -> np.ndarray:
    t = np.tile(np.eye(3), (len(shifts), 1, 1))
    t[:, 0, 2] = np.asarray(shifts)[:, 1]
    t[:, 1, 2] = np.asarray(shifts)[:, 0]
    return t


def test_reconstruct_views_writes_a_volume_with_the_bead_in_place(bead_stack, tmp_path):
    path, sim = bead_stack
    views = views_of(path, sim)
    out = str(tmp_path / "BEAD.mrc")
    done = []
    reconstruct_views(views, shift_transforms(sim.shifts.numpy()), sim.tilt_angles.numpy(),
                      AXIS, thickness=48, binning=2, path=out,
                      progress=lambda d, t: done.append((d, t)))
    assert done and done[-1][0] == done[-1][1]
    with mrcfile.open(out, permissive=False) as mrc:
        data = mrc.data.copy()
        assert mrc.header.ispg == 1 and mrc.header.mz == 24  # a volume, not an image stack
        assert float(mrc.voxel_size.x) == pytest.approx(2 * PIXEL)
        assert float(mrc.voxel_size.z) == pytest.approx(2 * PIXEL)
    # the axis (85 deg) is nearer X than Y: x across it runs along the rows
    assert data.shape == (24, 160 // 2, 128 // 2)
    nz, ny, nx = data.shape
    x, y, z = BEAD
    expected = np.array([z / 2 + (nz - 1) / 2, y / 2 + (ny - 1) / 2, x / 2 + (nx - 1) / 2])
    found = np.array(np.unravel_index(np.argmax(data), data.shape))
    assert np.abs(found - expected).max() <= 1.0, (found, expected)
    assert not [n for n in os.listdir(tmp_path) if n != "BEAD.mrc"]  # no temporary left


def test_bad_input_names_the_tilt_series_and_the_view(bead_stack, tmp_path):
    path, sim = bead_stack
    views = views_of(path, sim, ts_id="BEAD")
    transforms = shift_transforms(sim.shifts.numpy())
    transforms[4, :2, :2] = 0.0
    out = str(tmp_path / "x.mrc")
    with pytest.raises(TiltSeriesFailure) as info:
        reconstruct_views(views, transforms, sim.tilt_angles.numpy(), AXIS, thickness=32,
                          binning=2, path=out)
    assert info.value.views == [5] and "tilt series BEAD" in str(info.value)
    assert "view 5" in str(info.value) and "invertible" in str(info.value)
    with pytest.raises(TiltSeriesFailure, match="transforms for 31 views"):
        reconstruct_views(views, transforms[:3], sim.tilt_angles.numpy(), AXIS, thickness=32,
                          binning=2, path=out)
    with pytest.raises(TiltSeriesFailure, match="thickness"):
        reconstruct_views(views, shift_transforms(sim.shifts.numpy()), sim.tilt_angles.numpy(),
                          AXIS, thickness=1, binning=2, path=out)
    assert not os.listdir(tmp_path)
    # a disabled view's bad transform is never used
    enabled = np.ones(views.n_views, dtype=bool)
    enabled[4] = False
    views = views_of(path, sim, ts_id="BEAD", enabled=enabled)
    reconstruct_views(views, transforms, sim.tilt_angles.numpy(), AXIS, thickness=32,
                      binning=2, path=out)
    assert os.path.isfile(out)


def test_the_preview_of_a_coarse_alignment(cell_stack, tmp_path):
    path, sim = cell_stack
    views = views_of(path, sim, ts_id="TS_07")
    outcome = align_views(views, CoarseOptions(), AXIS)
    assert frame_tilt_axis(outcome) == pytest.approx(AXIS)
    paths = output_paths(str(tmp_path), "TS_07", preview=True)
    assert paths["preview"] == str(tmp_path / "TS_07_preview.mrc")
    write_outputs(outcome, paths)
    preview = outcome.preview
    assert preview.path == paths["preview"] and os.path.isfile(preview.path)
    with mrcfile.open(preview.path) as mrc:
        assert mrc.data.shape == preview.shape
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL * preview.binning)
        np.testing.assert_array_equal(mrc.data[preview.shape[0] // 2], preview.xy_slice)
    assert preview.binning == 1 and preview.shape == (64, 256, 256)  # 256 px: 1/4 thick
    assert preview.xz_slice.shape == (64, 256)
    check = preview.check
    assert check.residual.shape == (41, 2)
    assert not check.flagged.any(), check.residual_px
    # the residuals follow the coarse alignment's real errors (those not shared by
    # neighbouring views: a smooth drift in tilt is mostly absorbed, docs/reconstruction.md)
    errors = true_errors(outcome.shifts, sim)
    agreement = np.corrcoef(errors.reshape(-1), check.residual.numpy().reshape(-1))[0, 1]
    assert agreement > 0.5, agreement
    assert os.path.getsize(paths["png"]) > 0
    # the plot has the preview row
    from tiltxcorr_scipion.plots import plot_alignment

    figure = plot_alignment("TS_07", views.tilt_angles, outcome.shifts, views.enabled,
                            outcome.correlation, preview=preview)
    assert len(figure.axes) == 5  # shifts, correlation, XY, XZ, check (no residual given)


def test_a_displaced_view_is_flagged_in_the_preview(cell_stack, tmp_path):
    path, sim = cell_stack
    views = views_of(path, sim, ts_id="TS_07")
    outcome = align_views(views, CoarseOptions(), AXIS)
    outcome.transforms[30, 0, 2] += 2.0  # DX: the content of view 31 moved by 2 px in X
    preview = preview_tomogram(views, outcome, str(tmp_path / "p.mrc"), thickness=64)
    check = preview.check
    assert check.flagged.nonzero()[:, 0].tolist() == [30]
    assert abs(float(check.residual[30, 1]) - 2.0) < 0.3 and abs(float(check.residual[30, 0])) < 0.3


def test_the_preview_of_a_fine_alignment_is_in_the_axis_frame(cell_stack, tmp_path):
    path, sim = cell_stack
    enabled = np.ones(41, dtype=bool)
    enabled[[0, 40]] = False
    views = views_of(path, sim, ts_id="TS_07", enabled=enabled)
    outcome = align_views(views, FineOptions(), 87.0)
    assert abs(frame_tilt_axis(outcome)) < 1e-6  # tiltalign's .xf turns the axis onto Y
    paths = output_paths(str(tmp_path), "TS_07", fine=True, preview=True)
    write_outputs(outcome, paths)
    preview = outcome.preview
    assert preview.shape[1:] == (256, 256)
    check = preview.check
    assert torch.isnan(check.residual_px[[0, 40]]).all()
    assert not check.flagged.any(), check.residual_px
    assert os.path.isfile(paths["png"]) and os.path.isfile(paths["preview"])


def test_a_preview_that_cannot_be_written_leaves_no_file(cell_stack, tmp_path):
    path, sim = cell_stack
    views = views_of(path, sim, ts_id="TS_07")
    outcome = align_views(views, CoarseOptions(), AXIS)
    outcome.transforms[3] = np.nan
    paths = output_paths(str(tmp_path), "TS_07", preview=True)
    with pytest.raises(TiltSeriesFailure) as info:
        write_outputs(outcome, paths)
    assert "view 4" in str(info.value)
    assert not os.listdir(tmp_path)  # all or nothing: no plot, no IMOD files, no preview
    assert math.isnan(outcome.transforms[3, 0, 0])
