"""The one simulation engine: run an ensemble K at a time, each streaming its time steps to a
channel; restart, time out and redraw. `ot simulate`, `ot run`, `ot simulate --study` and the Slurm
driver all run it, each with its launcher (onlinetrain/launch.py: a local process group, an srun
step, an sbatch job) and its source of work (a list, or the study ledger).

Every simulation is `python -m onlinetrain.simrun` for the heat2d solver and for user generators,
or the user's own program (an argv template) instrumented with `onlinetrain.client`. Both find
their channel, simulation id, parameters and attempt in OT_CHANNEL, OT_SIM_ID, OT_PARAMS and
OT_ATTEMPT.

    result = run_simulations(sets, cfg.solver, "shm://demo", concurrency=2)
    result.done, result.failed   # ids, {id: reason}

A simulation that exits non-zero or sends nothing for `simulation_timeout` seconds is killed
and restarted up to `max_restarts` times (docs/fault-tolerance.md); one that still fails is reported
to the trainer with a SIM_FAILED frame, so the trainer never waits for data that will not come. At
the end one STREAM_END frame tells the trainer this producer is finished (not in study mode, where
the ledger says when the study is over: `source=study.LedgerSource(...)`).
"""
from __future__ import annotations

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
from .errors import OTError
from .launch import ProcessLauncher, consumer_gone, thread_env

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
    stopped: str | None = None  # why the engine stopped early (the trainer finished), or None


def build_argv(solver, sim_id: int, params, url: str, python: str | None = None) -> list[str]:
    """The child's argv: simrun for heat2d/python solvers (run by `python`, default this one), the
    filled-in template for programs."""
    if solver.kind != "program":
        return [python or sys.executable, "-m", "onlinetrain.simrun"]
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


def child_env(solver, sim_id: int, params, url: str, connect_timeout: float,
              threads: int | None = None) -> dict:
    """The child's environment: OT_* variables, PYTHONPATH, and its BLAS / OpenMP thread count
    (`threads`, its CPU share; launch.thread_env) unless the user set those variables."""
    env = thread_env(dict(os.environ), threads)
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

    def started(self, sid: int, attempt: int, where: str):
        pass

    def done(self, sid: int):
        pass

    def crashed(self, sid: int, reason: str) -> str:
        self.crashes[sid] = self.crashes.get(sid, 0) + 1
        return "restart" if self.crashes[sid] <= self.max_restarts else "failed"

    def ended(self):
        return None

    def finished(self) -> bool:
        return not self.pending

    def close(self, reason: str | None = None):
        pass


class _Run:
    """One running simulation: its launcher handle and when it last made progress."""

    def __init__(self, sid, params, attempt, handle, progress_path):
        self.sid, self.params, self.attempt, self.handle = sid, params, attempt, handle
        self.progress_path = progress_path
        self.sent, self.last_change = -1, time.monotonic()

    def poll_progress(self) -> int:
        try:
            with open(self.progress_path, "rb") as fh:
                sent = int(fh.read(20) or b"-1")
        except (OSError, ValueError):
            sent = -1
        if sent != self.sent or not self.handle.running():  # queued: the clock does not run
            self.sent, self.last_change = sent, time.monotonic()
        return sent


