"""The adapter between the Scipion protocol and the alignment engine.

This is the one place where Scipion's camelCase form values meet the engine's
snake_case arguments, and where engine results become per-tilt-image
transforms. Everything here works on plain numbers and arrays (a `ViewTable`
is built from Scipion objects by `view_table_from_items`, which only calls
getters), so it is unit-tested without a Scipion project.

Conventions: `(n, 3, 3)` IMOD forward transforms and `(n, 2)` `(dy, dx)`
shifts in the tilt series' pixels (see `tiltxcorr_scipion.convert.transforms`);
per-view arrays are in the tilt series' item order (``n`` items, enabled or
not) unless said otherwise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .stacks import StackReadError, read_stack_views
from .transforms import (
    apply_transforms_2d,
    compose_transforms,
    identity_transforms,
    is_identity,
    rotation_angles_deg,
    shifts_to_transforms,
)

if TYPE_CHECKING:  # torch is imported where used: Scipion imports the protocol (and so
    import torch  # this module) in every process at plugin discovery; torch takes 1-2 s.

__all__ = [
    "FORM_DEFAULTS",
    "MIN_ENABLED_VIEWS",
    "TiltSeriesFailure",
    "ViewTable",
    "AlignmentOutcome",
    "engine_kwargs_from_form",
    "resolve_tilt_axis",
    "view_table_from_items",
    "read_enabled_views",
    "align_view_table",
    "torch_threads_per_step",
    "select_device",
]

MIN_ENABLED_VIEWS = 3
"""Fewer enabled views than this cannot give a meaningful coarse alignment."""

FORM_DEFAULTS: dict[str, Any] = {
    "lowPassCutoff": 0.25,
    "lowPassSigma": 0.05,
    "highPassSigma": 0.03,
    "highPassRadius": 0.0,
    "cumulativeCorrelation": False,
    "binning": 0,
    "subpixelRefinement": True,
    "taperFraction": 0.1,
    "padFraction": 0.05,
    "maxShift": None,
}
"""Form parameter names and IMOD tiltxcorr's defaults (the protocol's defaults)."""


class TiltSeriesFailure(RuntimeError):
    """One tilt series cannot be aligned; the message names it and the cause."""


def engine_kwargs_from_form(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `align_tilt_series` from the protocol's form values.

    Parameters
    ----------
    values
        Form values by parameter name (missing names take `FORM_DEFAULTS`):
        ``lowPassCutoff``, ``lowPassSigma``, ``highPassSigma``, ``highPassRadius``
        (cycles/pixel of the binned image), ``cumulativeCorrelation``,
        ``binning`` (0 = automatic), ``subpixelRefinement``, ``taperFraction``,
        ``padFraction``, ``maxShift`` (input pixels; None or <= 0 = no limit).
    """
    v = {**FORM_DEFAULTS, **{k: val for k, val in values.items() if val is not None or k == "maxShift"}}
    binning = int(v["binning"] or 0)
    if binning < 0:
        raise ValueError(f"binning must be 0 (automatic) or a positive integer, got {binning}")
    max_shift = v["maxShift"]
    max_shift = float(max_shift) if max_shift is not None and float(max_shift) > 0 else None
    return {
        "low_pass_cutoff": float(v["lowPassCutoff"]),
        "low_pass_sigma": float(v["lowPassSigma"]),
        "high_pass_sigma": float(v["highPassSigma"]),
        "high_pass_radius": float(v["highPassRadius"]),
        "taper_fraction": float(v["taperFraction"]),
        "pad_fraction": float(v["padFraction"]),
        "binning": "auto" if binning == 0 else binning,
        "cumulative": bool(v["cumulativeCorrelation"]),
        "refine": bool(v["subpixelRefinement"]),
        "max_shift": max_shift,
    }


def resolve_tilt_axis(override: float | None, acquisition_value: float | None, ts_id: str) -> float:
    """The tilt axis angle (degrees) to align with: the form's, else the acquisition's.

    Raises `TiltSeriesFailure` naming ``ts_id`` when neither is a finite number.
    """
    for value in (override, acquisition_value):
        if value is not None and math.isfinite(float(value)):
            return float(value)
    raise TiltSeriesFailure(
        f"tilt series {ts_id}: no tilt axis angle (the acquisition has none and the form's "
        "'Tilt axis angle' is empty); enter it in the form")


