"""Launching simulations and the trainer: the launcher interface and what every launcher shares.

    prod = attach_trainer(url, trainer_proc, timeout=90)   # wait for the trainer's channel

(See docs/slurm.md and docs/fault-tolerance.md.)
"""
from __future__ import annotations

import logging
import os
import time

from .channel import open_producer
from .errors import ChannelError, OTError
from .procs import describe_exit

log = logging.getLogger(__name__)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class LaunchError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def attach_trainer(url: str, proc, timeout: float, log_path=None):
    """A producer on the trainer's channel `url`, waiting up to `timeout` s while `proc` (the
    trainer, a Popen) lives. None when the trainer exited with status 0 before it was reached."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_producer(url, timeout=1.0)
        except ChannelError as e:  # not there yet, still being created, an old ring going away
            if proc.poll() == 0:  # resumed with nothing left to do: it finished
                return None
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the trainer never opened {url} ({describe_exit(proc.poll())}"
                                  f"; last: {e}; see {log_path})", url) from None
            time.sleep(0.1)


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
