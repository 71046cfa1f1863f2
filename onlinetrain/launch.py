"""Launching simulations and the trainer: the launcher interface, the local process-group launcher,
and what every launcher shares (CPU shares, attaching to the trainer's channel).

A launcher starts one attempt of one simulation and hands back a handle the engine
(simulate.run_simulations: the one restart / timeout / redraw loop) polls:

    launcher = ProcessLauncher(ntasks=2)                 # local: `mpiexec -n 2 ARGV` when ntasks > 1
    h = launcher.start(sid=3, attempt=0, argv=[...], env=env)
    launcher.refresh([h])                                 # once per engine loop (sbatch: one squeue)
    h.poll()        # None while it runs, else (ok, why): ok is True for exit status 0
    h.running()     # False while it waits in a queue (its timeout clock does not run)
    h.stop()        # TERM, grace, KILL its process group / scancel its job
    h.where         # "pid 4242", "srun pid 77", "job 1234": recorded in the ledger

Three implementations: ProcessLauncher (a local process group, `ot run` and `ot simulate`), and in
onlinetrain/slurm_launch.py SrunLauncher (a job step) and SbatchLauncher (a job of its own).

    threads = cpu_share(concurrency=2, trainer_threads=1)   # max(1, (cores - 1) // 2)
    env = thread_env(env, threads)                           # OMP/OPENBLAS/MKL_NUM_THREADS
    prod = attach_trainer(url, trainer_proc, timeout=90)     # wait for the trainer's channel
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from .channel import open_producer
from .errors import ChannelError, OTError
from .procs import describe_exit, spawn, terminate

log = logging.getLogger(__name__)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class LaunchError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


class Handle(Protocol):
    where: str

    def poll(self) -> tuple[bool, str] | None: ...

    def running(self) -> bool: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    poll_s: float  # how long the engine waits between looks

    def start(self, sid: int, attempt: int, argv: list[str], env: dict) -> Handle: ...

    def refresh(self, handles: list) -> None: ...


def log_tail(path, n: int = 200) -> str:
    """The last line a program wrote to its log (launcher noise such as srun: lines skipped)."""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except (FileNotFoundError, TypeError):
        return ""
    own = [ln for ln in lines if not ln.startswith(("srun:", "slurmstepd:"))]
    return (own or lines)[-1][-n:] if lines else ""


class ProcessHandle:
    """A child process group (the program, `mpiexec`, or `srun` running it)."""

    def __init__(self, proc: subprocess.Popen, where: str, log_path=None):
        self.proc, self.where, self.log_path = proc, where, log_path

    def poll(self):
        code = self.proc.poll()
        if code is None:
            return None
        why = describe_exit(code)
        tail = log_tail(self.log_path) if code else ""
        return code == 0, f"{why}: {tail}" if tail else why

    def running(self) -> bool:
        return True

    def stop(self):
        terminate(self.proc, grace=2.0)


def mpiexec() -> str:
    """The mpiexec next to this Python (the mpich wheel puts it there), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise LaunchError("simulate.ntasks > 1 needs mpiexec: `pip install mpich` (or load your "
                          "MPI) so that mpiexec is on PATH", "mpiexec")
    return found


