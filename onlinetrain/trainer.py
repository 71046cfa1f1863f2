"""The online trainer: drain a channel into a training buffer and train a torch model from it.

A receiving thread takes frames from the channel (shm ring or TCP), turns each DATA frame into an
(input, target) sample with the configured adapter, routes held-out simulations to the validation
set (they never enter the buffer) and the rest into the buffer. The training loop draws batches,
halves the learning rate at the configured batch counts, validates every `val_every` batches and
writes metrics as JSON lines; at the end it writes a checkpoint (state_dicts plus the config).

    summary = train(cfg)                       # cfg: onlinetrain.config.Config
    summary["val_mse"], summary["mean_field_mse"]

Duplicated (simulation, time step) pairs are dropped and counted; malformed frames and samples the
adapter rejects are logged and counted, never fatal.
"""
from __future__ import annotations

from .errors import OTError

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from . import ar, checkpoint
from . import frame as fr
from .channel import open_consumer
from .reservoir import make_buffer
from .shm_channel import Empty
from .surrogate import import_function

log = logging.getLogger(__name__)


class TrainError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


class Receiver(threading.Thread):
    """Moves frames from the channel to the buffer / validation set; accounts for everything."""

    def __init__(self, consumer, buffer, cfg, adapter, expected_sims: int | None = None,
                 finished=None):
        super().__init__(name="ot-receiver", daemon=True)
        self.consumer, self.buffer, self.cfg, self.adapter = consumer, buffer, cfg, adapter
        self.expected_sims = expected_sims
        self.finished = finished  # study mode: fn(receiver) -> True once the ledger says all ended
        self.lock = threading.Lock()  # held while a frame is accounted for (checkpoint.capture)
        self.stop_event = threading.Event()
        self.seen: set[tuple[int, int]] = set()
        self.val: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.sims_done: set[int] = set()
        self.sims_failed: dict[int, str] = {}
        self.stream_ends = 0
        self.frames = self.samples = self.duplicates = self.rejected = 0
        self.y_sum = None
        self.y_count = 0
        self.error: BaseException | None = None
        self.last_frame = time.monotonic()

    @property
    def stream_ended(self) -> bool:
        if self.stream_ends >= self.cfg.simulate.producers:
            return True
        if self.finished is not None:
            return self.finished(self)
        ended = len(self.sims_done | set(self.sims_failed))
        return self.expected_sims is not None and ended >= self.expected_sims

    def run(self):
        try:
            while not self.stop_event.is_set() and not self.stream_ended:
                try:
                    # zero-copy where the channel offers it (shm ring): the adapter's output is
                    # copied into the buffer / validation set, then the slot is released
                    frames = self.consumer.get_many(256, timeout=0.2, copy=False)
                except Empty:
                    idle = time.monotonic() - self.last_frame
                    if idle > self.cfg.channel.idle_timeout:
                        log.warning("no frame for %.0f s (channel.idle_timeout): ending the stream "
                                    "with %d simulations done", idle, len(self.sims_done))
                        break
                    continue
                except fr.FrameError as e:
                    self.rejected += 1
                    log.warning("rejected a malformed frame: %s", e)
                    continue
                self.last_frame = time.monotonic()
                try:
                    for f in frames:
                        with self.lock:
                            self.handle(f)
                        if hasattr(f, "release"):
                            f.release()
                finally:  # on an error too: every slot / receive buffer of the batch goes back
                    for f in frames:
                        if hasattr(f, "release"):
                            f.release()  # a second release is a no-op
        except BaseException as e:  # surfaced by the training loop
            self.error = e
        finally:
            self.buffer.end_stream()

    def handle(self, f: fr.Frame):
        self.frames += 1
        if f.kind == fr.STREAM_END:
            self.stream_ends += 1
            return
        if f.kind == fr.SIM_END:
            self.sims_done.add(f.sim_id)
            self.sims_failed.pop(f.sim_id, None)  # it failed, was restarted and finished
            return
        if f.kind == fr.SIM_FAILED:
            if f.sim_id in self.sims_done:  # an attempt's late report; another one finished it
                log.info("simulation %d: failure report after it completed (%s); ignored",
                         f.sim_id, f.name)
                return
            self.sims_failed[f.sim_id] = f.name
            log.warning("simulation %d failed: %s", f.sim_id, f.name)
            return
        if f.key in self.seen:
            self.duplicates += 1
            return
        try:
            x, y = self.adapter(f, self.cfg)
            x = np.asarray(x, np.float32).reshape(-1)
            y = np.asarray(y, np.float32).reshape(-1)
        except Exception as e:  # a user adapter may raise anything: count and go on
            self.rejected += 1
            log.warning("adapter rejected frame (sim %d, step %d): %s", f.sim_id, f.time_step, e)
            return
        if self.cfg.validation.is_validation(f.sim_id):
            self.seen.add(f.key)
            self.samples += 1
            self.val[f.key] = (x.copy(), y.copy())  # x, y may view the channel's memory
            return
        if self.y_sum is None:
            self.y_sum = np.zeros_like(y, dtype=np.float64)
        if y.shape != self.y_sum.shape:
            self.rejected += 1
            log.warning("frame (sim %d, step %d) has %d target values, earlier frames had %d",
                        f.sim_id, f.time_step, y.size, self.y_sum.size)
            return
        while not self.buffer.put(x, y, f.key, timeout=0.05):
            if self.stop_event.is_set():
                return
            self.lock.release()  # buffer full: let a checkpoint in while we wait
            try:
                time.sleep(0.01)
            finally:
                self.lock.acquire()
        # accounted for once in the buffer: a checkpoint taken while we waited stays consistent
        self.seen.add(f.key)
        self.samples += 1
        self.y_sum += y
        self.y_count += 1