def run_simulations(sets: list[dict] | None, solver, url: str, concurrency: int = 1,
                    connect_timeout: float = 30.0, stop_event: threading.Event | None = None,
                    send_stream_end: bool = True, max_restarts: int = 0,
                    simulation_timeout: float = 0.0, source=None, poll: float | None = None,
                    threads: int | None = None, launcher=None, producer=None, until=None,
                    progress_dir=None, env_extra: dict | None = None,
                    python: str | None = None) -> SimResult:
    """Run every parameter set in `sets` ({"id", "params"}), at most `concurrency` at once.

    A simulation that exits non-zero, or whose progress file (client.ENV_PROGRESS) does not change
    for `simulation_timeout` seconds (0: never), is killed and restarted, up to `max_restarts`
    times, then reported failed. `threads`: each child's CPU share (its BLAS and OpenMP threads,
    unless the user set them; launch.cpu_share). `source` (e.g. study.LedgerSource) replaces
    `sets` as the supplier of work and the judge of restarts; `launcher` (default: local process
    groups) starts each attempt. `producer`: the channel to the trainer, when the caller holds it.
    `until()`: None while the engine should go on, else why it stops (e.g. the trainer exited);
    the engine also stops once the source says the study ended, or the trainer closed its
    channel: from then on nothing is started or restarted. What still runs is stopped and given
    back to the source (`source.close(reason)`)."""
    t0 = time.monotonic()
    res = SimResult()
    source = source if source is not None else ListSource(sets or [], max_restarts)
    launcher = launcher if launcher is not None else ProcessLauncher()
    poll = launcher.poll_s if poll is None else poll
    running: dict[int, _Run] = {}
    own_dir = progress_dir is None
    progress_dir = tempfile.mkdtemp(prefix="ot-progress-") if own_dir else str(progress_dir)
    os.makedirs(progress_dir, exist_ok=True)
    own_producer = producer is None
    if own_producer:
        token = {"token_file": env_extra["OT_TOKEN_FILE"]} if "OT_TOKEN_FILE" in (env_extra or {}) \
            else {}
        producer = open_producer(url, timeout=connect_timeout, **token)  # the channel exists?
    why_stop = None

    def start(sid, params, attempt):
        argv = build_argv(solver, sid, params, url, python)
        env = child_env(solver, sid, params, url, connect_timeout, threads)
        env.update(env_extra or {})
        env["OT_ATTEMPT"] = str(attempt)
        path = os.path.join(progress_dir, f"sim{sid}-a{attempt}")
        with open(path, "wb"):
            pass
        env[ENV_PROGRESS] = path
        try:
            h = launcher.start(sid, attempt, argv, env)
        except (OSError, OTError) as e:
            crashed(sid, params, attempt, f"could not start {argv[0]!r}: {e}")
            return
        running[sid] = _Run(sid, params, attempt, h, path)
        source.started(sid, attempt, h.where)

    def crashed(sid, params, attempt, reason):
        if stopping():  # the trainer is gone: nothing is restarted
            return
        verdict = source.crashed(sid, reason)
        log.warning("simulation %d: %s (%s)", sid, reason,
                    {"restart": "restarting", "failed": "giving up"}.get(verdict, "reclaimed"))
        if verdict == "restart":
            res.restarts += 1
            start(sid, params, attempt + 1)
        elif verdict == "failed":
            res.failed[sid] = reason
            # a child killed by a signal could not say so itself
            _notify(producer, fr.SIM_FAILED, sid, reason)

    def stopping():
        nonlocal why_stop
        if why_stop is None:
            why_stop = (until() if until is not None else None) or source.ended() or \
                ("the trainer closed its channel" if consumer_gone(producer) else None)
        return why_stop is not None

    try:
        while not stopping():
            if stop_event is not None and stop_event.is_set():
                raise KeyboardInterrupt
            while len(running) < concurrency:
                s = source.claim()
                if s is None:
                    break
                start(s["id"], s["params"], s.get("starts", 0))
            if not running:
                if source.finished():
                    break
                time.sleep(poll)
                continue
            for sid in _wait(launcher, running, poll):
                r = running.pop(sid)
                ok, why = r.handle.poll()
                if ok and sim_end_sent(r.progress_path):  # its own SIM_END carries the counts
                    source.done(sid)
                    res.done.append(sid)
                elif ok:  # its data cannot be checked complete without the SIM_END counts
                    crashed(sid, r.params, r.attempt, "exited with status 0 but sent no SIM_END "
                                                      "(end it with client finalize / ot_finalize)")
                else:
                    crashed(sid, r.params, r.attempt, why)
            if simulation_timeout > 0:
                for sid, r in list(running.items()):
                    r.poll_progress()
                    if time.monotonic() - r.last_change > simulation_timeout:
                        del running[sid]
                        r.handle.stop()
                        crashed(sid, r.params, r.attempt, f"no frame for {simulation_timeout:g} "
                                                          f"s (simulate.simulation_timeout)")
        if send_stream_end and why_stop is None:
            _notify(producer, fr.STREAM_END, -1, "stream end")
    finally:
        for r in running.values():
            r.handle.stop()
        source.close(why_stop)
        if own_producer:
            producer.close()
        if own_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
        res.wall_s = time.monotonic() - t0
    res.stopped = why_stop
    return res


def _wait(launcher, running: dict, timeout: float) -> list:
    """Ids of `running` simulations that ended, looking for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        launcher.refresh([r.handle for r in running.values()])
        done = [k for k, r in running.items() if r.handle.poll() is not None]
        left = deadline - time.monotonic()
        if done or left <= 0:
            return done
        time.sleep(min(0.01, left) if launcher.poll_s < 1 else left)
