"""Training from a channel: ONE loop (loop.py) for 1..N ranks, fed through a training buffer by a
receiver (its own process by default: rxproc.py / rxremote.py; or a thread: receiver.py).

Each rank has its own channel, receiver (frames -> adapter -> buffer / validation set) and buffer,
so every rank trains on different simulations. A prefetch thread (prefetch.py) assembles the next
batch while the current one trains; how the ranks agree at each step is in loop.py.

    summary = train(cfg)                      # ot train / ot run: channel, receiver, loop
    summary = fit(buf, cfg, rx=rx)            # the same loop fed from a given buffer (benchmarks)
    summary["val_mse"], summary["mean_field_mse"], summary["data_wait_frac"]

`stop_event`: set it (the CLI does, on SIGINT / SIGTERM) and the loop stops between two steps,
writes an exit checkpoint and raises KeyboardInterrupt; `--resume` continues from there.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from . import ar, checkpoint, ddp
from .channel import open_consumer
from .imports import import_function
from .loop import TrainError, _Loop  # noqa: F401 (TrainError re-exported)
from .reservoir import from_config as buffer_from_config
from .receiver import Receiver
from .rxremote import RemoteReceiver
from .stats import Statistics, stats_wanted

log = logging.getLogger(__name__)


def train(cfg, consumer=None, expected_sims: int | None = None, on_progress=None,
          stop_event: threading.Event | None = None, resume: bool = False,
          finished=None, env: ddp.DistEnv | None = None) -> dict:
    """Train from `consumer` (default: this rank's channel of cfg) until the stream ends and the
    buffer is exhausted, or `train.max_batches`. Returns the summary (rank 0 also writes
    summary.json). `resume`: continue from the newest good checkpoint in output.dir
    (docs/checkpoint.md); `finished`: the study's end condition, fn(receiver) -> bool; `env`: this
    rank (default: from torchrun / Slurm variables, or the MPI job for mpi:// channels)."""
    import torch  # noqa: PLC0415
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = import_function(cfg.model.adapter, "model.adapter")
    builder = import_function(cfg.model.builder, "model.builder")
    mode = ar.training_mode(cfg, adapter)  # autoregressive: windows, rollout validation (ar.py)
    own = consumer is None
    created, rx = False, None
    try:
        if own and cfg.channel_url.startswith("mpi://") and env is None:
            consumer = open_consumer(cfg.channel_url)
            env = consumer.dist_env()
            cfg.simulate.producers = consumer.n_producers  # every simulate rank ends once
        env = env or ddp.env_from(os.environ)
        if env.world > 1 and finished is not None:
            raise TrainError(f"{out} is a study (ledger.jsonl): its end condition needs every "
                             f"simulation's data in one trainer, and this run has {env.world} "
                             f"ranks; train a study with one rank (ot run, or ot train without "
                             f"torchrun / srun)", env.world)
        device = ddp.resolve_device(cfg, env)
        torch.manual_seed(cfg.train.seed)
        torch.set_num_threads(cfg.train.resolved_threads())
        ck = checkpoint.load_latest(out) if resume else None
        if ck is not None:
            ck = checkpoint.for_rank(ck, env.rank, env.world)
        remote = remote_receiver(cfg, own and consumer is None, finished)
        if remote:
            pass  # the receiving process opens the channel (and writes the tcp endpoint file)
        elif consumer is None:
            consumer = open_consumer(ddp.rank_url(cfg.channel_url, env),
                                     capacity=cfg.channel.ring_mb << 20,
                                     study_dir=cfg.output.dir)  # tcp: secret.token lives there
        if consumer is not None and getattr(consumer, "port", None) is not None:  # port 0 listeners: tell the producers
            (out / f"endpoint-rank{env.rank}").write_text(
                f"tcp://{consumer.host}:{consumer.port}\n")
        if env.world > 1:
            created = ddp.init_group(env, ddp.backend_for(device),
                                     float(os.environ.get("OT_DIST_TIMEOUT", "300")))
        buf = buffer_from_config(cfg.buffer, seed_offset=env.rank)
        if mode is not None:
            if env.world > 1:
                raise TrainError("model.mode = 'autoregressive' trains on one rank for now: run "
                                 "without torchrun / srun or an mpi:// channel", env.world)
            adapter, buf = mode.adapter, mode.wrap(buf)
        stats = None
        if stats_wanted(cfg):
            if env.world > 1:
                raise TrainError(f"[stats] with {env.world} ranks: a pick-freeze group must reach "
                                 f"one statistics consumer; train with one rank, or run `ot stats` "
                                 f"as its own consumer (docs/stats.md)", env.world)
            if not remote:  # else the receiving process runs them
                stats = Statistics(cfg.stats, steps_hint=cfg.solver.steps, report=log.warning)
        if remote:  # docs/receiver.md
            rx = RemoteReceiver(cfg, ddp.rank_url(cfg.channel_url, env), buf, rank=env.rank,
                                expected_sims=expected_sims,
                                study_dir=None if finished is None else finished.ledger.dir)
            consumer = rx  # its `abandoned` count
        else:
            rx = Receiver(consumer, buf, cfg, adapter, expected_sims, finished)
            rx.stats = stats
        if ck is not None:
            checkpoint.restore_stream(ck, rx, buf)
        rx.start()
        return fit(buf, cfg, rx=rx, builder=builder, device=device, env=env, ck=ck,
                   on_progress=on_progress, stop_event=stop_event, consumer=consumer, mode=mode)
    finally:
        if rx is not None and rx.ident is not None:  # started
            rx.stop_event.set()
            rx.join(timeout=5)
        if isinstance(rx, RemoteReceiver):
            rx.close()
        if created:
            ddp.destroy_group()
        if own and consumer is not None and not isinstance(consumer, RemoteReceiver):
            consumer.close()


def remote_receiver(cfg, own: bool, finished=None) -> bool:
    """Whether the receiver runs as its own process (train.receiver; docs/receiver.md). `own`:
    the trainer opens its channel itself (it was not handed an open one)."""
    from .study import StudyDone  # noqa: PLC0415
    why = ("the trainer was handed an open channel" if not own else
           "mpi:// channels are received by the trainer's own MPI rank"
           if cfg.channel_url.startswith("mpi://") else
           "autoregressive mode needs the adapter's field shape in the trainer"
           if cfg.model.mode == "autoregressive" else
           "the study's end condition is not a ledger" if
           finished is not None and not isinstance(finished, StudyDone) else None)
    if cfg.train.receiver == "process" and why is not None:
        raise TrainError(f"train.receiver = 'process' is not possible here: {why}; use "
                         f"'thread' or 'auto'", cfg.train.receiver)
    return cfg.train.receiver != "thread" and why is None


def fit(buf, cfg, *, rx=None, builder=None, device=None, env: ddp.DistEnv | None = None,
        ck: dict | None = None, on_progress=None, stop_event=None, consumer=None,
        mode=None) -> dict:
    """The training loop on `buf` (already being filled, or filled and ended). `rx`: the Receiver
    filling it (validation, accounting, checkpoints; without one there is no validation and no
    checkpoint). `env` with world > 1 needs the process group initialised (ddp.init_group)."""
    import torch  # noqa: PLC0415
    env = env or ddp.DistEnv()
    if device is None:
        device = ddp.resolve_device(cfg, env)
    if builder is None:
        builder = import_function(cfg.model.builder, "model.builder")
    torch.set_num_threads(cfg.train.resolved_threads())
    return _Loop(cfg, buf, rx, builder, device, env, ck, on_progress, stop_event, consumer,
                 mode).run()
