"""ProtTiltxcorrReconstruct in a real project, and the alignment protocols' preview tomogram.

One project (module fixture): gold beads at known 3-D positions, projected into
small tilt series (21 views of 96 px, tilt axis 85 degrees).

- TS_a is imported and coarsely aligned (preview on, the default): its preview
  tomogram, the reprojection check and the viewer's slices are checked; then it is
  reconstructed from the coarse alignment.
- TS_x and TS_bad carry transforms registered from an IMOD ``.xf`` as
  scipion-em-imod's fiducial alignment registers them (tiltalign-style: the tilt axis
  turned onto Y, the true shifts), one view of TS_x garbage and disabled; TS_bad's
  stack is truncated. They are reconstructed at binning 2.

The registered tomograms are read back by tomo (sampling rate, origin, acquisition,
tsId), their MRC voxel size checked, and each bead found where the orientation of
``docs/reconstruction.md`` puts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipion_helpers import (
    continue_protocol,
    corrupt_file,
    create_project,
    derive_tilt_series_set,
    feed_stream,
    import_tilt_series,
    launch_and_wait,
    new_prealignment,
    output_stream_state,
    read_log,
    read_tilt_series_set,
    reload_protocol,
    reopen_for_streaming,
    wait_with_producer,
    write_stack,
    write_tlt,
)

from tiltxcorr_scipion import constants as cts
from tiltxcorr_scipion.convert.imod import write_xf
from tiltxcorr_scipion.convert.transforms import compose_transforms, shifts_to_transforms
from tiltxcorr_scipion.simulate_volume import simulate_volume_series

AXIS = 85.0
SHAPE = (96, 96)
N_VIEWS = 21
PIXEL = 2.0
THICKNESS = 40
#: Bead centres (x across the axis, y along it, z the height), px from the tilt axis at the
#: view centre; mean height about 0 (the coarse alignment puts the axis at the beads' mass).
BEADS = np.array([(20, -15, 10), (-18, 10, -10), (5, 25, 0), (-25, -22, 8), (0, 0, -6),
                  (28, 20, -4), (-8, -30, 12), (12, 8, -10)], dtype=float)
#: Which way the specimen's height runs along the tomogram's Z (docs/reconstruction.md).
Z_SIGN = 1.0
GARBAGE_VIEW = 5  # 1-based stack position of TS_x's disabled, garbage view


def _simulate(seed: int):
    return simulate_volume_series(shape=SHAPE, n_views=N_VIEWS, tilt_axis_angle=AXIS,
                                  specimen="beads", contrast="stem", bead_positions=BEADS,
                                  noise=0.3, seed=seed)


def _write(folder: Path, ts_id: str, sim) -> None:
    write_stack(folder / f"{ts_id}.mrc", sim.views.numpy(), PIXEL)
    write_tlt(folder / f"{ts_id}.tlt", sim.tilt_angles.numpy())


def tiltalign_transforms(sim) -> np.ndarray:
    """`(n, 3, 3)` the true alignment as tiltalign writes it: shift, then the axis onto Y."""
    turn = np.radians(AXIS)
    onto_y = np.eye(3)
    onto_y[:2, :2] = [[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]
    shifts = shifts_to_transforms(sim.shifts.numpy().astype(float))
    return compose_transforms(np.broadcast_to(onto_y, shifts.shape).copy(), shifts)


def register_xf_like_imod(xf_by_ts: dict[str, Path], disabled: dict[str, list[int]]):
    """An edit callback registering `.xf` lines as scipion-em-imod's fiducial alignment does.

    `createOutTs` (protocol_base_ts_align.py): the `.xf` holds one line per *enabled*
    view in stack order (`readXfFile`: `A11 A12 A21 A22 DX DY`); enabled tilt images
    take the next line, disabled ones keep their transform or the identity.
    """
    from pwem.objects import Transform

    def edit(ts_id: str, items: list) -> None:
        lines = np.loadtxt(xf_by_ts[ts_id], dtype=float, comments="#", ndmin=2)
        stack_index = 0
        for ti in sorted(items, key=lambda t: t.getIndex()):
            if ti.getIndex() in disabled.get(ts_id, ()):
                ti.setEnabled(False)
            if ti.isEnabled():
                a11, a12, a21, a22, dx, dy = lines[stack_index]
                matrix = np.array([[a11, a12, dx], [a21, a22, dy], [0.0, 0.0, 1.0]])
                stack_index += 1
            else:
                matrix = np.eye(3)
            ti.setTransform(Transform(matrix=matrix))

    return edit


def new_reconstruction(project, input_prot, output_name: str, **params):
    from tiltxcorr_scipion.protocols import ProtTiltxcorrReconstruct

    params.setdefault("objLabel", "tiltxcorr reconstruction")
    prot = project.newProtocol(ProtTiltxcorrReconstruct, **params)
    prot.inputSetOfTiltSeries.set(input_prot)
    prot.inputSetOfTiltSeries.setExtended(output_name)
    return prot


@dataclass
class Runs:
    """The module's project and its protocol runs."""

    project: object
    sims: dict
    imp_a: object  # TS_a imported
    coarse_data: Path  # TS_a's folder
    coarse: object  # coarse alignment of TS_a (preview)
    from_coarse: object  # reconstruction from it
    from_xf: object  # reconstruction of TS_x and TS_bad from their IMOD .xf


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    coarse_data = tmp_path_factory.mktemp("coarse")
    xf_data = tmp_path_factory.mktemp("xf")
    sims = {"TS_a": _simulate(1), "TS_x": _simulate(2), "TS_bad": _simulate(3)}
    _write(coarse_data, "TS_a", sims["TS_a"])
    for ts_id in ("TS_x", "TS_bad"):
        _write(xf_data, ts_id, sims[ts_id])
    project = create_project("reconstruct")
    imp_a = import_tilt_series(project, coarse_data, "*.mrc", tilt_axis_angle=AXIS,
                               sampling_rate=PIXEL)
    imp_x = import_tilt_series(project, xf_data, "*.mrc", tilt_axis_angle=AXIS,
                               sampling_rate=PIXEL)
    # after the import: the garbage view of TS_x, the truncated stack of TS_bad
    with mrcfile.open(xf_data / "TS_x.mrc", mode="r+") as mrc:
        mrc.data[GARBAGE_VIEW - 1] = np.nan
    corrupt_file(xf_data / "TS_bad.mrc", "truncate")
    disabled = {"TS_x": [GARBAGE_VIEW]}
    xf_files = {}
    for ts_id in ("TS_x", "TS_bad"):
        keep = [i for i in range(N_VIEWS) if i + 1 not in disabled.get(ts_id, ())]
        xf_files[ts_id] = xf_data / f"{ts_id}.xf"
        write_xf(str(xf_files[ts_id]), tiltalign_transforms(sims[ts_id])[keep])
    xf_set = derive_tilt_series_set(project, imp_x, register_xf_like_imod(xf_files, disabled),
                                    output_name="xfTiltSeries")

    # the preview 48 px thick: the beads span 24 px in height, and the coarse alignment puts
    # the tilt axis at their mass, not at their mid-height (the engine's default, a quarter
    # of the width, would cut the highest beads off and inflate the high tilts' residuals)
    coarse = launch_and_wait(project, new_prealignment(project, imp_a, numberOfThreads=2,
                                                       previewThickness=48))
    from_coarse = launch_and_wait(project, new_reconstruction(
        project, coarse, cts.OUTPUT_TILT_SERIES, thickness=THICKNESS, numberOfThreads=2))
    from_xf = launch_and_wait(project, new_reconstruction(
        project, imp_x, xf_set, thickness=THICKNESS, binning=2, numberOfThreads=3))
    return Runs(project, sims, imp_a, coarse_data, coarse, from_coarse, from_xf)


