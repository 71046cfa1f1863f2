"""Client API to instrument any Python solver, in the spirit of Melissa's init / send / finalize.

    from onlinetrain import client
    with client.init() as sim:             # channel, sim id, params from OT_* env (set by ot simulate)
        for step, field in my_solver(sim.params):
            sim.send(step, field, name="T")          # one frame per time step, no file written
            sim.send(step, p, name="p", meta={"t": 0.1 * step})   # a second field, with metadata
    # leaving the block sends the end-of-simulation frame (SIM_END with the counts of what was
    # sent: per field, steps and pieces per step); an exception sends a failure (SIM_FAILED)

An MPI solver sends each rank's piece of the field and lets one rank announce the totals:

    sim.send(step, u_local, name="T", global_shape=(n, n), offset=(row0, 0))
    ...
    if rank == 0: sim.finalize(counts={"T": (steps, nranks)})   # after a barrier (see docs)
    else: sim.close()                                           # no SIM_END from the others

Environment read by `init()` when arguments are omitted: OT_CHANNEL (URL), OT_SIM_ID (int),
OT_PARAMS (JSON list of floats), OT_CONNECT_TIMEOUT (seconds, default 30), OT_PROGRESS (a file
the launcher watches so that it can kill a simulation that shows no sign of life for
`simulation_timeout` seconds: bytes 0..19 hold a space-padded ASCII decimal counter that `send` and
`heartbeat` change, at most every 50 ms; byte 20 is "E" once SIM_END was sent; see
docs/wire-format.md).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

import numpy as np

from . import frame as fr
from .channel import open_producer
from .errors import OTError

log = logging.getLogger(__name__)
ENV_CHANNEL, ENV_SIM_ID, ENV_PARAMS, ENV_TIMEOUT = "OT_CHANNEL", "OT_SIM_ID", "OT_PARAMS", \
    "OT_CONNECT_TIMEOUT"
ENV_PROGRESS = "OT_PROGRESS"


class ClientError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def _reason(text: str) -> str:
    """`text` cut to fit a frame's name (255 bytes of UTF-8)."""
    return text.encode("utf-8")[:fr.MAX_NAME].decode("utf-8", "ignore") or "-"


def _env(key: str, given):
    if given is not None:
        return given
    if key not in os.environ:
        raise ClientError(f"{key} is not set: pass it explicitly or run under `ot simulate`", key)
    return os.environ[key]


def _meta_bytes(meta) -> bytes:
    if meta is None:
        return b""
    if isinstance(meta, (bytes, bytearray, memoryview)):
        return bytes(meta)
    if isinstance(meta, str):
        return meta.encode("utf-8")
    try:
        return json.dumps(meta, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ClientError(f"metadata {meta!r} is not JSON-serialisable: {e}; pass bytes, a str or "
                          f"plain dicts/lists/numbers", meta) from None


class Simulation:
    """One simulation's connection to the trainer (one per process: each MPI rank has its own)."""

    def __init__(self, producer, sim_id: int, params: Sequence[float]):
        self.producer, self.sim_id = producer, int(sim_id)
        self.params = np.asarray(params, dtype=np.float64)
        self.sent = 0
        self.closed = False
        self._pieces: dict[str, dict[int, set]] = {}  # field -> step -> offsets sent
        self._beats = 0
        self._pfd, self._pt = None, 0.0
        path = os.environ.get(ENV_PROGRESS)
        if path:
            try:
                self._pfd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            except OSError as e:
                log.warning("cannot report progress to %s (%s): the worker may time this "
                            "simulation out", path, e)

    def _progress(self, force: bool = False):
        """Tell the watching launcher this process is alive (20 ASCII digits at offset 0)."""
        now = time.monotonic()
        if self._pfd is not None and (force or now - self._pt >= 0.05):
            os.pwrite(self._pfd, b"%20d" % (self.sent + self._beats), 0)
            self._pt = now

    def send(self, time_step: int, array: np.ndarray, name: str = "field", *,
             global_shape: Sequence[int] | None = None, offset: Sequence[int] | None = None,
             meta=None) -> None:
        """Send field `name` at `time_step`: the whole field, or (with `global_shape` and `offset`)
        this process's piece of it; `meta` (dict, str or bytes) travels with it as JSON bytes."""
        gs = None if global_shape is None else tuple(int(v) for v in global_shape)
        off = None if offset is None else tuple(int(v) for v in offset)
        self.producer.put(fr.Frame(self.sim_id, int(time_step), self.params, name, np.asarray(array),
                                   fr.DATA, gs, off, _meta_bytes(meta)))
        self._pieces.setdefault(name, {}).setdefault(int(time_step), set()).add(off)
        self.sent += 1
        self._progress()

    def heartbeat(self) -> None:
        """Show the launcher this simulation is alive while it sends nothing (a long solve)."""
        self._beats += 1
        self._progress()

    def counts(self) -> dict[str, tuple[int, int]]:
        """What this process sent: {field: (distinct steps, most distinct pieces in one step)}."""
        return {k: (len(v), max(map(len, v.values()))) for k, v in self._pieces.items()}

    def finalize(self, error: str | None = None, counts: dict | None = None) -> None:
        """Tell the trainer this simulation is complete (SIM_END announcing `counts`, by default
        what this process sent) or failed with `error` (SIM_FAILED), then close. In a multi-process
        solver one process calls this with the totals of all, the others call `close()`."""
        if self.closed:
            return
        try:
            if error is None:
                f = fr.sim_end(self.sim_id, self.counts() if counts is None else counts,
                               self.params)
            else:
                f = fr.Frame(self.sim_id, self.sent, self.params, _reason(error), kind=fr.SIM_FAILED)
            self.producer.put(f, timeout=30)
            if error is None and self._pfd is not None:
                os.pwrite(self._pfd, b"E", 20)  # the launcher: this simulation sent its SIM_END
        finally:
            self.close()

    def close(self) -> None:
        """Close without announcing anything (the ranks that do not send SIM_END)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.producer.close()
        finally:
            if self._pfd is not None:
                self._progress(force=True)
                os.close(self._pfd)
                self._pfd = None

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        self.finalize(None if etype is None else f"{etype.__name__}: {exc}")


def sim_end_sent(progress_path: str) -> bool:
    """True once the simulation reporting to this OT_PROGRESS file sent its SIM_END (byte 20)."""
    try:
        with open(progress_path, "rb") as fh:
            return fh.read(21)[20:] == b"E"
    except OSError:
        return False


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
