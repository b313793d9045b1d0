"""The README's first quick-start command, run for real (smaller series)."""

import os
import re
import subprocess
import sys


def test_demo_aligns_the_built_in_example(tmp_path):
    folder = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "tiltxcorr_scipion.demo", "--folder", str(folder),
         "--views", "21", "--size", "256", "--timeout", "300"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rms = float(re.search(r"RMS error against the simulated truth: ([0-9.]+) px", run.stdout)[1])
    assert rms < 0.5
    assert run.stdout.count("reference") == 1
    assert len(re.findall(r"^\s+\d+\s+-?\d+\.\d\s", run.stdout, flags=re.M)) == 21
    extra = re.search(r"plots and IMOD files: (\S+)", run.stdout)[1]
    assert (folder / "user-data" / "projects").is_dir()
    assert extra.startswith(str(folder))
    # the preview tomogram (default Yes): where it and its slices are
    preview = re.search(r"^preview tomogram: (\S+)$", run.stdout, flags=re.M)[1]
    assert preview == f"{extra}/TS_demo_preview.mrc" and os.path.getsize(preview) > 0
    slices = re.search(r"^preview slices \(XY, XZ\) and reprojection check: (\S+)$",
                       run.stdout, flags=re.M)[1]
    assert slices == f"{extra}/TS_demo_alignment.png" and os.path.getsize(slices) > 0
    assert re.search(r"^TS_demo: preview tomogram .*reprojection check: worst view \d+ ",
                     run.stdout, flags=re.M)
