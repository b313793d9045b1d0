"""The ``tiltxcorr-scipion`` command, run for real in a subprocess on simulated stacks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from tiltxcorr_scipion.alignment import align_tilt_series
from tiltxcorr_scipion.cli import build_parser, parse_view_list
from tiltxcorr_scipion.convert.imod import read_tlt, read_xf, write_tlt, write_xf
from tiltxcorr_scipion.simulate import simulate_tilt_series
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

COMMAND = Path(sys.executable).parent / "tiltxcorr-scipion"
N_VIEWS = 21
PIXEL_SIZE = 3.2


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert COMMAND.exists(), (f"{COMMAND} is missing: install the package "
                              "(pip install -e . --config-settings editable_mode=compat)")
    return subprocess.run([str(COMMAND), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiltxcorr-scipion: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A 21-view, 96 x 128 stack (.st) with its .rawtlt and true shifts."""
    folder = tmp_path_factory.mktemp("cli")
    sim = simulate_tilt_series(shape=(96, 128), n_views=N_VIEWS, tilt_range=(-60, 60),
                               max_shift=6.0, thickness=10.0, noise=0.2, seed=2)
    with mrcfile.new(str(folder / "TS_01.st")) as mrc:
        mrc.set_data(sim.images.numpy())
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL_SIZE
    np.savetxt(folder / "TS_01.rawtlt", sim.tilt_angles.numpy(), fmt="%.2f")
    return folder, sim


@pytest.fixture
def workdir(simulated, tmp_path):
    folder, sim = simulated
    for name in ("TS_01.st", "TS_01.rawtlt"):
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path, sim


def prexg_shifts(prexg: np.ndarray) -> np.ndarray:
    """`(n, 2)` (dy, dx) of a .prexg's transforms."""
    return np.stack([prexg[:, 1, 2], prexg[:, 0, 2]], axis=1)


def engine_shifts(sim, keep: list[int]) -> np.ndarray:
    """What the engine finds in-process for the kept views, with the command's defaults."""
    result = align_tilt_series(sim.images[keep], sim.tilt_angles[keep], sim.tilt_axis_angle)
    return result.shifts.double().numpy()


def test_align_writes_imod_files_that_recover_the_shifts(workdir):
    folder, sim = workdir
    result = run("align", "TS_01.st", "--axis", "85", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no terminal: no progress bar
    for ext in ("prexf", "prexg", "tlt"):
        assert (folder / f"TS_01.{ext}").is_file()
    assert not (folder / "TS_01.ali").exists()
    prexf, prexg = read_xf(str(folder / "TS_01.prexf")), read_xf(str(folder / "TS_01.prexg"))
    assert prexf.shape == prexg.shape == (N_VIEWS, 3, 3)
    np.testing.assert_allclose(read_tlt(str(folder / "TS_01.tlt")), sim.tilt_angles.numpy(),
                               atol=0.005)
    # .prexg = registered alignment minus its mean (xftoxg's centring): same as the engine's
    shifts = prexg_shifts(prexg)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=2e-3)
    expected = engine_shifts(sim, list(range(N_VIEWS)))
    np.testing.assert_allclose(shifts, expected - expected.mean(axis=0), atol=3e-3)
    # and near the truth (the engine's accuracy is tested with the engine; this is a sanity check)
    truth = sim.shifts.numpy().astype(np.float64)
    assert np.abs(shifts + expected.mean(axis=0) - truth).max() < 1.0
    # the printed table: one line per view, the reference marked
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["view", "tilt", "dx", "dy", "correlation", "residual"]
    assert sum(line.endswith("reference") for line in lines) == 1
    residuals = [float(line.split()[5]) for line in lines[1:N_VIEWS + 1]
                 if not line.endswith("reference")]
    assert len(residuals) == N_VIEWS - 1 and max(residuals) < 0.5  # the self-check, per view
    assert "note: self-check at binning" in result.stdout and "UNRELIABLE" not in result.stdout
    assert f"aligned {N_VIEWS} of {N_VIEWS} views" in result.stdout
    assert "wrote TS_01.prexg" in result.stdout


