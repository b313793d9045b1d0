"""MRC stacks (``.mrc``, ``.st``, ``.ali``, ``.mrcs``): the one place the package reads and writes them.

Reading: the header is parsed with mrcfile (permissively: older IMOD and
SerialEM files break MRC2014 in harmless ways), then checked for what would
really break reading (sizes, mode, truncation), and views are read a few at a
time with plain file reads. Nothing is memory-mapped, so reading a stack costs
memory for the views asked for, not for the file. As IMOD does, every file is
a stack of ``nz`` sections, whatever its space group says (a volume, or an
``ispg 401`` volume stack with ``mz = 1`` or ``mz = nz``).

Writing (`StackWriter`): a float32 (mode 2) image stack (or, with
``volume=True``, a volume: a tomogram, ``ispg 1``, ``mz = nz``) written
section by section with plain writes, so a full disk is an ``OSError``
(never a crash), and statistics filled in at the end.

Views are numbered by their 1-based position in the stack (Scipion's tilt
image index, IMOD's section number + 1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import mrcfile
import mrcfile.constants
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

__all__ = ["MrcStack", "StackReadError", "StackWriter"]

_SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_NON_IMAGE_MODES = {3: "complex int16", 4: "complex float32 (a Fourier transform)",
                    101: "4-bit packed"}


class StackReadError(ValueError):
    """A stack cannot be read: missing, not MRC, not images, truncated, or a view outside it."""


@dataclass(frozen=True)
class MrcStack:
    """An MRC stack's layout, read from its header; `read` gets views from it.

    Attributes
    ----------
    path
        The file.
    shape
        `(n, h, w)`: sections, rows (Y), columns (X).
    dtype
        numpy dtype of the stored pixels (byte order included).
    data_offset
        Byte offset of the first pixel (header + extended header).
    voxel_size
        Pixel size in Angstrom from the header, or 0 when the header has none.
    sections_in_file
        Whole sections the file's data hold (`shape[0]` when the header's nz
        is right); see `header_warning`.
    """

    path: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    data_offset: int
    voxel_size: float
    sections_in_file: int = 0

    @property
    def header_warning(self) -> str:
        """A warning when the file holds more whole sections than its header's nz ("" if not).

        As IMOD, only the header's nz sections are read; a header left short by
        a program that appended views would silently drop the rest.
        """
        if self.sections_in_file <= self.shape[0]:
            return ""
        return (f"{self.path}: its header says nz = {self.shape[0]} but the file holds "
                f"{self.sections_in_file} whole sections: only the first {self.shape[0]} are "
                "read (check the header with IMOD's header program; alterheader fixes nz)")

    @classmethod
    def open(cls, path: str | os.PathLike) -> MrcStack:
        """Read and check the header of `path`.

        Raises
        ------
        StackReadError
            Missing file; not MRC; a complex or other non-image mode; data
            shorter than the header says (truncated). The message names the
            file and what to do.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise StackReadError(f"{path} is a folder, not a file: give the path of an MRC "
                                 "stack (.mrc, .st, .ali) in it")
        if not os.path.isfile(path):
            raise StackReadError(f"{path}: no such file (it does not exist: moved or deleted?); "
                                 "give the path of an MRC stack (.mrc, .st, .ali)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # permissive mode warns about each quirk
                with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                    header = mrc.header.copy()
                    extended_bytes = int(mrc.header.nsymbt)
                    voxel_size = float(mrc.voxel_size.x)
        except (ValueError, OSError, EOFError) as error:
            raise StackReadError(f"{path} cannot be read as MRC: {error}") from None
        if header is None or len(header.tobytes()) < HEADER_DTYPE.itemsize:
            raise StackReadError(f"{path} is not an MRC file: its header is incomplete")
        mode = int(header.mode)
        if mode in _NON_IMAGE_MODES:
            raise StackReadError(f"{path} holds {_NON_IMAGE_MODES[mode]} data (MRC mode {mode}), "
                                 "not images: give the stack of real-valued views")
        if mode not in _SUPPORTED_MODES:
            raise StackReadError(f"{path} has MRC mode {mode}, which is not an image mode; is it "
                                 "an MRC stack? (check it with IMOD's header program)")
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        if min(nx, ny, nz) < 1:
            raise StackReadError(f"{path} has a header with sizes {nx} x {ny} x {nz}: not an "
                                 "MRC stack (check it with IMOD's header program)")
        dtype = mrcfile.utils.data_dtype_from_header(header)
        offset = HEADER_DTYPE.itemsize + max(extended_bytes, 0)
        needed = offset + nx * ny * nz * dtype.itemsize
        size = os.path.getsize(path)
        if size < needed:
            complete = max(0, (size - offset) // (nx * ny * dtype.itemsize))
            raise StackReadError(f"{path} is truncated: it holds {size} bytes, {needed} are "
                                 f"needed for {nz} views of {nx} x {ny} ({complete} complete); "
                                 "copy the file again")
        return cls(path=path, shape=(nz, ny, nx), dtype=dtype, data_offset=offset,
                   voxel_size=voxel_size,
                   sections_in_file=int((size - offset) // (nx * ny * dtype.itemsize)))

    @property
    def n_views(self) -> int:
        return self.shape[0]

    @property
    def view_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def check_positions(self, positions: Sequence[int]) -> np.ndarray:
        """`positions` (1-based) as int64, or a `StackReadError` naming those outside the stack."""
        idx = np.asarray(positions, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 1) | (idx > self.n_views)]
        if bad.size:
            raise StackReadError(f"{self.path} has {self.n_views} views; views "
                                 f"{sorted(set(bad.tolist()))[:8]} (1-based) are outside it")
        return idx

    def read(self, positions: Sequence[int]) -> np.ndarray:
        """Views at 1-based stack `positions` (any order) as float32 `(k, h, w)`."""
        idx = self.check_positions(positions)
        h, w = self.view_shape
        out = np.empty((len(idx), h, w), dtype=np.float32)
        view_bytes = h * w * self.dtype.itemsize
        try:
            with open(self.path, "rb") as handle:
                for j, position in enumerate(idx):
                    handle.seek(self.data_offset + (int(position) - 1) * view_bytes)
                    raw = np.fromfile(handle, dtype=self.dtype, count=h * w)
                    if raw.size != h * w:
                        raise StackReadError(f"{self.path}: view {position} is incomplete "
                                             "(the file was truncated while being read?)")
                    out[j] = raw.reshape(h, w)
        except OSError as error:
            raise StackReadError(f"cannot read views of {self.path}: {error}") from None
        return out

    def iter_chunks(self, positions: Sequence[int], chunk_bytes: int = 128 << 20
                    ) -> Iterator[np.ndarray]:
        """Views at `positions` as float32 chunks `(k, h, w)` of about `chunk_bytes` each, in order."""
        idx = self.check_positions(positions)
        h, w = self.view_shape
        per_chunk = max(1, chunk_bytes // (h * w * 4))
        for start in range(0, len(idx), per_chunk):
            yield self.read(idx[start:start + per_chunk])


class StackWriter:
    """Write a float32 MRC image stack view by view; use as a context manager.

    The header (mode 2, image stack ``ispg 0``, voxel size, statistics, one
    label) is written when the writer closes without an error. Writes are
    plain file writes: a full disk raises ``OSError``. The caller chooses the
    file name (a temporary one, renamed when everything is written, keeps
    readers from seeing a partial stack).
    """

    def __init__(self, path: str, shape: tuple[int, int, int], voxel_size: float, label: str,
                 *, volume: bool = False):
        self.volume = bool(volume)
        self.path = path
        self.shape = shape
        self.voxel_size = float(voxel_size)
        self.label = label
        self._written = 0
        self._sum = self._sum_sq = 0.0
        self._min, self._max = np.inf, -np.inf
        self._handle = open(path, "wb")
        self._handle.write(bytes(HEADER_DTYPE.itemsize))  # placeholder until the end

    def __enter__(self) -> StackWriter:
        return self

    def write(self, view: np.ndarray) -> None:
        """Append one `(h, w)` view (converted to float32)."""
        values = np.ascontiguousarray(view, dtype=np.float32)
        if values.shape != self.shape[1:] or self._written >= self.shape[0]:
            raise ValueError(f"{self.path}: view {self._written + 1} has shape {values.shape}; "
                             f"the stack holds {self.shape[0]} views of {self.shape[1:]}")
        self._handle.write(values.tobytes())
        self._written += 1
        self._sum += float(values.sum(dtype=np.float64))
        self._sum_sq += float(np.square(values, dtype=np.float64).sum())
        self._min = min(self._min, float(values.min()))
        self._max = max(self._max, float(values.max()))

    def _header(self) -> np.ndarray:
        n, h, w = self.shape
        header = np.zeros((), dtype=HEADER_DTYPE).view(np.recarray)
        header.nx, header.ny, header.nz = w, h, n
        header.mode = 2
        if self.volume:  # a volume: sections are slices of one 3-D map
            header.mx, header.my, header.mz = w, h, n
            header.ispg = mrcfile.constants.VOLUME_SPACEGROUP
            header.cella = (w * self.voxel_size, h * self.voxel_size, n * self.voxel_size)
        else:  # image stack: mz = 1
            header.mx, header.my, header.mz = w, h, 1
            header.ispg = mrcfile.utils.IMAGE_STACK_SPACEGROUP
            header.cella = (w * self.voxel_size, h * self.voxel_size, 1.0 * self.voxel_size)
        header.cellb = (90.0, 90.0, 90.0)
        header.mapc, header.mapr, header.maps = 1, 2, 3
        header.map = b"MAP "
        header.nversion = 20141
        header.machst = mrcfile.utils.machine_stamp_from_byte_order(header.mode.dtype.byteorder)
        count = n * h * w
        mean = self._sum / count
        header.dmin, header.dmax, header.dmean = self._min, self._max, mean
        header.rms = float(np.sqrt(max(self._sum_sq / count - mean * mean, 0.0)))
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        header.label[0] = f"{self.label[:59]:59s}{stamp:>20s} ".encode("ascii", "replace")
        header.nlabl = 1
        return header

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self._written != self.shape[0]:
                    raise ValueError(f"{self.path}: {self._written} of {self.shape[0]} views "
                                     "were written")
                self._handle.seek(0)
                self._handle.write(self._header().tobytes())
                self._handle.flush()
                os.fsync(self._handle.fileno())
        finally:
            self._handle.close()
