"""A one-node SLURM cluster for the tests (importable as `slurm_cluster`): Debian's slurm-wlm and
munge, started as root on this host with every file in a temporary folder, stopped after.

slurmctld and slurmd run on the local host name (reached at 127.0.0.1) on two free ports, with
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, ``SelectType=select/cons_tres``
(what works in a container without cgroups), and munge on a socket and key of its own, so
nothing of the host's own SLURM or munge (if any) is touched. scripts/test.sh installs the
packages where it runs as root with apt; elsewhere ``why_not()`` says why the tests skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def why_not() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root (scripts/test.sh runs as root in CI)"
    missing = [p for p in PROGRAMS if shutil.which(p) is None
               and not Path("/usr/sbin", p).is_file()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found): `apt-get install slurm-wlm munge` as root "
                "(scripts/test.sh does so where it can)")
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running one-node cluster; ``env`` is what a process needs to reach it (SLURM_CONF)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_program(args[0]), *args[1:]], capture_output=True, text=True, env=self.env,
                              timeout=60, check=check)

    def jobs(self, job: str) -> list[str]:
        """The array tasks of ``job`` still in the queue (pending or running), as ``ID STATE`` lines."""
        done = self.run("squeue", "-h", "-j", job, "-o", "%i %T", check=False)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def wait(self, job: str, timeout: float) -> None:
        """Until ``job`` has left the queue; TimeoutError (with the queue) after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while self.jobs(job):
            if time.monotonic() > end:
                raise TimeoutError(f"job {job} still queued after {timeout} s: {self.jobs(job)}")
            time.sleep(1)


def _write_conf(root: Path, host: str) -> None:
    cpus = os.cpu_count() or 1
    lines = [
        "ClusterName=vaelabtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root}/munge/munge.sock",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "MpiDefault=none", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "JobRequeue=1",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        # Tasks share the CPUs (OverSubscribe): a 4-task array runs at once on a 2-core machine.
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8",
    ]
    (root / "slurm.conf").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd with every file under ``root``; stop them on exit."""
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    _write_conf(root, host)
    cluster = Cluster(root)
    pids = [root / "munge" / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        subprocess.run([_program("munged"), "--force", f"--key-file={key}", f"--socket={root}/munge/munge.sock",
                        f"--pid-file={pids[0]}", f"--log-file={root}/munge/munged.log",
                        f"--seed-file={root}/munge/munge.seed"], check=True, capture_output=True, timeout=30)
        subprocess.run([_program("slurmctld"), "-f", str(cluster.conf)], check=True, capture_output=True,
                       env=cluster.env, timeout=30)
        subprocess.run([_program("slurmd"), "-f", str(cluster.conf), "-N", host], check=True, capture_output=True,
                       env=cluster.env, timeout=30)
        end = time.monotonic() + 60
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout:
            if time.monotonic() > end:
                log = (root / "slurmctld.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the test cluster did not come up in 60 s; slurmctld.log ends:\n{log}")
            time.sleep(0.5)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--partition=debug", check=False)
        for pid_file in reversed(pids):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        time.sleep(1)
