"""Client API to instrument any Python solver, in the spirit of Melissa's init / send / finalize.

    from onlinetrain import client
    with client.init() as sim:             # channel, sim id, params from OT_* env (set by ot simulate)
        for step, field in my_solver(sim.params):
            sim.send(step, field)          # one frame per time step, no file written
    # leaving the block sends the end-of-simulation frame (finalize); an exception sends a failure

Environment read by `init()` when arguments are omitted: OT_CHANNEL (URL), OT_SIM_ID (int),
OT_PARAMS (JSON list of floats), OT_CONNECT_TIMEOUT (seconds, default 30), OT_PROGRESS (a file
the worker watches: `send` writes the number of steps sent into it, at most every 50 ms, so that
`ot simulate` can kill a simulation that sends nothing for simulation_timeout seconds).
"""
from __future__ import annotations

from .errors import OTError

import json
import logging
import os
import time
from typing import Sequence

import numpy as np

from . import frame as fr
from .channel import open_producer

log = logging.getLogger(__name__)
ENV_CHANNEL, ENV_SIM_ID, ENV_PARAMS, ENV_TIMEOUT = "OT_CHANNEL", "OT_SIM_ID", "OT_PARAMS", \
    "OT_CONNECT_TIMEOUT"
ENV_PROGRESS = "OT_PROGRESS"


class ClientError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def _env(key: str, given):
    if given is not None:
        return given
    if key not in os.environ:
        raise ClientError(f"{key} is not set: pass it explicitly or run under `ot simulate`", key)
    return os.environ[key]


class Simulation:
    """One simulation's connection to the trainer."""

    def __init__(self, producer, sim_id: int, params: Sequence[float]):
        self.producer, self.sim_id = producer, int(sim_id)
        self.params = np.asarray(params, dtype=np.float64)
        self.sent = 0
        self.closed = False
        self._pfd, self._pt = None, 0.0
        path = os.environ.get(ENV_PROGRESS)
        if path:
            try:
                self._pfd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            except OSError as e:
                log.warning("cannot report progress to %s (%s): the worker may time this "
                            "simulation out", path, e)

    def _progress(self, force: bool = False):
        """Tell the watching worker how many steps were sent (20 ASCII digits at offset 0)."""
        now = time.monotonic()
        if self._pfd is not None and (force or now - self._pt >= 0.05):
            os.pwrite(self._pfd, b"%20d" % self.sent, 0)
            self._pt = now

    def send(self, time_step: int, array: np.ndarray, name: str = "field") -> None:
        self.producer.put(fr.Frame(self.sim_id, int(time_step), self.params, name, np.asarray(array)))
        self.sent += 1
        self._progress()

    def finalize(self, error: str | None = None) -> None:
        """Tell the trainer this simulation is complete (or failed with `error`), then close."""
        if self.closed:
            return
        self.closed = True
        try:
            kind = fr.SIM_END if error is None else fr.SIM_FAILED
            name = "end" if error is None else error[:200]
            self.producer.put(fr.Frame(self.sim_id, self.sent, self.params, name,
                                       np.zeros(0, np.float32), kind), timeout=30)
        finally:
            self.producer.close()
            if self._pfd is not None:
                self._progress(force=True)
                os.close(self._pfd)
                self._pfd = None

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        self.finalize(None if etype is None else f"{etype.__name__}: {exc}")


def init(channel: str | None = None, sim_id: int | None = None,
         params: Sequence[float] | None = None, timeout: float | None = None) -> Simulation:
    url = _env(ENV_CHANNEL, channel)
    sid = int(_env(ENV_SIM_ID, sim_id))
    if params is None:
        raw = _env(ENV_PARAMS, None)
        try:
            params = [float(v) for v in json.loads(raw)]
        except (ValueError, TypeError) as e:
            raise ClientError(f"{ENV_PARAMS}={raw!r} is not a JSON list of numbers", raw) from e
    if timeout is None:
        timeout = float(os.environ.get(ENV_TIMEOUT, "30"))
    return Simulation(open_producer(url, timeout=timeout), sid, params)
