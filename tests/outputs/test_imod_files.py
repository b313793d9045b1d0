"""IMOD files: exact text formats, round trips, and xftoxg's composition rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiltxcorr_scipion.convert.imod import (
    format_xf_line,
    global_to_previous,
    previous_to_global,
    read_tlt,
    read_xf,
    write_imod_files,
    write_tlt,
    write_xf,
)
from tiltxcorr_scipion.pipeline import output_paths


def xftoxg(previous: np.ndarray) -> np.ndarray:
    """What ``xftoxg -nfit 0`` writes for a ``.prexf``."""
    return previous_to_global(previous, remove_average=True)


def imod_files(folder, name: str) -> dict[str, str]:
    return output_paths(str(folder), name, plot=False)


def shift_transforms(shifts_xy: np.ndarray) -> np.ndarray:
    """`(n, 3, 3)` pure-shift transforms from `(n, 2)` (DX, DY)."""
    transforms = np.tile(np.eye(3), (len(shifts_xy), 1, 1))
    transforms[:, :2, 2] = shifts_xy
    return transforms


def rigid(angle_degrees: float, dx: float, dy: float, mag: float = 1.0) -> np.ndarray:
    c, s = math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))
    return np.array([[mag * c, -mag * s, dx], [mag * s, mag * c, dy], [0, 0, 1]])


def test_xf_line_is_imods_fortran_format():
    # IMOD xfwrite: format(4f12.7, 2f12.3), fields right-aligned, no separator
    line = format_xf_line(np.array([[1.0, 0.0, 12.3456], [0.0, 1.0, -7.25], [0, 0, 1]]))
    assert line == ("   1.0000000   0.0000000   0.0000000   1.0000000"
                    "      12.346      -7.250")
    assert len(line) == 72
    rotated = format_xf_line(rigid(30.0, -0.0004, 1234.5))
    assert rotated == ("   0.8660254  -0.5000000   0.5000000   0.8660254"
                       "       0.000    1234.500")  # -0.0004 rounds to an unsigned zero


def test_tlt_is_one_angle_per_line_f7_2(tmp_path):
    path = write_tlt(str(tmp_path / "a.tlt"), np.array([-60.0, -1.5, 0.0, 3.14159, 60.0]))
    assert open(path).read() == " -60.00\n  -1.50\n   0.00\n   3.14\n  60.00\n"
    np.testing.assert_allclose(read_tlt(path), [-60.0, -1.5, 0.0, 3.14, 60.0])


def test_xf_round_trip_to_the_written_precision(tmp_path):
    rng = np.random.default_rng(0)
    transforms = np.stack([rigid(a, dx, dy, m) for a, dx, dy, m in zip(
        rng.uniform(-20, 20, 9), rng.uniform(-300, 300, 9), rng.uniform(-300, 300, 9),
        rng.uniform(0.95, 1.05, 9), strict=True)])
    back = read_xf(write_xf(str(tmp_path / "t.xf"), transforms))
    assert back.shape == (9, 3, 3)
    np.testing.assert_allclose(back[:, :2, :2], transforms[:, :2, :2], atol=5e-8)
    np.testing.assert_allclose(back[:, :2, 2], transforms[:, :2, 2], atol=5e-4)
    np.testing.assert_array_equal(back[:, 2], np.tile([0.0, 0.0, 1.0], (9, 1)))


def test_read_xf_accepts_fields_that_touch(tmp_path):
    path = tmp_path / "wide.xf"
    path.write_text("   1.0000000   0.0000000   0.0000000   1.0000000-1234567.000      -1.000\n")
    np.testing.assert_allclose(read_xf(str(path))[0, :2, 2], [-1234567.0, -1.0])


def test_xftoxg_by_hand():
    # f: (0,0), (1,2), (3,-1) -> cumulative g: (0,0), (1,2), (4,1); mean (5/3, 1)
    f = shift_transforms(np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]]))
    g = xftoxg(f)
    np.testing.assert_allclose(g[:, :2, 2], [[-5 / 3, -1], [-2 / 3, 1], [7 / 3, 0]], atol=1e-12)
    np.testing.assert_allclose(g[:, :2, :2], np.tile(np.eye(2), (3, 1, 1)), atol=1e-12)


def test_composition_rule_g_i_is_f_i_then_g_previous():
    """IMOD's g_i = f_i * g_(i-1) means "f_i, then g_(i-1)": G_i = G_(i-1) @ F_i."""
    rng = np.random.default_rng(1)
    f = np.stack([rigid(a, x, y, m) for a, x, y, m in zip(
        rng.uniform(-5, 5, 7), rng.uniform(-10, 10, 7), rng.uniform(-10, 10, 7),
        rng.uniform(0.98, 1.02, 7), strict=True)])
    g = previous_to_global(f, remove_average=False)
    np.testing.assert_allclose(g[0], np.eye(3))
    for i in range(1, 7):
        np.testing.assert_allclose(g[i], g[i - 1] @ f[i], atol=1e-12)
        # a point of view i goes to view i-1 with f_i, then is aligned by g_(i-1)
        point = np.array([rng.uniform(-100, 100), rng.uniform(-100, 100), 1.0])
        np.testing.assert_allclose(g[i] @ point, g[i - 1] @ (f[i] @ point), atol=1e-9)
    # the averaged version differs from the cumulative one by one constant on the left
    averaged = xftoxg(f)
    constant = averaged @ np.linalg.inv(g)
    np.testing.assert_allclose(constant, np.broadcast_to(constant[0], constant.shape), atol=1e-10)