# --------------------------------------------------------------------------- helpers
def read_tomograms(project, prot) -> dict:
    """The registered Tomograms as tomo reads them back: {tsId: dict of what it says}."""
    reload_protocol(project, prot)
    tomograms = getattr(prot, cts.OUTPUT_TOMOGRAMS)
    found = {}
    for tomogram in tomograms.iterItems():
        acquisition = tomogram.getAcquisition()
        found[tomogram.getTsId()] = dict(
            path=str(Path(project.getPath(), tomogram.getFileName())),
            sampling=tomogram.getSamplingRate(), dim=tomogram.getDim(),
            origin=tomogram.getOrigin(force=True).getShifts(),
            axis=acquisition.getTiltAxisAngle() if acquisition is not None else None,
            angle_max=acquisition.getAngleMax() if acquisition is not None else None)
    found["_set"] = dict(sampling=tomograms.getSamplingRate(), size=tomograms.getSize())
    tomograms.close()
    return found


def bead_offsets(volume: np.ndarray, binning: int, window: int = 4) -> np.ndarray:
    """`(n_beads, 3)` (z, y, x) from each bead's expected voxel to the brightest one near it.

    Expected voxel of a specimen point (x, y, z), the volume (nz, ny, nx) centred on the
    tilt axis: z index = centre + Z_SIGN z, y = centre + y (along the axis), x = centre + x.
    """
    centre = (np.array(volume.shape, dtype=float) - 1) / 2
    offsets = []
    for x, y, z in BEADS:
        expected = centre + np.array([Z_SIGN * z, y, x]) / binning
        low = np.maximum(np.round(expected).astype(int) - window, 0)
        block = volume[low[0]:low[0] + 2 * window + 1, low[1]:low[1] + 2 * window + 1,
                       low[2]:low[2] + 2 * window + 1]
        peak = np.array(np.unravel_index(int(np.argmax(block)), block.shape)) + low
        offsets.append(peak - expected)
    return np.array(offsets)


