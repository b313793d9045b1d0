"""A private, single-node SLURM cluster on loopback, for tests.

``running_slurm(folder)`` starts munge, ``slurmctld`` and ``slurmd`` (Debian's
slurm-wlm and munge, installed by ``make test``) with every file they write
(key, sockets, state, spool, logs) inside ``folder`` and on free TCP ports, so
that several test runs on one machine do not meet. It sets ``SLURM_CONF`` in
this process's environment, so ``sbatch``/``squeue``/``scancel`` run by this
process (and by Scipion from it) talk to this cluster, and it stops the daemons
and restores the environment on exit, also when the body raised.

``SlurmCluster.hosts_conf()`` gives a Scipion ``hosts.conf`` with a queue
section that submits protocols to this cluster; write it and pass it to
``Manager().createProject(name, hostsConf=path)``.

The module is not a pytest plugin: a test module wraps ``running_slurm`` in its
own fixture (see ``tests/scipion/test_slurm_queue.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Programs the cluster needs, all from Debian's ``slurm-wlm`` and ``munge``.
REQUIRED_PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "squeue",
                     "scontrol", "scancel", "sinfo")

#: Node name, given to ``slurmd -N``: the machine's own host name is not used.
NODE_NAME = "localhost"

#: The one partition, also the default queue of the hosts.conf.
PARTITION = "debug"


def _which(name: str) -> str | None:
    """Full path of a program, searching the PATH and then ``/usr/sbin``, ``/sbin``.

    The daemons live in ``/usr/sbin``, which a non-root PATH may lack.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def missing_programs() -> list[str]:
    """Names of the programs in `REQUIRED_PROGRAMS` that cannot be found."""
    return [name for name in REQUIRED_PROGRAMS if _which(name) is None]


def require_slurm() -> None:
    """Fail the calling test, naming the fix, when SLURM or munge is not installed.

    A missing queue is a broken test machine, not a reason to skip: ``make
    test`` installs the packages (``scripts/install-system-deps.sh``).
    """
    missing = missing_programs()
    if missing:
        pytest.fail(
            f"SLURM test needs {', '.join(missing)} (Debian packages slurm-wlm and munge), "
            "not found on PATH or in /usr/sbin. Install them with "
            "`bash scripts/install-system-deps.sh` (run by `make test`) or "
            "`apt-get install slurm-wlm munge`.",
            pytrace=False,
        )


