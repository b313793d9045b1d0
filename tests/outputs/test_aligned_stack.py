"""Aligned stacks: shifts land content where expected, binning, header, errors."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from tiltxcorr_scipion.alignment.binning import bin_views
from tiltxcorr_scipion.alignment.resample import apply_imod_transforms
from tiltxcorr_scipion.convert.aligned_stack import write_aligned_stack
from tiltxcorr_scipion.simulate import simulate_tilt_series

H, W = 96, 128  # non-square on purpose


def blobs(positions: np.ndarray, sigmas: np.ndarray, amplitudes: np.ndarray,
          ramp: float = 0.0) -> np.ndarray:
    """`(H, W)` sum of Gaussians at `(n, 2)` (row, col) positions, plus a ramp that moves with them."""
    rows = np.arange(H)[:, None, None]
    cols = np.arange(W)[None, :, None]
    image = (amplitudes * np.exp(-0.5 * ((rows - positions[:, 0]) ** 2
                                         + (cols - positions[:, 1]) ** 2) / sigmas ** 2)).sum(-1)
    return image + ramp * (np.arange(W)[None, :] - positions[0, 1])


def random_specimen(seed: int, n: int = 150):
    rng = np.random.default_rng(seed)
    positions = np.stack([rng.uniform(-20, H + 20, n), rng.uniform(-20, W + 20, n)], axis=1)
    return positions, rng.uniform(1.5, 4.0, n), rng.uniform(0.5, 1.5, n)


def apply_transform_2d(image: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """One view through one IMOD forward transform, as the aligned-stack writer applies it."""
    return apply_imod_transforms(image[None], matrix[None], mode="fourier")[0]


def bin_image_2d(image: torch.Tensor, binning: int) -> torch.Tensor:
    return bin_views(image[None], binning)[0]


def shift_matrix(dy: float, dx: float) -> np.ndarray:
    matrix = np.eye(3)
    matrix[0, 2], matrix[1, 2] = dx, dy
    return matrix


def write_stack(path, views: np.ndarray, pixel_size: float = 2.5) -> str:
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(views.astype(np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return str(path)


def test_impulse_moves_by_plus_dx_dy():
    image = torch.zeros(H, W)
    image[40, 50] = 1.0
    out = apply_transform_2d(image, shift_matrix(dy=7.0, dx=-12.0))
    assert tuple(np.unravel_index(int(out.argmax()), out.shape)) == (47, 38)
    assert float(out.max()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dy, dx", [(3.3, -6.7), (0.5, 0.0), (-4.25, 2.75)])
def test_subpixel_shift_reproduces_the_shifted_content(dy, dx):
    positions, sigmas, amplitudes = random_specimen(0)
    ideal = blobs(positions, sigmas, amplitudes, ramp=0.02)
    misaligned = blobs(positions - [dy, dx], sigmas, amplitudes, ramp=0.02)
    out = apply_transform_2d(torch.tensor(misaligned, dtype=torch.float32),
                             shift_matrix(dy, dx)).numpy()
    margin = int(math.ceil(max(abs(dy), abs(dx)))) + 12
    error = np.abs(out - ideal)[margin:-margin, margin:-margin]
    scale = ideal.std()
    assert np.sqrt((error ** 2).mean()) < 0.01 * scale  # Fourier shift: ~0.6 % measured
    assert error.max() < 0.05 * scale
    # content the shift brings in from beyond the edge: filled with the mean
    edge = out[:int(dy)] if dy >= 1 else out[H + int(dy):] if dy <= -1 else None
    if edge is not None:
        np.testing.assert_allclose(edge, misaligned.mean(), rtol=1e-5)


def test_rotation_follows_imods_convention():
    # X' = A (X - Xc) + D + Xc with (X, Y) = (col, row), centre (W / 2, H / 2) (newstack's)
    image = torch.zeros(H, W)
    image[30, 70] = 1.0  # X = 70, Y = 30
    angle = math.radians(90.0)
    matrix = np.array([[math.cos(angle), -math.sin(angle), 2.0],
                       [math.sin(angle), math.cos(angle), -3.0], [0, 0, 1]])
    out = apply_transform_2d(image, matrix)
    xc, yc = W / 2, H / 2
    x_new = -(30 - yc) + 2.0 + xc
    y_new = (70 - xc) - 3.0 + yc
    assert tuple(np.unravel_index(int(out.argmax()), out.shape)) == (round(y_new), round(x_new))


def test_bin_image_averages_blocks_and_trims_symmetrically():
    image = torch.arange(7 * 10, dtype=torch.float32).reshape(7, 10)
    binned = bin_image_2d(image, 3)
    assert binned.shape == (2, 3)
    # 7 rows -> 6 used, 1 left over: trimmed from the high edge; 10 cols -> 9, 1 left over
    np.testing.assert_allclose(binned[0, 0], image[0:3, 0:3].mean())
    np.testing.assert_allclose(binned[1, 2], image[3:6, 6:9].mean())


def test_simulated_series_lands_aligned(tmp_path):
    """Views shifted by their true shifts coincide with the reference view near zero tilt."""
    sim = simulate_tilt_series(shape=(H, W), n_views=5, tilt_range=(-2.0, 2.0), max_shift=8.0,
                               thickness=10.0, noise=0.0, seed=4)
    stack = write_stack(tmp_path / "ts.st", sim.images.numpy())
    transforms = np.stack([shift_matrix(float(dy), float(dx)) for dy, dx in sim.shifts])
    write_aligned_stack(stack, str(tmp_path / "ts.ali"), transforms, 1, 2.5)
    with mrcfile.open(str(tmp_path / "ts.ali")) as mrc:
        aligned = mrc.data.copy()
    reference = int(np.argmin(np.abs(sim.tilt_angles.numpy())))
    margin = 20
    inner = (slice(margin, -margin), slice(margin, -margin))
    for i in range(5):
        before = np.abs(sim.images[i].numpy()[inner] - aligned[reference][inner]).mean()
        after = np.abs(aligned[i][inner] - aligned[reference][inner]).mean()
        if i != reference:
            assert after < 0.25 * before, (i, before, after)  # 2 deg apart: not identical


def test_stack_binning_header_and_disabled_views(tmp_path):
    positions, sigmas, amplitudes = random_specimen(1)
    views = np.stack([blobs(positions - [dy, dx], sigmas, amplitudes)
                      for dy, dx in [(2.0, -3.5), (0.0, 0.0), (-1.25, 4.0)]])
    stack = write_stack(tmp_path / "in.mrc", views, pixel_size=1.7)
    transforms = np.stack([shift_matrix(2.0, -3.5), np.eye(3), shift_matrix(-1.25, 4.0)])
    calls = []
    write_aligned_stack(stack, str(tmp_path / "full.mrc"), transforms, 1, 1.7)
    write_aligned_stack(stack, str(tmp_path / "bin3.mrc"), transforms, 3, 1.7,
                        progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with mrcfile.open(str(tmp_path / "full.mrc")) as full, \
            mrcfile.open(str(tmp_path / "bin3.mrc")) as binned:
        assert full.data.shape == (3, H, W) and full.data.dtype == np.float32
        assert binned.data.shape == (3, H // 3, W // 3)
        assert binned.voxel_size.x == pytest.approx(1.7 * 3) and binned.voxel_size.y == pytest.approx(5.1)
        assert full.voxel_size.x == pytest.approx(1.7)
        assert binned.is_image_stack() and int(binned.header.nz) == 3
        # the disabled view (identity) is unchanged
        np.testing.assert_allclose(full.data[1], views[1], atol=1e-5)
        # binned = block average of the full-size aligned stack
        for i in range(3):
            np.testing.assert_allclose(binned.data[i], bin_image_2d(torch.tensor(full.data[i]), 3),
                                       atol=1e-5)
        # header statistics match the data
        assert float(binned.header.dmean) == pytest.approx(float(binned.data.mean()), rel=1e-5)
        assert float(binned.header.dmax) == pytest.approx(float(binned.data.max()))
        assert float(binned.header.rms) == pytest.approx(float(binned.data.std()), rel=1e-4)
        # all views aligned onto the same content
        np.testing.assert_allclose(full.data[0][20:-20, 20:-20], full.data[1][20:-20, 20:-20],
                                   atol=0.05 * views.std())


def test_integer_input_modes_are_read(tmp_path):
    views = (np.arange(2 * 16 * 16).reshape(2, 16, 16) % 200).astype(np.int16)
    with mrcfile.new(str(tmp_path / "int.st"), data=views):
        pass
    write_aligned_stack(str(tmp_path / "int.st"), str(tmp_path / "out.mrc"),
                        np.tile(np.eye(3), (2, 1, 1)), 2, 1.0)
    with mrcfile.open(str(tmp_path / "out.mrc")) as mrc:
        np.testing.assert_allclose(mrc.data[0], bin_image_2d(torch.tensor(views[0], dtype=torch.float32), 2))


def test_errors_name_the_file_and_the_fix(tmp_path):
    stack = write_stack(tmp_path / "in.mrc", np.zeros((3, 16, 16)))
    identity = np.tile(np.eye(3), (3, 1, 1))
    out = str(tmp_path / "out.mrc")
    with pytest.raises(ValueError, match=r"in.mrc has 3 views but 2 transforms"):
        write_aligned_stack(stack, out, identity[:2], 1, 1.0)
    with pytest.raises(ValueError, match="no such file"):
        write_aligned_stack(str(tmp_path / "missing.mrc"), out, identity, 1, 1.0)
    with pytest.raises(ValueError, match="binning must be an integer"):
        write_aligned_stack(stack, out, identity, 0, 1.0)
    with pytest.raises(ValueError, match="larger than"):
        write_aligned_stack(stack, out, identity, 32, 1.0)
    with pytest.raises(ValueError, match="pixel size"):
        write_aligned_stack(stack, out, identity, 1, 0.0)
    with pytest.raises(ValueError, match="is the input stack"):
        write_aligned_stack(stack, stack, identity, 1, 1.0)
    (tmp_path / "junk.mrc").write_bytes(b"not an mrc file at all" * 100)
    with pytest.raises(ValueError, match="junk.mrc"):
        write_aligned_stack(str(tmp_path / "junk.mrc"), out, identity, 1, 1.0)
    nan_views = np.zeros((3, 16, 16))
    nan_views[1, 3, 3] = np.nan
    nan_stack = write_stack(tmp_path / "nan.mrc", nan_views)
    with pytest.raises(ValueError, match="view 2 holds NaN"):
        write_aligned_stack(nan_stack, out, identity, 1, 1.0)


def test_nonstandard_header_is_read_permissively(tmp_path):
    # old IMOD/SerialEM files may lack the "MAP " id: read them anyway
    stack = write_stack(tmp_path / "old.st", np.ones((2, 16, 16)))
    raw = bytearray(open(stack, "rb").read())
    raw[208:212] = b"\0\0\0\0"
    open(stack, "wb").write(raw)
    write_aligned_stack(stack, str(tmp_path / "out.mrc"), np.tile(np.eye(3), (2, 1, 1)), 1, 1.0)
    with mrcfile.open(str(tmp_path / "out.mrc")) as mrc:
        np.testing.assert_allclose(mrc.data, 1.0)
