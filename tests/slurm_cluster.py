"""A real single-host Slurm cluster for the tests: munged (if none runs), slurmctld and two slurmd.

    cluster = SlurmCluster.start(Path("/tmp/ot-slurm-123"))   # raises if Slurm is not installed
    os.environ["SLURM_CONF"] = cluster.conf                    # every Slurm command needs it
    ...
    cluster.stop()                                             # slurmd, slurmctld, munged: by pid

Everything lives in its own state directory with its own (free) ports, so it does not clash with
another cluster on the machine. The two slurmd are two "nodes" on 127.0.0.1 (n1, n2): enough for
heterogeneous jobs, whose components Slurm places on different nodes. Settings that matter:
bf_interval=1 (only the backfill scheduler starts het jobs), cred_expire=5 (fast requeue),
jobcomp/filetxt (no slurmdbd), MinJobAge=300 (job records stay visible to squeue --states=all).
Install the packages with `make deps` (Debian: slurmctld slurmd slurm-client munge).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
MUNGE_PID = Path("/run/munge/munged.pid")


class ClusterError(RuntimeError):
    pass


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _read_pid(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            time.sleep(0.05)
    raise ClusterError(f"no pid file {path} after {timeout} s")


def _munge_ok() -> bool:
    return subprocess.run(["munge", "-n"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def slurm_conf(d: Path, host: str, ports: list[int], cpus: int) -> str:
    lines = [
        "ClusterName=ot", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "AuthInfo=cred_expire=5", "CredType=cred/munge",
        "MailProg=/bin/true", f"SlurmctldPort={ports[0]}",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool/%n",
        f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd-%n.pid",
        f"SlurmctldLogFile={d}/log/slurmctld.log", f"SlurmdLogFile={d}/log/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt", f"JobCompLoc={d}/log/jobcomp.txt",
        "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1,sched_interval=1",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "MpiDefault=none",
        "ReturnToService=2", "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0",
        "MinJobAge=300", "KillWait=5", "Waittime=0", "SlurmdParameters=config_overrides",
    ]
    for name, port in zip(NODES, ports[1:]):
        lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                     f"CPUs={cpus} RealMemory=1000 State=UNKNOWN")
    lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


class SlurmCluster:
    def __init__(self, d: Path):
        self.dir = d
        self.conf = str(d / "slurm.conf")
        self.pids: list[int] = []  # slurmd..., slurmctld (stop order)
        self.munged: int | None = None  # only when we started it

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": self.conf}

    @classmethod
    def start(cls, d: Path, cpus: int = 4, timeout: float = 60.0) -> "SlurmCluster":
        missing = [p for p in ("slurmctld", "slurmd", "sbatch", "munged")
                   if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
        if missing:
            raise ClusterError(f"Slurm is not installed (missing {', '.join(missing)}): run "
                               f"`make deps` (apt-get install slurmctld slurmd slurm-client munge)")
        self = cls(d)
        try:
            self._start(cpus, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, cpus: int, timeout: float):
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        (d / "slurm.conf").write_text(slurm_conf(d, host, _free_ports(1 + len(NODES)), cpus))
        if not _munge_ok():
            self._start_munged()
        env = self.env
        subprocess.run(["slurmctld"], env=env, check=True)
        pid_ctld = _read_pid(d / "slurmctld.pid")
        for n in NODES:
            subprocess.run(["slurmd", "-N", n], env=env, check=True)
            self.pids.append(_read_pid(d / f"slurmd-{n}.pid"))
        self.pids.append(pid_ctld)
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=10)
            states = " ".join(sorted(set(r.stdout.split())))
            if states == "idle":
                return
            time.sleep(0.2)
        raise ClusterError(f"nodes not idle after {timeout} s (sinfo: {states!r}); see {d}/log")

    def _start_munged(self):
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:
            key.write_bytes(os.urandom(1024))
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        MUNGE_PID.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        self.munged = _read_pid(MUNGE_PID)
        for _ in range(100):
            if _munge_ok():
                return
            time.sleep(0.1)
        raise ClusterError("munged started but `munge -n` keeps failing")

    def cancel_all(self, timeout: float = 30.0):
        """scancel every job of this cluster and wait until none is left (so no step outlives it)."""
        env = self.env
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(["squeue", "--noheader", "-o", "%i"], env=env, capture_output=True,
                               text=True, timeout=30)
            if r.returncode != 0 or not r.stdout.strip():
                return
            time.sleep(0.2)

    def stop(self):
        """Cancel all jobs; SIGTERM slurmd and slurmctld by pid, wait, SIGKILL; munged if ours."""
        if self.pids:
            try:
                self.cancel_all()
            except (OSError, subprocess.SubprocessError):
                pass
        for group in (self.pids, [self.munged] if self.munged else []):
            for pid in group:
                if _alive(pid):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in group) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in group:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self.pids, self.munged = [], None
