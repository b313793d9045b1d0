"""Our outputs as scipion-em-tomo and scipion-em-imod read them.

- Rotation centre: our transforms act about (w / 2, h / 2) in 0-based pixel indices, as IMOD's
  newstack applies them (cubinterp) and as tomo's `TiltSeries.applyTransform` (xmipp's
  `applyWarpAffine`) does on even sizes: the same matrix gives the same image.
- Landmark models: `applyTSTransformation` and their tilt series as imod's viewer reads them.
"""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from tiltxcorr_scipion.alignment.resample import apply_imod_transforms
from tiltxcorr_scipion.simulate import simulate_tilt_series


def tomo_apply_transform(tmp_path, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """What tomo's TiltSeries.applyTransform makes of one view (its per-image call)."""
    from pwem.emlib.image.image_handler import ImageHandler

    source, target = tmp_path / "in.mrcs", tmp_path / "out.mrcs"
    target.unlink(missing_ok=True)
    with mrcfile.new(str(source), overwrite=True) as mrc:
        mrc.set_data(image[None].astype(np.float32))
    h, w = image.shape
    ImageHandler.applyTransform(inputFile=f"1@{source}:mrcs", outputFile=f"1@{target}",
                                transformMatrix=matrix, shape=(h, w))
    with mrcfile.open(str(target)) as mrc:
        return mrc.data.reshape(h, w).astype(np.float64)


@pytest.mark.parametrize("angle", [85.0, 178.0])
def test_our_rotation_centre_is_toms_and_imods(tmp_path, angle):
    h, w = 128, 160
    image = simulate_tilt_series(shape=(h, w), n_views=3, seed=1).images[1].numpy()
    a = math.radians(angle)
    matrix = np.array([[math.cos(a), -math.sin(a), 3.3], [math.sin(a), math.cos(a), -2.1],
                       [0.0, 0.0, 1.0]])
    theirs = tomo_apply_transform(tmp_path, image, matrix)
    ours = apply_imod_transforms(torch.from_numpy(image)[None], matrix[None],
                                 mode="bicubic")[0].double().numpy()
    inner = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    scale = theirs[inner].std()

    def misfit(result):
        return float(np.sqrt(np.mean((result[inner] - theirs[inner]) ** 2)) / scale)

    # about ((w - 1) / 2, (h - 1) / 2), the old centre, the same matrix is (I - A)(1/2, 1/2) off
    half = np.array([0.5, 0.5])
    old = matrix.copy()
    old[:2, 2] += (np.eye(2) - matrix[:2, :2]) @ half
    shifted = apply_imod_transforms(torch.from_numpy(image)[None], old[None],
                                    mode="bicubic")[0].double().numpy()
    assert misfit(ours) < 0.03, misfit(ours)  # interpolation differences only
    assert misfit(shifted) > 5 * misfit(ours)


def _patch_agreement(stack: np.ndarray, points: np.ndarray, half: int = 12) -> float:
    """Median NCC of patches around each contour's points in neighbouring views of `stack`.

    `points` `(contours, views, 2)` 0-based `(row, col)` (NaN where absent): on the stack
    they were measured on, the same specimen sits at them in every view.
    """
    n, h, w = stack.shape
    scores = []
    for track in points:
        for v in range(n - 1):
            a, b = track[v], track[v + 1]
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            ra, ca, rb, cb = (int(round(x)) for x in (*a, *b))
            if min(ra, ca, rb, cb) < half or max(ra, rb) >= h - half or max(ca, cb) >= w - half:
                continue
            pa = stack[v, ra - half:ra + half, ca - half:ca + half].ravel()
            pb = stack[v + 1, rb - half:rb + half, cb - half:cb + half].ravel()
            pa, pb = pa - pa.mean(), pb - pb.mean()
            scores.append(float(pa @ pb / (np.linalg.norm(pa) * np.linalg.norm(pb) + 1e-12)))
    return float(np.median(scores))


def test_landmarks_lie_where_imods_viewer_shows_them(tmp_path):
    """Coarse prealignment, then fine alignment on its output (earlier transforms present):
    imod's viewer opens a landmark model on `ts.applyTransform(...)` of the model's tilt
    series when `hasAlignment() and applyTSTransformation()`, else on the raw stack. Done that
    way, our .fid points sit on the same specimen in every view."""
    import imodmodel
    from scipion_helpers import (
        create_project,
        import_tilt_series,
        launch_and_wait,
        new_prealignment,
        reload_protocol,
        write_simulated_tilt_series,
    )

    from tiltxcorr_scipion import constants as cts
    from tiltxcorr_scipion.protocols import ProtTiltxcorrFineAlignment

    write_simulated_tilt_series(tmp_path, "TS_1", shape=(256, 256), n_views=31,
                                tilt_range=(-60.0, 60.0), tilt_axis_angle=85.0, max_shift=12.0,
                                thickness=10.0, noise=0.5, seed=71)
    project = create_project("chain_landmarks")
    imp = import_tilt_series(project, tmp_path, "*.mrc", tilt_axis_angle=85.0)
    coarse = launch_and_wait(project, new_prealignment(project, imp))
    fine = project.newProtocol(ProtTiltxcorrFineAlignment, objLabel="tiltxcorr fine")
    fine.inputSetOfTiltSeries.set(coarse)
    fine.inputSetOfTiltSeries.setExtended(cts.OUTPUT_TILT_SERIES)
    fine = reload_protocol(project, launch_and_wait(project, fine))
    models = getattr(fine, cts.OUTPUT_LANDMARK_MODELS)
    model = models.getLandmarkModelFromTsId("TS_1").clone()
    models.completeLandmarkModel(model)  # as tomo hands models to imod's viewer
    ts = model.getTiltSeries()
    assert ts.hasAlignment() and bool(model.applyTSTransformation())
    shown = tmp_path / "shown.mrcs"
    ts.applyTransform(str(shown), ignoreExcludedViews=True)  # the viewer's own call
    with mrcfile.open(str(shown)) as mrc:
        transformed = mrc.data.astype(np.float64)
    with mrcfile.open(ts.getFirstItem().getFileName()) as mrc:
        raw = mrc.data.astype(np.float64)
    frame = imodmodel.read(model.getModelName())
    contours = int(frame["contour_id"].max()) + 1
    points = np.full((contours, raw.shape[0], 2), np.nan)
    for row in frame.itertuples():
        points[int(row.contour_id), int(round(row.z))] = (row.y - 0.5, row.x - 0.5)
    models.close()
    on_shown = _patch_agreement(transformed, points)
    on_raw = _patch_agreement(raw, points)  # what the old flag (False) opened
    assert on_shown > 0.6 and on_shown > on_raw + 0.3, (on_shown, on_raw)  # 0.79 vs 0.01
