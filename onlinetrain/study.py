"""Study glue around the ledger: a worker's heartbeat and work source, the trainer's end condition
and the re-queueing done before a trainer resumes (docs/fault-tolerance.md).

    source = LedgerSource(Ledger(d), cfg.simulate)        # for simulate.run_simulations
    LedgerSource(..., breeder=breed_study.breeder_for(cfg, d))   # Breed: polled before claims
    train(cfg, ..., finished=StudyDone(Ledger(d)))         # stop once every set has ended
    prepare_resume(Ledger(d), fully_received, 30.0)        # before `--resume`
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from .ledger import DONE, ENDED, HOST, Ledger, heartbeat_path, worker_id

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Rewrites workers/<host>-<pid>.json every `every` s: {"worker", "t", "running": [ids]}."""

    def __init__(self, study_dir, worker: str, every: float, running=None):
        super().__init__(name="ot-heartbeat", daemon=True)
        self.path = heartbeat_path(study_dir, worker)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.worker, self.every, self.running = worker, every, running or (lambda: {})
        self.stopped = threading.Event()
        self.beat()

    def beat(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"worker": self.worker, "host": HOST, "pid": os.getpid(),
                                   "t": round(time.time(), 3), "running": self.running()}))
        os.replace(tmp, self.path)

    def run(self):
        while not self.stopped.wait(self.every):
            try:
                self.beat()
            except OSError as e:  # a full or vanished file system must not kill the worker
                log.warning("heartbeat %s: %s", self.path, e)

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)
        try:
            self.path.unlink()
        except OSError:
            pass


class StudyDone:
    """Trainer end condition: every set is done, failed or stopped and every done set's SIM_END
    arrived (or the study was ended).
    Called with the Receiver; looks at the ledger at most once a second."""

    def __init__(self, ledger: Ledger, every: float = 1.0):
        self.ledger, self.every, self._t, self._last = ledger, every, 0.0, False

    def __call__(self, rx) -> bool:
        now = time.monotonic()
        if now - self._t < self.every:
            return self._last
        self._t = now
        snap = self.ledger.snapshot()
        self._last = bool(snap) and all(s["state"] in ENDED for s in snap.values()) and \
            (self.ledger.ended is not None or
             all(i in rx.sims_done for i, s in snap.items() if s["state"] == DONE))
        return self._last


def prepare_resume(ledger: Ledger, fully_received: set[int], worker_timeout: float) -> list[int]:
    """Before a resumed trainer starts: release sets of dead workers, and put back to pending
    the done sets whose data the trainer lost (not fully received in its checkpoint), and the
    sets stopped when the study ended (a resumed trainer may want more)."""
    ledger.reopen("the trainer resumes")
    ledger.reclaim(worker_timeout)
    snap = ledger.snapshot()
    lost = sorted(i for i, s in snap.items() if s["state"] == DONE and i not in fully_received)
    if lost:
        log.warning("re-running %d simulations whose data was lost with the trainer", len(lost))
        ledger.release(lost, "data lost with the trainer; re-run")
    return lost


class LedgerSource:
    """simulate.run_simulations' supplier of work in a study: claims from the ledger, records
    starts, done and crashes, heartbeats, and releases what it still runs when it stops.

        run_simulations(None, cfg.solver, url, k, source=LedgerSource(Ledger(d), cfg.simulate))
    """

    def __init__(self, ledger: Ledger, sim_cfg, redraw=None, worker: str | None = None,
                 poll: float = 1.0, max_restarts: int | None = None, breeder=None):
        self.ledger, self.cfg, self.redraw = ledger, sim_cfg, redraw
        self.breeder = breeder  # Breed (breed_study.StudyBreeder): polled before each claim
        self.max_restarts = sim_cfg.max_restarts if max_restarts is None else max_restarts
        self.worker = worker or worker_id()
        self.poll, self._next, self._next_end = poll, 0.0, 0.0
        self.mine: set[int] = set()
        self.stop_reason = f"worker {self.worker} stopped"
        self.hb = Heartbeat(ledger.dir, self.worker, max(0.2, sim_cfg.worker_timeout / 5),
                            lambda: sorted(self.mine))
        self.hb.start()

    def claim(self):
        now = time.monotonic()
        if now < self._next:
            return None
        if self.breeder is not None:  # a due resampling re-parameterises pending sets first
            self.breeder.poll()
        got = self.ledger.claim(self.worker, 1, self.cfg.worker_timeout)
        if not got:
            self._next = now + self.poll  # nothing pending: look again later
            return None
        self.mine.add(got[0]["id"])
        return got[0]

    def started(self, sid: int, attempt: int, where: str):
        self.ledger.started(sid, self.worker, attempt, where)

    def done(self, sid: int):
        self.ledger.done(sid, self.worker)
        self.mine.discard(sid)

    def crashed(self, sid: int, reason: str) -> str:
        v = self.ledger.crashed(sid, self.worker, reason, self.max_restarts,
                                self.cfg.crashes_before_redraw, self.redraw)
        if v != "restart":
            self.mine.discard(sid)
        return v

    def ended(self) -> str | None:
        """Why the study ended (its trainer finished), or None; looks at most once a second."""
        now = time.monotonic()
        if now >= self._next_end:
            self._next_end = now + self.poll
            self.ledger.is_ended()
        return self.ledger.ended

    def finished(self) -> bool:
        """Nothing pending and nothing running anywhere (a running set may still come back)."""
        return self.ledger.finished()

    def close(self, reason: str | None = None):
        if self.mine:
            self.ledger.release(sorted(self.mine), reason or self.stop_reason, self.worker)
            self.mine.clear()
        self.hb.stop()


def trainer_lock(study_dir):
    """Held by the one trainer of a study for its lifetime (released by the OS if it dies): a
    second trainer, e.g. `--resume` while the first still runs, is refused instead of competing."""
    from filelock import FileLock, Timeout  # noqa: PLC0415

    from .ledger import LedgerError  # noqa: PLC0415
    path = os.path.join(study_dir, "trainer.lock")
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LedgerError(f"another trainer is running on study {study_dir} (it holds {path}); "
                          f"stop it first, or resume only once it is dead", path) from None
    return lock
