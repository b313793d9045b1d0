"""torch-tiltxcorr 0.6.0's own shift-recovery tests, run against our `tiltxcorr` by import swap.

``make peer-check`` (or ``python benchmarks/peer_check.py``):

1. fetches torch-tiltxcorr 0.6.0's sdist once with ``pip download --no-deps --no-binary
   :all: torch-tiltxcorr==0.6.0`` into a cache (``$TILTXCORR_SCIPION_CACHE`` or
   ``~/.cache/tiltxcorr-scipion``) and unpacks it;
2. runs its ``tests/test_torch_tiltxcorr.py::test_tiltxcorr_shift_estimation`` (4 cases:
   shifts of 0, 2, 5 and 10 px, max-error tolerances 0.05, 0.4, 1.2, 1.6 px) with pytest,
   under the sdist's own pytest settings, with ``torch_tiltxcorr.tiltxcorr`` set to ours
   (`peer_swap.py`): the peer's code is used as it is, not copied;
3. prints the max error per case of ours and of torch-tiltxcorr itself (the anchor), on
   the same simulated series (the test module's own generator), side by side.

Needs the ``peer`` extra (torch-tiltxcorr and the tests' simulation packages:
torch-fourier-slice, torch-fourier-shift, einops...) and, once, the network. Exit status:
pytest's (0 when all 4 pass against ours), or 2 when the sdist cannot be had.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PEER = "torch-tiltxcorr==0.6.0"
SDIST = "torch_tiltxcorr-0.6.0"
TEST = "tests/test_torch_tiltxcorr.py::test_tiltxcorr_shift_estimation"
CASES = [(0.0, 0.05), (2.0, 0.4), (5.0, 1.2), (10.0, 1.6)]  # as the test parametrises them
HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    root = os.environ.get("TILTXCORR_SCIPION_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tiltxcorr-scipion"


def fetch_sdist(cache: Path) -> Path:
    """The unpacked sdist folder, downloaded with pip the first time; RuntimeError if impossible."""
    tree = cache / SDIST
    if (tree / "tests" / "test_torch_tiltxcorr.py").is_file():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--no-binary", ":all:", PEER, "-d", tmp],
                              capture_output=True, text=True)
        archives = list(Path(tmp).glob(f"{SDIST}.tar.gz"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(f"pip download {PEER} failed: {done.stderr.strip()[-600:]}")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(cache, filter="data")
    return tree


def run_tests(tree: Path, impl: str) -> int:
    """pytest's exit status for the peer's shift tests with `impl` ("ours" or "peer")."""
    env = dict(os.environ, PEER_SWAP=impl, PEER_SWAP_SRC=str(tree / "src"),
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pytest", "-p", "peer_swap", "-p", "no:cacheprovider",
               "-q", "--rootdir", str(tree), "-c", str(tree / "pyproject.toml"), TEST]
    print(f"$ PEER_SWAP={impl} {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, cwd=tree, env=env).returncode


def figures(tree: Path) -> None:
    """Max error per case, ours and the peer's, on the test module's own series."""
    import torch

    sys.path.insert(0, str(tree / "src"))
    import torch_tiltxcorr

    from tiltxcorr_scipion.alignment import tiltxcorr as ours

    peer = torch_tiltxcorr.tiltxcorr
    spec = importlib.util.spec_from_file_location("peer_tests", tree / "tests" /
                                                  "test_torch_tiltxcorr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("\nshift (px) | tolerance (px) | max error ours (px) | max error torch-tiltxcorr "
          "0.6.0 (px)")
    for magnitude, tolerance in CASES:
        series, angles, axis, applied = module._generate_shifted_tilt_series(
            shift_magnitude=magnitude, d=128, n_points_on_plane=100, tilt_axis_angle=85.0,
            seed=42)
        errors = []
        for function in (ours, peer):
            found = function(tilt_series=series, tilt_angles=angles, tilt_axis_angle=axis)
            errors.append(float(torch.abs(found + applied).max()))
        print(f"{magnitude:10g} | {tolerance:14g} | {errors[0]:19.3f} | {errors[1]:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-figures", action="store_true", help="only the peer's tests")
    args = parser.parse_args(argv)
    try:
        tree = fetch_sdist(cache_dir())
    except RuntimeError as error:
        print(f"peer check impossible: {error}", file=sys.stderr)
        return 2
    status = run_tests(tree, "ours")
    if not args.no_figures:
        figures(tree)
    print(f"\npeer check: torch-tiltxcorr 0.6.0's shift tests against ours: "
          f"{'passed' if status == 0 else 'FAILED'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