def _free_tcp_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file, or a note that it is missing."""
    if not path.exists():
        return f"  ({path} not written)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("  " + line for line in text)


@dataclass
class SlurmCluster:
    """One slurmctld + one slurmd (node `NODE_NAME`, partition `PARTITION`).

    Attributes
    ----------
    root
        Folder holding the configuration, state, spool and logs.
    cpus
        CPUs the node declares. More than the machine has is fine
        (``SlurmdParameters=config_overrides``): a job asking for more CPUs
        than the node declares would stay pending forever.
    """

    root: Path
    cpus: int = 8
    memory_mb: int = 4000
    _processes: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _munge_dir: Path | None = field(default=None, repr=False)
    _saved_slurm_conf: str | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        """The ``slurm.conf`` of this cluster (the value of ``SLURM_CONF``)."""
        return self.root / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def controller_log(self) -> Path:
        """slurmctld's log: one ``sched: Allocate JobId=...`` line per started job."""
        return self.log_dir / "slurmctld.log"

    # ------------------------------------------------------------------ setup
    def _write_config(self) -> None:
        assert self._munge_dir is not None
        ctld_port, slurmd_port = _free_tcp_ports(2)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf_path.write_text(f"""\
# Written by tests/slurm.py: a private single-node cluster on loopback.
ClusterName=tiltxcorrtest
SlurmctldHost={NODE_NAME}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self._munge_dir / 'munge.socket.2'}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={self.controller_log}
SlurmdLogFile={self.log_dir / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out = open(self.log_dir / f"{name}.stdout", "wb")  # noqa: SIM115 (closed with the process)
        argv = [_which(argv[0]) or argv[0], *argv[1:]]
        self._processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        out.close()  # the child holds its own descriptor

    def _start_munge(self) -> None:
        # munged wants execute permission for all on every folder above its
        # socket (pytest's and mkdtemp's folders are 0700), and a socket path
        # short enough for sockaddr_un: its own folder directly under /tmp.
        munge_dir = Path(tempfile.mkdtemp(prefix="tiltxcorr-munge-", dir="/tmp"))
        munge_dir.chmod(0o711)
        self._munge_dir = munge_dir
        key = munge_dir / "munge.key"
        subprocess.run([_which("mungekey") or "mungekey", "--create", f"--keyfile={key}"], check=True,
                       capture_output=True, timeout=30)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("munged", [
            "munged", "--foreground", f"--key-file={key}",
            f"--socket={munge_dir / 'munge.socket.2'}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ], dict(os.environ))
        self._wait_for(lambda: (munge_dir / "munge.socket.2").exists(), 10, "munged socket")

    def _wait_for(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self._processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} while waiting "
                                       f"for {what}.\n{self.diagnostics()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}.\n"
                           f"{self.diagnostics()}")

    def _node_state(self) -> str:
        result = self.run(["sinfo", "-h", "-n", NODE_NAME, "-o", "%T"], check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def start(self, timeout_s: float = 30.0) -> None:
        """Start munged, slurmctld (``-c``: no jobs restored) and slurmd; wait for an idle node.

        Raises
        ------
        RuntimeError
            A daemon exited or the node did not become idle in `timeout_s`;
            the message holds the ends of the daemons' logs.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_config()
        self._saved_slurm_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf_path)
        env = dict(os.environ)
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf_path)], env)
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf_path), "-N", NODE_NAME], env)
        self._wait_for(lambda: self._node_state() == "idle", timeout_s, "an idle SLURM node")

    # -------------------------------------------------------------- queries
    def run(self, argv: list[str], check: bool = True,
            timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``squeue``, ``scontrol``...) against this cluster."""
        env = dict(os.environ, SLURM_CONF=str(self.conf_path))
        argv = [_which(argv[0]) or argv[0], *argv[1:]]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check,
                              timeout=timeout_s)

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``ExitCode``, ``NumCPUs``...).

        Finished jobs stay known for ``MinJobAge`` (600 s here). Empty if unknown.
        """
        result = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if result.returncode != 0:
            return {}
        info = {}
        for token in result.stdout.split():
            key, sep, value = token.partition("=")
            if sep:
                info.setdefault(key, value)
        return info

    def wait_for_job(self, job_id: int | str, timeout_s: float = 60.0) -> dict[str, str]:
        """Poll `job_info` until the job has left the queue; return its last info.

        A protocol writes "finished" to its database a moment before its
        process (the job) exits, so a test that saw the protocol finish waits
        here for the job to be COMPLETED (or FAILED, CANCELLED...).

        Raises
        ------
        TimeoutError
            The job is still pending or running after `timeout_s`.
        """
        active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"}
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.job_info(job_id)
            if info.get("JobState") not in active:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM job {job_id} still {info.get('JobState')} after "
                                   f"{timeout_s:.0f} s.\n{self.diagnostics()}")
            time.sleep(0.2)

    def hosts_conf(self, host: str = "localhost") -> str:
        """A Scipion ``hosts.conf`` whose host `host` submits protocols to this cluster.

        ``%_(...)`` are Scipion's placeholders; ``cd $SLURM_SUBMIT_DIR`` runs
        the protocol in the folder Scipion submitted from (the project), and
        ``--export=ALL`` hands the job the submitting environment (the
        ``SCIPION_*`` variables and ``SLURM_CONF``).
        """
        return slurm_hosts_conf(host=host, partition=PARTITION)

    def write_hosts_conf(self, path: Path, host: str = "localhost") -> Path:
        """Write `hosts_conf` to `path` and return it."""
        path.write_text(self.hosts_conf(host))
        return path

    def diagnostics(self) -> str:
        """The ends of every daemon's log, for failure messages."""
        parts = [f"SLURM_CONF={self.conf_path}"]
        for log in sorted(self.log_dir.glob("*")) if self.log_dir.exists() else []:
            parts.append(f"--- {log.name}\n{_tail(log)}")
        return "\n".join(parts)

    # ------------------------------------------------------------- shutdown
    def stop(self, timeout_s: float = 15.0) -> None:
        """Cancel this cluster's jobs, stop the daemons, restore ``SLURM_CONF``.

        Only the processes this object started are signalled, by their pid.
        Safe to call twice and after a failed `start`.
        """
        try:
            slurm_up = any(self._processes.get(name) is not None
                           and self._processes[name].poll() is None
                           for name in ("slurmctld", "slurmd"))
            if slurm_up:
                self.run(["scancel", "--user", str(os.getuid())], check=False)
                self.run(["scontrol", "shutdown"], check=False)
            deadline = time.monotonic() + timeout_s
            for name in ("slurmd", "slurmctld", "munged"):
                proc = self._processes.get(name)
                if proc is None:
                    continue
                if name == "munged" and proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=5)
            self._processes.clear()
        finally:
            if self._saved_slurm_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = self._saved_slurm_conf
            self._saved_slurm_conf = None
            if self._munge_dir is not None:
                shutil.rmtree(self._munge_dir, ignore_errors=True)
                self._munge_dir = None


def slurm_hosts_conf(host: str = "localhost", partition: str = "debug") -> str:
    """Text of a Scipion ``hosts.conf`` with a SLURM queue section for `host`.

    The same text is the README's example for SLURM users; `partition` is the
    queue offered (``QUEUES``) and used by default.
    """
    return f"""\
[{host}]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s
NAME = SLURM
MANDATORY = 0
SUBMIT_PREFIX = scipion
SUBMIT_COMMAND = sbatch %_(JOB_SCRIPT)s
CANCEL_COMMAND = scancel %_(JOB_ID)s
CHECK_COMMAND = squeue -h -j %_(JOB_ID)s
SUBMIT_TEMPLATE = #!/bin/bash
    #SBATCH --job-name=scipion%_(JOB_NAME)s
    #SBATCH --output=%_(JOB_LOGS)s.out
    #SBATCH --error=%_(JOB_LOGS)s.err
    #SBATCH --partition=%_(JOB_QUEUE)s
    #SBATCH --ntasks=%_(JOB_NODES)d
    #SBATCH --cpus-per-task=%_(JOB_THREADS)d
    #SBATCH --time=%_(JOB_TIME)s:00:00
    #SBATCH --export=ALL
    cd $SLURM_SUBMIT_DIR
    %_(JOB_COMMAND)s
QUEUES = {{"{partition}": [["JOB_TIME", "1", "Time (hours)", "Wall-clock limit of the job, in hours"]]}}
QUEUES_DEFAULT = {{"JOB_TIME": "1"}}
"""


@contextmanager
def running_slurm(root: Path, cpus: int = 8, timeout_s: float = 30.0) -> Iterator[SlurmCluster]:
    """Start a `SlurmCluster` in `root`, yield it, stop it (also on errors).

    Fails the calling test (see `require_slurm`) when the programs are missing.
    """
    require_slurm()
    cluster = SlurmCluster(root=Path(root), cpus=cpus)
    try:
        cluster.start(timeout_s=timeout_s)
        yield cluster
    finally:
        cluster.stop()
