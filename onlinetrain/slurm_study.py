"""`ot slurm submit | status | cancel`: a study on a Slurm cluster, seen from the login node.

    res = submit(cfg)                  # writes STUDY_DIR/{study.toml, params.jsonl, ot-slurm.sbatch}
    res["job"]                         # the driver job's id (sbatch); inside an allocation: runs it
    wait(cfg.output.dir, timeout=600)  # -> result.json of the driver
    status(STUDY_DIR)                  # jobs, steps, simulations done/failed, training progress
    cancel(STUDY_DIR)                  # scancel every job of the study, wait, remove shm segments

The study directory is `output.dir`; everything the study writes lives there (logs/ too).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import checkpoint
from . import slurm as S
from .channel import parse_url
from .runner import study_sets
from .sampler import to_jsonl
from .shm_channel import clean_stale
from .ledger import Ledger, LedgerError

log = logging.getLogger(__name__)


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise S.SlurmError(f"{argv[0]} not found: is Slurm installed and on PATH?", argv[0]) from None
    if check and r.returncode != 0:
        raise S.SlurmError(f"{' '.join(argv[:2])} failed: {r.stderr.strip() or r.stdout.strip()}",
                           argv)
    return r


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def checkpoint_every(cfg) -> int:
    """train.checkpoint_every of a Slurm study: the config's value when it sets one (0 included:
    no periodic checkpoints), else max(1, train.max_batches // 20), so a trainer that dies loses
    at most ~5% of its batches and a restarted one resumes (`--resume`) instead of starting over."""
    if cfg.train.checkpoint_every or "train.checkpoint_every" in getattr(cfg, "given", ()):
        return cfg.train.checkpoint_every
    return max(1, cfg.train.max_batches // 20)


def prepare(cfg) -> Path:
    """Write the study directory: resolved config (TOML), parameter sets, the sbatch scripts.
    A new submission starts afresh: checkpoints and metrics of an earlier one are removed."""
    d = Path(cfg.output.dir).resolve()
    (d / "logs").mkdir(parents=True, exist_ok=True)
    cfg.output.dir = str(d)
    cfg.validation.first_id = cfg.sampling.n_train  # held out: the ids after the training ids
    cfg.validation.every = 0
    cfg.train.checkpoint_every = checkpoint_every(cfg)
    if cfg.train.checkpoint_every == 0:
        log.warning("train.checkpoint_every = 0: a trainer that dies without an exit checkpoint "
                    "(SIGKILL, node failure) is restarted from scratch and every simulation runs "
                    "again")
    shutil.rmtree(d / checkpoint.DIRNAME, ignore_errors=True)  # never resume an older submission
    python = cfg.slurm.python or sys.executable
    (d / "study.toml").write_text(S.to_toml(cfg.to_dict()))
    (d / "params.jsonl").write_text(to_jsonl(study_sets(cfg)))  # for people: the ledger has them
    (d / S.DRIVER_SCRIPT).write_text(S.driver_script(cfg, str(d), python, _project_root()))
    (d / S.SIM_SCRIPT).write_text(S.sim_script())
    for f in ("result.json", "summary.json", "checkpoint.pt", "metrics.jsonl", "scores.json"):
        (d / f).unlink(missing_ok=True)
    shutil.rmtree(d / "progress", ignore_errors=True)
    Ledger.create(d, study_sets(cfg))  # the study state: a fresh ledger
    return d


def submit(cfg, dry_run: bool = False) -> dict:
    """Submit the study (sbatch), or run it here when already inside an allocation."""
    d = prepare(cfg)
    script = (d / S.DRIVER_SCRIPT).read_text()
    if dry_run:
        return {"dir": str(d), "script": script}
    if S.Allocation.from_env(os.environ) is not None:
        from .slurm_run import drive  # noqa: PLC0415
        log.info("inside allocation %s: running the study here", os.environ["SLURM_JOB_ID"])
        return {"dir": str(d), "job": os.environ["SLURM_JOB_ID"], "result": drive(d)}
    jid = S.parse_sbatch_id(_run(["sbatch", "--parsable", str(d / S.DRIVER_SCRIPT)]).stdout)
    Ledger(d).record("job", job=jid, role="driver")
    return {"dir": str(d), "job": jid}


def job_ids(d: Path) -> list[str]:
    """Every Slurm job of the study (driver, simulation jobs), from its ledger."""
    try:
        led = Ledger(d)
    except LedgerError:
        return []
    led.snapshot()
    return sorted({str(j["job"]) for j in led.jobs}, key=int)


def _jobs(d: Path) -> list[S.Job]:
    ids = job_ids(d)
    if not ids:
        return []
    r = _run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
              f"--format={S.SQUEUE_FORMAT}"], check=False)
    return S.parse_squeue(r.stdout) if r.returncode == 0 else []


def active_jobs(study_dir) -> list[S.Job]:
    return [j for j in _jobs(Path(study_dir)) if S.job_outcome(j.state) == "active"]


def wait(study_dir, timeout: float = 3600, poll: float = 1.0) -> dict:
    """Wait until the study's driver finished; its result.json (status completed/failed/...)."""
    d = Path(study_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = d / "result.json"
        if res.exists() and not active_jobs(d):
            return json.loads(res.read_text())
        if not res.exists() and job_ids(d) and not active_jobs(d):
            time.sleep(poll)  # the job may be gone a moment before the file is visible
            if not (d / "result.json").exists():
                return {"status": "failed", "error": "the driver job ended without result.json; "
                                                     f"see {d / 'logs'}"}
        time.sleep(poll)
    raise S.SlurmError(f"study {d} still running after {timeout} s", timeout)


def status(study_dir) -> dict:
    d = Path(study_dir)
    if not (d / "study.toml").exists():
        raise S.SlurmError(f"{d} is not a Slurm study directory (no study.toml): give the "
                           f"output.dir of a submitted study", str(d))
    jobs = _jobs(d)
    steps: list[S.Step] = []
    active = {j.job_id for j in jobs if S.job_outcome(j.state) == "active"}
    if active:  # every step of the cluster, then ours (het components' steps have their own ids)
        r = _run(["squeue", "--steps", "--noheader", f"--format={S.STEPS_FORMAT}"], check=False)
        steps = [s for s in S.parse_steps(r.stdout) if s.job in active] if r.returncode == 0 else []
    progress = None
    metrics = d / "metrics.jsonl"
    if metrics.exists():
        lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        progress = json.loads(lines[-1]) if lines else None
    result = d / "result.json"
    return {"dir": str(d), "jobs": [j.__dict__ for j in jobs], "steps": [s.__dict__ for s in steps],
            "simulations": simulations(d), "training": progress,
            "result": json.loads(result.read_text()) if result.exists() else None}


def simulations(d: Path) -> dict:
    """Per state, the simulation ids of the study's ledger; attempts started per simulation; the
    trainer's attempts."""
    led = Ledger(d)
    snap = led.snapshot()
    out = {k: sorted(i for i, x in snap.items() if x["state"] == k)
           for k in ("pending", "running", "done", "stopped")}
    out["failed"] = {str(i): x["reason"] for i, x in sorted(snap.items()) if x["state"] == "failed"}
    out["attempts"] = {str(i): x["starts"] for i, x in sorted(snap.items()) if x["starts"]}
    out["restarts"] = sum(max(0, x["starts"] - 1) for x in snap.values())
    out["trainer"] = [{k: t[k] for k in ("attempt", "outcome", "reason", "resume_batch") if k in t}
                      for t in led.trainer]
    out["ended"] = led.ended
    if led.generations:  # Breed (docs/breed.md)
        from .breed_study import generations_summary  # noqa: PLC0415
        out["breed"] = generations_summary(snap, led.generations)
    return out


def cancel(study_dir, timeout: float = 60) -> dict:
    """scancel every job of the study, wait until none is active, remove its shm segments."""
    d = Path(study_dir)
    ids = job_ids(d)
    if ids:
        _run(["scancel", *ids], check=False)
    deadline = time.monotonic() + timeout
    while active_jobs(d):
        if time.monotonic() > deadline:
            raise S.SlurmError(f"jobs of {d} still active {timeout} s after scancel", ids)
        time.sleep(0.5)
    removed = []
    try:
        from . import config as C  # noqa: PLC0415
        u = parse_url(C.load(d / "study.toml").channel_url)
        if u.scheme == "shm":
            removed = clean_stale(u.name)
    except Exception as e:  # noqa: BLE001 - cleanup is best effort, say why
        log.warning("could not clean shm segments of %s: %s", d, e)
    return {"cancelled": ids, "segments_removed": removed}