def test_global_to_previous_inverts_the_cumulative_product():
    rng = np.random.default_rng(2)
    t = np.stack([rigid(a, x, y) for a, x, y in zip(
        rng.uniform(-10, 10, 6), rng.uniform(-50, 50, 6), rng.uniform(-50, 50, 6), strict=True)])
    f = global_to_previous(t)
    np.testing.assert_allclose(f[0], np.eye(3))
    rebuilt = previous_to_global(f, remove_average=False)
    np.testing.assert_allclose(rebuilt, np.linalg.inv(t[0]) @ t, atol=1e-10)


def test_xftoxg_average_of_rotations_is_centred():
    # equal and opposite rotations average to none: the outputs keep +-angle
    t = np.stack([rigid(-4.0, 0, 0), rigid(4.0, 0, 0)])
    g = xftoxg(global_to_previous(t))
    np.testing.assert_allclose(g, t, atol=1e-10)


def test_written_files_reproduce_the_registered_transforms(tmp_path):
    rng = np.random.default_rng(3)
    n = 41
    shifts = rng.uniform(-25, 25, (n, 2))
    shifts[20] = 0.0  # reference view
    transforms = shift_transforms(shifts)
    transforms[[3, 30]] = np.eye(3)  # disabled views: identity
    angles = np.linspace(-60, 60, n)
    paths = imod_files(tmp_path, "TS_01")
    assert paths == {ext: str(tmp_path / f"TS_01.{ext}") for ext in ("prexf", "prexg", "tlt")}
    assert write_imod_files(paths, transforms, angles) == list(paths.values())

    prexf, prexg = read_xf(paths["prexf"]), read_xf(paths["prexg"])
    assert prexf.shape == prexg.shape == (n, 3, 3)
    np.testing.assert_allclose(read_tlt(paths["tlt"]), angles, atol=0.005)
    # .prexf: view-to-previous differences, first view identity
    np.testing.assert_allclose(prexf[0], np.eye(3))
    np.testing.assert_allclose(prexf[1:, :2, 2], np.diff(transforms[:, :2, 2], axis=0), atol=6e-4)
    # .prexg: xftoxg of the .prexf, = registered minus the mean shift (the documented constant)
    np.testing.assert_allclose(prexg, xftoxg(prexf), atol=3e-3)
    mean = transforms[:, :2, 2].mean(axis=0)
    np.testing.assert_allclose(prexg[:, :2, 2] + mean, transforms[:, :2, 2], atol=3e-3)
    np.testing.assert_allclose(prexg[:, :2, :2], transforms[:, :2, :2], atol=1e-7)


def test_written_files_with_a_previous_rotation(tmp_path):
    # composed alignments (new @ previous) carry a rotation: .prexg = C @ T, one constant C,
    # which also takes out the rotation common to all views (xftoxg centres rotations too)
    rng = np.random.default_rng(4)
    transforms = np.stack([rigid(2.0, x, y) for x, y in rng.uniform(-20, 20, (11, 2))])
    paths = imod_files(tmp_path, "rot")
    write_imod_files(paths, transforms, np.linspace(-50, 50, 11))
    constant = read_xf(paths["prexg"]) @ np.linalg.inv(transforms)
    np.testing.assert_allclose(constant, np.broadcast_to(constant[0], constant.shape), atol=2e-3)
    np.testing.assert_allclose(constant[0][:2, :2], rigid(-2.0, 0, 0)[:2, :2], atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 2, 3)), r"shape \(n, 3, 3\)"),
    (np.full((2, 3, 3), np.nan), "NaN"),
    (np.ones((2, 3, 3)), "last row"),
])
def test_bad_transforms_are_refused(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_imod_files(imod_files(tmp_path, "ts"), bad, np.zeros(len(bad)))


def test_bad_inputs_name_the_problem(tmp_path):
    transforms = np.tile(np.eye(3), (3, 1, 1))
    with pytest.raises(ValueError, match="2 tilt angles for 3 transforms"):
        write_imod_files(imod_files(tmp_path, "ts"), transforms, np.zeros(2))
    with pytest.raises(ValueError, match="path separator"):
        write_imod_files(imod_files(tmp_path, "a/b"), transforms, np.zeros(3))
    with pytest.raises(ValueError, match="does not exist"):
        write_imod_files(imod_files(tmp_path / "missing", "ts"), transforms, np.zeros(3))
    bad_xf = tmp_path / "bad.xf"
    bad_xf.write_text("1 0 0 1 0 0\n1 0 0 1 zero 0\n")
    with pytest.raises(ValueError, match=r"bad.xf, line 2"):
        read_xf(str(bad_xf))
    bad_tlt = tmp_path / "bad.tlt"
    bad_tlt.write_text("-3.0\n\n0.0 1.0\n")
    with pytest.raises(ValueError, match=r"bad.tlt, line 3"):
        read_tlt(str(bad_tlt))
    (tmp_path / "empty.tlt").write_text("\n")
    with pytest.raises(ValueError, match="no tilt angles"):
        read_tlt(str(tmp_path / "empty.tlt"))
