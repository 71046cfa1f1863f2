"""The study driver: runs INSIDE a Slurm allocation (the sbatch script `ot slurm submit` writes, or
the user's own salloc / sbatch) and runs the trainer and the simulations, restarting failed ones.

    python -m onlinetrain slurm drive STUDY_DIR      # what the sbatch script executes

- the trainer is one job step (`srun --het-group=0 ... ot train --config STUDY_DIR/study.toml`);
- global mode: each simulation is a job step in het group 1 (`srun --het-group=1 --exact`);
  semiglobal mode: each simulation is its own job (`sbatch`), polled with squeue;
- at most slurm.job_limit simulations run at once; one that fails (non-zero exit, killed, cancelled,
  node failure, timeout) is started again up to slurm.max_restarts times, then given up: the trainer
  gets a SIM_FAILED frame so it never waits for it, and the record keeps the reason;
- when every simulation is done or given up, the trainer gets STREAM_END, finishes and writes its
  checkpoint; the driver writes result.json and exits with the trainer's status;
- a trainer step that fails is started again (up to slurm.max_restarts) with `--resume` when the
  study dir holds a good checkpoint: only the simulations that checkpoint has not fully received
  run again (train.checkpoint_every sets how much is lost); without one, all of them do.

The channel is cfg.channel_url (default shm://<output.name>): shm works when the trainer and the
simulations share a node; set channel.url = "tcp://HOST:PORT" for a multi-node cluster.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from . import checkpoint
from . import config as C
from . import frame as fr
from . import slurm as S
from .channel import open_producer, parse_url
from .procs import describe_exit, spawn, terminate
from .shm_channel import ChannelNotFound, ConsumerGone, clean_stale
from .simulate import build_argv, child_env
from .slurm_records import StudyRecord

log = logging.getLogger(__name__)


def _tail(path: Path, n: int = 200) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    own = [ln for ln in lines if not ln.startswith(("srun:", "slurmstepd:"))]  # the program's words
    return (own or lines)[-1][-n:] if lines else ""


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


class StepLauncher:
    """global mode (and inside any allocation): every simulation is a job step."""

    def __init__(self, d: Path, het_group: int | None):
        self.d, self.het_group, self.procs = d, het_group, {}

    def start(self, sid: int, attempt: int, command: list[str], env: dict) -> str:
        logf = self.d / "logs" / f"sim-{sid}-a{attempt}.log"
        with open(logf, "wb") as fh:
            p = spawn(S.srun_argv(command, f"sim{sid}", self.het_group), env=env, stdout=fh,
                      stderr=subprocess.STDOUT)
        self.procs[sid] = (p, logf)
        return f"srun pid {p.pid}"

    def finished(self) -> list[tuple[int, bool, str]]:
        out = []
        for sid, (p, logf) in list(self.procs.items()):
            code = p.poll()
            if code is None:
                continue
            del self.procs[sid]
            why = describe_exit(code)
            tail = _tail(logf)
            out.append((sid, code == 0, f"{why}: {tail}" if tail else why))
        return out

    def __len__(self):
        return len(self.procs)

    def sids(self):
        return self.procs.keys()

    def stop_all(self):
        for p, _ in self.procs.values():
            terminate(p)
        self.procs.clear()


class JobLauncher:
    """semiglobal mode: every simulation is its own job, so it runs wherever CPUs free up."""

    def __init__(self, d: Path, cfg, rec: StudyRecord):
        self.d, self.cfg, self.rec, self.jobs, self.attempts = d, cfg, rec, {}, {}

    def start(self, sid: int, attempt: int, command: list[str], env: dict) -> str:
        argv = S.sim_sbatch_argv(str(self.d / S.SIM_SCRIPT), f"ot-{self.cfg.output.name}-sim{sid}",
                                 str(self.d / "logs" / f"sim-{sid}-a{attempt}-%j.log"),
                                 self.cfg.slurm.simulation_args, command)
        r = _run(argv, env=env)
        if r.returncode != 0:
            raise S.SlurmError(f"sbatch of simulation {sid} failed: {r.stderr.strip()}", argv)
        jid = S.parse_sbatch_id(r.stdout)
        self.rec.job(jid, "simulation", sid, attempt)
        self.jobs[sid], self.attempts[sid] = jid, attempt
        return f"job {jid}"

    def finished(self) -> list[tuple[int, bool, str]]:
        if not self.jobs:
            return []
        r = _run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(self.jobs.values())}",
                  f"--format={S.SQUEUE_FORMAT}"])
        if r.returncode != 0:
            log.warning("squeue failed (%s); will retry", r.stderr.strip())
            return []
        states = {j.id: j for j in S.parse_squeue(r.stdout)}
        out = []
        for sid, jid in list(self.jobs.items()):
            j = states.get(jid)
            outcome = S.job_outcome(j.state) if j else "failed"
            if outcome == "active":
                continue
            del self.jobs[sid]
            why = f"job {jid} {j.state} ({j.reason})" if j else f"job {jid} record gone"
            tail = _tail(self.d / "logs" / f"sim-{sid}-a{self.attempts[sid]}-{jid}.log")
            why = f"{why}: {tail}" if tail and outcome != "done" else why
            out.append((sid, outcome == "done", why))
        return out

    def __len__(self):
        return len(self.jobs)

    def sids(self):
        return self.jobs.keys()

    def stop_all(self):
        if self.jobs:
            _run(["scancel", *self.jobs.values()])
        self.jobs.clear()


class Driver:
    def __init__(self, study_dir):
        self.d = Path(study_dir).resolve()
        self.cfg = C.load(self.d / "study.toml")
        self.sets = [json.loads(ln) for ln in (self.d / "params.jsonl").read_text().splitlines()
                     if ln.strip()]
        self.rec = StudyRecord(self.d)
        self.python = self.cfg.slurm.python or sys.executable
        alloc = S.Allocation.from_env(os.environ)
        if alloc is None:
            raise S.SlurmError("`ot slurm drive` runs inside a Slurm allocation (SLURM_JOB_ID is "
                               "not set): use `ot slurm submit`", "SLURM_JOB_ID")
        het = alloc.het_size >= 2
        self.trainer_group = 0 if het else None
        self.launcher = (JobLauncher(self.d, self.cfg, self.rec) if self.cfg.slurm.mode ==
                         "semiglobal" else StepLauncher(self.d, 1 if het else None))
        self.done: list[int] = []
        self.failed: dict[int, str] = {}
        self.trainer = self.producer = None

    def _trainer_log(self, attempt: int) -> Path:
        return self.d / "logs" / f"trainer-a{attempt}.log"

    def _start_trainer(self, attempt: int, ck: dict | None = None):
        url = self.cfg.channel_url
        if parse_url(url).scheme == "shm":
            clean_stale(parse_url(url).name)
        if ck is None:
            self.rec.trainer_attempt(attempt, "started")
        else:
            fully = sorted(checkpoint.fully_received(ck))
            self.rec.trainer_attempt(
                attempt, "started", f"--resume from {Path(ck['path']).name} at batch "
                f"{ck['batches']}; {len(fully)} simulations fully received",
                resume_batch=int(ck["batches"]), resume_checkpoint=ck["path"], fully_received=fully)
        logf = open(self._trainer_log(attempt), "wb")
        argv = S.trainer_command(self.python, str(self.d), url, resume=ck is not None)
        self.trainer = spawn(S.srun_argv(argv, "trainer", self.trainer_group), stdout=logf,
                             stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + self.cfg.channel.connect_timeout + 120  # + torch import
        while True:
            try:
                self.producer = open_producer(url, timeout=1.0)
                return
            except ChannelNotFound:
                if self.trainer.poll() == 0:  # resumed with nothing left to do: it finished
                    return
                if self.trainer.poll() is not None or time.monotonic() > deadline:
                    raise S.SlurmError(f"the trainer never opened {url} ("
                                       f"{describe_exit(self.trainer.poll())}; see "
                                       f"{self._trainer_log(attempt)})", url) from None

    def _notify(self, kind: int, sid: int, reason: str):
        if self.producer is None:  # the trainer finished before we connected
            return
        try:
            self.producer.put(fr.Frame(sid, 0, np.zeros(0), reason[:200] or "-",
                                       np.zeros(0, np.float32), kind), timeout=30)
        except ConsumerGone:  # the trainer finished (max_batches) or died: run() sees its exit
            log.info("trainer gone; not telling it about simulation %d", sid)

    def _start_sim(self, sid: int, params, attempt: int):
        solver, url = self.cfg.solver, self.cfg.channel_url
        command = build_argv(solver, sid, params, url)
        if solver.kind != "program":
            command = [self.python] + command[1:]
        env = child_env(solver, sid, params, url, self.cfg.channel.connect_timeout)
        env["OT_ATTEMPT"] = str(attempt)
        where = self.launcher.start(sid, attempt, command, env)
        self.rec.attempt(sid, attempt, "started", where=where)

    def run(self) -> dict:
        s = self.cfg.slurm
        params = {x["id"]: x["params"] for x in self.sets}
        pending = deque(x["id"] for x in self.sets)
        self.tries: dict[int, int] = {}  # sim id -> index of its latest attempt
        self.fails: dict[int, int] = {}  # sim id -> failed attempts
        trainer_attempt, ck = 0, None
        if checkpoint.list_checkpoints(self.d):  # `submit` clears them: the driver was resubmitted
            ck = self._resume_point("driver started again on a study with checkpoints")
            pending = self._requeue(ck)
        while True:
            self._start_trainer(trainer_attempt, ck)
            if ck is not None:  # given up after the checkpoint: tell the new trainer again
                known = {int(k) for k in ck["sections"]["receiver"]["sims_failed"]}
                for sid in sorted(set(self.failed) - known):
                    self._notify(fr.SIM_FAILED, sid, self.failed[sid])
            code = self._run_sims(pending, params)
            if code == 0 or trainer_attempt >= s.max_restarts:
                break
            why = f"{describe_exit(code)}: {_tail(self._trainer_log(trainer_attempt))}"
            self.rec.trainer_attempt(trainer_attempt, "failed", why)
            for sid in list(self.launcher.sids()):  # their data went to the dead trainer
                self.rec.attempt(sid, self.tries[sid], "interrupted", "trainer restarted")
            self.launcher.stop_all()
            if self.producer is not None:
                self.producer.close()
            self.producer = None
            ck = self._resume_point(f"trainer failed ({why})")
            pending = self._requeue(ck)
            trainer_attempt += 1
        self.rec.trainer_attempt(trainer_attempt, "done" if code == 0 else "gave_up",
                                 describe_exit(code))
        result = {"status": "completed" if code == 0 else "failed", "mode": s.mode,
                  "done": sorted(self.done), "failed": {str(k): v for k, v in self.failed.items()},
                  "trainer": describe_exit(code), "trainer_restarts": trainer_attempt}
        if code != 0:
            result["trainer_log"] = _tail(self._trainer_log(trainer_attempt), 400)
        return result

    def _resume_point(self, what: str) -> dict | None:
        """The newest good checkpoint of the dead trainer (the new one resumes from it), or None:
        then the new trainer starts from scratch (unusable checkpoints are moved aside)."""
        try:
            ck = checkpoint.load_latest(self.d)
        except checkpoint.CheckpointError as e:
            bad = self.d / f"{checkpoint.DIRNAME}.bad-{int(time.time())}"
            (self.d / checkpoint.DIRNAME).rename(bad)
            log.warning("%s; %s; moved to %s: starting the trainer from scratch with every "
                        "simulation", what, e, bad)
            return None
        if ck is None:
            log.warning("%s; no checkpoint in %s (train.checkpoint_every = %d): starting the "
                        "trainer from scratch with every simulation", what,
                        self.d / checkpoint.DIRNAME, self.cfg.train.checkpoint_every)
            return None
        log.warning("%s; starting the trainer with --resume from %s (batch %d)", what,
                    ck["path"], ck["batches"])
        return ck

    def _requeue(self, ck: dict | None) -> deque:
        """The simulations a restarted trainer still needs: all but those given up and those its
        checkpoint holds fully (those stay done and are not run again)."""
        fully = checkpoint.fully_received(ck)
        for sid in self.done:
            if sid not in fully:
                self.rec.attempt(sid, self.tries[sid], "requeued", "its data is not in the "
                                 "checkpoint the trainer resumes from" if ck else "trainer restarted"
                                 " from scratch")
        ids = [x["id"] for x in self.sets]
        self.done = [i for i in ids if i in fully and i not in self.failed]
        return deque(i for i in ids if i not in fully and i not in self.failed)

    def _run_sims(self, pending: deque, params: dict) -> int:
        """Keep job_limit simulations running until all are done or given up, or the trainer
        exits; then STREAM_END. Returns the trainer's exit code."""
        s = self.cfg.slurm
        while (pending or self.running()) and self.trainer.poll() is None:
            while pending and self.running() < s.job_limit:
                sid = pending.popleft()
                self.tries[sid] = self.tries.get(sid, -1) + 1
                self._start_sim(sid, params[sid], self.tries[sid])
            for sid, ok, why in self.launcher.finished():
                attempt = self.tries[sid]
                if ok:
                    self.done.append(sid)
                    self.rec.attempt(sid, attempt, "done")  # its own SIM_END carries the counts
                    continue
                self.fails[sid] = self.fails.get(sid, 0) + 1
                if self.fails[sid] <= s.max_restarts:
                    log.warning("simulation %d attempt %d failed (%s); restarting", sid, attempt, why)
                    self.rec.attempt(sid, attempt, "failed", why)
                    pending.appendleft(sid)
                else:
                    reason = f"gave up after {self.fails[sid]} attempts; last: {why}"
                    log.warning("simulation %d: %s", sid, reason)
                    self.failed[sid] = reason
                    self.rec.attempt(sid, attempt, "gave_up", reason)
                    self._notify(fr.SIM_FAILED, sid, reason)
            time.sleep(0.2 if s.mode == "global" else s.poll)
        if self.trainer.poll() is None:
            self._notify(fr.STREAM_END, -1, "stream end")
        code = self.trainer.wait()
        if code == 0:
            self.launcher.stop_all()  # the trainer stopped first (max_batches): the rest is moot
        return code

    def running(self) -> int:
        return len(self.launcher)

    def close(self):
        self.launcher.stop_all()
        if self.trainer is not None:
            terminate(self.trainer, grace=10)
        if self.producer is not None:
            self.producer.close()


def drive(study_dir) -> dict:
    """Run the study in this allocation; result.json is written whatever happens."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_term)
    d = Path(study_dir).resolve()
    result = {"status": "failed", "error": "driver did not start"}
    drv = None
    try:
        drv = Driver(d)
        result = drv.run()
    except KeyboardInterrupt:
        result = {"status": "cancelled"}
        raise
    except Exception as e:
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        raise
    finally:
        if drv is not None:
            drv.close()
            result.setdefault("done", sorted(drv.done))
            result.setdefault("failed", {str(k): v for k, v in drv.failed.items()})
        (d / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        signal.signal(signal.SIGTERM, old)
    return result