class ProcessLauncher:
    """Each simulation is a local process group: the program itself, or `mpiexec -n NTASKS
    program` when ntasks > 1. `prefix(sid, ntasks)`, when given, wraps the argv instead (srun)."""
    poll_s = 0.2

    def __init__(self, ntasks: int = 1, log_dir=None, prefix=None):
        self.ntasks, self.log_dir, self.prefix = ntasks, log_dir, prefix

    def wrap(self, sid: int, argv: list[str]) -> list[str]:
        if self.prefix is not None:
            return self.prefix(sid, argv)
        return [mpiexec(), "-n", str(self.ntasks), *argv] if self.ntasks > 1 else list(argv)

    def start(self, sid: int, attempt: int, argv: list[str], env: dict) -> ProcessHandle:
        full = self.wrap(sid, argv)
        if self.log_dir is None:
            p = spawn(full, env=env)
            return ProcessHandle(p, f"pid {p.pid}")
        path = Path(self.log_dir) / f"sim-{sid}-a{attempt}.log"
        with open(path, "wb") as fh:
            p = spawn(full, env=env, stdout=fh, stderr=subprocess.STDOUT)
        return ProcessHandle(p, f"{Path(full[0]).name} pid {p.pid}", path)

    def refresh(self, handles: list):
        pass


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm or cgroup CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_share(concurrency: int, trainer_threads: int | None = 0, cores: int | None = None) -> int:
    """CPUs of one simulation when `concurrency` of them share this node with a trainer using
    `trainer_threads` (None: 1): max(1, (usable cores - trainer threads) // concurrency)."""
    cores = usable_cores() if cores is None else cores
    trainer = 1 if trainer_threads is None else trainer_threads
    return max(1, (cores - trainer) // max(1, concurrency))


def thread_env(env: dict, threads: int | None) -> dict:
    """Set OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS to `threads` in `env`
    (in place, and returned), each unless the user set it already; None leaves env alone."""
    if threads is not None:
        for k in THREAD_VARS:
            env.setdefault(k, str(int(threads)))
    return env


def attach_trainer(url: str, proc, timeout: float, log_path=None, **kw):
    """A producer on the trainer's channel `url`, waiting up to `timeout` s while `proc` (the
    trainer, a Popen) lives. None when the trainer exited with status 0 before it was reached."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_producer(url, timeout=1.0, **kw)
        except ChannelError as e:  # not there yet, still being created, an old ring going away
            if proc.poll() == 0:  # resumed with nothing left to do: it finished
                return None
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the trainer never opened {url} ({describe_exit(proc.poll())}"
                                  f"; last: {e}; see {log_path})", url) from None
            time.sleep(0.1)


def consumer_gone(producer) -> bool:
    """True when the trainer behind `producer` has closed its channel or died (shm rings say so;
    other transports: False, their producer finds out on its next put)."""
    check = getattr(producer, "_check_consumer", None)
    if check is None or getattr(producer, "seg", None) is None:
        return False
    try:
        check()
    except ChannelError:
        return True
    return False


def token_env(url: str, study_dir) -> dict:
    """OT_TOKEN_FILE for the producers of a tcp:// study (its `secret.token`, which the trainer
    creates), unless the user points it elsewhere; {} for other channels."""
    from .auth import ENV_TOKEN_FILE, token_path  # noqa: PLC0415
    if not url.startswith("tcp://") or os.environ.get(ENV_TOKEN_FILE):
        return {}
    return {ENV_TOKEN_FILE: str(Path(study_dir).resolve() / token_path(".").name)}


def _user(uid: int) -> str:
    import pwd  # noqa: PLC0415
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def study_channel(cfg, env=None) -> str:
    """The study's channel: channel.url when the config sets it, else a ring per user, and per
    Slurm job where there is one: shm://<output.name>-<user>[-j<SLURM_JOB_ID>] (/dev/shm/ot_...),
    so two users (or two jobs of one user) on a node never share a name."""
    if cfg.channel.url:
        return cfg.channel.url
    env = os.environ if env is None else env
    user = re.sub(r"[^A-Za-z0-9_.-]", "_", _user(os.getuid()))
    job = env.get("SLURM_JOB_ID", "")
    return f"shm://{cfg.output.name}-{user}" + (f"-j{job}" if job.isdigit() else "")


def ring_holder(name: str) -> tuple[str, int | None] | None:
    """(user, pid or None) of another user's process holding ring `name`, else None."""
    import psutil  # noqa: PLC0415

    from .shm_segment import segment_path  # noqa: PLC0415
    path = segment_path(name)
    try:
        uid = os.stat(path).st_uid
    except FileNotFoundError:
        return None
    if uid == os.getuid():
        return None
    pid = None
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid and \
                    any(m.path == path for m in p.memory_maps(grouped=True)):
                pid = p.pid
                break
        except psutil.Error:
            continue
    return _user(uid), pid


def check_ring_free(url: str):
    """Before creating the study's ring: one held by another user is an error at once, naming
    that user (and pid where it can be seen), instead of a wait for a ring that is not ours."""
    from .channel import parse_url  # noqa: PLC0415
    from .errors import ChannelInUse  # noqa: PLC0415
    u = parse_url(url)
    if u.scheme != "shm":
        return
    held = ring_holder(u.name)
    if held is not None:
        user, pid = held
        who = f"user {user}" + (f", pid {pid}" if pid else "")
        raise ChannelInUse(f"channel {url} belongs to {who}: pick another output.name or "
                           f"channel.url (by default rings are named per user)", u.name)
