"""Built-in example: align a simulated tilt series in a new Scipion project.

    python -m tiltxcorr_scipion.demo [--folder tiltxcorr-demo]

Creates (or reuses) a local folder with its own Scipion configuration, writes a
simulated tilt series with known shifts (MRC stack + IMOD .tlt), imports it
with scipion-em-tomo's import protocol, runs ``ProtTiltxcorrPrealignment`` on
it (with its default preview tomogram), and prints the per-view shifts and
correlation scores read back from the project database, next to the simulated
truth, and where the preview tomogram and its XY / XZ slices are. Nothing is
written outside the folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# pyworkflow reads its settings when first imported, and importing this package
# imports it: the demo sets them, then runs itself again in a fresh interpreter.
_CONFIGURED = "TILTXCORR_DEMO_FOLDER"


def scipion_environment(folder: Path) -> dict[str, str]:
    """Headless, self-contained Scipion settings for a demo folder."""
    env = dict(os.environ)
    env.update({
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": str(folder / "scipion-home"),
        "SCIPION_USER_DATA": str(folder / "user-data"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_NOTIFY": "False",
        "MPLCONFIGDIR": str(folder / "matplotlib"),
        "MPLBACKEND": env.get("MPLBACKEND", "Agg"),
        _CONFIGURED: str(folder),
    })
    for name in ("SCIPION_HOME", "SCIPION_USER_DATA", "MPLCONFIGDIR"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    return env


def write_hosts_conf() -> None:
    import pyworkflow as pw
    from pyworkflow.protocol import HostConfig

    hosts = Path(pw.Config.SCIPION_HOSTS)
    hosts.parent.mkdir(parents=True, exist_ok=True)
    if not hosts.exists():
        HostConfig.writeBasic(str(hosts))


def run_until_done(project, prot, timeout_s: float):
    """Launch ``prot`` and poll its status; stop it if it outlives ``timeout_s``."""
    project.launchProtocol(prot, wait=False)
    deadline = time.monotonic() + timeout_s
    while True:
        project._updateProtocol(prot)
        if not prot.isActive():
            return prot
        if time.monotonic() > deadline:
            project.stopProtocol(prot)
            raise SystemExit(f"{prot.getRunName()} did not finish within {timeout_s:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="tiltxcorr-demo",
                        help="where the Scipion configuration, data and project go "
                             "(default: ./tiltxcorr-demo)")
    parser.add_argument("--views", type=int, default=41, help="number of views (default 41)")
    parser.add_argument("--size", type=int, default=512, help="view size in pixels (default 512)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for each protocol (default 600)")
    args = parser.parse_args(argv)

    folder = Path(args.folder).resolve()
    if os.environ.get(_CONFIGURED) != str(folder):
        argv = sys.argv[1:] if argv is None else argv
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "tiltxcorr_scipion.demo", *argv],
                  scipion_environment(folder))
    write_hosts_conf()

    import mrcfile
    import numpy as np
    from pyworkflow.project import Manager
    from tomo.protocols import ProtImportTs

    import tiltxcorr_scipion  # noqa: F401  (installs the sqlite fix in this process)
    from tiltxcorr_scipion.protocols import ProtTiltxcorrPrealignment
    from tiltxcorr_scipion.protocols.protocol_base import preview_line
    from tiltxcorr_scipion.simulate import simulate_tilt_series

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    print(f"simulating a {args.views}-view {args.size} px tilt series in {data}")
    sim = simulate_tilt_series(shape=(args.size, args.size), n_views=args.views,
                               tilt_axis_angle=85.0, max_shift=20.0, thickness=10.0,
                               noise=1.0, seed=2026)
    with mrcfile.new(str(data / "TS_demo.mrc"), overwrite=True) as mrc:
        mrc.set_data(sim.images.numpy())
        mrc.voxel_size = 2.0
    (data / "TS_demo.tlt").write_text("".join(f"{a:.2f}\n" for a in sim.tilt_angles.tolist()))

    name = time.strftime("tiltxcorr_demo_%Y%m%d_%H%M%S")
    project = Manager().createProject(name)
    os.chdir(project.getPath())  # the project database stores relative paths
    print(f"project: {project.getPath()}")

    importer = project.newProtocol(
        ProtImportTs, objLabel="import simulated tilt series", filesPath=str(data),
        filesPattern="{TS}.mrc", anglesFrom=2, voltage=300.0, magnification=50000,
        samplingRate=2.0, tiltAxisAngle=85.0, dosePerFrame=3.0)
    importer = run_until_done(project, importer, args.timeout)
    if not importer.isFinished():
        raise SystemExit(f"import failed; see {importer.getLogPaths()[0]}")

    align = project.newProtocol(ProtTiltxcorrPrealignment, objLabel="tiltxcorr prealignment")
    align.inputSetOfTiltSeries.set(importer)
    align.inputSetOfTiltSeries.setExtended(ProtImportTs.OUTPUT_NAME)
    started = time.monotonic()
    align = run_until_done(project, align, args.timeout)
    elapsed = time.monotonic() - started
    if not align.isFinished():
        raise SystemExit(f"alignment failed; see {align.getLogPaths()[0]}")

    output = align.TiltSeries
    ts = output.getFirstItem()
    rows = []
    for ti in ts.iterItems(orderBy="_index"):
        matrix = ti.getTransform().getMatrix()
        score = getattr(ti, "_tiltxcorrCorrelation", None)
        value = score.get() if score is not None else None
        # IMOD forward transform [[A11 A12 DX], [A21 A22 DY], [0 0 1]]
        rows.append((ti.getIndex(), ti.getTiltAngle(), matrix[0, 2], matrix[1, 2],
                     float("nan") if value is None else value))
    output.close()

    print(f"\n{ts.getTsId()}: per-view shifts (pixels) registered in the project, "
          "and the simulated truth")
    print(" view   tilt      dx      dy   true dx  true dy   correlation")
    truth = sim.shifts.numpy()
    errors = []
    for index, tilt, dx, dy, score in rows:
        true_dy, true_dx = truth[index - 1]
        errors.append((dx - true_dx, dy - true_dy))
        print(f"{index:5d} {tilt:6.1f} {dx:7.2f} {dy:7.2f} {true_dx:8.2f} {true_dy:8.2f}"
              f"   {'reference' if np.isnan(score) else f'{score:.3f}'}")
    error = np.asarray(errors)
    rms = float(np.sqrt((error ** 2).sum(axis=1).mean()))
    print(f"\nRMS error against the simulated truth: {rms:.3f} px; protocol run {elapsed:.1f} s")
    print(f"project folder: {project.getPath()}")
    print(f"plots and IMOD files: {os.path.abspath(align._getExtraPath())}")
    for ts_id, record in sorted(align._previewResults().items()):
        plot = os.path.abspath(align._getExtraPath(f"{ts_id}_alignment.png"))
        print(f"preview tomogram: {os.path.abspath(record['path'])}")
        print(f"preview slices (XY, XZ) and reprojection check: {plot}")
        print(f"{ts_id}: {preview_line(record)}")
    print(f"open it in the Scipion GUI: SCIPION_USER_DATA={os.environ['SCIPION_USER_DATA']} "
          f"scipion3 project {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
