"""The command line under faults: full disks, read-only folders, kills, bad input.

Every case ends with one line on stderr and exit status 2 (or the kill), and
never leaves a partial or a partial set of output files. Full disks and
read-only folders are small tmpfs mounts (root only, as on CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tiltxcorr_scipion.convert.files import TEMPORARY_MARK
from tiltxcorr_scipion.convert.imod import read_xf
from tiltxcorr_scipion.faults import PAUSE_ENV
from tiltxcorr_scipion.simulate import simulate_tilt_series

COMMAND = Path(sys.executable).parent / "tiltxcorr-scipion"
OUTPUTS = ("prexf", "prexg", "tlt", "ali")


def run(*args, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env, **kwargs)


def assert_user_error(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiltxcorr-scipion: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_stack(path: Path, views: np.ndarray, angles: np.ndarray, **header) -> Path:
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(views)
        mrc.voxel_size = 2.0
        for key, value in header.items():
            setattr(mrc.header, key, value)
    np.savetxt(path.with_suffix(".tlt"), angles, fmt="%.2f")
    return path


@pytest.fixture(scope="module")
def sim():
    return simulate_tilt_series(shape=(96, 128), n_views=21, max_shift=5.0, thickness=5.0,
                                noise=0.2, order="dose-symmetric", seed=4)


@pytest.fixture
def stack(tmp_path, sim):
    return write_stack(tmp_path / "TS.st", sim.images.numpy(), sim.tilt_angles.numpy())


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A small tmpfs mounted at `path` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- full disks
def test_disk_full_while_writing_the_aligned_stack(tmp_path, stack):
    # 21 views of 96 x 128 float32 need 1 MiB: more than the disk holds
    with tmpfs(tmp_path / "full", "size=512k") as full:
        result = run("align", stack, "--axis", 85, "--aligned", "--out", full / "TS",
                     cwd=tmp_path)
        line = assert_user_error(result, "TS.ali", "disk is full")
        assert TEMPORARY_MARK not in line  # the file the user asked for, not our temporary
        assert leftovers(full) == []  # no partial stack, and not the IMOD files either


def test_disk_full_while_writing_the_transforms(tmp_path, stack):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        (full / "filler").write_bytes(b"\0" * (64 * 1024))  # the disk is now full
        result = run("align", stack, "--axis", 85, "--out", full / "TS", cwd=tmp_path)
        assert_user_error(result, "TS.prexf", "disk is full")
        assert leftovers(full) == ["filler"]  # no empty .prexf


def test_read_only_folder(tmp_path, stack):
    with tmpfs(tmp_path / "readonly", "ro,size=64k") as readonly:
        result = run("align", stack, "--axis", 85, "--out", readonly / "TS", cwd=tmp_path)
        assert_user_error(result, "cannot write", "read-only")
        assert leftovers(readonly) == []


# --------------------------------------------------------------------------- kills
def test_kill_while_writing_leaves_no_output_and_a_rerun_completes(tmp_path, stack):
    marker = tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: f"writing aligned stack:TS:{marker}"}
    child = subprocess.Popen([str(COMMAND), "align", str(stack), "--axis", "85", "--aligned",
                              "--plot"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text()):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the command never reached the pause"
        time.sleep(0.05)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    child.wait(timeout=30)
    names = leftovers(tmp_path)
    # Killed halfway through the aligned stack: nothing under a final name...
    for kind in OUTPUTS:
        assert f"TS.{kind}" not in names or kind == "tlt", names  # TS.tlt is the input here
    assert "TS_alignment.png" not in names
    assert any(TEMPORARY_MARK in name for name in names)  # ...only temporaries
    # A rerun needs no --overwrite, cleans the temporaries up and writes everything.
    rerun = run("align", stack, "--axis", 85, "--aligned", "--plot", "-q", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    names = leftovers(tmp_path)
    assert not any(TEMPORARY_MARK in name for name in names), names
    assert {"TS.prexf", "TS.prexg", "TS.ali", "TS_alignment.png"} <= set(names)
    assert mrcfile.validate(str(tmp_path / "TS.ali"), print_file=open(os.devnull, "w"))


# --------------------------------------------------------------------------- bad input
def test_nan_in_an_excluded_view_with_aligned_writes_nothing(tmp_path, sim):
    views = sim.images.numpy().copy()
    views[7, 5, 5] = np.nan  # stack view 8
    stack = write_stack(tmp_path / "nan.st", views, sim.tilt_angles.numpy())
    result = run("align", stack, "--axis", 85, "--exclude", 8, "--aligned", cwd=tmp_path)
    assert_user_error(result, "view 8", "NaN")
    assert not any((tmp_path / f"nan.{kind}").exists() for kind in ("prexf", "prexg", "ali"))
    assert not any(TEMPORARY_MARK in name for name in leftovers(tmp_path))


def test_views_are_named_by_their_stack_position(tmp_path, sim):
    # dose-symmetric stack: position 10 is not the 10th view in tilt order
    views = sim.images.numpy().copy()
    views[9, 3, 3] = np.inf
    stack = write_stack(tmp_path / "inf.st", views, sim.tilt_angles.numpy())
    assert_user_error(run("align", stack, "--axis", 85, cwd=tmp_path),
                      "view 10:", "--exclude 10")
    # with an excluded view before it, still its stack position
    views = sim.images.numpy().copy()
    views[7, 3, 3] = np.nan
    stack = write_stack(tmp_path / "nan8.st", views, sim.tilt_angles.numpy())
    assert_user_error(run("align", stack, "--axis", 85, "--exclude", 5, cwd=tmp_path),
                      "view 8:", "--exclude 8")
    steep = sim.tilt_angles.numpy().copy()
    steep[12] = 85.0
    np.savetxt(tmp_path / "steep.tlt", steep, fmt="%.2f")
    # beyond the stretch's limit: excluded with the reason, the rest aligned (a +-90 series)
    done = run("align", stack, "--tlt", "steep.tlt", "--axis", 85, "--exclude", 8,
               "--out", "steep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "excluded view 13: tilted +85.0 degrees, beyond the +-82" in done.stdout
    assert "aligned 19 of 21 views" in done.stdout


def test_a_filter_that_passes_nothing_is_refused(tmp_path, stack):
    assert_user_error(run("align", stack, "--axis", 85, "--high-pass-radius", 0.5, cwd=tmp_path),
                      "--high-pass-radius", "pass")
    assert not (tmp_path / "TS.prexf").exists()


def test_closed_stdout_ends_quietly_with_the_files_written(tmp_path, stack):
    child = subprocess.Popen([str(COMMAND), "align", str(stack), "--axis", "85"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader went away, as with `| head -1`
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert read_xf(str(tmp_path / "TS.prexg")).shape == (21, 3, 3)


def test_complex_stacks_are_refused(tmp_path, sim):
    views = sim.images.numpy().astype(np.complex64)
    stack = write_stack(tmp_path / "fft.mrc", views, sim.tilt_angles.numpy())
    assert_user_error(run("align", stack, "--axis", 85, cwd=tmp_path), "fft.mrc", "complex",
                      "mode 4")


def test_a_huge_exclude_range_is_not_built(tmp_path, stack):
    started = time.monotonic()
    assert_user_error(run("align", stack, "--axis", 85, "--exclude", "1-1000000000",
                          cwd=tmp_path), "--exclude 1000000000", "only 21 views")
    assert time.monotonic() - started < 60  # seconds, not an exhausted memory


def test_out_folder_and_binary_tlt_and_early_checks(tmp_path, stack):
    (tmp_path / "results").mkdir()
    result = run("align", stack, "--axis", 85, "--out", "results/", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert leftovers(tmp_path / "results") == ["TS.prexf", "TS.prexg", "TS.tlt"]
    (tmp_path / "binary.tlt").write_bytes(bytes(range(256)))
    assert_user_error(run("align", stack, "--tlt", "binary.tlt", "--axis", 85, cwd=tmp_path),
                      "binary.tlt", "not a text file")
    # refused before any work or output, by the name the user typed
    assert_user_error(run("align", stack, "--axis", 85, "--aligned", "--aligned-binning", 1000,
                          "--out", "early", cwd=tmp_path), "--aligned-binning", "larger than")
    assert not any(name.startswith("early") for name in leftovers(tmp_path))
    taper = run("align", stack, "--axis", 85, "--taper", 0.5, cwd=tmp_path)
    assert taper.returncode == 2 and "--taper" in taper.stderr
    assert "taper_fraction" not in taper.stderr


def test_tiny_views_are_too_small_not_too_binned(tmp_path, sim):
    stack = write_stack(tmp_path / "tiny.st", sim.images.numpy()[:, :16, :16].copy(),
                        sim.tilt_angles.numpy())
    line = assert_user_error(run("align", stack, "--axis", 85, cwd=tmp_path), "too small")
    assert "smaller binning" not in line


@pytest.mark.parametrize("mz", ["one", "nz"])
def test_volume_stack_headers_are_read_as_imod_does(tmp_path, sim, mz):
    views = sim.images.numpy()
    stack = write_stack(tmp_path / f"vs_{mz}.st", views, sim.tilt_angles.numpy())
    with mrcfile.open(str(stack), mode="r+", permissive=True) as mrc:
        mrc.header.ispg = 401
        mrc.header.mz = 1 if mz == "one" else len(views)
    result = run("align", stack, "--axis", 85, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_xf(str(tmp_path / f"vs_{mz}.prexg")).shape == (21, 3, 3)


def test_bad_input_nothing_misreads(tmp_path, sim):
    views = sim.images.numpy().copy()
    angles = sim.tilt_angles.numpy()
    # a directory given as the stack
    (tmp_path / "folder.mrc").mkdir()
    assert_user_error(run("align", "folder.mrc", "--axis", 85, "--tlt", "none.tlt",
                          cwd=tmp_path), "is a folder")
    # a header whose nz is short of the data: warned, both counts named
    stack = write_stack(tmp_path / "short.st", views, angles)
    with open(stack, "r+b") as handle:  # nz is the third int32 of the header
        handle.seek(8)
        handle.write(np.int32(15).tobytes())
    np.savetxt(tmp_path / "short.tlt", angles[:15], fmt="%.2f")
    done = run("align", stack, "--axis", 85, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and "nz = 15" in done.stderr
    assert "21 whole sections" in done.stderr
    # huge finite pixels: refused, naming the view
    huge = views.copy()
    huge[5, :8] = 3e38
    huge[5, 8:16] = -3e38
    stack = write_stack(tmp_path / "huge.st", huge, angles)
    assert_user_error(run("align", stack, "--axis", 85, cwd=tmp_path), "view 6:", "3e+38",
                      "--exclude 6")
    # excluded, with --aligned: the aligned stack cannot hold it; named once, with what to do
    line = assert_user_error(run("align", stack, "--axis", 85, "--exclude", 6, "--aligned",
                                 cwd=tmp_path), "view 6 holds", "excluded ones too",
                             "write no aligned stack")
    assert line.count("huge.st") == 1
    assert not list(tmp_path.glob("huge.ali*"))
    nan = views.copy()
    nan[5, 3, 3] = np.nan
    stack = write_stack(tmp_path / "nan6.st", nan, angles)
    line = assert_user_error(run("align", stack, "--axis", 85, "--exclude", 6, "--aligned",
                                 cwd=tmp_path), "view 6 holds NaN", "write no aligned stack")
    assert line.count("nan6.st") == 1
