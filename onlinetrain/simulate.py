"""Run an ensemble of simulations, K at a time, each streaming its time steps to a channel.

Every simulation is a child process in its own process group (so it can be killed cleanly):
`python -m onlinetrain.simrun` for the heat2d solver and for user generators, or the user's own
program (an argv template) instrumented with `onlinetrain.client`. Both find their channel,
simulation id and parameters in OT_CHANNEL, OT_SIM_ID and OT_PARAMS.

    result = run_simulations(sets, cfg.solver, "shm://demo", concurrency=2)
    result.done, result.failed   # ids, {id: reason}

A simulation that exits non-zero is reported to the trainer with a SIM_FAILED frame (unless it did
so itself), so the trainer never waits for data that will not come. At the end one STREAM_END frame
tells the trainer this producer is finished.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import frame as fr
from .channel import open_producer
from .procs import describe_exit, spawn, terminate, wait_any

log = logging.getLogger(__name__)


class SimulateError(RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass
class SimResult:
    done: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    wall_s: float = 0.0


def build_argv(solver, sim_id: int, params, url: str) -> list[str]:
    """The child's argv: simrun for heat2d/python solvers, the filled-in template for programs."""
    if solver.kind != "program":
        return [sys.executable, "-m", "onlinetrain.simrun"]
    values = {"sim_id": str(sim_id), "channel": url, "params": " ".join(repr(float(p)) for p in params)}
    values.update({f"p{i}": repr(float(p)) for i, p in enumerate(params)})
    out = []
    for a in solver.argv:
        try:
            out.append(a.format(**values))
        except (KeyError, IndexError, ValueError) as e:
            raise SimulateError(f"solver.argv item {a!r}: unknown placeholder {e}; use {{sim_id}}, "
                                f"{{channel}}, {{params}}, {{p0}}..{{p{len(params) - 1}}}", a) from None
    return out


def child_env(solver, sim_id: int, params, url: str, connect_timeout: float) -> dict:
    env = dict(os.environ)
    env.update({"OT_CHANNEL": url, "OT_SIM_ID": str(sim_id), "OT_PARAMS": json.dumps(list(params)),
                "OT_CONNECT_TIMEOUT": str(connect_timeout),
                "OT_SOLVER": json.dumps({"kind": solver.kind, "n": solver.n, "steps": solver.steps,
                                         "scheme": solver.scheme, "function": solver.function})})
    # children must import this very onlinetrain (and solvers/) even when it is not installed
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def _notify(producer, kind: int, sim_id: int, reason: str = ""):
    producer.put(fr.Frame(sim_id, 0, np.zeros(0), reason[:200] or "-", np.zeros(0, np.float32),
                          kind), timeout=30)


def run_simulations(sets: list[dict], solver, url: str, concurrency: int = 1,
                    connect_timeout: float = 30.0, stop_event: threading.Event | None = None,
                    send_stream_end: bool = True, on_exit=None) -> SimResult:
    """Run every parameter set in `sets` ({"id", "params"}), at most `concurrency` at once."""
    t0 = time.monotonic()
    res = SimResult()
    pending = list(sets)
    pending.reverse()
    running: dict[int, object] = {}
    producer = open_producer(url, timeout=connect_timeout)  # also checks the channel exists
    try:
        while pending or running:
            if stop_event is not None and stop_event.is_set():
                raise KeyboardInterrupt
            while pending and len(running) < concurrency:
                s = pending.pop()
                sid, params = s["id"], s["params"]
                argv = build_argv(solver, sid, params, url)
                try:
                    running[sid] = spawn(argv, env=child_env(solver, sid, params, url,
                                                             connect_timeout))
                except OSError as e:
                    res.failed[sid] = f"could not start {argv[0]!r}: {e}"
                    _notify(producer, fr.SIM_FAILED, sid, res.failed[sid])
            for sid in wait_any(running, 0.2):
                code = running.pop(sid).wait()
                if code == 0:
                    res.done.append(sid)
                    _notify(producer, fr.SIM_END, sid, "end")  # in case the program did not
                else:
                    res.failed[sid] = describe_exit(code)
                    log.warning("simulation %d failed: %s", sid, res.failed[sid])
                    # a child killed by a signal could not say so itself
                    _notify(producer, fr.SIM_FAILED, sid, res.failed[sid])
                if on_exit:
                    on_exit(sid, code)
        if send_stream_end:
            _notify(producer, fr.STREAM_END, -1, "stream end")
    finally:
        for p in running.values():
            terminate(p)
        producer.close()
        res.wall_s = time.monotonic() - t0
    return res
