"""Tilt series we did not make: a real STEM needle and etspy's simulated catalyst.

etspy 1.3.0's wheel (PyPI) ships them in ``etspy/tests/test_data``. `etspy_data` fetches
the wheel once with ``pip download --no-deps etspy==1.3.0`` and unpacks that folder into a
cache (default ``~/.cache/tiltxcorr-scipion/etspy-1.3.0``, or ``$TILTXCORR_SCIPION_CACHE``
/etspy-1.3.0, or the folder given). The ``.hspy`` files are HDF5 and need h5py (the
``bench`` extra).

- `load_needle`: ``HAADF.mrc`` + ``HAADF.rawtlt``, a real STEM HAADF series of a needle,
  77 views of 256 px over -76..+76 degrees, tilt axis 90 degrees (along the image X axis:
  the acquisition log ``HAADF.txt`` says "Tilt Axis Angle 90", and etspy reconstructs
  each image column as a sinogram). The stack is int16 stored with an offset: 32768 is
  added. Its `shifts` are etspy's own alignment (``HAADF_Aligned.hspy``,
  ``metadata/Tomography/_sig_shifts``, `(dy, dx)`): a reference, not truth (etspy also
  fitted a tilt axis of -2.79 degrees). Their sign is ours, moving view i's content by
  ``+shifts[i]`` aligns it: etspy applies them with ``scipy.ndimage.shift(view, shifts[i])``
  (``etspy/align.py``, `apply_shifts`), which moves content by ``+shift``; and, measured,
  the raw views moved by ``+shifts`` match etspy's aligned stack (NCC 0.98 per view, -2.79
  degree rotation aside) where ``-shifts`` do not (0.60), and the plain IMOD path agrees
  with ``+shifts`` to 0.56 px RMS, with ``-shifts`` to 21 px.
- `load_needle_aligned`: etspy's aligned stack of the same needle (``HAADF_Aligned.hspy``,
  ``Experiments/__unnamed__/data``): a real pre-aligned series. Reference shifts: zero
  (aligning it again must not make it worse).
- `load_catalyst`: ``Catalyst3DModel_TiltSeries180.hspy``, a tilt series someone else
  simulated from a 3-D model (a sphere with particles): 90 views of 600 px at 0..178
  degrees in 2-degree steps (``_sig_tilts``), all its ``_sig_shifts`` zero (an aligned
  model; etspy's ``get_catalyst_data(misalign=True)`` misaligns it with uniform jitter of
  -5..5 px), tilt axis 90 degrees (etspy's convention, the image X axis; its
  ``tiltaxis`` metadata is 0, no rotation from it). A compact model has no preferred
  zero tilt, so the angles are taken as -90..+88 (stored angle - 90): a full +-90 series.
  Views beyond `max_tilt` (82, the stretch limit) are left out, as the command line
  excludes them; `jitter` misaligns the rest with known shifts (content moved exactly,
  by Fourier shift).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiltxcorr_scipion.alignment.resample import fourier_shift_image
from tiltxcorr_scipion.simulate import alignment_error

ETSPY = "etspy==1.3.0"
_DATA = "etspy/tests/test_data/"
_HSPY = "Experiments/__unnamed__/"


@dataclass(frozen=True)
class RealTiltSeries:
    """A tilt series from elsewhere and the shifts it is judged against.

    `views` `(b, h, w)` float32 and `tilt_angles` `(b,)` degrees in stack order,
    `tilt_axis_angle` in degrees (IMOD's convention); `shifts` `(b, 2)` `(dy, dx)`: moving
    view i's content by `+shifts[i]` aligns it, either truth or a reference (`truth` says
    which).
    """

    views: torch.Tensor
    tilt_angles: torch.Tensor
    tilt_axis_angle: float
    shifts: torch.Tensor
    truth: str
    description: str

    def alignment_error(self, shifts: torch.Tensor, *, exclude=()) -> float:
        """RMS (px) against `self.shifts` after removing what no tilt series fixes."""
        return alignment_error(shifts, self.shifts, self.tilt_axis_angle, self.tilt_angles,
                               exclude=exclude)


def default_cache() -> Path:
    root = os.environ.get("TILTXCORR_SCIPION_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tiltxcorr-scipion"
    return base / "etspy-1.3.0"


def etspy_data(cache: str | os.PathLike | None = None) -> Path:
    """The folder holding etspy 1.3.0's test data, fetched and unpacked on first use."""
    folder = Path(cache) if cache else default_cache()
    data = folder / _DATA
    if (data / "HAADF.mrc").is_file():
        return data
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="etspy-wheel-") as tmp:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                  "--quiet", ETSPY, "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("etspy-*.whl"))
        if fetched.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch {ETSPY} with pip download: "
                               f"{fetched.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [n for n in wheel.namelist() if n.startswith(_DATA)]
            wheel.extractall(folder, members)
    return data


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - the bench extra brings it
        raise ImportError("reading etspy's .hspy files needs h5py: pip install -e '.[bench]'"
                          ) from error
    return h5py


