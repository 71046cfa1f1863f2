"""Assemble the next training batch in a thread while the current one trains.

A Prefetcher draws batches from a training buffer (reservoir.py) ahead of the loop, turns them into
torch tensors (in pinned host memory when the model is on a GPU, so the copy to the device can be
non_blocking) and hands them over in order. It draws at most `depth` batches ahead and never more
than `limit` in all, so it serves no batch the loop will not train.

    pf = Prefetcher(buf, batch_size=32, limit=1000, pin=device.type == "cuda")
    item = pf.get(timeout=0.2)     # Item(x, y, keys), or None: nothing yet (or pf.exhausted)
    held = pf.pause()              # before a checkpoint: the thread is idle, `held` not trained yet
    pf.resume(); pf.close()

Batches restored from a checkpoint (drawn, never trained) are passed as `initial` and come first.
An exception in the thread (a buffer error) is raised again by the next get().
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class Item:
    x: object  # torch.Tensor (B, in), host memory (pinned for CUDA)
    y: object  # torch.Tensor (B, out)
    keys: np.ndarray  # (B, 2) int64

    def arrays(self) -> tuple:
        return self.x.numpy(), self.y.numpy(), self.keys


class Prefetcher:
    def __init__(self, buf, batch_size: int, limit: int, pin: bool = False, depth: int = 1,
                 initial=(), poll: float = 0.1):
        self.buf, self.batch_size, self.limit, self.pin = buf, batch_size, limit, pin
        self.depth, self.poll = depth, poll
        self.cond = threading.Condition()
        self.q: deque[Item] = deque(self._item(x, y, k) for x, y, k in initial)
        self.drawn = 0  # batches this prefetcher took from the buffer
        self.busy = self.paused = self.closed = self.buf_exhausted = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ot-prefetch", daemon=True)
        self.thread.start()

    def _item(self, x, y, keys) -> Item:
        import torch  # noqa: PLC0415
        tx, ty = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        if self.pin:
            tx, ty = tx.pin_memory(), ty.pin_memory()
        return Item(tx, ty, np.asarray(keys, np.int64))

    def _run(self):
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.closed or (
                        not self.paused and not self.buf_exhausted and len(self.q) < self.depth
                        and self.drawn < self.limit))
                    if self.closed:
                        return
                    self.busy = True
                item, exhausted = None, False
                try:
                    b = self.buf.get_batch(self.batch_size, timeout=self.poll)
                    item = None if b is None else self._item(b.x, b.y, b.keys)
                    exhausted = b is None and self.buf.exhausted
                finally:  # one critical section: pause() never sees a batch in flight
                    with self.cond:
                        self.busy = False
                        if item is not None:
                            self.q.append(item)
                            self.drawn += 1
                        self.buf_exhausted = exhausted
                        self.cond.notify_all()
        except BaseException as e:  # surfaced by get()
            with self.cond:
                self.error = e
                self.cond.notify_all()

    @property
    def exhausted(self) -> bool:
        """Nothing held and nothing more will come (the buffer is exhausted or `limit` reached)."""
        with self.cond:
            return not self.q and (self.buf_exhausted or self.drawn >= self.limit)

    def get(self, timeout: float | None = None) -> Item | None:
        with self.cond:
            self.cond.wait_for(lambda: self.q or self.error is not None or self.buf_exhausted
                               or self.drawn >= self.limit, timeout)
            if self.error is not None:
                raise self.error
            if self.q:
                item = self.q.popleft()
                self.cond.notify_all()
                return item
            return None

    def pause(self) -> list[Item]:
        """Stop drawing and wait for a draw in progress; the batches held, oldest first."""
        with self.cond:
            self.paused = True
            self.cond.wait_for(lambda: not self.busy)
            return list(self.q)

    def resume(self):
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout=5)
