"""`ot run`: a whole online-training study on this machine, no scheduler needed.

The runner creates the study's shm ring, trains in this process and runs the simulation ensemble
from a background thread (each simulation a child process group). Whatever happens (success, an
error, Ctrl-C, SIGTERM) every child is terminated and the ring unlinked before it returns.

    summary = run_study(load("examples/heat2d-tiny.toml"), on_progress=print)

Study directory (`output.dir`): config.json (resolved config), params.jsonl (the parameter sets,
training then validation), metrics.jsonl, checkpoint.pt, summary.json.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from . import sampler
from .channel import open_consumer, parse_url
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


def run_study(cfg, on_progress=None) -> dict:
    t0 = time.monotonic()
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.validation.first_id = cfg.sampling.n_train  # held out: the ids after training ids
    cfg.validation.every = 0
    sets = study_sets(cfg)
    (out / "params.jsonl").write_text(sampler.to_jsonl(sets))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    url = cfg.channel_url
    u = parse_url(url)
    if u.scheme == "shm":
        clean_stale(u.name)
    consumer = open_consumer(url, capacity=cfg.channel.ring_mb << 20)
    stop = threading.Event()
    sim_box: dict = {}

    def simulate():
        try:
            sim_box["result"] = run_simulations(sets, cfg.solver, url, cfg.simulate.concurrency,
                                                cfg.channel.connect_timeout, stop_event=stop)
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
            summary = train(cfg, consumer=consumer, expected_sims=len(sets),
                            on_progress=on_progress, stop_event=stop)
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
    summary["study_wall_s"] = round(time.monotonic() - t0, 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