def load_needle(cache=None) -> RealTiltSeries:
    """The real STEM needle, raw, with etspy's alignment as the reference."""
    import mrcfile

    data = etspy_data(cache)
    with warnings.catch_warnings():  # its header lacks the MAP id: read it permissively
        warnings.simplefilter("ignore")
        with mrcfile.open(data / "HAADF.mrc", permissive=True) as mrc:
            views = torch.from_numpy(mrc.data.astype(np.float32) + 32768.0)
    angles = torch.tensor(np.loadtxt(data / "HAADF.rawtlt"), dtype=torch.float32)
    with _h5py().File(data / "HAADF_Aligned.hspy", "r") as hspy:
        shifts = torch.tensor(hspy[_HSPY + "metadata/Tomography/_sig_shifts/data"][()],
                              dtype=torch.float32)
    return RealTiltSeries(views, angles, 90.0, shifts, truth="etspy's alignment (reference)",
                          description="real STEM HAADF needle, 77 x 256 x 256, -76..76, "
                                      "etspy 1.3.0 HAADF.mrc")


def load_needle_aligned(cache=None) -> RealTiltSeries:
    """etspy's aligned stack of the needle: a real pre-aligned series (reference: zero)."""
    data = etspy_data(cache)
    with _h5py().File(data / "HAADF_Aligned.hspy", "r") as hspy:
        views = torch.from_numpy(hspy[_HSPY + "data"][()].astype(np.float32))
        angles = torch.tensor(hspy[_HSPY + "metadata/Tomography/_sig_tilts/data"][()],
                              dtype=torch.float32).flatten()
    return RealTiltSeries(views, angles, 90.0, torch.zeros(len(views), 2),
                          truth="zero (aligned by etspy)",
                          description="the needle aligned by etspy (HAADF_Aligned.hspy)")


def load_catalyst(cache=None, *, max_tilt: float = 82.0, jitter: float = 0.0,
                  seed: int = 0) -> RealTiltSeries:
    """etspy's catalyst series as +-90 (-90..88), views beyond `max_tilt` left out.

    `jitter` > 0 moves each view's content by `-shift`, shifts uniform in
    `[-jitter, jitter]` per axis (etspy's own misalignment, with our sign), zero for the
    0-degree view; the returned `shifts` are then the truth.
    """
    data = etspy_data(cache)
    with _h5py().File(data / "Catalyst3DModel_TiltSeries180.hspy", "r") as hspy:
        views = torch.from_numpy(hspy[_HSPY + "data"][()].astype(np.float32))
        stored = torch.tensor(hspy[_HSPY + "metadata/Tomography/_sig_tilts/data"][()],
                              dtype=torch.float32).flatten()
        stored_shifts = hspy[_HSPY + "metadata/Tomography/_sig_shifts/data"][()]
    if np.abs(stored_shifts).max() != 0:
        raise ValueError("etspy's catalyst series is expected to be aligned (zero shifts)")
    angles = stored - 90.0
    keep = angles.abs() <= max_tilt + 1e-6
    views, angles = views[keep], angles[keep]
    shifts = torch.zeros(len(views), 2)
    if jitter:
        generator = torch.Generator().manual_seed(seed)
        shifts = (2 * torch.rand(len(views), 2, generator=generator) - 1) * jitter
        shifts = shifts - shifts[int(torch.argmin(angles.abs()))]
        views = torch.stack([fourier_shift_image(view, -float(dy), -float(dx))
                             for view, (dy, dx) in zip(views, shifts, strict=True)])
    what = f"misaligned by known jitter +-{jitter:g} px" if jitter else "aligned as stored"
    return RealTiltSeries(views, angles, 90.0, shifts,
                          truth="truth (known jitter)" if jitter else "zero (an aligned model)",
                          description=f"etspy's simulated catalyst, {len(views)} x 600 x 600, "
                                      f"{float(angles.min()):g}..{float(angles.max()):g} "
                                      f"(stored 0..178, minus 90), {what}")
