#!/usr/bin/env bash
# Wheels a GPU machine (Python 3.12, no network) needs for benchmarks/bench_gpu.py's
# comparison with torch-tiltxcorr 0.6.0: the package and its small pure-Python dependencies
# (the machine has torch, numpy, scipy, pandas, pyarrow and einops). Into .whl/ (ignored by
# git); carry it in the device call (see benchmarks/bench_gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl torch-tiltxcorr==0.6.0 torch-affine-utils==0.6.0 torch-ctf==0.6.0 \
    torch-fourier-filter==0.6.0 torch-fourier-rescale==0.6.0 torch-grid-utils==0.6.0 \
    torch-image-interpolation==0.6.0 torch-tilt-series==0.6.0 torch-transform-image==0.6.0 \
    starfile==0.5.13
ls .whl
