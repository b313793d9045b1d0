"""The protocol submitted to a real SLURM queue through Scipion's hosts.conf.

A private single-node SLURM (munge + slurmctld + slurmd on loopback, see
``tests/slurm.py``) is started for this module. A project is created with a
hosts.conf whose queue section submits to it; three simulated tilt series are
imported (locally), and the prealignment protocol is launched with
``_useQueue`` on: Scipion writes a job script, runs ``sbatch``, and the protocol
process runs as a SLURM job. The test checks that the registered output holds
the three tilt series with the simulated shifts, and that the run really went
through SLURM (job id recorded, job COMPLETED in slurmctld, the job's own
output file written).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipion_helpers import (
    import_tilt_series,
    launch_and_wait,
    new_prealignment,
    read_log,
    read_tilt_series_set,
    shift_errors_px,
    write_simulated_tilt_series,
)
from slurm import PARTITION, SlurmCluster, running_slurm

N_TILT_SERIES = 3
SHAPE = (128, 128)
N_VIEWS = 21
TILT_AXIS = 85.0
TOLERANCE_PX = 1.0
QUEUE_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """A running private SLURM cluster; stopped after the module, also on failure."""
    with running_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def queue_project(slurm_cluster: SlurmCluster, tmp_path: Path):
    """A new Scipion project whose hosts.conf submits to `slurm_cluster`.

    The working directory is the project folder (Scipion's paths are relative
    to it, and SLURM runs the job in the folder it was submitted from).
    """
    from pyworkflow.project import Manager

    hosts_conf = slurm_cluster.write_hosts_conf(tmp_path / "hosts.conf")
    cwd = os.getcwd()
    project = Manager().createProject(f"slurm_queue_{uuid.uuid4().hex[:8]}",
                                      hostsConf=str(hosts_conf))
    os.chdir(project.getPath())
    try:
        yield project
    finally:
        os.chdir(cwd)


def test_protocol_runs_through_slurm(slurm_cluster: SlurmCluster, queue_project,
                                     tmp_path: Path) -> None:
    project = queue_project
    data = tmp_path / "data"
    sims = {
        f"TS_{k:02d}": write_simulated_tilt_series(
            data, f"TS_{k:02d}", shape=SHAPE, n_views=N_VIEWS, tilt_axis_angle=TILT_AXIS,
            max_shift=8.0, thickness=10.0, noise=0.3, seed=100 + k)
        for k in range(1, N_TILT_SERIES + 1)
    }
    imported = import_tilt_series(project, data, "{TS}.mrc", tilt_axis_angle=TILT_AXIS)

    prot = new_prealignment(project, imported, numberOfThreads=2)
    prot._useQueue.set(True)
    prot.setQueueParams((PARTITION, {"JOB_TIME": "1"}))
    project.saveProtocol(prot)
    prot = launch_and_wait(project, prot, timeout=QUEUE_TIMEOUT_S)

    # It went through SLURM: a job id instead of a pid, known to slurmctld as
    # completed, with the CPUs the protocol asked for, and its output file written.
    job_ids = [int(j) for j in prot.getJobIds()]
    assert len(job_ids) == 1, f"expected one SLURM job id on the protocol, got {job_ids}"
    assert not prot.getPid(), f"a queued protocol has no local pid, got {prot.getPid()}"
    job = slurm_cluster.wait_for_job(job_ids[0], timeout_s=30)
    assert job.get("JobState") == "COMPLETED", (
        f"SLURM job {job_ids[0]}: {job}\n{slurm_cluster.diagnostics()}")
    assert job.get("ExitCode") == "0:0", job
    assert job.get("Partition") == PARTITION, job
    assert int(job.get("NumCPUs", 0)) >= 2, job
    allocated = f"Allocate JobId={job_ids[0]} "
    assert allocated in slurm_cluster.controller_log.read_text(), (
        f"slurmctld never allocated job {job_ids[0]}")
    job_out = Path(job["StdOut"])
    assert job_out.exists(), f"the SLURM job's output file {job_out} was not written"
    assert job_out.is_relative_to(Path(project.getPath()).resolve()), job_out

    # The registered output: three aligned tilt series with the simulated shifts.
    records = read_tilt_series_set(project, prot, "TiltSeries")
    assert sorted(records) == sorted(sims), (
        f"output tilt series {sorted(records)}, expected {sorted(sims)}\n{read_log(prot)}")
    for ts_id, record in records.items():
        assert record.has_alignment, f"{ts_id}: output not flagged as aligned"
        assert record.size == N_VIEWS, f"{ts_id}: {record.size} views registered"
        errors = shift_errors_px(record, sims[ts_id])
        worst = float(np.abs(errors).max())
        assert worst < TOLERANCE_PX, (
            f"{ts_id}: largest shift error {worst:.2f} px (limit {TOLERANCE_PX} px)")
