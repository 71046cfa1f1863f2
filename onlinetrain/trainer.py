"""The training loop: ONE loop for 1..N ranks, fed through a training buffer by a receiving thread.

Each rank has its own channel, Receiver (frames -> adapter -> buffer / validation set) and buffer,
so every rank trains on different simulations. A prefetch thread (prefetch.py) assembles the next
batch while the current one trains. Each step the ranks agree, in one small all-reduce on the
model's device, whether every rank can contribute: a rank whose stream ended and whose buffer is
exhausted contributes an empty batch, a rank still waiting makes everyone wait (a batch it drew
is kept for the next step), and the run ends when every rank is exhausted, at
`train.max_batches`, or when any rank stops (signal: exit checkpoint) or fails. The loss is the sum
of per-sample errors over the global batch divided by its size, so DDP's gradient average equals
the gradient of one rank training on the union of the batches; with one rank there is no process
group and no per-step host sync (`.item()` only at logging points). Rank 0 writes metrics.jsonl and
summary.json; every rank writes its part of each checkpoint (docs/checkpoint.md).

    summary = train(cfg)                      # ot train / ot run: channel, receiver, loop
    summary = fit(buf, cfg, rx=rx)            # the same loop fed from a given buffer (benchmarks)
    summary["val_mse"], summary["mean_field_mse"], summary["data_wait_frac"]

`stop_event`: set it (the CLI does, on SIGINT / SIGTERM) and the loop stops between two steps,
writes an exit checkpoint and raises KeyboardInterrupt; `--resume` continues from there.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from . import ar, checkpoint, ddp, evaluate, valfields
from .channel import open_consumer
from .errors import OTError
from .imports import import_function
from .prefetch import Prefetcher
from .reservoir import from_config as buffer_from_config
from .scores import publisher_for
from .receiver import Receiver
from .stats import Statistics, stats_wanted
from .tb import tensorboard_sink

log = logging.getLogger(__name__)


class TrainError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value



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
        if consumer is None:
            consumer = open_consumer(ddp.rank_url(cfg.channel_url, env),
                                     capacity=cfg.channel.ring_mb << 20,
                                     study_dir=cfg.output.dir)  # tcp: secret.token lives there
        if getattr(consumer, "port", None) is not None:  # port 0 listeners: tell the producers
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
            stats = Statistics(cfg.stats, steps_hint=cfg.solver.steps, report=log.warning)
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
        if created:
            ddp.destroy_group()
        if own and consumer is not None:
            consumer.close()


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


class _Loop:
    """The loop's state; run() is the loop. Ranks agree on every decision (see the module doc)."""

    def __init__(self, cfg, buf, rx, builder, device, env, ck, on_progress, stop_event,
                 consumer, mode=None):
        self.mode = mode  # ar.Autoregressive, or None
        self.cfg, self.buf, self.rx, self.builder, self.device, self.env = \
            cfg, buf, rx, builder, device, env
        self.on_progress, self.stop_event, self.consumer = on_progress, stop_event, consumer
        self.coll = ddp.Collectives(device, env.world, env.rank)
        self.out = Path(cfg.output.dir)
        self.writer = env.rank == 0
        self.model = self.net = self.opt = self.sched = self.dims = None
        self.batches, self.in_step = 0, False
        self.ck = ck
        initial = []
        if ck is not None:
            self._build(*ck["sections"]["train"]["dims"])
            self.batches = checkpoint.restore_training(ck, self.model, self.opt, self.sched,
                                                       device)
            initial = checkpoint.pending_batches(ck)
            log.warning("resumed from %s at batch %d (%d samples, %d simulations fully "
                        "received)", ck["path"], self.batches, rx.samples, len(rx.sims_done))
        self._agree_on_start()
        self.scores = publisher_for(cfg, self.out, self.coll, env, ck)  # Breed only (scores.py)
        self.pf = Prefetcher(buf, cfg.train.batch_size,
                             limit=max(0, cfg.train.max_batches - self.batches - len(initial)),
                             pin=device.type == "cuda", initial=initial)

    def _agree_on_start(self):
        b = self.batches if self.ck is not None else -1
        lo, hi = self.coll.min_ints([b])[0], self.coll.max_ints([b])[0]
        if lo != hi:
            raise TrainError(f"rank {self.env.rank}: the ranks resume from different checkpoints "
                             f"(batches {lo} and {hi}): every rank needs the same output.dir",
                             (lo, hi))

    def _build(self, in_dim: int, out_dim: int):
        import torch  # noqa: PLC0415
        cfg = self.cfg
        try:
            m = (self.mode.build(self.builder, int(in_dim), int(out_dim)) if self.mode
                 else self.builder(int(in_dim), int(out_dim), cfg))
        except Exception as e:  # the user's code: one line that names it, not a traceback
            raise TrainError(f"model.builder = {cfg.model.builder!r} failed for in_dim {in_dim}, "
                             f"out_dim {out_dim}: {type(e).__name__}: {e}",
                             cfg.model.builder) from e
        if not isinstance(m, torch.nn.Module):
            raise TrainError(f"model.builder = {cfg.model.builder!r} returned "
                             f"{type(m).__name__}, not a torch.nn.Module", cfg.model.builder)
        self.model = checkpoint.record_dims(m, in_dim, out_dim).to(self.device)
        self.dims = (int(in_dim), int(out_dim))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, cfg.train.lr_milestones,
                                                          cfg.train.lr_gamma)
        self.net = ddp.wrap(self.model, self.device, self.env.world)
        if cfg.train.compile:
            self.net = torch.compile(self.net)

    def _step(self, item, n_rows: int):
        import torch  # noqa: PLC0415
        dev = self.device
        if item is not None:
            x, y = item.x.to(dev, non_blocking=True), item.y.to(dev, non_blocking=True)
        else:  # this rank is exhausted, the others are not: an empty share of the global batch
            x = torch.zeros((0, self.dims[0]), device=dev)
            y = torch.zeros((0, self.dims[1]), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.amp == "bf16"):
            if self.mode is not None:  # autoregressive: a window, unrolled (ar.py)
                per = self.mode.losses(self.net, x, y)
            else:
                pred = self.net(x)
        if self.mode is None:
            per = ((pred.float() - y) ** 2).mean(dim=1)  # per-sample loss
        sse = per.sum()
        if self.scores is not None and item is not None:  # Breed: no host sync here
            self.scores.add(item.keys, per)
        loss = sse * (self.env.world / n_rows)  # DDP averages over ranks: mean over the union
        self.in_step = True
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.batches += 1
        self.in_step = False
        if self.scores is not None:
            self.scores.step(self.batches)
        return sse.detach(), len(x)

    def save(self, final=False, summary=None, pending=None):
        """This rank's part of the checkpoint at self.batches; rank 0 commits it last."""
        if self.rx is None:
            return
        held = ([pending] if pending is not None else []) + self.pf.pause()
        try:
            state = checkpoint.capture(self.model, self.opt, self.sched, self.batches, self.rx,
                                       self.buf, self.cfg, dims=self.dims,
                                       pending=[i.arrays() for i in held], rank=self.env.rank,
                                       world=self.env.world, device=self.device)
            if summary is not None:
                state["summary"] = summary
            if self.scores is not None:  # this rank's Breed score board (docs/checkpoint.md)
                state["sections"]["scores"] = self.scores.state_dict()
            keep = self.cfg.train.keep_checkpoints
            failed = 0
            if self.env.rank != 0:
                try:
                    checkpoint.save(self.out, state, keep, final=final)
                except OSError as e:
                    log.error("rank %d: cannot write its checkpoint file: %s", self.env.rank, e)
                    failed = 1
            if self.coll.sum_ints([failed])[0]:
                raise checkpoint.CheckpointError(
                    f"checkpoint at batch {self.batches}: a rank could not write its file (see "
                    f"its log); the previous checkpoint stays the newest", str(self.out))
            if self.env.rank == 0:
                checkpoint.save(self.out, state, keep, final=final)
        finally:
            self.pf.resume()

    def _counts(self) -> list:
        rx = self.rx
        if rx is None:
            return [self.buf.received, 0, 0, 0, 0, 0]
        return [rx.samples, len(rx.val_arrays()[2]), rx.duplicates, rx.rejected, len(rx.sims_done),
                len(rx.sims_failed)]

    def _validate(self):
        """(val MSE, validation samples, extra figures): the rollout's in autoregressive mode."""
        if self.mode is not None and self.rx is not None:
            r = self.mode.validate(self.model, self.rx)
            return r["val_mse"], r["rollout_sims"], r
        items = evaluate.val_items(self.rx)
        return evaluate.validate(self.model, items, self.device), len(items[0]), {}

    def _log(self, t0, loss_acc, n_acc, wait, span):
        c = self.coll
        v_mse, n_val, extra = self._validate()
        v_sse, v_n, t_sse, t_n, w = c.sum([0.0 if v_mse is None else v_mse * n_val,
                                           n_val, float(loss_acc), n_acc, wait])
        counts = c.sum_ints(self._counts() + [len(self.buf)])
        val_mse = float(v_sse / v_n) if v_n else None
        m = {"batch": self.batches, "time": round(time.monotonic() - t0, 3),
             "lr": self.sched.get_last_lr()[0], "train_loss": float(t_sse / max(t_n, 1)),
             "val_mse": val_mse, "samples": counts[0], "buffer": counts[6],
             "sims_done": counts[4], "duplicates": counts[2], "ranks": self.env.world,
             "data_wait_frac": round(float(w) / self.env.world / max(span, 1e-9), 4), **extra}
        if self.writer:
            self.metrics.write(json.dumps(m) + "\n")
            self.metrics.flush()
            self.tb.add(m)  # output.tensorboard: the same scalars for TensorBoard
            if self.mode is None:  # fields of (params, t) models only
                valfields.save(self.out, self.model, self.rx, self.device, self.cfg, self.batches)
            if self.on_progress:
                self.on_progress(m)
        return val_mse

    def run(self) -> dict:
        try:
            if self.writer:
                if self.ck is not None:
                    checkpoint.trim_metrics(self.out / "metrics.jsonl", self.batches)
                self.metrics = open(self.out / "metrics.jsonl", "a" if self.ck else "w")
                self.tb = tensorboard_sink(self.cfg, self.out)
            return self._run()
        finally:
            self.pf.close()
            if self.writer and getattr(self, "metrics", None) is not None:
                self.metrics.close()

    def _run(self) -> dict:
        import torch  # noqa: PLC0415
        cfg, rx, env, c = self.cfg, self.rx, self.env, self.coll
        t0 = t_log = time.monotonic()
        wait = wait_all = 0.0
        loss_acc, n_acc = torch.zeros((), device=self.device), 0
        pending, local_error, val_mse = None, None, None
        reason = "max_batches"
        try:
            while self.batches < cfg.train.max_batches:
                if pending is None:
                    tw = time.perf_counter()
                    try:
                        pending = self.pf.get(timeout=0.2 if env.world == 1 else 0.05)
                    except Exception as e:  # a buffer error in the prefetch thread
                        local_error = local_error or e
                    dt = time.perf_counter() - tw
                    wait, wait_all = wait + dt, wait_all + dt
                stop = self.stop_event is not None and self.stop_event.is_set()
                if rx is not None and rx.error is not None and local_error is None:
                    local_error = TrainError(f"receiver failed: {rx.error}")
                n_have, n_exh, n_stop, n_err, n_rows = c.sum_ints(
                    [pending is not None, pending is None and self.pf.exhausted, stop,
                     local_error is not None, 0 if pending is None else len(pending.x)])
                if n_err or n_stop:
                    reason = "error" if n_err else "stop"
                    break
                if n_exh == env.world:
                    reason = "exhausted"
                    break
                if n_have == 0 or n_have + n_exh < env.world:
                    continue
                if self.model is None:
                    self._build(*c.max_ints(list(self.mode.dims()) if self.mode else
                                            [pending.x.shape[1], pending.y.shape[1]]
                                            if pending is not None else [0, 0]))
                try:
                    sse, n = self._step(pending, n_rows)
                except RuntimeError as e:
                    if env.world > 1 and ddp.is_dist_error(e):
                        raise ddp.lost_peer(env.rank, e) from e
                    raise
                pending = None
                loss_acc += sse
                n_acc += n
                if self.batches % cfg.train.val_every == 0:  # before the checkpoint: one at
                    now = time.monotonic()                   # batch b has the metrics up to b
                    val_mse = self._log(t0, loss_acc.item(), n_acc, wait, now - t_log)
                    loss_acc.zero_()
                    n_acc, wait, t_log = 0, 0.0, now
                if cfg.train.checkpoint_every and self.batches % cfg.train.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:  # a second signal, or no stop_event: stop now if consistent
            if env.world == 1 and self.model is not None and not self.in_step:
                self._stop_receiver()
                self.save(pending=pending)
            elif self.model is not None:
                log.warning("interrupted inside a training step: no exit checkpoint")
            raise
        if reason == "error":
            if local_error is not None:
                raise local_error
            raise TrainError(f"rank {env.rank}: another rank failed; see its log", env.rank)
        if reason == "stop":
            self._stop_receiver()
            if self.model is not None:  # exit checkpoint: `--resume` continues from here
                self.save(pending=pending)
            if self.stop_event is not None and self.stop_event.is_set():
                raise KeyboardInterrupt
            raise TrainError(f"rank {env.rank}: another rank was stopped (signal); exit "
                             f"checkpoint at batch {self.batches}: continue with --resume",
                             env.rank)
        return self._finish(t0, wait_all)

    def _stop_receiver(self):
        if self.rx is not None:
            self.rx.stop_event.set()
            self.rx.join(timeout=5)

    def _finish(self, t0, wait_all) -> dict:
        cfg, env, rx, c = self.cfg, self.env, self.rx, self.coll
        self._stop_receiver()
        if self.model is None:
            frames = 0 if rx is None else rx.frames
            raise TrainError(f"no training sample arrived on {cfg.channel_url}"
                             f"{f' (rank {env.rank} of {env.world})' if env.world > 1 else ''} "
                             f"({frames} frames): is a simulation running and sending to this "
                             f"channel?", cfg.channel_url)
        v_mse, n_val, extra = self._validate()
        v_sse, v_n = c.sum([0.0 if v_mse is None else v_mse * n_val, n_val])
        tot = c.sum_ints(self._counts() + [getattr(self.consumer, "abandoned", 0)])
        wall = time.monotonic() - t0
        summary = {"val_mse": float(v_sse / v_n) if v_n else None,
                   "mean_field_mse": evaluate.mean_field_mse(rx, c), "batches": self.batches,
                   "samples_received": tot[0], "validation_samples": tot[1],
                   "duplicates_dropped": tot[2], "frames_rejected": tot[3], "sims_done": tot[4],
                   "sims_failed": tot[5], "buffer": self.buf.stats(), "wall_s": round(wall, 3),
                   "abandoned_slots": tot[6], "ranks": env.world,
                   "rank_samples": self._counts()[0],
                   "data_wait_frac": round(float(c.sum([wait_all])[0]) / env.world / max(wall, 1e-9),
                                           4), **extra}
        if getattr(rx, "stats", None) is not None:  # [stats]: docs/stats.md
            rx.stats.save(self.out / "stats.npz")
            summary["stats"] = dict(rx.stats.counts)
        if self.scores is not None:
            self.scores.publish(self.batches)
        self.save(final=True, summary=summary)  # rank 0 also writes <out>/checkpoint.pt
        if self.writer:
            if self.mode is None:
                valfields.save(self.out, self.model, rx, self.device, cfg, self.batches)  # ot report
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.buffer.record_arrivals:
            name = "arrivals.npy" if env.rank == 0 else f"arrivals-rank{env.rank}.npy"
            np.save(self.out / name, self.buf.arrivals())
        return summary

