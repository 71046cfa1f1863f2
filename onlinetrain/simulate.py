"""Run an ensemble of simulations, K at a time, each streaming its time steps to a channel.

Every simulation is a child process in its own process group (so it can be killed cleanly):
`python -m onlinetrain.simrun` for the heat2d solver and for user generators, or the user's own
program (an argv template) instrumented with `onlinetrain.client`. Both find their channel,
simulation id and parameters in OT_CHANNEL, OT_SIM_ID and OT_PARAMS.

    result = run_simulations(sets, cfg.solver, "shm://demo", concurrency=2)
    result.done, result.failed   # ids, {id: reason}

A simulation that exits non-zero or sends nothing for `simulation_timeout` seconds is killed
and restarted up to `max_restarts` times (docs/fault-tolerance.md); one that still fails is reported
to the trainer with a SIM_FAILED frame, so the trainer never waits for data that will not come. At
the end one STREAM_END frame tells the trainer this producer is finished (not in study mode, where
the ledger says when the study is over: `source=study.LedgerSource(...)`).
"""
from __future__ import annotations

from .errors import OTError

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import frame as fr
from .channel import open_producer
from .client import ENV_PROGRESS, sim_end_sent
from .procs import describe_exit, spawn, terminate, wait_any

log = logging.getLogger(__name__)


class SimulateError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass
class SimResult:
    done: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    restarts: int = 0
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
                                         "scheme": solver.scheme, "function": solver.function,
                                         "length": solver.length, "dt": solver.dt,
                                         "stride": solver.stride,
                                         "param_order": solver.param_order})})
    # children must import this very onlinetrain (and solvers/) even when it is not installed
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def _notify(producer, kind: int, sim_id: int, reason: str = ""):
    producer.put(fr.Frame(sim_id, 0, np.zeros(0), reason[:200] or "-", np.zeros(0, np.float32),
                          kind), timeout=30)


class ListSource:
    """Parameter sets from a list (the pipe: `ot sample | ot simulate`); restarts counted here."""

    def __init__(self, sets: list[dict], max_restarts: int = 0):
        self.pending = list(reversed(sets))
        self.max_restarts = max_restarts
        self.crashes: dict[int, int] = {}

    def claim(self):
        return self.pending.pop() if self.pending else None

    def done(self, sid: int):
        pass

    def crashed(self, sid: int, reason: str) -> str:
        self.crashes[sid] = self.crashes.get(sid, 0) + 1
        return "restart" if self.crashes[sid] <= self.max_restarts else "failed"

    def finished(self) -> bool:
        return not self.pending

    def close(self):
        pass


class _Run:
    """One running simulation: its process group and when it last made progress."""

    def __init__(self, sid, params, proc, progress_path):
        self.sid, self.params, self.proc, self.progress_path = sid, params, proc, progress_path
        self.sent, self.last_change = -1, time.monotonic()

    def poll_progress(self) -> int:
        try:
            with open(self.progress_path, "rb") as fh:
                sent = int(fh.read(20) or b"-1")
        except (OSError, ValueError):
            sent = -1
        if sent != self.sent:
            self.sent, self.last_change = sent, time.monotonic()
        return sent


def run_simulations(sets: list[dict] | None, solver, url: str, concurrency: int = 1,
                    connect_timeout: float = 30.0, stop_event: threading.Event | None = None,
                    send_stream_end: bool = True, on_exit=None, max_restarts: int = 0,
                    simulation_timeout: float = 0.0, source=None, poll: float = 0.2) -> SimResult:
    """Run every parameter set in `sets` ({"id", "params"}), at most `concurrency` at once.

    A simulation that exits non-zero, or whose progress file (client.ENV_PROGRESS) does not change
    for `simulation_timeout` seconds (0: never), is killed (process group) and restarted, up to
    `max_restarts` times, then reported failed. `source` (e.g. study.LedgerSource) replaces `sets`
    as the supplier of work and the judge of restarts."""
    t0 = time.monotonic()
    res = SimResult()
    source = source if source is not None else ListSource(sets or [], max_restarts)
    running: dict[int, _Run] = {}
    progress_dir = tempfile.mkdtemp(prefix="ot-progress-")
    producer = open_producer(url, timeout=connect_timeout)  # also checks the channel exists

    def start(sid, params):
        argv = build_argv(solver, sid, params, url)
        env = child_env(solver, sid, params, url, connect_timeout)
        path = os.path.join(progress_dir, f"sim{sid}")
        with open(path, "wb"):
            pass
        env[ENV_PROGRESS] = path
        try:
            running[sid] = _Run(sid, params, spawn(argv, env=env), path)
        except OSError as e:
            crashed(sid, params, f"could not start {argv[0]!r}: {e}")

    def crashed(sid, params, reason):
        verdict = source.crashed(sid, reason)
        log.warning("simulation %d: %s (%s)", sid, reason,
                    {"restart": "restarting", "failed": "giving up"}.get(verdict, "reclaimed"))
        if verdict == "restart":
            res.restarts += 1
            start(sid, params)
        elif verdict == "failed":
            res.failed[sid] = reason
            # a child killed by a signal could not say so itself
            _notify(producer, fr.SIM_FAILED, sid, reason)

    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                raise KeyboardInterrupt
            while len(running) < concurrency:
                s = source.claim()
                if s is None:
                    break
                start(s["id"], s["params"])
            if not running:
                if source.finished():
                    break
                time.sleep(poll)
                continue
            for sid in wait_any({k: r.proc for k, r in running.items()}, poll):
                r = running.pop(sid)
                code = r.proc.wait()
                if code == 0 and sim_end_sent(r.progress_path):
                    source.done(sid)
                    res.done.append(sid)
                elif code == 0:  # its data cannot be checked complete without the SIM_END counts
                    crashed(sid, r.params, "exited with status 0 but sent no SIM_END (end it with "
                                           "client finalize / ot_finalize)")
                else:
                    crashed(sid, r.params, describe_exit(code))
                if on_exit:
                    on_exit(sid, code)
            if simulation_timeout > 0:
                for sid, r in list(running.items()):
                    r.poll_progress()
                    if time.monotonic() - r.last_change > simulation_timeout:
                        del running[sid]
                        terminate(r.proc, grace=2.0)
                        crashed(sid, r.params, f"no frame for {simulation_timeout:g} s "
                                               f"(simulate.simulation_timeout)")
        if send_stream_end:
            _notify(producer, fr.STREAM_END, -1, "stream end")
    finally:
        for r in running.values():
            terminate(r.proc)
        source.close()
        producer.close()
        shutil.rmtree(progress_dir, ignore_errors=True)
        res.wall_s = time.monotonic() - t0
    return res