# --------------------------------------------------------------------------- tests
def test_tomograms_are_registered_as_tomo_expects(runs):
    project, from_coarse, from_xf = runs.project, runs.from_coarse, runs.from_xf
    for prot, ts_ids, binning in ((from_coarse, ["TS_a"], 1), (from_xf, ["TS_x"], 2)):
        found = read_tomograms(project, prot)
        assert found.pop("_set") == dict(sampling=PIXEL * binning, size=len(ts_ids))
        assert sorted(found) == ts_ids
        for ts_id, tomogram in found.items():
            nx, ny, nz = tomogram["dim"]
            assert (nz, ny, nx) == (THICKNESS // binning, SHAPE[0] // binning,
                                    SHAPE[1] // binning)
            assert tomogram["sampling"] == pytest.approx(PIXEL * binning)
            # tomo's default origin: the volume's centre, in angstroms
            np.testing.assert_allclose(tomogram["origin"],
                                       [-nx / 2 * PIXEL * binning, -ny / 2 * PIXEL * binning,
                                        -nz / 2 * PIXEL * binning])
            assert tomogram["axis"] == pytest.approx(AXIS)  # the acquisition, copied
            assert tomogram["angle_max"] == pytest.approx(60.0)
            assert Path(tomogram["path"]).name == f"{ts_id}.mrc"
            with mrcfile.open(tomogram["path"], permissive=False) as mrc:
                assert float(mrc.voxel_size.x) == pytest.approx(PIXEL * binning)
                assert float(mrc.voxel_size.z) == pytest.approx(PIXEL * binning)
                assert mrc.data.shape == (nz, ny, nx) and np.isfinite(mrc.data).all()
        assert output_stream_state(project, prot, cts.OUTPUT_TOMOGRAMS) == "closed"


def test_beads_are_where_the_orientation_puts_them(runs):
    """From the true (IMOD .xf) alignment: each bead within a voxel of its place."""
    project, from_xf = runs.project, runs.from_xf
    with mrcfile.open(read_tomograms(project, from_xf)["TS_x"]["path"]) as mrc:
        volume = np.asarray(mrc.data, dtype=np.float32)
    offsets = bead_offsets(volume, binning=2)
    assert np.abs(offsets).max() <= 1.0, offsets
    # and not in the mirrored volume: flipping Z moves the beads off their places
    mirrored = bead_offsets(volume[::-1], binning=2)
    assert np.abs(mirrored).max() > 2.0, mirrored


def test_coarse_alignment_reconstructs_the_beads_sharp(runs):
    """From our coarse alignment: every bead in place up to one common 3-D translation
    (no tilt series fixes the specimen's position), the same pattern as the truth's."""
    project, from_coarse = runs.project, runs.from_coarse
    with mrcfile.open(read_tomograms(project, from_coarse)["TS_a"]["path"]) as mrc:
        volume = np.asarray(mrc.data, dtype=np.float32)
    offsets = bead_offsets(volume, binning=1)
    spread = offsets - np.median(offsets, axis=0)
    assert np.abs(spread).max() <= 1.5, offsets


def test_disabled_views_are_left_out_and_a_broken_tilt_series_fails_alone(runs):
    project, from_xf = runs.project, runs.from_xf
    failed = read_tilt_series_set(project, from_xf, cts.OUTPUT_FAILED_TILT_SERIES)
    assert sorted(failed) == ["TS_bad"]
    reasons = json.loads(reload_protocol(project, from_xf).failureReasons.get())
    assert set(reasons) == {"TS_bad"}
    assert reasons["TS_bad"].startswith("tilt series TS_bad:") and "truncated" in reasons["TS_bad"]
    assert output_stream_state(project, from_xf, cts.OUTPUT_FAILED_TILT_SERIES) == "closed"
    log = read_log(from_xf, n_chars=100_000)
    # TS_x's garbage (NaN) view is disabled: left out, the tomogram is finite (checked above)
    assert f"reconstructed from {N_VIEWS - 1}/{N_VIEWS} views" in log
    summary = " ".join(from_xf.summary())
    assert "Reconstructed tilt series: 1" in summary and "Failed tilt series: 1" in summary
    assert "Tomograms: 1, 4.00 A/voxel (binning 2)" in summary


def test_continue_after_finish_reconstructs_nothing_again(runs):
    project, from_xf = runs.project, runs.from_xf
    before = Path(read_tomograms(project, from_xf)["TS_x"]["path"]).stat().st_mtime_ns
    prot = continue_protocol(project, from_xf)
    assert "Continuing: 2 tilt series already in the outputs are skipped" in read_log(prot)
    found = read_tomograms(project, prot)
    assert found["_set"]["size"] == 1
    assert Path(found["TS_x"]["path"]).stat().st_mtime_ns == before


def test_an_open_input_is_followed_and_the_outputs_closed(runs):
    """Streaming: a tilt series appended while the protocol runs is reconstructed too."""
    project, imp_a, coarse_data = runs.project, runs.imp_a, runs.coarse_data
    stream = reopen_for_streaming(project, imp_a)
    template = stream.getFirstItem().clone()
    stream.close()
    prot = new_reconstruction(project, imp_a, "outputTiltSeries", thickness=THICKNESS,
                              binning=4, numberOfThreads=3)
    project.launchProtocol(prot, wait=False)
    thread, errors = feed_stream(project, stream, [dict(
        ts_id="TS_late", stack_path=coarse_data / "TS_a.mrc",
        tilt_angles=np.linspace(-60.0, 60.0, N_VIEWS), tilt_axis_angle=AXIS,
        sampling_rate=PIXEL, template=template)])
    prot = wait_with_producer(project, prot, thread, errors)
    assert prot.isFinished(), f"{prot.getStatus()}: {prot.getErrorMessage()}\n{read_log(prot)}"
    found = read_tomograms(project, prot)
    assert sorted(found) == ["TS_a", "TS_late", "_set"]
    assert found["_set"]["sampling"] == pytest.approx(4 * PIXEL)
    assert output_stream_state(project, prot, cts.OUTPUT_TOMOGRAMS) == "closed"
    log = read_log(prot, n_chars=100_000)
    assert f"Tilt series TS_late: {N_VIEWS} views, reconstruction step queued" in log
    # the raw import carries no alignment: the form warns
    assert any("carry no alignment" in w for w in prot._warnings())


def test_info_methods_and_citations(runs):
    from_coarse = runs.from_coarse
    assert "weighted back-projection" in " ".join(from_coarse.methods())
    assert from_coarse._citations() == [cts.CITE_MASTRONARDE_2017]


# --------------------------------------------------------------------------- the preview
def test_coarse_alignment_writes_a_preview_and_checks_every_view(runs):
    project, coarse = runs.project, runs.coarse
    coarse = reload_protocol(project, coarse)
    assert coarse.previewTomogram.get() is True  # the default
    extra = Path(project.getPath(), coarse._getExtraPath())
    with mrcfile.open(extra / "TS_a_preview.mrc") as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL)  # 96 px: no binning
        assert mrc.data.shape == (48, *SHAPE) and np.isfinite(mrc.data).all()
    record = coarse._previewResults()["TS_a"]
    assert record["path"] == coarse._getExtraPath("TS_a_preview.mrc") and record["binning"] == 1
    # the XY / XZ slices and the check are a third row of the plot: 800 x 950 px
    image = plt_image(extra / "TS_a_alignment.png")
    assert image.shape[:2] == (950, 800)
    # the residual of every enabled view is registered; well aligned, none flagged
    ts = read_tilt_series_set(project, coarse, cts.OUTPUT_TILT_SERIES)["TS_a"]
    residual = registered_reprojection(project, coarse, "TS_a")
    # (a view the check cannot compare is unchecked, NaN, and named: here the two ends of
    # the tilt range, whose oblique rays through 48 px of a 96 px wide tomogram all meet
    # voxels some view did not see)
    unchecked = ts.enabled & ~np.isfinite(residual)
    assert len(residual) == N_VIEWS and unchecked.sum() <= 2
    assert record["unchecked"] == [int(v) + 1 for v in np.flatnonzero(unchecked)]
    assert set(np.flatnonzero(unchecked)) <= {0, N_VIEWS - 1}  # the stack runs -60..60
    residual = np.where(unchecked, 0.0, residual)
    assert residual.max() < record["limit"] and record["flagged"] == []
    worst = int(np.argmax(residual))
    assert record["worstResidual"] == pytest.approx(residual[worst])
    summary = " ".join(coarse.summary())
    assert (f"TS_a: preview tomogram {record['path']} (binning 1); reprojection check: worst "
            f"view {record['worstView']} ({record['worstTilt']:+.1f} deg) "
            f"{residual[worst]:.2f} px, none above {record['limit']:g} px") in summary


