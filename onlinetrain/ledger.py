"""The study ledger: which parameter set is pending, running where, done, failed or stopped, and why;
the trainer's attempts and the study's Slurm jobs. The one study state of `ot run`, `ot simulate
--study` and `ot slurm` (schema: docs/ledger.md, version LEDGER_VERSION).

A study directory holds `ledger.jsonl`, an append-only log of events, one JSON object per line:

    {"ev": "ledger", "version": 3}                          first line (absent: version 1)
    {"ev": "add", "id": 3, "params": [...]}                 a parameter set joins the study
    {"ev": "claim", "id": 3, "worker": "node1:4242", ...}   a worker takes it
    {"ev": "start", "id": 3, "attempt": 0, "where": ...}    ... and starts it (a process, step, job)
    {"ev": "restart", "id": 3, "reason": "killed by SIGKILL"}  it crashed and is run again there
    {"ev": "done", "id": 3}  /  {"ev": "fail", "id": 3, "reason": ...}
    {"ev": "release", "id": 3, "reason": ...}               back to pending (worker gone, re-run)
    {"ev": "stop", "id": 3, "reason": ...}                  the trainer finished before it did
    {"ev": "end", "reason": ...} / {"ev": "reopen"}         the study is over / resumed after all
    {"ev": "trainer", "attempt": 0, "outcome": "started", ...}   the trainer's attempts
    {"ev": "job", "job": "1234", "role": "driver"}          a Slurm job of the study
    {"ev": "generation", "generation": 1, "state": {...}}   Breed: a resampling (breeder state)
    {"ev": "breed", "id": 9, "params": [...], "generation": 1, "parent": 3}  a pending set redrawn

Every read-modify-append happens under a `filelock` on `ledger.jsonl.lock`, so workers on any node
of a shared file system (see docs/fault-tolerance.md) claim safely; each line is written by a single
write() and fsync'ed. A half-written last line (a writer killed mid-write) is dropped with a warning
naming the file; a corrupt line anywhere else is a LedgerError naming the file and line.

    led = Ledger.create("study", sets)          # or Ledger("study") to open it
    [s] = led.claim(worker_id())                # {"id", "params", "attempts", "starts", ...}
    led.done(s["id"], worker_id())
    led.counts()                                # {"pending": .., "running": .., "done": .., ...}
    led.end("train.max_batches reached")        # the rest is stopped; nothing more is claimed

Workers write a heartbeat file `workers/<host>-<pid>.json` (study.Heartbeat; liveness tests in
workers.py); a running set whose worker is gone (same host: its pid is dead; other host: heartbeat
older than worker_timeout) is released by the next worker that looks (`reclaim`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import OTError
from .workers import (HOST, WORKERS, _pstart, heartbeat_path,  # noqa: F401 (re-exported)
                      read_heartbeat, worker_alive, worker_id)

log = logging.getLogger(__name__)
PENDING, RUNNING, DONE, FAILED, STOPPED = "pending", "running", "done", "failed", "stopped"
STATES = (PENDING, RUNNING, DONE, FAILED, STOPPED)
ENDED = (DONE, FAILED, STOPPED)
LEDGER_VERSION = 3
_EVENTS = ("add", "claim", "start", "restart", "done", "fail", "release", "stop", "breed")
_STUDY_EVENTS = ("ledger", "end", "reopen", "trainer", "job", "generation")
LEDGER = "ledger.jsonl"


class LedgerError(OTError, RuntimeError):
    def __init__(self, message: str, path=None, value=None):
        super().__init__(message)
        self.path, self.value = path, value


class Ledger:
    def __init__(self, study_dir, lock_timeout: float = 120.0):
        self.dir = Path(study_dir)
        self.path = self.dir / LEDGER
        if not self.path.exists():
            raise LedgerError(f"{self.path} not found: is {self.dir} a study directory? (`ot run "
                              f"CONFIG` creates one)", str(self.path))
        self.lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)
        self.state: dict[int, dict] = {}
        self.version = 1
        self.ended: str | None = None  # why the study ended (the trainer finished), or None
        self.trainer: list[dict] = []  # "trainer" events
        self.jobs: list[dict] = []  # "job" events
        self.generations: list[dict] = []  # "generation" events (Breed), oldest first
        self._off = 0
        self._lines = 0

    @classmethod
    def create(cls, study_dir, sets: list[dict]) -> "Ledger":
        """A new ledger holding `sets` ({"id", "params"}), all pending. Replaces an old one."""
        d = Path(study_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / WORKERS).mkdir(exist_ok=True)
        tmp = d / f"{LEDGER}.tmp{os.getpid()}"
        now = round(time.time(), 3)
        tmp.write_text(json.dumps({"ev": "ledger", "version": LEDGER_VERSION, "t": now}) + "\n" +
                       "".join(json.dumps({"ev": "add", "id": int(s["id"]),
                                           "params": [float(p) for p in s["params"]], "t": now})
                               + "\n" for s in sets))
        os.replace(tmp, d / LEDGER)
        return cls(d)

    # -- reading -------------------------------------------------------------------------------
    def _apply(self, e: dict, lineno: int):
        ev, sid = e.get("ev"), e.get("id")
        if ev in _STUDY_EVENTS:
            self._apply_study(ev, e)
            return
        if ev not in _EVENTS or not isinstance(sid, int):
            raise LedgerError(f"{self.path} line {lineno}: unknown event {e!r}; fix or delete "
                              f"that line", str(self.path), lineno)
        if ev == "add":
            self.state[sid] = {"id": sid, "params": e["params"], "state": PENDING, "attempts": 0,
                               "claims": 0, "starts": 0, "worker": None, "where": "",
                               "reason": "", "generation": 0, "parent": None,
                               "replaces": e.get("replaces")}
            return
        s = self.state.get(sid)
        if s is None:
            raise LedgerError(f"{self.path} line {lineno}: event for simulation {sid} which was "
                              f"never added", str(self.path), lineno)
        if ev == "claim":
            s.update(state=RUNNING, worker=e["worker"], pid=e.get("pid"), pstart=e.get("pstart"),
                     t=e.get("t"), claims=s["claims"] + 1)
        elif ev == "start":
            s.update(starts=s["starts"] + 1, where=e.get("where", ""))
        elif ev == "restart":
            s.update(attempts=s["attempts"] + 1, reason=e.get("reason", ""))
        elif ev == "done":
            s.update(state=DONE)  # reason: the last crash, if any
        elif ev == "fail":
            s.update(state=FAILED, attempts=s["attempts"] + 1, reason=e.get("reason", ""))
        elif ev == "release":
            s.update(state=PENDING, worker=None, reason=e.get("reason", ""))
        elif ev == "stop":
            s.update(state=STOPPED, worker=None, reason=e.get("reason", ""))
        elif ev == "breed":
            s.update(params=e["params"], generation=int(e["generation"]), parent=e.get("parent"))

    def _apply_study(self, ev: str, e: dict):
        if ev == "ledger":
            self.version = int(e.get("version", 1))
        elif ev == "end":
            self.ended = e.get("reason") or "ended"
        elif ev == "reopen":
            self.ended = None
        elif ev == "trainer":
            self.trainer.append(e)
        elif ev == "generation":
            self.generations.append(e)
        else:
            self.jobs.append(e)

    def _sync(self) -> bytes:
        """Read what others appended since last time; returns an unterminated tail (if any)."""
        with open(self.path, "rb") as fh:
            fh.seek(self._off)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        for raw in data[:end].split(b"\n")[:-1]:
            self._lines += 1
            try:
                e = json.loads(raw)
            except ValueError:
                raise LedgerError(f"{self.path} line {self._lines} is corrupt ({raw[:60]!r}); fix "
                                  f"or delete that line", str(self.path), self._lines) from None
            if not isinstance(e, dict):
                raise LedgerError(f"{self.path} line {self._lines} is not a JSON object",
                                  str(self.path), self._lines)
            self._apply(e, self._lines)
        self._off += end
        return data[end:]

    def _locked(self):
        try:
            return self.lock.acquire()  # a context manager that releases once
        except Timeout:
            raise LedgerError(f"could not lock {self.lock.lock_file} within {self.lock.timeout} s: "
                              f"is the file system shared with working locks? (see "
                              f"docs/fault-tolerance.md)", self.lock.lock_file) from None

    def _append(self, events: list[dict]):
        """Append `events` (caller holds the lock and has synced)."""
        tail = self._sync()
        if tail:
            log.warning("%s: dropping a half-written last line %r (a writer died mid-write)",
                        self.path, tail[:60])
            os.truncate(self.path, self._off)
        now = round(time.time(), 3)
        payload = b"".join(json.dumps({**e, "t": e.get("t", now)}).encode() + b"\n"
                           for e in events)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sync()

    def snapshot(self) -> dict[int, dict]:
        with self._locked():
            tail = self._sync()
        if tail:
            log.warning("%s ends with a half-written line %r; it will be dropped", self.path,
                        tail[:60])
        return {k: dict(v) for k, v in self.state.items()}

    def counts(self) -> dict:
        c = dict.fromkeys(STATES, 0)
        for s in self.snapshot().values():
            c[s["state"]] += 1
        return c

    def finished(self) -> bool:
        """Every set is done, failed or stopped."""
        return all(s["state"] in ENDED for s in self.snapshot().values())

    def is_ended(self) -> str | None:
        """Why the study ended (`end`), or None while it runs."""
        self.snapshot()
        return self.ended

    # -- changing ------------------------------------------------------------------------------
    def claim(self, worker: str, n: int = 1, worker_timeout: float = 30.0) -> list[dict]:
        """Up to `n` pending sets, now running on `worker`, in the order they joined the study
        (`ot run` adds its held-out validation sets first, so validation data comes early)."""
        with self._locked():
            self._sync()
            if self.ended:
                return []
            self._reclaim(worker_timeout)
            todo = [i for i, s in self.state.items() if s["state"] == PENDING][:n]
            host, _, pid = worker.rpartition(":")
            self._append([{"ev": "claim", "id": i, "worker": worker, "pid": int(pid),
                           "pstart": _pstart(int(pid)) if host == HOST else 0.0} for i in todo])
            return [dict(self.state[i]) for i in todo]

    def _owned(self, sid: int, worker: str) -> bool:
        s = self.state[sid]
        return s["state"] == RUNNING and s["worker"] == worker

    def started(self, sid: int, worker: str, attempt: int, where: str):
        """`worker` started attempt `attempt` of set `sid` `where` (a pid, a step, a job)."""
        with self._locked():
            self._sync()
            if self._owned(sid, worker):
                self._append([{"ev": "start", "id": sid, "attempt": attempt, "where": where}])

    def done(self, sid: int, worker: str):
        with self._locked():
            self._sync()
            if self.state[sid]["state"] != DONE:
                self._append([{"ev": "done", "id": sid, "worker": worker}])

    def crashed(self, sid: int, worker: str, reason: str, max_restarts: int,
                crashes_before_redraw: int = 0, redraw=None) -> str:
        """Record a crash: "restart" (run it again), "failed" (given up) or "lost" (no longer
        ours: another worker reclaimed it). A failed set gets a replacement drawn by
        `redraw(new_id) -> params` when crashes_before_redraw > 0."""
        with self._locked():
            self._sync()
            if not self._owned(sid, worker):
                return "lost"
            crashes = self.state[sid]["attempts"] + 1
            limit = max_restarts + 1
            if crashes_before_redraw > 0:
                limit = min(limit, crashes_before_redraw)
            if crashes < limit:
                self._append([{"ev": "restart", "id": sid, "worker": worker, "reason": reason}])
                return "restart"
            ev = [{"ev": "fail", "id": sid, "worker": worker, "reason": reason}]
            if crashes_before_redraw > 0 and redraw is not None:
                new = max(self.state) + 1
                ev.append({"ev": "add", "id": new, "params": [float(p) for p in redraw(new)],
                           "replaces": sid})
                log.warning("simulation %d failed %d times; drew simulation %d to replace it",
                            sid, crashes, new)
            self._append(ev)
            return "failed"

    def release(self, ids, reason: str, worker: str | None = None):
        """Put running (or done) sets back to pending; with `worker`, only those it runs."""
        with self._locked():
            self._sync()
            ev = [{"ev": "release", "id": i, "reason": reason} for i in ids
                  if i in self.state and (worker is None or self._owned(i, worker))]
            if ev:
                self._append(ev)
            return [e["id"] for e in ev]

    def end(self, reason: str) -> list[int]:
        """The study is over (its trainer finished): every pending or running set is stopped, and
        nothing is claimed or restarted from now on. Returns the ids stopped."""
        with self._locked():
            self._sync()
            ids = [i for i, s in self.state.items() if s["state"] in (PENDING, RUNNING)]
            if not self.ended:
                self._append([{"ev": "end", "reason": reason}] +
                             [{"ev": "stop", "id": i, "reason": reason} for i in ids])
            return ids

    def reopen(self, reason: str) -> list[int]:
        """Undo `end` (a trainer resumes): the stopped sets go back to pending."""
        with self._locked():
            self._sync()
            ids = [i for i, s in self.state.items() if s["state"] == STOPPED]
            ev = [{"ev": "reopen", "reason": reason}] if self.ended else []
            ev += [{"ev": "release", "id": i, "reason": reason} for i in ids]
            if ev:
                self._append(ev)
            return ids

    def record(self, ev: str, **fields):
        """Append one study-level event: "trainer" (attempt, outcome, reason, ...) or "job"."""
        if ev not in ("trainer", "job"):
            raise LedgerError(f"record({ev!r}): use 'trainer' or 'job'", str(self.path), ev)
        with self._locked():
            self._sync()
            self._append([{"ev": ev, **fields}])

    def breed(self, plan) -> list[dict]:
        """One Breed resampling as one transaction: under the lock, `plan(state, generations)`
        (copies of the sets' states and the "generation" events so far) returns None (nothing
        due) or (generation_event_fields, children [{"id", "params", "generation", "parent"}]).
        Every child must be a pending set that never started; returns the children written."""
        with self._locked():
            self._sync()
            if self.ended:
                return []
            got = plan({k: dict(v) for k, v in self.state.items()}, list(self.generations))
            if not got:
                return []
            gen, kids = got
            for c in kids:
                s = self.state.get(c["id"])
                if s is None or s["state"] != PENDING or s["starts"]:
                    raise LedgerError(f"breed: simulation {c['id']} is "
                                      f"{'unknown' if s is None else s['state']} (started "
                                      f"{0 if s is None else s['starts']} times); only pending sets "
                                      f"that never started are re-parameterised", str(self.path),
                                      c["id"])
            self._append([{"ev": "generation", **gen}] +
                         [{"ev": "breed", "id": int(c["id"]),
                           "params": [float(p) for p in c["params"]],
                           "generation": int(c["generation"]), "parent": c["parent"]}
                          for c in kids])
            return kids

    def _reclaim(self, worker_timeout: float):
        """Release running sets of workers that are gone (caller holds the lock)."""
        by_worker: dict[str, list] = {}
        for s in self.state.values():
            if s["state"] == RUNNING:
                by_worker.setdefault(s["worker"], []).append(s)
        ev = []
        for w, sims in by_worker.items():
            if not worker_alive(self.dir, w, sims[0].get("pstart") or 0.0, worker_timeout,
                                min(s.get("t") or 0 for s in sims)):
                log.warning("worker %s is gone: releasing its simulations %s", w,
                            [s["id"] for s in sims])
                ev += [{"ev": "release", "id": s["id"], "reason": f"worker {w} disappeared"}
                       for s in sims]
        if ev:
            self._append(ev)

    def reclaim(self, worker_timeout: float = 30.0):
        with self._locked():
            self._sync()
            self._reclaim(worker_timeout)
