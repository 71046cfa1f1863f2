"""The receiving path: frames -> assembled steps -> adapter -> training buffer / validation set.

A `Receiver` thread takes frames from the channel (shm ring, TCP, MPI) in batches of up to 256,
assembles each step's pieces and fields (onlinetrain/assembly.py), hands complete steps to the
adapter (one call per batch where the adapter has a vectorised form), routes held-out simulations
to the validation set and puts the rest into the buffer with one `put_many`: one lock round-trip
per batch. Where it runs (a thread of the training process) and why: docs/receiver.md.

    rx = Receiver(consumer, buffer, cfg, adapter, expected_sims=None)
    rx.start()                        # a daemon thread; rx.error holds what stopped it
    x, y, keys = rx.val_arrays()      # a consistent snapshot of the validation set, any thread
    state = rx.state_dict(); rx.load_state_dict(state)   # the checkpoint's "receiver" section
    rx.stop_event.set(); rx.join()

Duplicates (same simulation, step, field and piece) are dropped and counted; malformed frames and
samples the adapter rejects or whose sizes differ from the first sample's are logged and counted,
never fatal. A simulation is done once everything its SIM_END announced has arrived
(`sims_done`); one that ended with holes is `sims_incomplete` and must be re-run.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from . import frame as fr
from .assembly import Assembler, steps_received  # noqa: F401 (re-exported)
from .shm_channel import Empty
from .step import resolve_adapter

log = logging.getLogger(__name__)
BATCH = 256  # frames per get_many
COPY_BELOW = 256 << 10  # frames smaller than this on average are copied out (cheaper than views)
GATHER_S = 0.02  # after a short batch of small frames, let more gather (GIL free) this long


def _t(a):
    import torch  # noqa: PLC0415
    return torch.from_numpy(np.ascontiguousarray(a))


def fully_received(state: dict | None) -> set[int]:
    """The simulations a receiver state (`state_dict()`) counts done."""
    return set() if state is None else set(int(r[0]) for r in state["done"].tolist())


class Receiver(threading.Thread):
    """Moves frames from the channel to the buffer / validation set; accounts for everything."""

    def __init__(self, consumer, buffer, cfg, adapter, expected_sims: int | None = None,
                 finished=None):
        super().__init__(name="ot-receiver", daemon=True)
        self.consumer, self.buffer, self.cfg = consumer, buffer, cfg
        self.adapter, self.adapt_many, fields = resolve_adapter(adapter, cfg)
        self.asm = Assembler(fields)
        self.expected_sims = expected_sims
        self.finished = finished  # study mode: fn(receiver) -> True once the ledger says all ended
        self.lock = threading.RLock()  # held while a batch is accounted for (state_dict waits)
        self.stop_event = threading.Event()
        self.stream_ends = 0
        self.frames = self.samples = self.rejected = 0
        self.sizes: tuple[int, int] | None = None  # (x, y) sizes of the first sample
        self.y_sum = None
        self.y_count = 0
        self.error: BaseException | None = None
        self.last_frame = time.monotonic()
        self._vx: list = []  # validation rows (copies), their keys; snapshot cached until it grows
        self._vy: list = []
        self._vk: list = []
        self._vsnap = None
        self._backlog = None  # (x, y, keys) adapted but not yet in the buffer (it was full)
        self._copy = True
        self.stats = None  # onlinetrain.stats.Statistics fed from the same frames ([stats])

    # --- what the loop reads -----------------------------------------------------------------
    @property
    def sims_done(self) -> set[int]:
        return self.asm.done

    @property
    def sims_failed(self) -> dict[int, str]:
        return self.asm.failed

    @property
    def sims_incomplete(self) -> set[int]:
        return self.asm.incomplete

    @property
    def duplicates(self) -> int:
        return self.asm.duplicates

    def val_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, keys) of the validation set as it is now; never changes under the caller."""
        with self.lock:
            if self._vsnap is None or len(self._vsnap[2]) != len(self._vk):
                n = len(self._vk)
                self._vsnap = (np.stack(self._vx) if n else np.zeros((0, 0), np.float32),
                               np.stack(self._vy) if n else np.zeros((0, 0), np.float32),
                               np.array(self._vk, np.int64).reshape(-1, 2))
            return self._vsnap

    @property
    def val(self) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        """A snapshot dict {(sim, step): (x, y)} of the validation set (safe to walk)."""
        x, y, k = self.val_arrays()
        return {(int(a), int(b)): (x[i], y[i]) for i, (a, b) in enumerate(k)}

    @property
    def stream_ended(self) -> bool:
        if self.stream_ends >= self.cfg.simulate.producers:
            return True
        if self.finished is not None:
            return self.finished(self)
        return self.expected_sims is not None and len(self.asm.ended) >= self.expected_sims

    # --- the thread --------------------------------------------------------------------------
    def run(self):
        try:
            if self._backlog is not None:  # restored from a checkpoint
                with self.lock:
                    self._put(*self._backlog)
            while not self.stop_event.is_set() and not self.stream_ended:
                try:
                    frames = self.consumer.get_many(BATCH, timeout=0.2, copy=self._copy)
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
                    with self.lock:
                        self.handle_batch(frames)
                finally:  # on an error too: every slot / receive buffer of the batch goes back
                    for f in frames:
                        rel = getattr(f, "release", None)
                        if rel is not None:
                            rel()
                if len(frames) < BATCH // 2 and self._copy:
                    # a trickle: polling the channel for each frame (the consumer spins, then
                    # yields) would take the GIL from the training loop hundreds of times per
                    # batch; waiting here lets frames gather into fewer, larger batches
                    self.stop_event.wait(GATHER_S)
        except BaseException as e:  # surfaced by the training loop
            self.error = e
        finally:
            self.buffer.end_stream()

    def handle(self, f: fr.Frame):
        """Account for one frame (tests and callers without batches)."""
        with self.lock:
            self.handle_batch([f])

    def handle_batch(self, frames) -> None:
        if self.stats is not None:  # the same frames (views of the channel), before they go back
            self.stats.update_many(frames)
        asm, steps, data_bytes, n_data = self.asm, [], 0, 0
        for f in frames:
            kind = f.kind
            if kind == fr.DATA:
                n_data += 1
                data_bytes += f.array.nbytes
                try:
                    st = asm.add(f)
                except (fr.FrameError, ValueError, MemoryError) as e:
                    self.rejected += 1
                    log.warning("rejected a piece (sim %d, step %d, field %r): %s", f.sim_id,
                                f.time_step, f.name, e)
                    continue
                if st is not None:
                    steps.append(st)
            elif kind == fr.SIM_END:
                if asm.sim_end(f) == "incomplete":
                    log.warning("simulation %d ended with steps missing %s: it counts incomplete "
                                "(to be re-run) unless they still arrive", f.sim_id,
                                asm.missing(f.sim_id))
            elif kind == fr.SIM_FAILED:
                if asm.sim_failed(f):
                    log.warning("simulation %d failed: %s", f.sim_id, f.name)
                else:  # an attempt's late report; another one finished it
                    log.info("simulation %d: failure report after it completed (%s); ignored",
                             f.sim_id, f.name)
            elif kind == fr.STREAM_END:
                self.stream_ends += 1
        self.frames += len(frames)
        if n_data:
            self._copy = data_bytes < COPY_BELOW * n_data
        if steps:
            self._adapt(steps)

    def _adapt(self, steps) -> None:
        xs, ys, keep = None, None, steps
        if self.adapt_many is not None:
            try:
                xs, ys = self.adapt_many(steps, self.cfg)
                xs = np.asarray(xs, np.float32).reshape(len(steps), -1)
                ys = np.asarray(ys, np.float32).reshape(len(steps), -1)
            except Exception as e:  # noqa: BLE001 - retried one by one, each failure counted
                log.debug("vectorised adapter failed (%s); adapting one by one", e)
                xs = None
        if xs is None:
            rows_x, rows_y, keep = [], [], []
            for st in steps:
                try:
                    x, y = self.adapter(st, self.cfg)
                    x = np.asarray(x, np.float32).reshape(-1)
                    y = np.asarray(y, np.float32).reshape(-1)
                except Exception as e:  # a user adapter may raise anything: count and go on
                    self.rejected += 1
                    log.warning("adapter rejected step %d of simulation %d: %s", st.time_step,
                                st.sim_id, e)
                    continue
                if not self._size_ok(x.size, y.size, st):
                    continue
                rows_x.append(x)
                rows_y.append(y)
                keep.append(st)
            if not keep:
                return
            xs, ys = np.stack(rows_x), np.stack(rows_y)  # copies: x, y may view the channel
        elif not self._size_ok(xs.shape[1], ys.shape[1], steps[0], len(steps)):
            return
        keys = np.array([(st.sim_id, st.time_step) for st in keep], np.int64).reshape(-1, 2)
        is_val = self.cfg.validation.is_validation
        val = np.array([is_val(st.sim_id) for st in keep], bool)
        if val.any():
            for i in np.flatnonzero(val):
                self._vx.append(np.array(xs[i]))
                self._vy.append(np.array(ys[i]))
                self._vk.append((int(keys[i, 0]), int(keys[i, 1])))
            xs, ys, keys = xs[~val], ys[~val], keys[~val]
        self.samples += len(keep)
        if len(keys):
            if self.y_sum is None:
                self.y_sum = np.zeros(ys.shape[1], np.float64)
            self.y_sum += ys.sum(axis=0, dtype=np.float64)
            self.y_count += len(keys)
            self._put(xs, ys, keys)

    def _size_ok(self, nx: int, ny: int, st, n: int = 1) -> bool:
        if self.sizes is None:
            self.sizes = (int(nx), int(ny))
            return True
        if (nx, ny) == self.sizes:
            return True
        self.rejected += n
        log.warning("step %d of simulation %d gives %d input and %d target values, earlier steps "
                    "gave %d and %d: skipped", st.time_step, st.sim_id, nx, ny, *self.sizes)
        return False

    def _put(self, xs, ys, keys) -> None:
        """Into the buffer; while it is full the lock is let go (a checkpoint then saves what is
        left as the backlog, so that it is neither lost nor counted twice)."""
        while True:
            i = self.buffer.put_many(xs, ys, keys, timeout=0.05)
            if i >= len(keys):
                self._backlog = None
                return
            # copies: xs, ys may view the channel's memory, released at the end of the batch
            xs, ys, keys = xs[i:].copy(), ys[i:].copy(), keys[i:].copy()
            self._backlog = (xs, ys, keys)
            if self.stop_event.is_set():
                return
            self.lock.release()  # buffer full: let a checkpoint in while we wait
            try:
                time.sleep(0.01)
            finally:
                self.lock.acquire()

    # --- checkpoint section ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The receiver's accounting: plain types and tensors (torch.load(weights_only=True)).
        Its size grows with simulations and the validation set, not with samples."""
        with self.lock:
            d = self.asm.state_dict()
            x, y, k = self.val_arrays()
            d.update({"version": 2, "frames": self.frames, "samples": self.samples,
                      "rejected": self.rejected, "y_count": self.y_count,
                      "y_sum": None if self.y_sum is None else _t(self.y_sum.copy()),
                      "sizes": None if self.sizes is None else list(self.sizes),
                      "val_x": _t(x), "val_y": _t(y), "val_keys": _t(k)})
            if self._backlog is not None:
                d["backlog"] = [_t(a.copy()) for a in self._backlog]
            return d

    def load_state_dict(self, d: dict) -> None:
        """Put a `state_dict()` back (before the thread starts)."""
        with self.lock:
            self.asm.load_state_dict(d)
            self.frames, self.samples, self.rejected = \
                int(d["frames"]), int(d["samples"]), int(d["rejected"])
            self.y_count = int(d["y_count"])
            self.y_sum = None if d["y_sum"] is None else d["y_sum"].numpy().copy()
            self.sizes = None if d["sizes"] is None else tuple(int(v) for v in d["sizes"])
            x, y, k = (d[n].numpy().copy() for n in ("val_x", "val_y", "val_keys"))
            self._vx, self._vy = list(x), list(y)
            self._vk = [(int(a), int(b)) for a, b in k.tolist()]
            self._vsnap = None
            bl = d.get("backlog")
            self._backlog = None if bl is None else tuple(t.numpy().copy() for t in bl)
