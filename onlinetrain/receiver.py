"""The receiving path: frames from a channel -> adapter -> training buffer / validation set.

A `Receiver` thread takes frames from the channel (shm ring or TCP), turns each DATA frame into an
(input, target) sample with the configured adapter, routes held-out simulations to the validation
set (they never enter the buffer) and the rest into the buffer, and accounts for everything
(frames, samples, duplicates, rejected frames, simulations done / failed, stream ends).

    rx = Receiver(consumer, buffer, cfg, adapter, expected_sims=None)
    rx.start()                        # a daemon thread; rx.error holds what stopped it
    ...; rx.stop_event.set(); rx.join()

Duplicated (simulation, time step) pairs are dropped and counted; malformed frames and samples the
adapter rejects are logged and counted, never fatal.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from . import frame as fr
from .shm_channel import Empty

log = logging.getLogger(__name__)


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