@dataclass
class ViewTable:
    """What the alignment needs from one tilt series, as plain arrays (item order).

    Attributes
    ----------
    ts_id
        Tilt series identifier.
    stack_indices
        `(n,)` int 1-based positions in the stack files.
    file_names
        `n` stack file names (usually all the same).
    tilt_angles
        `(n,)` float64 degrees.
    enabled
        `(n,)` bool; disabled (excluded) views are not read nor aligned.
    previous
        `(n, 3, 3)` transforms already on the items, or None when none has any.
    acquisition_axis
        Tilt axis angle of the tilt series' acquisition (degrees) or None.
    sampling_rate
        Angstroms per pixel.
    """

    ts_id: str
    stack_indices: np.ndarray
    file_names: list[str]
    tilt_angles: np.ndarray
    enabled: np.ndarray
    previous: np.ndarray | None
    acquisition_axis: float | None
    sampling_rate: float

    @property
    def n_views(self) -> int:
        return len(self.stack_indices)


def view_table_from_items(ts: Any, items: list[Any]) -> ViewTable:
    """Build a `ViewTable` from a tomo ``TiltSeries`` and its tilt images (clones, item order)."""
    n = len(items)
    previous = identity_transforms(n)
    any_transform = False
    for i, ti in enumerate(items):
        if ti.hasTransform():
            matrix = ti.getTransform().getMatrix()
            if matrix is not None:
                previous[i] = np.asarray(matrix, dtype=np.float64)
                any_transform = True
    acq = ts.getAcquisition() if hasattr(ts, "getAcquisition") else None
    axis = acq.getTiltAxisAngle() if acq is not None else None
    return ViewTable(
        ts_id=str(ts.getTsId()),
        stack_indices=np.array([ti.getIndex() or 1 for ti in items], dtype=np.int64),
        file_names=[ti.getFileName() for ti in items],
        tilt_angles=np.array([ti.getTiltAngle() for ti in items], dtype=np.float64),
        enabled=np.array([bool(ti.isEnabled()) for ti in items], dtype=bool),
        previous=previous if any_transform and not is_identity(previous) else None,
        acquisition_axis=None if axis is None else float(axis),
        sampling_rate=float(ts.getSamplingRate() or 1.0),
    )


def read_enabled_views(table: ViewTable) -> tuple[np.ndarray, np.ndarray]:
    """Read the enabled views of a tilt series from disk.

    Returns
    -------
    views
        `(k, h, w)` float32, one per enabled item, in item order.
    positions
        `(k,)` item positions of those views (indices into the table's arrays).

    Raises `TiltSeriesFailure` naming the tilt series for unreadable stacks,
    too few enabled views, or views of different sizes.
    """
    positions = np.flatnonzero(table.enabled)
    if len(positions) < MIN_ENABLED_VIEWS:
        raise TiltSeriesFailure(
            f"tilt series {table.ts_id}: only {len(positions)} enabled view(s) of "
            f"{table.n_views}; at least {MIN_ENABLED_VIEWS} are needed (re-enable views)")
    chunks: list[np.ndarray] = []
    order: list[np.ndarray] = []
    files = np.array(table.file_names, dtype=object)[positions]
    for name in dict.fromkeys(files):  # each stack file once, in first-seen order
        sel = positions[files == name]
        try:
            chunks.append(read_stack_views(name, table.stack_indices[sel]))
        except StackReadError as exc:
            raise TiltSeriesFailure(f"tilt series {table.ts_id}: {exc}") from exc
        order.append(sel)
    shapes = {c.shape[1:] for c in chunks}
    if len(shapes) > 1:
        raise TiltSeriesFailure(f"tilt series {table.ts_id}: views of different sizes {sorted(shapes)}")
    sel_all = np.concatenate(order)
    views = np.concatenate(chunks, axis=0)
    back = np.argsort(sel_all, kind="stable")  # item order
    return views[back], sel_all[back]


@dataclass
class AlignmentOutcome:
    """Result of `align_view_table`, in item order (``n`` items).

    Attributes
    ----------
    transforms
        `(n, 3, 3)` transforms to register: ``shift @ previous`` for enabled views,
        the identity for disabled ones.
    shifts
        `(n, 2)` `(dy, dx)` found by the engine (pixels; zero for disabled views).
    correlation
        `(n,)` pair correlation score; NaN for the reference and disabled views.
    reference_position
        Item position of the reference (lowest |tilt|) view.
    tilt_axis_angle
        Axis angle (degrees) of the raw images that was used.
    binning
        Binning the engine correlated at.
    timings
        Seconds: ``read`` (stack read + pre-alignment), ``engine``.
    """

    transforms: np.ndarray
    shifts: np.ndarray
    correlation: np.ndarray
    reference_position: int
    tilt_axis_angle: float
    binning: int
    timings: dict[str, float] = field(default_factory=dict)


