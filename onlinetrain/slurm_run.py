"""The study driver: runs INSIDE a Slurm allocation (the sbatch script `ot slurm submit` writes, or
the user's own salloc / sbatch) and runs the trainer and the simulations, restarting failed ones.

    python -m onlinetrain slurm drive STUDY_DIR      # what the sbatch script executes

- the trainer is one job step (`srun --het-group=0 ... ot train --config STUDY_DIR/study.toml`);
- the simulations run through the one engine (simulate.run_simulations) with a Slurm launcher
  (onlinetrain/slurm_launch.py): global mode, each is a job step in het group 1 (`srun
  --het-group=1 --exact`); semiglobal mode, each is its own job (`sbatch`), polled with squeue;
- the study state is the ledger (STUDY_DIR/ledger.jsonl, as for `ot run`): at most slurm.job_limit
  simulations run at once; one that fails (non-zero exit, killed, cancelled, node failure,
  timeout, silent for simulate.simulation_timeout) is started again up to slurm.max_restarts
  times, then given up: the trainer gets a SIM_FAILED frame so it never waits for it;
- when every simulation is done or given up, the trainer ends (the ledger says so), writes its
  checkpoint; the driver writes result.json and exits with the trainer's status. Once the trainer
  has finished, nothing is started or restarted: the rest is recorded `stopped`;
- a trainer step that fails is started again (up to slurm.max_restarts) with `--resume` when the
  study dir holds a good checkpoint: only the simulations that checkpoint has not fully received
  run again (train.checkpoint_every sets how much is lost); without one, all of them do.

The channel is cfg.channel_url (`ot slurm submit` names the ring per user and job, see
launch.study_channel); set channel.url = "tcp://HOST:PORT" for a multi-node cluster.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint
from . import config as C
from . import frame as fr
from . import slurm as S
from .channel import parse_url
from .launch import (attach_trainer, consumer_gone, log_tail, study_channel, thread_env,
                     token_env)
from .breed_study import breeder_for
from .ledger import Ledger, worker_id
from .procs import describe_exit, spawn, terminate
from .shm_channel import ConsumerGone, clean_stale
from .simulate import run_simulations
from .slurm_launch import SbatchLauncher, SrunLauncher
from .study import LedgerSource, prepare_resume

log = logging.getLogger(__name__)


class Driver:
    def __init__(self, study_dir):
        self.d = Path(study_dir).resolve()
        self.cfg = C.load(self.d / "study.toml")
        self.ledger = Ledger(self.d)
        self.python = self.cfg.slurm.python or sys.executable
        alloc = S.Allocation.from_env(os.environ)
        if alloc is None:
            raise S.SlurmError("`ot slurm drive` runs inside a Slurm allocation (SLURM_JOB_ID is "
                               "not set): use `ot slurm submit`", "SLURM_JOB_ID")
        het = alloc.het_size >= 2
        self.trainer_group = 0 if het else None
        s, ntasks = self.cfg.slurm, self.cfg.simulate.ntasks
        self.launcher = (SbatchLauncher(self.d, self.cfg, self.ledger, ntasks)
                         if s.mode == "semiglobal" else
                         SrunLauncher(self.d / "logs", 1 if het else None, ntasks, s.nodes,
                                      s.cpus_per_task))
        self.trainer = self.producer = None
        self.worker = worker_id()
        self.url = study_channel(self.cfg)  # shm://NAME-USER-jJOB unless channel.url is set

    def _trainer_log(self, attempt: int) -> Path:
        return self.d / "logs" / f"trainer-a{attempt}.log"

    def _start_trainer(self, attempt: int, ck: dict | None = None):
        url, s = self.url, self.cfg.slurm
        if parse_url(url).scheme == "shm":
            clean_stale(parse_url(url).name)
        if ck is None:
            self.ledger.record("trainer", attempt=attempt, outcome="started")
        else:
            fully = sorted(checkpoint.fully_received(ck))
            self.ledger.record(
                "trainer", attempt=attempt, outcome="started",
                reason=f"--resume from {Path(ck['path']).name} at batch {ck['batches']}; "
                f"{len(fully)} simulations fully received",
                resume_batch=int(ck["batches"]), resume_checkpoint=ck["path"], fully_received=fully)
        logf = open(self._trainer_log(attempt), "wb")
        argv = S.trainer_command(self.python, str(self.d), url, resume=ck is not None)
        env = thread_env(dict(os.environ), s.cpus)
        self.trainer = spawn(S.srun_argv(argv, "trainer", self.trainer_group,
                                         cpus_per_task=s.cpus, gpus=s.gpus),
                             env=env, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        # + torch import; a big ring on a loaded node takes a while to create
        self.producer = attach_trainer(url, self.trainer, self.cfg.channel.connect_timeout + 120,
                                       self._trainer_log(attempt), study_dir=str(self.d))

    def _notify(self, kind: int, sid: int, reason: str):
        if self.producer is None:  # the trainer finished before we connected
            return
        try:
            self.producer.put(fr.Frame(sid, 0, np.zeros(0), reason[:200] or "-",
                                       np.zeros(0, np.float32), kind), timeout=30)
        except ConsumerGone:  # the trainer finished (max_batches) or died: run() sees its exit
            log.info("trainer gone; not telling it about simulation %d", sid)

    def _trainer_gone(self):
        code = self.trainer.poll()
        if code is not None:
            return f"the trainer exited ({describe_exit(code)})"
        if self.producer is not None and consumer_gone(self.producer):
            return "the trainer closed its channel"
        return None

    def _simulate(self) -> int:
        """Run simulations through the engine until the study is over or the trainer exits;
        returns the trainer's exit code."""
        s, cfg = self.cfg.slurm, self.cfg
        if self.producer is not None:
            from .runner import redraw_for  # noqa: PLC0415
            source = LedgerSource(self.ledger, cfg.simulate, redraw=redraw_for(cfg),
                                  worker=self.worker, max_restarts=s.max_restarts,
                                  poll=min(1.0, s.poll), breeder=breeder_for(cfg, self.d))
            extra = token_env(self.url, self.d)
            run_simulations(None, cfg.solver, self.url, s.job_limit,
                            cfg.channel.connect_timeout, send_stream_end=True,
                            simulation_timeout=cfg.simulate.simulation_timeout, source=source,
                            threads=s.cpus_per_task, launcher=self.launcher,
                            producer=self.producer, until=self._trainer_gone,
                            progress_dir=self.d / "progress", env_extra=extra,
                            python=self.python)
        return self.trainer.wait()

    def run(self) -> dict:
        s = self.cfg.slurm
        trainer_attempt, ck = 0, None
        if checkpoint.list_checkpoints(self.d):  # `submit` clears them: the driver was resubmitted
            ck = self._resume_point("driver started again on a study with checkpoints")
            prepare_resume(self.ledger, checkpoint.fully_received(ck), self.cfg.simulate.worker_timeout)
        while True:
            self._start_trainer(trainer_attempt, ck)
            if ck is not None:  # given up after the checkpoint: tell the new trainer again
                known = {int(k) for k in ck["sections"]["receiver"]["sims_failed"]}
                for sid, st in sorted(self.ledger.snapshot().items()):
                    if st["state"] == "failed" and sid not in known:
                        self._notify(fr.SIM_FAILED, sid, st["reason"])
            code = self._simulate()
            if code == 0 or trainer_attempt >= s.max_restarts:
                break
            why = f"{describe_exit(code)}: {log_tail(self._trainer_log(trainer_attempt))}"
            self.ledger.record("trainer", attempt=trainer_attempt, outcome="failed", reason=why)
            if self.producer is not None:
                self.producer.close()
            self.producer = None
            ck = self._resume_point(f"trainer failed ({why})")
            prepare_resume(self.ledger, checkpoint.fully_received(ck), self.cfg.simulate.worker_timeout)
            trainer_attempt += 1
        if code == 0:  # whatever has not ended by now is stopped, never restarted
            self.ledger.end(f"the trainer finished ({describe_exit(code)})")
        self.ledger.record("trainer", attempt=trainer_attempt,
                           outcome="done" if code == 0 else "gave_up", reason=describe_exit(code))
        snap = self.ledger.snapshot()
        result = {"status": "completed" if code == 0 else "failed", "mode": s.mode,
                  "done": sorted(i for i, x in snap.items() if x["state"] == "done"),
                  "failed": failed_reasons(snap),
                  "stopped": sorted(i for i, x in snap.items() if x["state"] == "stopped"),
                  "trainer": describe_exit(code), "trainer_restarts": trainer_attempt}
        if code != 0:
            result["trainer_log"] = log_tail(self._trainer_log(trainer_attempt), 400)
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

    def close(self):
        if self.trainer is not None:
            terminate(self.trainer, grace=10)
        if self.producer is not None:
            self.producer.close()


def failed_reasons(snap: dict) -> dict:
    return {str(i): f"gave up after {x['attempts']} attempts; last: {x['reason']}"
            for i, x in sorted(snap.items()) if x["state"] == "failed"}


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
            snap = drv.ledger.snapshot()
            result.setdefault("done", sorted(i for i, x in snap.items() if x["state"] == "done"))
            result.setdefault("failed", failed_reasons(snap))
        (d / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        signal.signal(signal.SIGTERM, old)
    return result
