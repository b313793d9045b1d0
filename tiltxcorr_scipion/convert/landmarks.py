"""Patch tracks as IMOD fiducial models (``.fid``) and residual tables.

A track is a contour of points, one per view where the patch was followed.
The ``.fid`` is a real IMOD binary model (written with the ``imodmodel``
package), as IMOD's patch tracking writes it: one object of open contours,
each point at ``(x, y, z)`` with ``x = col + 0.5`` and ``y = row + 0.5`` (IMOD
puts pixel centres at half-integers) and ``z`` the 0-based section of the view
in the stack the model belongs to. IMOD's programs (tiltalign, 3dmod) read it
directly. See ``docs/fine-alignment.md`` for the frame the coordinates are in.
"""

from __future__ import annotations

import numpy as np

from .files import atomic_output

__all__ = ["LANDMARK_COLUMNS", "read_fid", "write_fid", "write_landmark_table",
           "write_residual_table"]

#: Columns of tomo's landmark table (``LandmarkModel.addLandmark``), tab-separated.
LANDMARK_COLUMNS = ("xCoor", "yCoor", "tiltIm", "chainId", "xResid", "yResid")


def write_fid(path: str, positions: np.ndarray, sections: np.ndarray, image_shape: tuple[int, int],
              n_sections: int, pixel_size: float) -> str:
    """Write tracks as an IMOD fiducial model; returns `path`.

    Parameters
    ----------
    positions
        `(n_contours, n_views, 2)` `(row, col)` pixel positions, NaN where a
        contour has no point in that view.
    sections
        `(n_views,)` 0-based section (z) of each view in the model's stack.
    image_shape
        `(h, w)` of the views: the model's maximum X and Y.
    n_sections
        Sections in the model's stack (its maximum Z).
    pixel_size
        Angstrom per pixel, stored in the model header.
    """
    import pandas as pd
    from imodmodel.models import ContourType, ImodModel

    positions = np.asarray(positions, dtype=np.float64)
    sections = np.asarray(sections, dtype=np.int64)
    contour, view = np.nonzero(np.isfinite(positions).all(axis=-1))
    if contour.size == 0:
        raise ValueError("no tracked point to write: every patch track was cut")
    _, contour_ids = np.unique(contour, return_inverse=True)  # empty contours leave no gap
    frame = pd.DataFrame({
        "object_id": 0,
        "contour_id": contour_ids,
        "x": positions[contour, view, 1] + 0.5,
        "y": positions[contour, view, 0] + 0.5,
        "z": sections[view].astype(np.float64),
    }).sort_values(["contour_id", "z"], kind="stable")
    model = ImodModel.from_dataframe(frame, type=ContourType.OPEN)
    model.header.xmax, model.header.ymax = int(image_shape[1]), int(image_shape[0])
    model.header.zmax = int(n_sections)
    model.header.pixelsize = float(pixel_size)
    model.header.name = "tiltxcorr-scipion patch tracks"
    with atomic_output(path) as temporary:
        model.to_file(temporary)
    return path


def read_fid(path: str) -> np.ndarray:
    """`(n_points, 4)` `(contour, row, col, z)` of an IMOD model (for checks and tests)."""
    import imodmodel

    frame = imodmodel.read(path)
    return np.stack([frame["contour_id"].to_numpy(), frame["y"].to_numpy() - 0.5,
                     frame["x"].to_numpy() - 0.5, frame["z"].to_numpy()], axis=1)


def write_residual_table(path: str, view_numbers: np.ndarray, tilt_angles: np.ndarray,
                         residuals: np.ndarray, points: np.ndarray) -> str:
    """Per-view residuals as a text table (view, tilt, points, RMS residual in px); returns `path`."""
    with atomic_output(path) as temporary, open(temporary, "w") as handle:
        handle.write("# view  tilt(deg)  points  rms_residual(px)\n")
        for number, tilt, count, residual in zip(view_numbers, tilt_angles, points, residuals,
                                                 strict=True):
            value = f"{residual:16.3f}" if np.isfinite(residual) else f"{'nan':>16}"
            handle.write(f"{int(number):6d} {tilt:10.2f} {int(count):7d}{value}\n")
    return path


def write_landmark_table(path: str, tracks: np.ndarray, point_residuals: np.ndarray,
                         view_numbers: np.ndarray) -> str:
    """The tracks as Scipion tomo's landmark table (a `LandmarkModel`'s file); returns `path`.

    One tab-separated row per point, as ``LandmarkModel.addLandmark`` writes
    them: ``xCoor yCoor`` in IMOD model coordinates (``col + 0.5, row + 0.5``,
    as in the ``.fid``), ``tiltIm`` the view's 1-based stack position,
    ``chainId`` the contour (from 1), and ``xResid yResid`` IMOD's residual
    (model minus measured, pixels).

    Parameters
    ----------
    tracks, point_residuals
        `(n_contours, n, 2)` `(row, col)` positions and measured-minus-model
        residuals, NaN where a contour has no point.
    view_numbers
        `(n,)` 1-based stack positions of the views.
    """
    contour, view = np.nonzero(np.isfinite(tracks).all(axis=-1))
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        handle.write("\t".join(LANDMARK_COLUMNS) + "\n")
        for c, v in zip(contour.tolist(), view.tolist(), strict=True):
            row, col = tracks[c, v]
            d_row, d_col = -point_residuals[c, v]
            handle.write(f"{col + 0.5}\t{row + 0.5}\t{int(view_numbers[v])}\t{c + 1}\t"
                         f"{d_col}\t{d_row}\n")
    return path