def align_view_table(table: ViewTable, tilt_axis_angle: float, engine_kwargs: Mapping[str, Any],
                     *, device: torch.device | str = "cpu",
                     progress: Callable[[int, int], None] | None = None) -> AlignmentOutcome:
    """Read, pre-align (when the items already carry transforms) and align one tilt series.

    Parameters
    ----------
    table
        The tilt series' views.
    tilt_axis_angle
        Axis angle of the raw images, degrees (IMOD RotationAngle convention).
    engine_kwargs
        From `engine_kwargs_from_form`.
    device
        Torch device the engine runs on.

    Raises `TiltSeriesFailure` (naming the tilt series) for unreadable data or
    anything the engine refuses (NaN pixels, |tilt| > 82, blank views...).
    """
    import torch

    from tiltxcorr_scipion.alignment import align_tilt_series

    device = torch.device(device)
    t0 = time.perf_counter()
    views, positions = read_enabled_views(table)
    images = torch.from_numpy(views).to(device)
    axis = tilt_axis_angle
    if table.previous is not None:
        prev = table.previous[positions]
        if not np.all(np.isfinite(prev)) or np.any(np.abs(np.linalg.det(prev[:, :2, :2])) < 1e-6):
            raise TiltSeriesFailure(f"tilt series {table.ts_id}: the existing alignment has "
                                    "non-invertible or non-finite matrices")
        images = apply_transforms_2d(images, prev)
        # A rotation in the previous alignment turns the tilt axis with the image.
        axis = tilt_axis_angle + float(np.median(rotation_angles_deg(prev)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    try:
        result = align_tilt_series(images, torch.from_numpy(table.tilt_angles[positions].copy()),
                                   axis, progress=progress, **engine_kwargs)
    except ValueError as exc:
        raise TiltSeriesFailure(f"tilt series {table.ts_id}: {exc}") from exc
    t2 = time.perf_counter()

    n = table.n_views
    shifts = np.zeros((n, 2), dtype=np.float64)
    shifts[positions] = result.shifts.detach().cpu().double().numpy()
    correlation = np.full(n, np.nan)
    correlation[positions] = result.correlation.detach().cpu().double().numpy()
    reference = int(positions[int(result.reference_view)])
    correlation[reference] = np.nan
    transforms = identity_transforms(n)
    previous = table.previous[positions] if table.previous is not None else None
    transforms[positions] = compose_transforms(shifts_to_transforms(shifts[positions]), previous)
    if not np.all(np.isfinite(transforms)):
        raise TiltSeriesFailure(f"tilt series {table.ts_id}: the alignment produced non-finite shifts")
    return AlignmentOutcome(
        transforms=transforms,
        shifts=shifts,
        correlation=correlation,
        reference_position=reference,
        tilt_axis_angle=float(tilt_axis_angle),
        binning=int(result.binning),
        timings={"read": t1 - t0, "engine": t2 - t1},
    )


def torch_threads_per_step(n_parallel_steps: int, n_cpus: int | None = None) -> int:
    """Torch intra-op threads so that ``steps x threads`` does not exceed the cores."""
    if n_cpus is None:
        n_cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    return max(1, int(n_cpus) // max(1, int(n_parallel_steps)))


def select_device(use_gpu: bool, gpu_ids: list[int] | None) -> tuple[torch.device, str]:
    """The torch device for one step, and a log line saying why.

    ``gpu_ids`` are the GPUs the step executor booked for this step (Scipion's
    ``GPU_LIST`` numbering). CUDA is used only when asked for and available.
    """
    import torch

    if not use_gpu:
        return torch.device("cpu"), "running on CPU (GPU not requested)"
    if not torch.cuda.is_available():
        return torch.device("cpu"), ("GPU requested but CUDA is not available to torch here: "
                                     "falling back to CPU")
    ids = [int(g) for g in (gpu_ids or []) if str(g).strip() != ""]
    n = torch.cuda.device_count()
    gpu = ids[0] if ids else 0
    if gpu >= n:
        return torch.device("cpu"), (f"GPU {gpu} requested but only {n} CUDA device(s) are "
                                     "visible: falling back to CPU")
    return torch.device(f"cuda:{gpu}"), f"running on GPU {gpu} ({torch.cuda.get_device_name(gpu)})"
