from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "tiltxcorr_scipion" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="tiltxcorr-scipion",
    version=version["__version__"],
    description=(
        "Scipion plugin: tilt-series alignment by stretched cross-correlation "
        "(IMOD tiltxcorr's method) in PyTorch"
    ),
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["tiltxcorr_scipion", "tiltxcorr_scipion.*"]),
    package_data={
        "tiltxcorr_scipion": ["protocols.conf", "templates/*.json.template"],
    },
    install_requires=[
        "torch>=2.1",
        "numpy",
        "mrcfile",
        "matplotlib",  # the alignment plots
        "tqdm",  # the command line's progress bars
        "imodmodel>=0.1",  # the fine alignment's .fid landmark models
        "scipion-pyworkflow>=3.11",
        "scipion-em>=3.11",
        "scipion-em-tomo>=3.12",
    ],
    extras_require={
        # scipion-em-imod: the chaining tests run its protocols up to their first IMOD binary
        "test": ["pytest>=7", "ruff", "scipion-em-imod"],
        # h5py: etspy's .hspy files; torch-tomogram: the reconstruction benchmark's anchor
        "bench": ["torch-tiltxcorr==0.6.0", "psutil", "h5py", "torch-tomogram==0.0.2"],
        # make peer-check: torch-tiltxcorr and what its tests simulate with
        "peer": ["torch-tiltxcorr==0.6.0", "torch-fourier-slice", "torch-fourier-shift",
                 "einops", "torch-affine-utils", "torch-image-interpolation"],
    },
    entry_points={
        "pyworkflow.plugin": ["tiltxcorr_scipion = tiltxcorr_scipion"],
        "console_scripts": ["tiltxcorr-scipion = tiltxcorr_scipion.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: BSD License",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
