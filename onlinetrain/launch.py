"""Launching simulations and the trainer: the launcher interface and what every launcher shares.

    prod = attach_trainer(url, trainer_proc, timeout=90)   # wait for the trainer's channel

(See docs/slurm.md and docs/fault-tolerance.md.)
"""
from __future__ import annotations

import logging
import time

from .channel import open_producer
from .errors import ChannelError, OTError
from .procs import describe_exit

log = logging.getLogger(__name__)


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