def test_unreliable_alignment_warns_exits_3_and_writes_the_files(tmp_path):
    noise = np.random.default_rng(4).standard_normal((N_VIEWS, 96, 128)).astype(np.float32)
    with mrcfile.new(str(tmp_path / "noise.st")) as mrc:
        mrc.set_data(noise)
    np.savetxt(tmp_path / "noise.rawtlt", np.linspace(-60, 60, N_VIEWS), fmt="%.2f")
    result = run("align", "noise.st", "--axis", "85", "--plot", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "noise.st: unreliable alignment:" in warning[0]
    assert "links" in warning[0] and "check the plot" in warning[0]
    assert "UNRELIABLE: " in result.stdout
    for suffix in (".prexf", ".prexg", "_alignment.png"):
        assert (tmp_path / f"noise{suffix}").stat().st_size > 0
    assert "3 done but unreliable" in run("align", "--help", cwd=tmp_path).stdout


def test_aligned_stack_plot_prefix_and_progress(workdir):
    folder, sim = workdir
    (folder / "out").mkdir()
    result = run("align", "TS_01.st", "--tlt", "TS_01.rawtlt", "--axis", "85", "--out",
                 "out/aligned", "--aligned", "--aligned-binning", "2", "--plot", "--progress",
                 cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "aligning" in result.stderr and "writing" in result.stderr and "[####" in result.stderr
    with mrcfile.open(str(folder / "out" / "aligned.ali")) as mrc:
        assert mrc.data.shape == (N_VIEWS, 48, 64)
        assert mrc.voxel_size.x == pytest.approx(2 * PIXEL_SIZE)
        aligned = mrc.data.copy()
    assert (folder / "out" / "aligned_alignment.png").stat().st_size > 10_000
    assert (folder / "out" / "aligned.prexf").is_file()
    # aligned views line up better than raw ones (views 10, 11, 12 near zero tilt)
    with mrcfile.open(str(folder / "TS_01.st")) as mrc:
        raw = mrc.data[:, ::2, ::2].astype(np.float64)
    inner = (slice(8, -8), slice(8, -8))
    for i in (9, 11):
        assert (np.abs(aligned[i][inner] - aligned[10][inner]).mean()
                < 0.5 * np.abs(raw[i][inner] - raw[10][inner]).mean())


def test_quiet_and_excluded_views(workdir):
    folder, sim = workdir
    result = run("align", "TS_01.st", "--axis", "85", "--exclude", "1,3-4", "-q", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    prexg = read_xf(str(folder / "TS_01.prexg"))
    constant = prexg[0, :2, 2]
    for view in (1, 3, 4):  # identity transforms, minus the same mean as every view
        np.testing.assert_allclose(prexg[view - 1, :2, 2], constant, atol=2e-3)
    shifts = prexg_shifts(prexg) - constant[::-1]  # excluded views registered as zero
    kept = [i for i in range(N_VIEWS) if i + 1 not in (1, 3, 4)]
    np.testing.assert_allclose(shifts[kept], engine_shifts(sim, kept), atol=3e-3)


def test_existing_outputs_need_overwrite(workdir):
    folder, _ = workdir
    assert run("align", "TS_01.st", "--axis", "85", "-q", cwd=folder).returncode == 0
    assert_user_error(run("align", "TS_01.st", "--axis", "85", cwd=folder),
                      "TS_01.prexf already exists", "--overwrite")
    assert run("align", "TS_01.st", "--axis", "85", "-q", "--overwrite",
               cwd=folder).returncode == 0


def test_input_tlt_at_the_output_name_is_kept(workdir):
    folder, sim = workdir
    os.rename(folder / "TS_01.rawtlt", folder / "TS_01.tlt")
    original = (folder / "TS_01.tlt").read_text()
    result = run("align", "TS_01.st", "--axis", "85", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "wrote TS_01.tlt (the input, kept)" in result.stdout
    assert (folder / "TS_01.tlt").read_text() == original


def test_user_errors_are_one_line_with_status_2(workdir):
    folder, _ = workdir
    assert_user_error(run("align", "missing.mrc", "--axis", "85", cwd=folder),
                      "missing.mrc: no such file")
    # tilt-angle count that does not match the stack
    angles = (folder / "TS_01.rawtlt").read_text().splitlines()
    (folder / "short.tlt").write_text("\n".join(angles[:-1]) + "\n")
    assert_user_error(run("align", "TS_01.st", "--tlt", "short.tlt", "--axis", "85",
                          cwd=folder), "21 views", "20 tilt angles")
    (folder / "bad.tlt").write_text("0\nten\n")
    assert_user_error(run("align", "TS_01.st", "--tlt", "bad.tlt", "--axis", "85",
                          cwd=folder), "bad.tlt, line 2")
    # no .tlt beside the stack
    shutil.copy(folder / "TS_01.st", folder / "lonely.mrc")
    assert_user_error(run("align", "lonely.mrc", "--axis", "85", cwd=folder), "--tlt")
    # NaN pixels
    with mrcfile.open(str(folder / "TS_01.st")) as mrc:
        data = mrc.data.copy()
    data[6, 10, 10] = np.nan
    with mrcfile.new(str(folder / "nan.mrc"), data=data):
        pass
    shutil.copy(folder / "TS_01.rawtlt", folder / "nan.rawtlt")
    assert_user_error(run("align", "nan.mrc", "--axis", "85", cwd=folder),
                      "view 7: NaN", "--exclude 7")
    # not an MRC file
    (folder / "text.mrc").write_text("hello\n" * 300)
    shutil.copy(folder / "TS_01.rawtlt", folder / "text.rawtlt")
    assert_user_error(run("align", "text.mrc", "--axis", "85", cwd=folder), "text.mrc")
    # too many views excluded, and beyond the stack
    assert_user_error(run("align", "TS_01.st", "--axis", "85", "--exclude", "2-21", cwd=folder),
                      "at least 3")
    assert_user_error(run("align", "TS_01.st", "--axis", "85", "--exclude", "30", cwd=folder),
                      "only 21 views")
    # angles that cannot be right: all equal, or radians
    (folder / "flat.tlt").write_text("0\n" * len(angles))
    assert_user_error(run("align", "TS_01.st", "--tlt", "flat.tlt", "--axis", "85", cwd=folder),
                      "all 21 tilt angles are 0 degrees", "not read")
    (folder / "rad.tlt").write_text("".join(f"{np.radians(float(a)):.4f}\n" for a in angles))
    assert_user_error(run("align", "TS_01.st", "--tlt", "rad.tlt", "--axis", "85", cwd=folder),
                      "radians", "degrees")
    (folder / "nowhere").mkdir()
    assert_user_error(run("align", "TS_01.st", "--axis", "85", "--out", "nope/x", cwd=folder),
                      "does not exist")


def test_bad_options_are_refused_by_the_parser(workdir):
    folder, _ = workdir
    for args in (["--exclude", "3-1"], ["--low-pass", "0.9"], ["--binning", "-1"],
                 ["--aligned-binning", "x"], ["--max-shift", "-4"]):
        result = run("align", "TS_01.st", "--axis", "85", *args, cwd=folder)
        assert result.returncode == 2 and "Traceback" not in result.stderr, args
        lines = result.stderr.strip().splitlines()  # one line, no usage block (docs/cli.md)
        assert len(lines) == 1 and "error: argument" in lines[0], result.stderr
    # --binning 0 means auto, as the help says
    result = run("align", "TS_01.st", "--axis", "85", "--binning", "0", "--out", "auto0",
                 cwd=folder)
    assert result.returncode == 0, result.stderr
    result = run("align", "TS_01.st", cwd=folder)
    assert result.returncode == 2 and "--axis" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_user_error(workdir):
    folder, _ = workdir
    assert_user_error(run("align", "TS_01.st", "--axis", "85", "--device", "cuda", cwd=folder),
                      "--device cpu")


def test_help_documents_every_option(tmp_path):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"align", "fine", "reconstruct"}
    for name, command in commands.items():
        result = run(name, "--help", cwd=tmp_path)
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
            if action.option_strings and action.help is not None:
                assert " ".join(action.help.split())[:30] in text, action.option_strings
        assert "example:" in text and "Exit status" in text
    top = run("--help", cwd=tmp_path)
    assert top.returncode == 0 and "align" in top.stdout and "fine" in top.stdout
    assert run(cwd=tmp_path).returncode == 2  # no command


def test_parse_view_list():
    def numbers(text):
        return [view for span in parse_view_list(text) for view in span]

    assert numbers("1,4-6, 40") == [1, 4, 5, 6, 40]
    assert numbers("3,3") == [3]


# --------------------------------------------------------------------------- hard data
def test_unusable_views_are_listed_and_exclude_bad_leaves_them_out(tmp_path):
    sim = simulate_tilt_series(shape=(192, 192), n_views=31, max_shift=5.0, thickness=5.0,
                               noise=0.5, seed=5, blocked_views=(25,))
    with mrcfile.new(str(tmp_path / "B.st")) as mrc:
        mrc.set_data(sim.images.numpy())
    np.savetxt(tmp_path / "B.rawtlt", sim.tilt_angles.numpy(), fmt="%.2f")
    listed = run("align", "B.st", "--axis", "85", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "unusable view 26: " in listed.stdout  # 1-based stack position
    line = next(ln for ln in listed.stdout.splitlines() if ln.split()[:1] == ["26"])
    assert line.endswith("UNUSABLE")
    kept = read_xf(str(tmp_path / "B.prexg"))
    out = run("align", "B.st", "--axis", "85", "--exclude-bad", "--out", "Bx", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    excluded = read_xf(str(tmp_path / "Bx.prexg"))
    # .prexg = registered shift minus the mean shift. Registered shifts are 0 for the
    # reference view (16, stack order here) and, with --exclude-bad as with --exclude, for
    # view 26, so each run's registered shifts are its .prexg minus that view's.
    registered_kept = kept[:, :2, 2] - kept[15, :2, 2]
    registered_excluded = excluded[:, :2, 2] - excluded[25, :2, 2]
    others = [i for i in range(31) if i != 25]
    np.testing.assert_allclose(registered_excluded[others], registered_kept[others], atol=3e-3)
    assert np.abs(registered_kept[25]).max() > 0.5  # it had a best estimate, now the identity
    table = run("align", "B.st", "--axis", "85", "--exclude-bad", "--out", "By", cwd=tmp_path)
    line = next(ln for ln in table.stdout.splitlines() if ln.split()[:1] == ["26"])
    assert line.endswith("UNUSABLE, excluded")
    assert "(excluded: --exclude-bad)" in table.stdout


def test_hard_data_options_reach_the_engine(workdir):
    folder, _ = workdir
    result = run("align", "TS_01.st", "--axis", "85", "--fixed-pattern", "off", "--borders",
                 "4,4", "--angle-offset", "1.5", "--no-absolute-cosine-stretch", "--no-adaptive",
                 "-q", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert_user_error(run("align", "TS_01.st", "--axis", "85", "--yminmax", "10,500",
                          cwd=folder), "--yminmax", "do not fit")
    bad = run("align", "TS_01.st", "--axis", "85", "--xminmax", "ten", cwd=folder)
    assert bad.returncode == 2 and "--xminmax" in bad.stderr and "two integers" in bad.stderr


# --------------------------------------------------------------------------- fine
def test_fine_writes_imod_files_and_reports_the_geometry(tmp_path):
    import imodmodel

    sim = simulate_tilt_series(shape=(320, 320), n_views=41, tilt_axis_angle=85.0,
                               max_shift=8.0, thickness=10.0, noise=1.0, seed=6,
                               tilt_angle_offset=-2.0)
    with mrcfile.new(str(tmp_path / "F.st")) as mrc:
        mrc.set_data(sim.images.numpy())
        mrc.voxel_size = 2.0
    np.savetxt(tmp_path / "F.rawtlt", sim.tilt_angles.numpy(), fmt="%.2f")
    result = run("fine", "F.st", "--axis", "87", "--plot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = next(ln for ln in result.stdout.splitlines() if ln.startswith("tilt axis"))
    found = re.match(r"tilt axis (\S+) \+- (\S+) deg, tilt angle offset (\S+) \+- (\S+) deg",
                     summary)
    assert found, summary
    axis, axis_error, offset, offset_error = map(float, found.groups())
    assert abs(axis - 85.0) < 0.2 and abs(offset - (-2.0)) < 0.5, summary
    # one standard error each, reported beside them; flagged when beyond the targets
    assert 0 < axis_error < 1 and 0 < offset_error < 2, summary
    if abs(axis_error - 0.1) > 0.005 and abs(offset_error - 0.3) > 0.005:  # not rounded onto one
        assert ("UNCERTAIN:" in result.stdout) == (axis_error > 0.1 or offset_error > 0.3)
    # a 10 px slab in 320 px views shows no distinct surfaces: the points level it, and it says so
    assert "(levels the plane of the points; " in summary and "no distinct surfaces" in summary
    # which shifts the reprojection check kept, with its figures
    kept = next(ln for ln in result.stdout.splitlines() if ln.startswith("shifts: "))
    assert re.match(r"shifts: the (fine alignment's|average of the fine and the coarse "
                    r"alignment's|coarse alignment's) \(reprojection residual RMS fine "
                    r"\d\.\d{3}, average \d\.\d{3}", kept), kept
    for name in ("F.xf", "F.tlt", "F.fid", "F_residuals.txt", "F_landmarks.tsv",
                 "F_alignment.png"):
        assert f"wrote {name}" in result.stdout and (tmp_path / name).stat().st_size > 0
    np.testing.assert_allclose(read_tlt(str(tmp_path / "F.tlt")),
                               sim.tilt_angles.numpy() + offset, atol=0.02)
    xf = read_xf(str(tmp_path / "F.xf"))
    np.testing.assert_allclose(np.degrees(np.arctan2(xf[:, 1, 0], xf[:, 0, 0])), -axis,
                               atol=0.01)
    frame = imodmodel.read(str(tmp_path / "F.fid"))
    table = np.loadtxt(tmp_path / "F_landmarks.tsv", skiprows=1)
    assert len(frame) == len(table) > 1000
    np.testing.assert_allclose(np.sort(frame["x"].to_numpy()), np.sort(table[:, 0]), atol=1e-3)
    # the raw angles are never overwritten by the refined ones
    (tmp_path / "F.rawtlt").rename(tmp_path / "F.tlt")
    assert_user_error(run("fine", "F.st", "--axis", "87", "--overwrite", cwd=tmp_path),
                      "refined tilt angles would replace the input")


# --------------------------------------------------------------------------- reconstruct, --preview

REC_AXIS = 85.0
BEAD = (20.0, -12.0, 9.0)  # x across the axis, y along it, z height (stack pixels)
REC_PIXEL = 2.0


def shift_transforms(shifts: np.ndarray) -> np.ndarray:
    t = np.tile(np.eye(3), (len(shifts), 1, 1))
    t[:, 0, 2], t[:, 1, 2] = shifts[:, 1], shifts[:, 0]
    return t


def write_stack(path, views) -> None:
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(views.numpy())
        mrc.set_image_stack()
        mrc.voxel_size = REC_PIXEL


@pytest.fixture(scope="module")
def bead_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec_cli")
    sim = simulate_volume_series(shape=(128, 160), n_views=31, tilt_axis_angle=REC_AXIS,
                                 specimen="beads", bead_positions=torch.tensor([BEAD]),
                                 contrast="stem", jumps="walk", jump_size=2.0, seed=2)
    write_stack(folder / "B.st", sim.views)
    write_xf(str(folder / "B.prexg"), shift_transforms(sim.shifts.double().numpy()))
    write_tlt(str(folder / "B.tlt"), sim.tilt_angles.double().numpy())
    return folder, sim


def test_reconstruct_writes_prefix_mrc_with_the_bead_in_place(bead_files):
    folder, _ = bead_files
    result = run("reconstruct", "B.st", "--xf", "B.prexg", "--tlt", "B.tlt", "--axis", "85",
                 "--thickness", "48", "--binning", "2", "--out", "tomo", "--progress",
                 cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "back-projecting" in result.stderr and "rows" in result.stderr
    assert "wrote tomo.mrc (64 x 80 x 24 voxels of 4 A, binned by 2)" in result.stdout
    with mrcfile.open(str(folder / "tomo.mrc")) as mrc:
        data = mrc.data.copy()
        assert mrc.header.ispg == 1 and float(mrc.voxel_size.x) == pytest.approx(2 * REC_PIXEL)
    nz, ny, nx = data.shape
    x, y, z = BEAD
    expected = np.array([z / 2 + (nz - 1) / 2, y / 2 + (ny - 1) / 2, x / 2 + (nx - 1) / 2])
    found = np.array(np.unravel_index(np.argmax(data), data.shape))
    assert np.abs(found - expected).max() <= 1.0, (found, expected)
    # the default name, and an existing output is refused
    result = run("reconstruct", "B.st", "--xf", "B.prexg", "--tlt", "B.tlt", "--axis", "85",
                 "--binning", "4", "-q", cwd=folder)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    with mrcfile.open(str(folder / "B_rec.mrc")) as mrc:
        assert mrc.data.shape == (160 // 4 // 4, 160 // 4, 128 // 4)  # a quarter of 160 thick
    assert_user_error(run("reconstruct", "B.st", "--xf", "B.prexg", "--tlt", "B.tlt", "--axis",
                          "85", "--binning", "4", cwd=folder),
                      "B_rec.mrc already exists", "--overwrite")


def test_reconstruct_errors_are_one_line(bead_files, tmp_path):
    folder, sim = bead_files
    for name in ("B.st", "B.prexg", "B.tlt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    base = ["reconstruct", "B.st", "--tlt", "B.tlt", "--axis", "85"]
    assert_user_error(run(*base, "--xf", "missing.xf", cwd=tmp_path), "missing.xf: no such file")
    transforms = shift_transforms(sim.shifts.double().numpy())
    write_xf(str(tmp_path / "short.xf"), transforms[:5])
    assert_user_error(run(*base, "--xf", "short.xf", cwd=tmp_path),
                      "has 31 views but short.xf has 5 lines")
    transforms[6, :2, :2] = 0.0
    write_xf(str(tmp_path / "bad.xf"), transforms)
    assert_user_error(run(*base, "--xf", "bad.xf", cwd=tmp_path),
                      "view 7", "not invertible", "--exclude 7")
    result = run(*base, "--xf", "bad.xf", "--exclude", "7", "--binning", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from 30 of 31 views" in result.stdout
    assert_user_error(run(*base, "--xf", "B.prexg", "--binning", "500", cwd=tmp_path),
                      "--binning 500")
    assert_user_error(run(*base, "--xf", "B.prexg", "--out", "nowhere/x", cwd=tmp_path),
                      "folder", "does not exist")
    assert_user_error(run(*base, "--xf", "B.prexg", "--exclude", "40", cwd=tmp_path),
                      "has only 31 views")
    bad = run(*base, "--xf", "B.prexg", "--radial", "0.35", cwd=tmp_path)
    assert bad.returncode == 2 and "cutoff and fall-off" in bad.stderr


def test_align_and_fine_write_a_preview_and_report_the_check(tmp_path):
    sim = simulate_volume_series(shape=(256, 256), n_views=41, tilt_axis_angle=REC_AXIS,
                                 specimen="cell", thickness=40.0, contrast="cryo",
                                 jumps="walk", jump_size=2.0, gold_beads=6, noise=0.5, seed=3)
    write_stack(tmp_path / "C.st", sim.views)
    write_tlt(str(tmp_path / "C.rawtlt"), sim.tilt_angles.double().numpy())
    result = run("align", "C.st", "--axis", "85", "--preview", "--plot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote C_preview.mrc (preview tomogram 256 x 256 x 64, binned by 1)" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("reprojection check"))
    assert "limit 1 px" in line
    with mrcfile.open(str(tmp_path / "C_preview.mrc")) as mrc:
        assert mrc.data.shape == (64, 256, 256) and float(mrc.voxel_size.z) == pytest.approx(REC_PIXEL)
    # a preview 200 px thick: the check's own tomograms are thinner (3 degree steps), and say so
    (tmp_path / "thick").mkdir()
    result = run("align", "C.st", "--axis", "85", "--preview", "--preview-thickness", "200",
                 "--out", "thick/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("reprojection check"))
    assert "checked in 115 px thick tomograms" in line and "no view flagged" in line, line
    result = run("fine", "C.st", "--axis", "87", "--preview", "--preview-thickness", "80",
                 "--out", "fine/", cwd=tmp_path)
    assert_user_error(result, "does not exist")  # the folder must exist
    (tmp_path / "fine").mkdir()
    result = run("fine", "C.st", "--axis", "87", "--preview", "--preview-thickness", "80",
                 "--out", "fine/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote fine/C_preview.mrc (preview tomogram 256 x 256 x 80, binned by 1)" \
        in result.stdout
    assert "reprojection check: worst view" in result.stdout
