"""One tilt series, from its views on disk to an outcome and output files.

The protocol, the command line and the demo all go through here::

    TiltSeriesViews          what to align: from a Scipion tilt series
      .from_tilt_series()    (``from_tilt_series``) or an MRC stack + angles
      .from_stack()          (``from_stack``)
            |
    align_views()            read the enabled views a few at a time, apply an
            |                earlier alignment, bin as they arrive, run the engine
            v
    AlignmentOutcome         transforms and scores for every view, item order
            |
    write_outputs()          IMOD files, plot, aligned stack, preview tomogram
                             (preview_tomogram: a binned tomogram and the
                             reprojection check, drawn into the plot): each
                             file whole or not at all, all of a tilt series or none

    reconstruct_views()      a tomogram from any transforms (.xf, Scipion's):
                             read the raw views chunk by chunk, back-project, write

Callers keep only what is theirs: the protocol its form, steps and
registration; the command line its arguments and printing.

Every message that names a view uses its 1-based position in the stack: the
number IMOD, ``--exclude`` and the Scipion GUI use.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .convert.files import OutputError, atomic_outputs
from .convert.mrc import MrcStack, StackReadError
from .convert.transforms import (
    compose_transforms,
    identity_transforms,
    is_identity,
    rotation_angles_deg,
    shifts_to_transforms,
)
from .faults import pause_point
from .options import (
    MAX_TILT_DEG,
    MIN_ENABLED_VIEWS,
    PREVIEW_SLAB_MARGIN,
    PREVIEW_THICKNESS_FRACTION,
    CoarseOptions,
    FineOptions,
    check_binned_size,
    plus_minus,
    tilt_range_problem,
    uncertainty_warning,
)

if TYPE_CHECKING:  # torch is imported where used: Scipion imports the protocol (and so
    import torch  # this module) in every process at plugin discovery; torch takes 1-2 s.

__all__ = [
    "AlignmentOutcome",
    "FineDetails",
    "Preview",
    "TiltSeriesFailure",
    "TiltSeriesViews",
    "align_views",
    "available_cpus",
    "output_paths",
    "preview_tomogram",
    "reconstruct_views",
    "select_device",
    "write_outputs",
]

#: Each read brings about this many bytes of float32 views into memory.
READ_CHUNK_BYTES = 128 << 20
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


class TiltSeriesFailure(RuntimeError):
    """One tilt series cannot be aligned; the message names it, the views and the cause.

    `cause` is what went wrong (without the tilt series' name), `advice` what
    to do about it (may be empty), `views` the 1-based stack positions of the
    views at fault, if the failure is theirs.
    """

    def __init__(self, ts_id: str, cause: str, views=(), advice: str = "") -> None:
        super().__init__(f"tilt series {ts_id}: {cause}" + (f"; {advice}" if advice else ""))
        self.ts_id = ts_id
        self.cause = cause
        self.advice = advice
        self.views = [int(v) for v in views]


@dataclass(frozen=True)
class TiltSeriesViews:
    """What the alignment needs to know of one tilt series, as plain arrays in item order.

    Attributes
    ----------
    ts_id
        Tilt-series identifier (also the base name of its output files).
    stack_positions
        `(n,)` int64 1-based positions of the views in their stack files: the
        numbers users see.
    file_names
        `n` stack file names (usually all the same).
    tilt_angles
        `(n,)` float64 degrees.
    enabled
        `(n,)` bool; disabled (excluded) views are neither read nor aligned.
    previous
        `(n, 3, 3)` transforms already on the views, or None.
    acquisition_axis
        Tilt axis angle recorded with the data (degrees), or None.
    sampling_rate
        Angstrom per pixel.
    """

    ts_id: str
    stack_positions: np.ndarray
    file_names: list[str]
    tilt_angles: np.ndarray
    enabled: np.ndarray
    previous: np.ndarray | None
    acquisition_axis: float | None
    sampling_rate: float

    @property
    def n_views(self) -> int:
        return len(self.stack_positions)

    @property
    def stack_order(self) -> np.ndarray:
        """Item indices `(n,)` sorted by stack position (the order of IMOD files)."""
        return np.argsort(self.stack_positions, kind="stable")

    def single_stack(self) -> str | None:
        """The stack file if the views are exactly its positions 1..n, else None."""
        if len(set(self.file_names)) != 1:
            return None
        if not np.array_equal(np.sort(self.stack_positions), np.arange(1, self.n_views + 1)):
            return None
        return self.file_names[0]

    @classmethod
    def from_tilt_series(cls, ts: Any, items: list[Any]) -> TiltSeriesViews:
        """From a tomo ``TiltSeries`` and its tilt images (clones, item order); getters only."""
        n = len(items)
        previous = identity_transforms(n)
        for i, ti in enumerate(items):
            matrix = ti.getTransform().getMatrix() if ti.hasTransform() else None
            if matrix is not None:
                previous[i] = np.asarray(matrix, dtype=np.float64)
        acquisition = ts.getAcquisition() if hasattr(ts, "getAcquisition") else None
        axis = acquisition.getTiltAxisAngle() if acquisition is not None else None
        return cls(
            ts_id=str(ts.getTsId()),
            stack_positions=np.array([ti.getIndex() or 1 for ti in items], dtype=np.int64),
            file_names=[ti.getFileName() for ti in items],
            tilt_angles=np.array([ti.getTiltAngle() for ti in items], dtype=np.float64),
            enabled=np.array([bool(ti.isEnabled()) for ti in items], dtype=bool),
            previous=None if is_identity(previous) else previous,
            acquisition_axis=None if axis is None else float(axis),
            sampling_rate=float(ts.getSamplingRate() or 1.0),
        )

    @classmethod
    def from_stack(cls, stack: MrcStack, tilt_angles: np.ndarray, *,
                   enabled: np.ndarray | None = None, ts_id: str | None = None,
                   pixel_size: float | None = None) -> TiltSeriesViews:
        """All views of one MRC stack, in stack order (`enabled`: `(n,)` bool, default all).

        The pixel size is `pixel_size`, else the header's, else 1.
        """
        n = stack.n_views
        angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
        ts_id = ts_id or os.path.splitext(os.path.basename(stack.path))[0]
        if len(angles) != n:
            raise TiltSeriesFailure(ts_id, f"{stack.path} has {n} views but {len(angles)} tilt "
                                           "angles were given: give one angle per view, in "
                                           "stack order")
        header_pixel = stack.voxel_size if stack.voxel_size > 0 else 1.0
        return cls(
            ts_id=ts_id, stack_positions=np.arange(1, n + 1), file_names=[stack.path] * n,
            tilt_angles=angles,
            enabled=np.ones(n, dtype=bool) if enabled is None else np.asarray(enabled, bool),
            previous=None, acquisition_axis=None, sampling_rate=float(pixel_size or header_pixel))

    def tilt_axis(self, override: float | None = None) -> float:
        """The tilt axis angle to align with: `override` if given, else the recorded one."""
        for value in (override, self.acquisition_axis):
            if value is not None and math.isfinite(float(value)):
                return float(value)
        raise self.fail("no tilt axis angle (none was recorded with the data and none was "
                        "given); enter it in the form")

    def fail(self, cause: str, views=(), advice: str = "") -> TiltSeriesFailure:
        """A `TiltSeriesFailure` for this tilt series (`views`: 1-based stack positions)."""
        return TiltSeriesFailure(self.ts_id, cause, views, advice)

    def fail_views(self, error, number_of) -> TiltSeriesFailure:
        """A `TiltSeriesFailure` from an engine `ViewError`, views named by `number_of(index)`."""
        return self.fail(error.describe(number_of), [number_of(v) for v in error.views],
                         error.advice)


@dataclass
class FineDetails:
    """What the fiducial-less fine alignment found besides the transforms, item order (`n`).

    Pixels are those of the views as read (after an earlier alignment, if the
    views had one); see ``docs/fine-alignment.md`` for the conventions.

    Attributes
    ----------
    tilt_angles
        `(n,)` refined tilt angles (degrees); disabled views: nominal + offset.
    tilt_angle_offset
        Degrees added to the nominal tilt angles to level the specimen.
    rotations, magnifications
        `(n,)` per-view in-plane rotation (degrees) and scale, or None when
        not solved (NaN and 1 for disabled views).
    residuals
        `(n,)` RMS residual per view (pixels), NaN for disabled views.
    mean_residual
        Mean residual length (pixels).
    tracks
        `(n_contours, n, 2)` `(row, col)` tracked positions, NaN where absent.
    point_residuals
        `(n_contours, n, 2)` measured minus modelled positions, NaN where absent.
    weights
        `(n_contours, n)` robust weights (0: rejected), NaN where absent.
    n_contours, n_rejected_contours
        Tracks solved, and those the robust fit rejected whole.
    image_shape
        `(h, w)` of the views.
    frame_tilt_axis_angle
        The refined tilt axis angle in the views as read (degrees): the raw
        images' angle turned by an earlier alignment's rotation.
    patch_size
        `(rows, cols)` of the tracked patches, pixels.
    levelled_by
        What the offset levels: ``"surfaces"`` (the slab's) or ``"points"``
        (the plane of the solved points).
    points_offset
        The offset that levels the plane of the points (tiltalign's).
    slab_thickness
        The slab's thickness in the views' pixels, when levelled by its surfaces.
    levelling_note
        Why the points levelled it although the surfaces were asked for.
    tilt_axis_angle_error, tilt_angle_offset_error
        One standard error (degrees) of the tilt axis angle and of the tilt
        angle offset, from the data (`FiducialLessResult`); NaN when not
        estimated.
    shift_choice
        Which shifts the reprojection check kept (`alignment.fine.ShiftChoice`:
        ``"fine"``, ``"average"`` or ``"coarse"``, with its residuals in the
        tilt series' pixels), or None when not checked.
    """

    tilt_angles: np.ndarray
    tilt_angle_offset: float
    rotations: np.ndarray | None
    magnifications: np.ndarray | None
    residuals: np.ndarray
    mean_residual: float
    tracks: np.ndarray
    point_residuals: np.ndarray
    weights: np.ndarray
    n_contours: int
    n_rejected_contours: int
    image_shape: tuple[int, int]
    frame_tilt_axis_angle: float
    patch_size: tuple[int, int]
    levelled_by: str = "points"
    points_offset: float = float("nan")
    slab_thickness: float | None = None
    levelling_note: str | None = None
    tilt_axis_angle_error: float = float("nan")
    tilt_angle_offset_error: float = float("nan")
    shift_choice: Any = None

    def shifts_text(self) -> str | None:
        """Which shifts the reprojection check kept, and why, for a log line; None if unchecked."""
        choice = self.shift_choice
        if choice is None:
            return None
        names = {"fine": "the fine alignment's", "average": "the average of the fine and "
                 "the coarse alignment's", "coarse": "the coarse alignment's"}
        figures = ", ".join(f"{name} {rms:.3f}" for name, rms in choice.rms_px.items())
        return (f"shifts: {names[choice.kept]} (reprojection residual RMS {figures} px)")

    def axis_text(self, tilt_axis_angle: float) -> str:
        """The tilt axis angle with its standard error, for a log line or a summary."""
        return f"tilt axis {tilt_axis_angle:.2f}{plus_minus(self.tilt_axis_angle_error)} deg"

    def uncertainty_warning(self) -> str | None:
        """Why the geometry is less certain than the targets (`options.uncertainty_warning`)."""
        return uncertainty_warning(self.tilt_axis_angle_error, self.tilt_angle_offset_error)

    def offset_text(self) -> str:
        """The offset (with its standard error) and what it levels, for a log line or a
        summary."""
        if self.levelled_by == "surfaces":
            how = (f"levels the slab's surfaces, {self.slab_thickness:.0f} px thick; the points' "
                   f"plane: {self.points_offset:+.2f}")
        else:
            how = "levels the plane of the points" + (f"; {self.levelling_note.split(': ', 1)[-1]}"
                                                      if self.levelling_note else "")
        return (f"tilt angle offset {self.tilt_angle_offset:+.2f}"
                f"{plus_minus(self.tilt_angle_offset_error)} deg ({how})")


@dataclass
class AlignmentOutcome:
    """What the alignment of one tilt series produced, in item order (`n` items).

    Attributes
    ----------
    views
        The tilt series that was aligned.
    transforms
        `(n, 3, 3)` IMOD forward transforms to register: ``shift @ previous``
        for enabled views (fine: ``Q R @ previous``); for disabled ones the
        identity (coarse) or their previous transform (fine, which keeps an
        earlier alignment where it solves nothing); see ``docs/conventions.md``.
    shifts
        `(n, 2)` `(dy, dx)` the engine found, pixels (zero for disabled views).
    correlation
        `(n,)` score of each view against the reference it was aligned to;
        NaN for the reference and for disabled views.
    reference_position
        Item index of the reference (lowest-|tilt|) view.
    tilt_axis_angle
        Tilt axis angle (degrees) of the raw images that was used.
    binning
        Binning the engine correlated at.
    device
        Where the engine ran (``"cpu"``, ``"cuda:0"``...).
    timings
        Seconds: ``read`` (read, earlier alignment, binning), ``engine``.
    unusable
        `(n,)` bool: views the engine found to hold no usable specimen
        (blocked, dark, blank): aligned around, their shift only a best
        estimate (see `exclude_unusable`).
    reasons
        `(n,)` why each unusable view is unusable (``""`` otherwise).
    notes
        `(n,)` what the engine did for each view beyond the plain method.
    significance
        `(n,)` correlation peak height over the correlation map's RMS (pure
        noise reaches 4-5); NaN for the reference and disabled views.
    series_notes
        What the engine found and did for the whole series.
    residual
        `(n,)` the self-check's held-out residual of each view, pixels
        (`TiltxcorrResult.residual`); NaN where not measured.
    unreliable, unreliable_reason
        The self-check found no self-consistent alignment, and why
        (`TiltxcorrResult.unreliable`).
    path
        The candidate path the self-check kept (e.g. ``"plain"``).
    fine
        What the fine alignment adds (`FineDetails`); None for a coarse one.
    excluded
        `(n,)` why the pipeline itself left a view out (``""`` otherwise): views
        tilted beyond +-82 degrees (the stretch's limit), disabled in `views`.
    warnings
        What the input looked wrong in without stopping the alignment (a stack
        header whose nz disagrees with its data).
    preview
        The preview tomogram and reprojection check (`Preview`), once `write_outputs`
        made one; None otherwise.
    """

    views: TiltSeriesViews
    transforms: np.ndarray
    shifts: np.ndarray
    correlation: np.ndarray
    reference_position: int
    tilt_axis_angle: float
    binning: int
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    unusable: np.ndarray | None = None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    significance: np.ndarray | None = None
    series_notes: tuple[str, ...] = ()
    residual: np.ndarray | None = None
    unreliable: bool = False
    unreliable_reason: str = ""
    path: str = ""
    fine: FineDetails | None = None
    excluded: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    preview: Preview | None = None

    def __post_init__(self) -> None:
        n = self.views.n_views
        self.excluded = self.excluded or ("",) * n
        if self.unusable is None:
            self.unusable = np.zeros(n, dtype=bool)
        self.reasons = self.reasons or ("",) * n
        self.notes = self.notes or ("",) * n
        if self.significance is None:
            self.significance = np.full(n, np.nan)
        if self.residual is None:
            self.residual = np.full(n, np.nan)

    def exclude_unusable(self) -> AlignmentOutcome:
        """This outcome with the unusable views disabled: identity transform, no score.

        As views excluded from the start are (and as IMOD's SkipViews makes
        them); the reasons stay. Returns `self` when no view is unusable.
        """
        if not self.unusable.any():
            return self
        from dataclasses import replace

        transforms = self.transforms.copy()
        transforms[self.unusable] = np.eye(3)
        correlation = self.correlation.copy()
        correlation[self.unusable] = np.nan
        views = replace(self.views, enabled=self.views.enabled & ~self.unusable)
        return replace(self, views=views, transforms=transforms, correlation=correlation)

    def unusable_numbers(self) -> list[int]:
        """1-based stack positions of the unusable views, ascending."""
        return sorted(int(v) for v in self.views.stack_positions[self.unusable])

    @property
    def reference_number(self) -> int:
        """1-based stack position of the reference view."""
        return int(self.views.stack_positions[self.reference_position])


# --------------------------------------------------------------------------- reading
def _raw_chunks(views: TiltSeriesViews, items: np.ndarray, stacks: dict[str, MrcStack],
                view_shape: tuple[int, int], *, apply_previous: bool = True
                ) -> Iterator[torch.Tensor]:
    """Enabled views `items` (item indices) as float32 tensors, a few at a time, item order.

    Views carrying an earlier alignment are resampled into it (bilinear;
    they are binned next, which hides the interpolation), unless not
    `apply_previous` (the raw views, for a reconstruction from whole transforms).
    """
    import torch

    from .alignment.resample import apply_imod_transforms

    h, w = view_shape
    per_chunk = max(1, READ_CHUNK_BYTES // (h * w * 4))
    files = np.array(views.file_names, dtype=object)
    for start in range(0, len(items), per_chunk):
        block = items[start:start + per_chunk]
        chunk = np.empty((len(block), h, w), dtype=np.float32)
        for name in dict.fromkeys(files[block]):
            selected = files[block] == name
            chunk[selected] = stacks[name].read(views.stack_positions[block[selected]])
        tensor = torch.from_numpy(chunk)
        if views.previous is not None and apply_previous:
            tensor = apply_imod_transforms(tensor, views.previous[block], mode="bilinear")
        yield tensor


def _open_stacks(views: TiltSeriesViews, items: np.ndarray) -> tuple[dict[str, MrcStack],
                                                                    tuple[int, int]]:
    """Each stack file of the enabled views, opened and checked once; their common view shape."""
    stacks: dict[str, MrcStack] = {}
    files = np.array(views.file_names, dtype=object)
    for name in dict.fromkeys(files[items]):
        try:
            stacks[name] = MrcStack.open(name)
            stacks[name].check_positions(views.stack_positions[items[files[items] == name]])
        except StackReadError as error:
            raise views.fail(str(error)) from None
    shapes = sorted({stack.view_shape for stack in stacks.values()})
    if len(shapes) > 1:
        raise views.fail(f"views of different sizes {shapes} (rows x columns) in "
                         f"{', '.join(stacks)}")
    return stacks, shapes[0]


def align_views(views: TiltSeriesViews, options: CoarseOptions | FineOptions,
                tilt_axis_angle: float, *, device: torch.device | str = "cpu",
                progress: Callable | None = None) -> AlignmentOutcome:
    """Read, pre-align (when the views carry an earlier alignment), bin and align one tilt series.

    Views are read a few at a time and binned as they arrive: memory follows
    the binned size, not the stack's. `options` chooses the alignment: a
    `CoarseOptions` runs the coarse alignment (`align_binned_views`), a
    `FineOptions` the fiducial-less fine alignment (`fiducialless_alignment`:
    coarse, patch tracking, geometry solve).

    Parameters
    ----------
    views
        The tilt series.
    options
        Engine options (checked already, being `CoarseOptions`/`FineOptions`).
    tilt_axis_angle
        Axis angle of the raw images, degrees (IMOD RotationAngle convention).
    device
        Torch device the engine runs on.
    progress
        Coarse: called as `progress(done, total)` while pairs are correlated;
        fine: called with the name of each stage as it starts.

    Raises
    ------
    TiltSeriesFailure
        Naming the tilt series and the views (1-based stack positions): an
        unreadable stack, too few enabled views, views of different sizes,
        anything the engine refuses (NaN pixels, |tilt| > 82, blank views...).
    """
    import torch

    from .alignment import ViewError, bin_chunks
    from .alignment.validation import check_angles

    device = torch.device(device)
    problem = tilt_range_problem(views.tilt_angles[views.enabled])
    if problem and views.enabled.sum() >= MIN_ENABLED_VIEWS:  # else: too few views, said below
        raise views.fail(problem, advice="give the tilt angles in degrees, one per view")
    views, excluded = _exclude_beyond_stretch(views, getattr(options, "angle_offset", 0.0))
    items = np.flatnonzero(views.enabled)
    if len(items) < MIN_ENABLED_VIEWS:
        raise views.fail(f"only {len(items)} enabled view(s) of {views.n_views}; at least "
                         f"{MIN_ENABLED_VIEWS} are needed (re-enable views)")
    number_of = lambda index: int(views.stack_positions[items[index]])  # noqa: E731
    previous = None if views.previous is None else views.previous[items]
    axis = float(tilt_axis_angle)
    if previous is not None:
        singular = ~np.isfinite(previous).all(axis=(1, 2)) | (
            np.abs(np.linalg.det(previous[:, :2, :2])) < 1e-6)
        if singular.any():
            raise views.fail_views(ViewError(
                np.flatnonzero(singular), "the existing alignment is not invertible or not "
                "finite", "reset the alignment of these views"), number_of)
        # A rotation in the earlier alignment turns the tilt axis with the image.
        axis += float(np.median(rotation_angles_deg(previous)))
    fine = isinstance(options, FineOptions)
    started = time.perf_counter()
    try:
        angles = check_angles(views.tilt_angles[items], len(items), axis)
        stacks, view_shape = _open_stacks(views, items)
        factor = _reading_binning(options, view_shape)
        binned = bin_chunks(_raw_chunks(views, items, stacks, view_shape), len(items),
                            view_shape, factor, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        read_done = time.perf_counter()
        if fine:
            outcome = _fine_outcome(views, items, previous, binned, angles, axis, options,
                                    progress)
        else:
            outcome = _coarse_outcome(views, items, previous, binned, angles, axis, options,
                                      progress)
    except ViewError as error:
        raise views.fail_views(error, number_of) from None
    except (StackReadError, ValueError) as error:
        raise views.fail(str(error)) from None
    if not np.all(np.isfinite(outcome.transforms)):
        raise views.fail("the alignment produced non-finite transforms")
    outcome.tilt_axis_angle += float(tilt_axis_angle) - axis  # back to the raw images
    outcome.excluded = excluded
    outcome.warnings = tuple(stack.header_warning for stack in stacks.values()
                             if stack.header_warning)
    if any(excluded):
        numbers = [int(views.stack_positions[i]) for i in views.stack_order if excluded[i]]
        outcome.series_notes = (*outcome.series_notes,
                                f"{len(numbers)} view(s) tilted beyond +-{MAX_TILT_DEG:g} degrees "
                                f"excluded ({', '.join(map(str, numbers))}): cosine stretching "
                                "is undefined there")
    outcome.device = str(device)
    outcome.timings = {"read": read_done - started, "engine": time.perf_counter() - read_done}
    pause_point("aligned", views.ts_id)
    return outcome


def _exclude_beyond_stretch(views: TiltSeriesViews, angle_offset: float
                            ) -> tuple[TiltSeriesViews, tuple[str, ...]]:
    """`views` with the enabled views tilted beyond +-82 degrees (plus the offset) disabled.

    Cosine stretching is undefined there (IMOD refuses them too); a full +-90
    series (STEM) is aligned on the rest. Returns the reason per view.
    """
    from dataclasses import replace

    tilts = views.tilt_angles + angle_offset
    beyond = views.enabled & np.isfinite(tilts) & (np.abs(tilts) > MAX_TILT_DEG)
    reasons = tuple(
        (f"tilted {tilts[i]:+.1f} degrees" + (f" with the angle offset of {angle_offset:g}"
                                              if angle_offset else "")
         + f", beyond the +-{MAX_TILT_DEG:g} where cosine stretching is defined: excluded")
        if beyond[i] else "" for i in range(views.n_views))
    if not beyond.any():
        return views, reasons
    return replace(views, enabled=views.enabled & ~beyond), reasons


def _reading_binning(options: CoarseOptions | FineOptions, view_shape: tuple[int, int]) -> int:
    """The binning views are read at: the coarse engine's, or the fine one's working binning."""
    if isinstance(options, CoarseOptions):
        return check_binned_size(view_shape, options.binning)
    # The fine alignment works at most at the coarse engine's automatic binning (<= 1180 px);
    # it bins further for tracking itself.
    factor = check_binned_size(view_shape, "auto")
    return factor if options.binning == "auto" else max(1, min(factor, int(options.binning)))


def _coarse_outcome(views, items, previous, binned, angles, axis, options, progress
                    ) -> AlignmentOutcome:
    from .alignment import align_binned_views

    result = align_binned_views(binned, angles, axis, options, progress=progress)
    n = views.n_views
    shifts = np.zeros((n, 2), dtype=np.float64)
    shifts[items] = result.shifts.detach().cpu().double().numpy()
    correlation = np.full(n, np.nan)
    correlation[items] = result.correlation.detach().cpu().double().numpy()
    transforms = identity_transforms(n)
    transforms[items] = compose_transforms(shifts_to_transforms(shifts[items]), previous)
    return AlignmentOutcome(
        views=views, transforms=transforms, shifts=shifts, correlation=correlation,
        reference_position=int(items[int(result.reference_view)]), tilt_axis_angle=axis,
        binning=int(result.binning), device="", **_verdicts(result, items, n))


def _verdicts(result, items: np.ndarray, n: int) -> dict:
    """The engine's per-view verdicts (`TiltxcorrResult`) spread over all `n` views."""
    unusable = np.zeros(n, dtype=bool)
    significance = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    if result.residual is not None:
        residual[items] = result.residual.detach().cpu().double().numpy()
    reasons, notes = [""] * n, [""] * n
    if result.unusable is not None:
        unusable[items] = result.unusable.detach().cpu().numpy()
    if result.peak_significance is not None:
        significance[items] = result.peak_significance.detach().cpu().double().numpy()
    for k, item in enumerate(items):
        if result.reasons:
            reasons[item] = result.reasons[k]
        if result.notes:
            notes[item] = result.notes[k]
    return dict(unusable=unusable, reasons=tuple(reasons), notes=tuple(notes),
                significance=significance, series_notes=tuple(result.series_notes),
                residual=residual, unreliable=result.unreliable,
                unreliable_reason=result.unreliable_reason, path=result.path)


def _fine_outcome(views, items, previous, binned, angles, axis, options, progress
                  ) -> AlignmentOutcome:
    """Run the fine alignment on the binned views; everything back in the views' own pixels."""
    from dataclasses import asdict

    from .alignment import fiducialless_alignment
    from .alignment.resample import imod_forward_transforms

    factor = binned.factor
    engine_options = asdict(options)
    if options.binning != "auto":
        engine_options["binning"] = max(1, round(int(options.binning) / factor))
    if isinstance(options.size_of_patches, (int, tuple)):
        engine_options["size_of_patches"] = _scaled(options.size_of_patches, factor)
    engine_options["borders"] = round(options.borders / factor)
    result = fiducialless_alignment(binned.views, angles, axis, progress=progress,
                                    **engine_options)
    # The engine's frame is the binned views': pixel r_b is input pixel F r_b + o, and its
    # transforms act about the binned views' centre, input c' = F c_b + o. The registered
    # transforms act about IMOD's (and tomo's) centre c = (h / 2, w / 2) (docs/conventions.md).
    h, w = binned.full_shape
    origin = np.array(binned.origin, dtype=np.float64) + (factor - 1) / 2
    hb, wb = binned.views.shape[-2:]
    centre_offset = (factor * np.array([(hb - 1) / 2, (wb - 1) / 2]) + origin
                     - np.array([h / 2, w / 2]))  # c' - c, (row, col)
    m = len(items)
    rotations = np.zeros(m) if result.rotations is None else result.rotations.double().numpy()
    mags = np.ones(m) if result.magnifications is None else result.magnifications.double().numpy()
    rotation = np.radians(rotations)
    # forward map aligned = R (raw - c') / m + shift + c', R = [[cos, sin], [-sin, cos]] (row, col)
    r_rc = np.stack([np.stack([np.cos(rotation), np.sin(rotation)], -1),
                     np.stack([-np.sin(rotation), np.cos(rotation)], -1)], -2) / mags[:, None, None]
    about_imod = imod_forward_transforms(r_rc, factor * result.shifts.double().numpy(),
                                         centre_offset).numpy()  # (m, 3, 3) (X, Y), about c
    shifts = about_imod[:, :2, 2][:, ::-1]  # (row, col)
    n = views.n_views
    full_shifts = np.zeros((n, 2))
    full_shifts[items] = shifts
    # IMOD's fine-alignment transforms (tiltalign's): also turn the tilt axis onto Y.
    turn = np.radians(result.tilt_axis_angle)
    onto_y = np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]])  # (X, Y)
    fine = np.tile(np.eye(3), (m, 1, 1))
    fine[:, :2, :] = onto_y @ about_imod[:, :2, :]
    # disabled views are not in the solve: their earlier transform is the best there is
    transforms = identity_transforms(n) if views.previous is None else views.previous.copy()
    transforms[items] = compose_transforms(fine, previous)

    offset = float(result.tilt_angle_offset)
    # disabled views: the common offset only
    tilt_angles = views.tilt_angles + (offset if options.level_specimen else 0.0)
    tilt_angles[items] = result.tilt_angles.double().numpy()
    positions = factor * result.tracks.positions.double().numpy() + origin
    tracks = np.full((positions.shape[0], n, 2), np.nan)
    tracks[:, items] = positions
    point_residuals = np.full_like(tracks, np.nan)
    point_residuals[:, items] = factor * result.point_residuals.double().numpy()
    residuals = np.full(n, np.nan)
    residuals[items] = factor * result.residuals.double().numpy()
    weights = np.full(tracks.shape[:2], np.nan)
    weights[:, items] = result.weights.double().numpy()
    correlation = np.full(n, np.nan)
    correlation[items] = result.coarse.correlation.double().numpy()
    details = FineDetails(
        tilt_angles=tilt_angles, tilt_angle_offset=offset,
        rotations=None if result.rotations is None else _spread(rotations, items, n),
        magnifications=None if result.magnifications is None else _spread(mags, items, n, 1.0),
        residuals=residuals, mean_residual=factor * float(result.mean_residual),
        tracks=tracks, point_residuals=point_residuals, weights=weights,
        n_contours=int(result.n_contours), n_rejected_contours=int(result.n_rejected_contours),
        image_shape=(int(h), int(w)), frame_tilt_axis_angle=float(result.tilt_axis_angle),
        patch_size=tuple(int(factor * p) for p in result.tracks.patch_size),
        levelled_by=result.levelled_by, points_offset=float(result.points_offset),
        slab_thickness=None if result.slab is None else factor * result.slab.thickness,
        levelling_note=result.levelling_note,
        tilt_axis_angle_error=float(result.tilt_axis_angle_error),
        tilt_angle_offset_error=float(result.tilt_angle_offset_error),
        shift_choice=None if result.shift_choice is None else replace(
            result.shift_choice, thickness=factor * result.shift_choice.thickness,
            rms_px={k: factor * v for k, v in result.shift_choice.rms_px.items()}))
    return AlignmentOutcome(
        views=views, transforms=transforms, shifts=full_shifts, correlation=correlation,
        reference_position=int(items[int(result.geometry.reference_view)]),
        tilt_axis_angle=float(result.tilt_axis_angle), binning=factor * result.tracks.binning,
        device="", fine=details, **_verdicts(result.coarse, items, n))


def _scaled(size, factor: int):
    if isinstance(size, tuple):
        return tuple(max(1, round(s / factor)) for s in size)
    return max(1, round(size / factor))


def _spread(values: np.ndarray, items: np.ndarray, n: int, fill: float = np.nan) -> np.ndarray:
    out = np.full(n, fill, dtype=np.float64)
    out[items] = values
    return out


# --------------------------------------------------------------------------- writing
#: File name suffix of each kind of output file.
SUFFIXES = {"prexf": ".prexf", "prexg": ".prexg", "xf": ".xf", "tlt": ".tlt", "fid": ".fid",
            "residuals": "_residuals.txt", "landmarks": "_landmarks.tsv",
            "png": "_alignment.png", "ali": ".ali", "preview": "_preview.mrc"}


def output_paths(folder: str, name: str, *, imod: bool = True, plot: bool = True,
                 aligned: bool = False, fine: bool = False, preview: bool = False
                 ) -> dict[str, str]:
    """The files `write_outputs` writes as `folder/name...`, by kind.

    Kinds (`SUFFIXES`): the IMOD files, ``prexf``, ``prexg`` and ``tlt`` of a
    coarse alignment, or with `fine` ``xf`` (tiltalign-style transforms),
    ``tlt`` (refined angles), ``fid`` (the tracks as an IMOD model),
    ``residuals`` (a table per view) and ``landmarks`` (the tracks as tomo's
    landmark table); ``png`` the plot; ``ali`` the aligned stack; ``preview``
    the preview tomogram (`preview_tomogram`, `<name>_preview.mrc`). `name` (a
    tilt-series id, a stack's base name) must be usable as a file name and
    `folder` must exist; a ValueError says which is not.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} cannot be a file name: it must be non-empty and hold no "
                         "path separator")
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder} does not exist: create it before writing files")
    kinds = []
    if imod:
        kinds += ["xf", "tlt", "fid", "residuals", "landmarks"] if fine else [
            "prexf", "prexg", "tlt"]
    if plot:
        kinds.append("png")
    if aligned:
        kinds.append("ali")
    if preview:
        kinds.append("preview")
    return {kind: os.path.join(folder, name + SUFFIXES[kind]) for kind in kinds}


def write_outputs(outcome: AlignmentOutcome, paths: dict[str, str], *, aligned_binning: int = 1,
                  progress: Callable[[int, int], None] | None = None,
                  preview_thickness: float | None = None) -> dict[str, float]:
    """Write the files of `paths` (from `output_paths`) for one aligned tilt series.

    All or nothing: every file is written under a temporary name first and
    all are renamed into place once all are complete (`atomic_outputs`), so
    a tilt series never has a partial set of files, even when the process is
    killed. `progress(done, total)` follows the aligned stack's views.
    With a ``preview`` path the preview tomogram is made first
    (`preview_tomogram`, `preview_thickness` stack pixels or its default),
    drawn into the plot and kept as `outcome.preview`.

    Returns the seconds spent on each kind of file.

    Raises
    ------
    TiltSeriesFailure
        Naming the tilt series and the file: a full disk, no permission, an
        aligned stack that cannot be made (views not one complete stack...).
    """
    views = outcome.views
    seconds: dict[str, float] = {}
    try:
        with atomic_outputs(paths) as temporaries:
            preview = None
            if "preview" in paths:
                started = time.perf_counter()
                preview = preview_tomogram(views, outcome, temporaries["preview"],
                                           thickness=preview_thickness)
                seconds["preview"] = time.perf_counter() - started
            started = time.perf_counter()
            if outcome.fine is None:
                _write_coarse_files(outcome, temporaries, preview)
            else:
                _write_fine_files(outcome, temporaries, preview)
            seconds["files"] = time.perf_counter() - started
            if "ali" in paths:
                started = time.perf_counter()
                _write_aligned_stack(outcome, temporaries["ali"], aligned_binning, progress)
                seconds["aligned stack"] = time.perf_counter() - started
    except (OutputError, StackReadError, ValueError) as error:
        raise views.fail(str(error)) from None
    if "preview" in paths:
        from dataclasses import replace

        outcome.preview = replace(preview, path=paths["preview"])
    return seconds


def _write_coarse_files(outcome: AlignmentOutcome, paths: dict[str, str],
                        preview: Preview | None = None) -> None:
    from .convert.imod import write_imod_files

    views = outcome.views
    order = views.stack_order
    if {"prexf", "prexg", "tlt"} & paths.keys():
        write_imod_files(paths, outcome.transforms[order], views.tilt_angles[order])
    if "png" in paths:
        from .plots import save_alignment_plot

        # view numbers are stack positions, as in the viewer and the IMOD files
        save_alignment_plot(paths["png"], views.ts_id, views.tilt_angles, outcome.shifts,
                            views.enabled, outcome.correlation,
                            view_numbers=views.stack_positions, unusable=outcome.unusable,
                            residual=outcome.residual,
                            unreliable_reason=outcome.unreliable_reason, preview=preview)


def _write_fine_files(outcome: AlignmentOutcome, paths: dict[str, str],
                      preview: Preview | None = None) -> None:
    """tiltalign's files: ``.xf``, refined ``.tlt``; the tracks as ``.fid`` and landmark table.

    The model's sections are the enabled views in stack order, as Scipion's
    IMOD protocols restack a tilt series with excluded views; its points are
    in the pixels of the views as read (after an earlier alignment).
    """
    from .convert.imod import write_tlt, write_xf
    from .convert.landmarks import write_fid, write_landmark_table, write_residual_table

    views, fine = outcome.views, outcome.fine
    order = views.stack_order
    if "xf" in paths:
        write_xf(paths["xf"], outcome.transforms[order])
    if "tlt" in paths:
        write_tlt(paths["tlt"], fine.tilt_angles[order])
    enabled = order[views.enabled[order]]  # enabled items, stack order
    if "fid" in paths:
        write_fid(paths["fid"], fine.tracks[:, enabled], np.arange(len(enabled)),
                  fine.image_shape, len(enabled), views.sampling_rate)
    if "residuals" in paths:
        counts = np.isfinite(fine.tracks[..., 0]).sum(axis=0)
        write_residual_table(paths["residuals"], views.stack_positions[order],
                             fine.tilt_angles[order], fine.residuals[order], counts[order])
    if "landmarks" in paths:
        write_landmark_table(paths["landmarks"], fine.tracks, fine.point_residuals,
                             views.stack_positions)
    if "png" in paths:
        from .plots import save_fine_plot

        reference = outcome.reference_position
        present = np.isfinite(fine.tracks[:, reference, 0])
        save_fine_plot(paths["png"], views.ts_id, fine.tilt_angles, fine.residuals,
                       views.enabled, fine.tracks[present, reference],
                       fine.weights[present, reference], fine.image_shape,
                       fine.frame_tilt_axis_angle, fine.tilt_angle_offset, fine.mean_residual,
                       view_numbers=views.stack_positions,
                       tilt_axis_angle_error=fine.tilt_axis_angle_error,
                       tilt_angle_offset_error=fine.tilt_angle_offset_error,
                       preview=preview)


def _write_aligned_stack(outcome: AlignmentOutcome, path: str, binning: int,
                         progress: Callable[[int, int], None] | None) -> None:
    from .convert.aligned_stack import write_aligned_stack

    views = outcome.views
    stack = views.single_stack()
    if stack is None:
        raise ValueError("its views are not one complete stack (positions 1..n of one file), "
                         "so no aligned stack can be written")
    halfway = views.n_views // 2

    def on_view(done: int, total: int) -> None:
        if done == halfway:
            pause_point("writing aligned stack", views.ts_id)
        if progress is not None:
            progress(done, total)

    write_aligned_stack(stack, path, outcome.transforms[views.stack_order], binning,
                        views.sampling_rate, progress=on_view)


# --------------------------------------------------------------------------- tomograms
#: The preview tomogram is binned so that it is at most this many voxels wide.
PREVIEW_MAX_WIDTH = 512
#: Default preview thickness: `options.PREVIEW_SLAB_MARGIN` times the slab a fine alignment
#: found, else `options.PREVIEW_THICKNESS_FRACTION` of the views' larger side (stack pixels).


@dataclass(frozen=True)
class Preview:
    """A preview tomogram of one alignment, and the reprojection check made from it.

    Attributes
    ----------
    path
        The MRC file (`<name>_preview.mrc`).
    binning
        Stack pixels per voxel.
    shape
        `(nz, ny, nx)` voxels (docs/reconstruction.md: z the beam, y along the tilt axis).
    voxel_size
        Angstrom per voxel (the MRC header's).
    xy_slice
        `(ny, nx)` float32 central section (z in the middle).
    xz_slice
        `(nz, nx)` float32 central slice across the tilt axis (y in the middle).
    check
        `alignment.ReprojectionCheck`, its arrays in item order (`(n,)` as the views).
    thickness
        Stack pixels reconstructed.
    """

    path: str
    binning: int
    shape: tuple[int, int, int]
    voxel_size: float
    xy_slice: np.ndarray
    xz_slice: np.ndarray
    check: Any
    thickness: float = 0.0


def transformed_tilt_axis(tilt_axis_angle: float, transforms: np.ndarray,
                          enabled: np.ndarray) -> float:
    """The tilt axis angle (degrees) in the frame of views transformed by `transforms`.

    The raw images' angle plus the median rotation of the enabled views' transforms
    (`rotation_angles_deg`): a transform that turns the image by theta turns the axis
    with it, so a pure-shift alignment keeps the acquisition's angle and a
    tiltalign-style one, which turns the axis onto Y, gives 0.
    """
    angles = rotation_angles_deg(np.asarray(transforms)[np.asarray(enabled, dtype=bool)])
    angles = angles[np.isfinite(angles)]  # a broken transform is refused view by view later
    return float(tilt_axis_angle + (np.median(angles) if angles.size else 0.0))


def frame_tilt_axis(outcome: AlignmentOutcome) -> float:
    """The tilt axis in the frame of `outcome.transforms` (`transformed_tilt_axis`)."""
    return transformed_tilt_axis(outcome.tilt_axis_angle, outcome.transforms,
                                 outcome.views.enabled)


def outcome_tilt_angles(outcome: AlignmentOutcome) -> np.ndarray:
    """The tilt angles the transforms go with: refined (offset included) after a fine alignment."""
    return outcome.views.tilt_angles if outcome.fine is None else outcome.fine.tilt_angles


def preview_binning(view_shape: tuple[int, int], max_width: int = PREVIEW_MAX_WIDTH) -> int:
    """The binning that makes a tomogram of views `(h, w)` at most `max_width` voxels wide."""
    return max(1, math.ceil(max(view_shape) / max(1, int(max_width))))


def preview_tomogram(views: TiltSeriesViews, outcome: AlignmentOutcome, path: str, *,
                     max_width: int = PREVIEW_MAX_WIDTH, thickness: float | None = None,
                     device: torch.device | str = "cpu",
                     progress: Callable[[int, int], None] | None = None) -> Preview:
    """Reconstruct a binned tomogram from an alignment, write it, and check every view.

    The raw views are read chunk by chunk and binned so that the tomogram is at most
    `max_width` voxels wide; `outcome.transforms` and tilt angles (refined ones after a fine
    alignment) are back-projected (`alignment.reconstruct`) and the MRC written at `path`
    whole or not at all (voxel size set). Each enabled view is then compared with the
    reprojection of the tomogram made without it (`alignment.reprojection_check`, on the same
    views binned to at most `CHECK_SIDE` pixels).

    `thickness` (stack pixels) defaults to 1.5 times the slab a fine alignment found, else a
    quarter of the views' larger side. Raises `TiltSeriesFailure` naming the tilt series,
    the views and the cause.
    """
    from .alignment.reconstruct import CHECK_SIDE, reprojection_check_binned

    items = np.flatnonzero(views.enabled)
    stacks, view_shape = _open_stacks(views, items) if len(items) else ({}, (0, 0))
    factor = preview_binning(view_shape, max_width)
    if thickness is None:
        slab = outcome.fine.slab_thickness if outcome.fine is not None else None
        thickness = (PREVIEW_SLAB_MARGIN * slab if slab else
                     PREVIEW_THICKNESS_FRACTION * max(view_shape))
    thickness = max(float(factor), float(thickness))
    axis = frame_tilt_axis(outcome)
    angles = outcome_tilt_angles(outcome)
    volume, binned = _tomogram(views, outcome.transforms, angles, axis, thickness=thickness,
                               binning=factor, device=device, progress=progress,
                               stacks=(stacks, view_shape))
    voxel_size = views.sampling_rate * factor
    _write_volume(views, volume, path, voxel_size, f"tiltxcorr-scipion preview {views.ts_id}")
    nz, ny, nx = volume.shape
    extra = max(1, math.ceil(max(binned.views.shape[1:]) / CHECK_SIDE))
    coarse = binned.rebinned(extra) if extra > 1 else binned
    try:
        check = reprojection_check_binned(coarse, outcome.transforms[items], angles[items], axis,
                                          thickness=thickness,
                                          enabled=_as_tensor_mask(views.enabled))
    except ValueError as error:
        raise views.fail(f"reprojection check: {error}") from None
    return Preview(path=path, binning=factor, shape=(nz, ny, nx), voxel_size=voxel_size,
                   xy_slice=volume[nz // 2].cpu().numpy().copy(),
                   xz_slice=volume[:, ny // 2, :].cpu().numpy().copy(), check=check,
                   thickness=thickness)


def reconstruct_views(views: TiltSeriesViews, transforms: np.ndarray, tilt_angles: np.ndarray,
                      axis: float, *, thickness: float, binning: int, path: str,
                      z_shift: float = 0.0, tilt_angle_offset: float = 0.0,
                      radial: tuple[float, float] | None = None, fake_sirt_iterations: int = 0,
                      weighting: str = "exact", noise_filter: str = "fsc",
                      device: torch.device | str = "cpu",
                      progress: Callable[[int, int], None] | None = None) -> str:
    """Reconstruct one tilt series from its raw views and write the tomogram at `path`.

    `transforms` `(n, 3, 3)` (IMOD forward, raw -> aligned, item order: what Scipion holds
    or a `.xf` gives), `tilt_angles` `(n,)` and `axis` (the tilt axis in the transformed
    views' frame: 0 after a tiltalign-style `.xf`) go to `alignment.reconstruct` with the
    other arguments (stack pixels); disabled views are left out. The raw views are read
    chunk by chunk and binned as they arrive; the MRC (float32 volume, voxel size
    `sampling_rate * binning`) appears whole or not at all. Returns `path`.

    Raises `TiltSeriesFailure` naming the tilt series, the views (1-based stack positions)
    and the cause: an unreadable stack, too few enabled views, a transform that cannot be
    inverted, a tilt angle that is not finite, a full disk...
    """
    from .alignment.reconstruct import RADIAL

    volume, _ = _tomogram(views, np.asarray(transforms, dtype=np.float64),
                          np.asarray(tilt_angles, dtype=np.float64), float(axis),
                          thickness=thickness, binning=int(binning), z_shift=z_shift,
                          tilt_angle_offset=tilt_angle_offset, radial=radial or RADIAL,
                          fake_sirt_iterations=fake_sirt_iterations, weighting=weighting,
                          noise_filter=noise_filter, device=device, progress=progress)
    _write_volume(views, volume, path, views.sampling_rate * int(binning),
                  f"tiltxcorr-scipion tomogram {views.ts_id}")
    return path


def _as_tensor_mask(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(mask, dtype=bool).copy())


def _tomogram(views: TiltSeriesViews, transforms: np.ndarray, tilt_angles: np.ndarray,
              axis: float, *, thickness: float, binning: int, device, progress,
              stacks=None, **engine):
    """Read the enabled raw views (binned as they arrive) and back-project them.

    Returns the tomogram `(nz, ny, nx)` and the binned views; engine errors become
    `TiltSeriesFailure`s naming the views by stack position.
    """
    import torch

    from .alignment import ViewError, bin_chunks
    from .alignment.reconstruct import reconstruct_binned

    device = torch.device(device)
    n = views.n_views
    items = np.flatnonzero(views.enabled)
    if len(items) < 2:
        raise views.fail(f"only {len(items)} enabled view(s) of {n}; a tomogram needs at "
                         "least 2 (re-enable views)")
    transforms = np.asarray(transforms, dtype=np.float64)
    tilt_angles = np.asarray(tilt_angles, dtype=np.float64).reshape(-1)
    if transforms.shape != (n, 3, 3):
        raise views.fail(f"{transforms.shape[0] if transforms.ndim else 0} transforms for {n} "
                         "views: give one (3 x 3) transform per view")
    if tilt_angles.shape != (n,):
        raise views.fail(f"{tilt_angles.shape[0]} tilt angles for {n} views: give one angle "
                         "per view")
    if not math.isfinite(float(axis)):
        raise views.fail("the tilt axis angle is not finite")
    if int(binning) < 1:
        raise views.fail(f"binning must be a whole number of at least 1, got {binning}")
    number_of = lambda index: int(views.stack_positions[items[index]])  # noqa: E731
    try:
        stacks, view_shape = stacks if stacks is not None else _open_stacks(views, items)
        if thickness is None or not float(thickness) >= binning:
            raise ValueError(f"the thickness ({thickness} px) must be at least the binning "
                             f"({binning} px)")
        binned = bin_chunks(_raw_chunks(views, items, stacks, view_shape, apply_previous=False),
                            len(items), view_shape, int(binning), device=device)
        volume = reconstruct_binned(binned, transforms[items], tilt_angles[items], axis,
                                    thickness=float(thickness), progress=progress, **engine)
    except ViewError as error:
        raise views.fail_views(error, number_of) from None
    except (StackReadError, ValueError) as error:
        raise views.fail(str(error)) from None
    return volume, binned


def _write_volume(views: TiltSeriesViews, volume, path: str, voxel_size: float,
                  label: str) -> None:
    """Write a `(nz, ny, nx)` tomogram as a float32 MRC volume at `path`, all or nothing."""
    from .convert.files import atomic_output
    from .convert.mrc import StackWriter

    try:
        with atomic_output(path) as temporary, StackWriter(
                temporary, tuple(volume.shape), voxel_size, label, volume=True) as writer:
            for section in volume:
                writer.write(section.cpu().numpy())
    except OutputError as error:
        raise views.fail(str(error)) from None


# --------------------------------------------------------------------------- resources
def available_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def select_device(use_gpu: bool | None, gpu_ids: list[int] | None = None
                  ) -> tuple[torch.device, str]:
    """The torch device to align on, and a log line saying why.

    `use_gpu` True asks for a GPU (falling back to the CPU, with the reason,
    when torch sees none), False for the CPU, None for a GPU when there is
    one. `gpu_ids` are Scipion's booked GPUs for this step (first one used).
    """
    import torch

    if use_gpu is False:
        return torch.device("cpu"), "running on CPU (GPU not requested)"
    if not torch.cuda.is_available():
        if use_gpu is None:
            return torch.device("cpu"), "running on CPU (no CUDA GPU visible to torch)"
        return torch.device("cpu"), ("GPU requested but CUDA is not available to torch here: "
                                     "falling back to CPU")
    ids = [int(g) for g in (gpu_ids or []) if str(g).strip() != ""]
    count = torch.cuda.device_count()
    gpu = ids[0] if ids else 0
    if gpu >= count:
        return torch.device("cpu"), (f"GPU {gpu} requested but only {count} CUDA device(s) "
                                     "are visible: falling back to CPU")
    return torch.device(f"cuda:{gpu}"), f"running on GPU {gpu} ({torch.cuda.get_device_name(gpu)})"


def torch_threads_per_step(parallel_steps: int, cpus: int | None = None) -> int:
    """Torch intra-op threads so that ``steps x threads`` does not exceed the CPUs."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, int(cpus) // max(1, int(parallel_steps)))