def test_viewer_shows_the_preview_slices_and_the_check(runs):
    import pyworkflow as pw
    from pyworkflow.viewer import DESKTOP_TKINTER

    from tiltxcorr_scipion.viewers import TiltxcorrPrealignmentViewer
    from tiltxcorr_scipion.viewers.viewer_base import PreviewPlotter
    from tiltxcorr_scipion.viewers.viewer_prealignment import AlignmentPlotter

    project, coarse = runs.project, runs.coarse
    coarse = reload_protocol(project, coarse)
    assert TiltxcorrPrealignmentViewer in pw.Config.getDomain().findViewers(coarse,
                                                                            DESKTOP_TKINTER)
    viewer = TiltxcorrPrealignmentViewer(project=project, protocol=coarse)
    viewer.setProtocol(coarse)
    viewer.tiltSeriesChoice.set(0)
    (plot,) = viewer._showPreview()
    assert isinstance(plot, PreviewPlotter)
    images = [im.get_array().shape for axes in plot.getFigure().axes for im in axes.get_images()]
    with mrcfile.open(Path(project.getPath(), coarse._getExtraPath("TS_a_preview.mrc"))) as mrc:
        nz, ny, nx = mrc.data.shape
    assert images == [(ny, nx), (nz, nx)]  # XY, XZ
    check_axes = plot.getFigure().axes[2]
    plotted = np.concatenate([line.get_ydata() for line in check_axes.get_lines()[:1]])
    residual = registered_reprojection(project, coarse, "TS_a")
    np.testing.assert_allclose(np.sort(plotted), np.sort(residual[np.isfinite(residual)]))
    plot.close()
    (alignment,) = viewer._showAlignmentPlot()  # the alignment plot has the same row
    assert isinstance(alignment, AlignmentPlotter)
    assert len([im for a in alignment.getFigure().axes for im in a.get_images()]) == 2
    alignment.close()


def plt_image(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def registered_reprojection(project, prot, ts_id: str) -> np.ndarray:
    """`(n,)` the ``_tiltxcorrReprojection`` of each tilt image, stack order (NaN: unset)."""
    from tiltxcorr_scipion.viewers.viewer_base import registered_views

    reload_protocol(project, prot)
    output = getattr(prot, cts.OUTPUT_TILT_SERIES)
    ts = next(t for t in output.iterItems() if t.getTsId() == ts_id)
    views = registered_views(ts)
    output.close()
    return views["reprojection"]
