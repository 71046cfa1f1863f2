"""The Slurm study's own records: which jobs belong to it, and every simulation attempt with its reason.

    rec = StudyRecord("ot-study/tiny")
    rec.job("1234", role="driver")
    rec.attempt(sim_id=3, attempt=0, outcome="failed", reason="exit code 1", where="1234.5")
    rec.summary()   # {"done": [...], "failed": {3: "..."}, "attempts": {3: 2}, "running": [...]}

Two append-only JSON-lines files in the study directory (jobs.jsonl, attempts.jsonl), one line per
event, so a reader never sees a half-written record. This is deliberately a small interface
(job / jobs / attempt / attempts / summary): the study ledger of the fault-tolerance work can
replace it without touching the driver.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

JOBS, ATTEMPTS = "jobs.jsonl", "attempts.jsonl"


def _append(path: Path, obj: dict):
    line = (json.dumps(obj) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _read(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by a crash: ignore it
            continue
    return out


class StudyRecord:
    def __init__(self, study_dir):
        self.dir = Path(study_dir)

    def reset(self):
        """Start a fresh record (a new submission of the study)."""
        for f in (JOBS, ATTEMPTS):
            (self.dir / f).unlink(missing_ok=True)

    def job(self, job_id: str, role: str, sim_id: int | None = None, attempt: int | None = None):
        _append(self.dir / JOBS, {"job": str(job_id), "role": role, "sim": sim_id,
                                  "attempt": attempt, "time": time.time()})

    def jobs(self) -> list[dict]:
        return _read(self.dir / JOBS)

    def attempt(self, sim_id: int, attempt: int, outcome: str, reason: str = "", where: str = ""):
        """outcome: started | done | failed (will be restarted) | gave_up (failed for good) |
        interrupted (stopped because the trainer restarted) | requeued (done, but its data was
        lost with the trainer: it runs again)."""
        _append(self.dir / ATTEMPTS, {"sim": sim_id, "attempt": attempt, "outcome": outcome,
                                      "reason": reason, "where": where, "time": time.time()})

    def trainer_attempt(self, attempt: int, outcome: str, reason: str = "", **extra):
        """The trainer's attempts: started | failed (restarted) | done | gave_up. A resumed start
        carries resume_batch, resume_checkpoint and fully_received (simulation ids)."""
        _append(self.dir / ATTEMPTS, {"role": "trainer", "attempt": attempt, "outcome": outcome,
                                      "reason": reason, **extra, "time": time.time()})

    def attempts(self) -> list[dict]:
        return _read(self.dir / ATTEMPTS)

    def summary(self) -> dict:
        done, failed, tries, last, trainer = set(), {}, {}, {}, []
        for a in self.attempts():
            if a.get("role") == "trainer":
                trainer.append({k: a[k] for k in ("attempt", "outcome", "reason", "resume_batch")
                                if k in a})
                continue
            sid = a["sim"]
            last[sid] = a["outcome"]
            if a["outcome"] == "started":
                tries[sid] = tries.get(sid, 0) + 1
            elif a["outcome"] == "done":
                done.add(sid)
            elif a["outcome"] == "requeued":
                done.discard(sid)
            elif a["outcome"] == "gave_up":
                failed[sid] = a["reason"]
        running = sorted(s for s, o in last.items() if o == "started")
        return {"done": sorted(done), "failed": failed, "attempts": tries, "running": running,
                "trainer": trainer}
