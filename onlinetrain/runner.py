"""`ot run`: a whole online-training study on this machine, no scheduler needed.

The runner creates the study's shm ring, trains in this process and runs the simulation ensemble
from a background thread (each simulation a child process group). Whatever happens (success, an
error, Ctrl-C, SIGTERM) every child is terminated and the ring unlinked before it returns.

    summary = run_study(load("examples/heat2d-tiny.toml"), on_progress=print)

Study directory (`output.dir`): config.json (resolved config), params.jsonl (the parameter sets,
validation then training), ledger.jsonl (+ .lock: each set's state, see ledger.py), workers/ (worker
heartbeats), checkpoints/ (resumable), metrics.jsonl, checkpoint.pt, summary.json. More workers can
join at any time with `ot simulate --study DIR`; `run_study(cfg, resume=True)` (`ot run --resume`)
continues a study whose trainer died, from its newest good checkpoint (docs/fault-tolerance.md).
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

from . import checkpoint, sampler
from .breed_study import breeder_for
from .ledger import Ledger, LedgerError
from .study import LedgerSource, StudyDone, prepare_resume, trainer_lock
from .channel import open_consumer, parse_url
from .launch import ProcessLauncher, check_ring_free, cpu_share, study_channel, token_env
from .shm_channel import clean_stale
from .simulate import run_simulations
from .trainer import train

log = logging.getLogger(__name__)


def study_sets(cfg) -> list[dict]:
    """Validation sets first (ids n_train..), so validation data exists from the start, then training."""
    s = cfg.sampling
    tr = sampler.sample(s.n_train, s.seed, s.method, s.bounds)
    # the held-out set is drawn independently (uniform, another seed) from the training design
    va = sampler.sample(s.n_validation, s.seed + 7919, "uniform", s.bounds, start_id=s.n_train)
    return va + tr


def redraw_for(cfg):
    """crashes_before_redraw: new parameters for a replacement set, reproducible from its id."""
    def draw(new_id: int) -> list[float]:
        return sampler.sample(1, cfg.sampling.seed + 104729 + new_id, "uniform",
                              cfg.sampling.bounds, start_id=new_id)[0]["params"]
    return draw


def attach_study(cfg, resume: bool):
    """The trainer's end condition when output.dir is a study (ledger.jsonl), else None; on
    resume, first re-queue what the dead trainer lost and what dead workers held."""
    out = Path(cfg.output.dir)
    if not (out / "ledger.jsonl").exists():
        if resume and not checkpoint.list_checkpoints(out):
            raise LedgerError(f"nothing to resume in {out}: no ledger.jsonl and no checkpoints/; "
                              f"run without --resume", str(out))
        return None
    led = Ledger(out)
    if resume:
        prepare_resume(led, checkpoint.fully_received(checkpoint.load_latest(out)),
                       cfg.simulate.worker_timeout)
    return StudyDone(led)


def new_study(cfg, out: Path) -> list[dict]:
    """Fresh study files in `out` (an older study there is replaced)."""
    sets = study_sets(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for old in ("checkpoints", "workers"):
        shutil.rmtree(out / old, ignore_errors=True)
    (out / "scores.json").unlink(missing_ok=True)  # Breed: an older study's scores
    (out / "params.jsonl").write_text(sampler.to_jsonl(sets))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    Ledger.create(out, sets)
    return sets


def run_study(cfg, on_progress=None, resume: bool = False, stop_event=None) -> dict:
    """`stop_event`: set it to stop simulations and training cleanly (exit checkpoint)."""
    t0 = time.monotonic()
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.validation.first_id = cfg.sampling.n_train  # held out: the ids after training ids
    cfg.validation.end_id = cfg.sampling.n_train + cfg.sampling.n_validation
    cfg.validation.every = 0
    if resume and not (out / "ledger.jsonl").exists():
        raise LedgerError(f"nothing to resume in {out} (no ledger.jsonl): run without --resume",
                          str(out / "ledger.jsonl"))
    cfg.channel.url = study_channel(cfg)  # a ring per user: shm://NAME-USER (launch.py)
    check_ring_free(cfg.channel.url)
    with trainer_lock(out):
        return _run_locked(cfg, out, t0, on_progress, resume, stop_event)


def _run_locked(cfg, out: Path, t0: float, on_progress, resume: bool, stop_event=None) -> dict:
    url = cfg.channel_url
    u = parse_url(url)
    if u.scheme == "shm":
        clean_stale(u.name)
    consumer = open_consumer(url, capacity=cfg.channel.ring_mb << 20, study_dir=str(out))
    try:
        if not resume:
            new_study(cfg, out)
        finished = attach_study(cfg, resume)
    except BaseException:
        consumer.close()
        raise
    stop = stop_event or threading.Event()
    sim_box: dict = {}

    def simulate():
        try:
            source = LedgerSource(Ledger(out), cfg.simulate, redraw=redraw_for(cfg),
                                  breeder=breeder_for(cfg, out))
            sim_box["result"] = run_simulations(
                None, cfg.solver, url, cfg.simulate.concurrency, cfg.channel.connect_timeout,
                stop_event=stop, send_stream_end=False,
                simulation_timeout=cfg.simulate.simulation_timeout, source=source,
                threads=cpu_share(cfg.simulate.concurrency, getattr(cfg.train, "threads", None)),
                launcher=ProcessLauncher(cfg.simulate.ntasks), env_extra=token_env(url, out))
        except KeyboardInterrupt:
            pass
        except BaseException as e:
            sim_box["error"] = e
            log.error("simulation scheduler failed: %s", e)
            stop.set()

    th = threading.Thread(target=simulate, name="ot-simulate", daemon=True)
    th.start()
    try:
        try:
            summary = train(cfg, consumer=consumer, on_progress=on_progress, stop_event=stop,
                            resume=resume, finished=finished)
            stopped = Ledger(out).end(f"the trainer finished at batch {summary.get('batches')}")
            if stopped:  # e.g. train.max_batches: nothing more is started or restarted
                log.info("the trainer finished; simulations %s stopped", stopped)
        except KeyboardInterrupt:
            if "error" in sim_box:  # the scheduler stopped the run: report why
                raise sim_box["error"] from None
            raise
    finally:
        stop.set()
        th.join(timeout=30)
        consumer.close()
    res = sim_box.get("result")
    if res is not None:
        summary["sims_failed_reasons"] = {str(k): v for k, v in res.failed.items()}
        summary["restarts"] = res.restarts
    summary["ledger"] = Ledger(out).counts()
    summary["study_wall_s"] = round(time.monotonic() - t0, 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