def _validate(model, val, device) -> float | None:
    import torch  # noqa: PLC0415
    if not val:
        return None
    xs = np.stack([v[0] for v in val.values()])
    ys = np.stack([v[1] for v in val.values()])
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(xs), 1024):
            x = torch.from_numpy(xs[i:i + 1024]).to(device)
            y = torch.from_numpy(ys[i:i + 1024]).to(device)
            total += float(((model(x) - y) ** 2).mean(dim=1).sum())
    return total / len(xs)


def _validation(mode, model, val, device) -> dict:
    """{"val_mse": ...}; autoregressive mode adds the rollout's figures (rollout.py)."""
    return mode.validate(model, val, device) if mode else {"val_mse": _validate(model, val, device)}


def train(cfg, consumer=None, expected_sims: int | None = None, on_progress=None,
          stop_event: threading.Event | None = None, resume: bool = False,
          finished=None) -> dict:
    """Train from `consumer` (default: create cfg's channel) until the stream ends and the buffer
    is exhausted, or `train.max_batches`. Returns the summary dict (also written to summary.json).
    `resume`: continue from the newest good checkpoint in output.dir (docs/fault-tolerance.md);
    `finished`: the study's end condition, fn(receiver) -> bool (ledger.StudyDone)."""
    import torch  # noqa: PLC0415

    from . import ddp  # noqa: PLC0415
    if ddp.wants_distributed(cfg):  # several ranks (torchrun, srun) or an MPI channel
        if cfg.model.mode == "autoregressive":
            raise TrainError("model.mode = 'autoregressive' trains on one rank for now: run "
                             "without torchrun/srun or an mpi:// channel", cfg.model.mode)
        return ddp.train(cfg, consumer, expected_sims, on_progress, stop_event)
    t0 = time.monotonic()
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = import_function(cfg.model.adapter)
    builder = import_function(cfg.model.builder)
    buf = make_buffer(cfg.buffer.kind, cfg.buffer.capacity, cfg.buffer.watermark, cfg.buffer.seed,
                      post_stream_batches=cfg.buffer.post_stream_batches,
                      epochs=cfg.buffer.epochs, record=cfg.buffer.record_arrivals)
    mode = ar.training_mode(cfg, adapter)  # autoregressive: windows, rollout validation (ar.py)
    if mode is not None:
        adapter, buf = mode.adapter, mode.wrap(buf)
    own = consumer is None
    if own:
        consumer = open_consumer(cfg.channel_url, capacity=cfg.channel.ring_mb << 20,
                                 study_dir=cfg.output.dir)  # tcp: secret.token lives there
    rx = Receiver(consumer, buf, cfg, adapter, expected_sims, finished)
    device = torch.device(cfg.train.device)
    model = opt = sched = None
    batches, loss_acc, loss_n = 0, 0.0, 0

    def make(in_dim, out_dim):
        m = (mode.build(builder, in_dim, out_dim) if mode else builder(in_dim, out_dim, cfg))
        m = m.to(device)
        o = torch.optim.Adam(m.parameters(), lr=cfg.train.lr)
        return m, o, torch.optim.lr_scheduler.MultiStepLR(o, cfg.train.lr_milestones,
                                                           cfg.train.lr_gamma)

    # --- resume (checkpoint.py): accounting, buffer, model, optimizer, RNG, batch count ---
    ck = checkpoint.load_latest(out) if resume else None
    if ck is not None:
        checkpoint.restore_stream(ck, rx, buf)
        model, opt, sched = make(*ck["dims"])
        batches = checkpoint.restore_training(ck, model, opt, sched)
        checkpoint.trim_metrics(out / "metrics.jsonl", batches)
        log.warning("resumed from %s at batch %d (%d samples, %d simulations fully received)",
                    ck["path"], batches, rx.samples, len(rx.sims_done))
    rx.start()
    metrics = open(out / "metrics.jsonl", "a" if ck is not None else "w")

    def save_checkpoint(final=False, summary=None):
        state = checkpoint.capture(model, opt, sched, batches, rx, buf, cfg)
        if summary is not None:
            state["summary"] = summary
        checkpoint.save(out, state, cfg.train.keep_checkpoints, final=final)
    val_mse = None
    try:
        while batches < cfg.train.max_batches:
            if stop_event is not None and stop_event.is_set():
                raise KeyboardInterrupt
            b = buf.get_batch(cfg.train.batch_size, timeout=0.2)
            if rx.error is not None:
                raise TrainError(f"receiver failed: {rx.error}") from rx.error
            if b is None:
                if buf.exhausted:
                    break
                continue
            if model is None:
                model, opt, sched = make(*(mode.dims() if mode else (b.x.shape[1], b.y.shape[1])))
            if mode is not None:
                loss = mode.loss(model, b, device)
            else:
                x, y = torch.from_numpy(b.x).to(device), torch.from_numpy(b.y).to(device)
                loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            batches += 1
            loss_acc += loss.item()
            loss_n += 1
            if cfg.train.checkpoint_every and batches % cfg.train.checkpoint_every == 0:
                save_checkpoint()
            if batches % cfg.train.val_every == 0:
                val = _validation(mode, model, rx.val, device)
                val_mse = val["val_mse"]
                m = {"batch": batches, "time": round(time.monotonic() - t0, 3),
                     "lr": sched.get_last_lr()[0], "train_loss": loss_acc / loss_n,
                     "val_mse": val_mse, "samples": rx.samples, "buffer": len(buf),
                     "sims_done": len(rx.sims_done), "duplicates": rx.duplicates, **val}
                loss_acc, loss_n = 0.0, 0
                metrics.write(json.dumps(m) + "\n")
                metrics.flush()
                if on_progress:
                    on_progress(m)
        rx.stop_event.set()
        rx.join(timeout=5)
        if model is None:
            raise TrainError(f"no training sample arrived on {cfg.channel_url} "
                             f"({rx.frames} frames, {rx.rejected} rejected): is a simulation running "
                             f"and sending to this channel?")
        val = _validation(mode, model, rx.val, device)
        val_mse = val["val_mse"]
        mean_field = None
        if rx.val and rx.y_count:
            mean_y = (rx.y_sum / rx.y_count).astype(np.float32)
            ys = np.stack([v[1] for v in rx.val.values()])
            mean_field = float(((ys - mean_y) ** 2).mean())
        summary = {"val_mse": val_mse, "mean_field_mse": mean_field, "batches": batches,
                   "samples_received": rx.samples, "validation_samples": len(rx.val),
                   "duplicates_dropped": rx.duplicates, "frames_rejected": rx.rejected,
                   "sims_done": len(rx.sims_done), "sims_failed": len(rx.sims_failed),
                   "buffer": buf.stats(), "wall_s": round(time.monotonic() - t0, 3),
                   "abandoned_slots": getattr(consumer, "abandoned", 0), **val}
        save_checkpoint(final=True, summary=summary)  # also <out>/checkpoint.pt
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.buffer.record_arrivals:
            np.save(out / "arrivals.npy", buf.arrivals())
        return summary
    except KeyboardInterrupt:
        if model is not None:  # exit checkpoint: `--resume` continues from here
            rx.stop_event.set()
            rx.join(timeout=5)
            save_checkpoint()
        raise
    finally:
        rx.stop_event.set()
        metrics.close()
        rx.join(timeout=5)
        if own:
            consumer.close()


def model_dims(model) -> list[int]:
    """(in_dim, out_dim) of a model built by a builder, from its first and last Linear layers."""
    import torch  # noqa: PLC0415
    if getattr(model, "dims", None) is not None:  # e.g. models.build_conv1d's (no Linear)
        return list(model.dims)
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return [lin[0].in_features, lin[-1].out_features] if lin else []
