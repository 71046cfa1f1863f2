"""The two Slurm launchers of the launch interface (onlinetrain/launch.py): an srun job step per
simulation (global mode, or inside any allocation) and an sbatch job per simulation (semiglobal).

    launcher = SrunLauncher(study_dir / "logs", het_group=1, ntasks=2, cpus_per_task=4)
    launcher = SbatchLauncher(study_dir, cfg, ledger)     # records each job in the ledger
    h = launcher.start(sid, attempt, argv, env)           # then h.poll(), h.stop(), h.where

Both are driven by the one engine (simulate.run_simulations) inside the Slurm driver
(onlinetrain/slurm_run.py).
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from . import slurm as S
from .launch import ProcessLauncher, log_tail

log = logging.getLogger(__name__)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


class SrunLauncher(ProcessLauncher):
    """Each simulation attempt is a job step: `srun --ntasks=N --nodes=M --cpus-per-task=C
    --exact --job-name=simID [--het-group=G] -- argv` (its log in log_dir)."""

    def __init__(self, log_dir, het_group: int | None = None, ntasks: int = 1, nodes: int = 1,
                 cpus_per_task: int = 1):
        super().__init__(ntasks, log_dir, prefix=lambda sid, argv: S.srun_argv(
            argv, f"sim{sid}", het_group, ntasks=ntasks, nodes=nodes,
            cpus_per_task=cpus_per_task))


class JobHandle:
    def __init__(self, launcher: "SbatchLauncher", jid: str, log_path: Path):
        self.launcher, self.jid, self.log_path = launcher, jid, log_path
        self.where = f"job {jid}"
        self.state: S.Job | None = None
        self.seen = False  # squeue has shown it at least once
        self.t0 = time.monotonic()

    def poll(self):
        j = self.state
        if j is None:
            # not (yet) in squeue: a record that is gone counts as failed, but only once it was
            # seen or after a grace period (a job just submitted may not be listed yet)
            if self.seen or time.monotonic() - self.t0 > 30:
                return False, f"job {self.jid} record gone"
            return None
        outcome = S.job_outcome(j.state)
        if outcome == "active":
            return None
        why = f"job {self.jid} {j.state} ({j.reason})"
        tail = log_tail(self.log_path) if outcome != "done" else ""
        return outcome == "done", f"{why}: {tail}" if tail else why

    def running(self) -> bool:
        return self.state is not None and self.state.state.split()[0] not in ("PENDING",
                                                                                "CONFIGURING")

    def stop(self):
        _run(["scancel", self.jid])


class SbatchLauncher:
    """Each simulation attempt is its own job (`sbatch ot-sim.sbatch argv`), so it runs wherever
    CPUs free up; one squeue for all of them every `poll_s` seconds."""

    def __init__(self, study_dir, cfg, ledger, ntasks: int = 1):
        self.d, self.cfg, self.ledger, self.ntasks = Path(study_dir), cfg, ledger, ntasks
        self.poll_s = cfg.slurm.poll
        self._last = 0.0

    def start(self, sid: int, attempt: int, argv: list[str], env: dict) -> JobHandle:
        s = self.cfg.slurm
        resources = [f"--ntasks={self.ntasks}", f"--nodes={s.nodes}",
                     f"--cpus-per-task={s.cpus_per_task}"]
        log_path = self.d / "logs" / f"sim-{sid}-a{attempt}-%j.log"
        argv = S.sim_sbatch_argv(str(self.d / S.SIM_SCRIPT), f"ot-{self.cfg.output.name}-sim{sid}",
                                 str(log_path), resources + list(s.simulation_args),
                                 (["srun", "--mpi=pmi2", "--"] if self.ntasks > 1 else []) + argv)
        r = _run(argv, env=env)
        if r.returncode != 0:
            raise S.SlurmError(f"sbatch of simulation {sid} failed: {r.stderr.strip()}", argv)
        jid = S.parse_sbatch_id(r.stdout)
        self.ledger.record("job", job=jid, role="simulation", sim=sid, attempt=attempt)
        return JobHandle(self, jid, Path(str(log_path).replace("%j", jid)))

    def refresh(self, handles: list):
        jobs = [h for h in handles if isinstance(h, JobHandle)]
        now = time.monotonic()
        if not jobs or now - self._last < self.poll_s / 2:
            return
        self._last = now
        r = _run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(h.jid for h in jobs)}",
                  f"--format={S.SQUEUE_FORMAT}"])
        if r.returncode != 0:
            log.warning("squeue failed (%s); will retry", r.stderr.strip())
            return
        states = {j.id: j for j in S.parse_squeue(r.stdout)}
        for h in jobs:
            h.state = states.get(h.jid)
            h.seen = h.seen or h.state is not None
