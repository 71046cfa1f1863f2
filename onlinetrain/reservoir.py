"""Training buffers between the receiving thread and the training loop: FIFO, FIRO and Reservoir.

- FIFO: each sample served once, in arrival order; `put` blocks when full (backpressure).
- FIRO: each sample served once, drawn at random among those present; `put` blocks when full.
- Reservoir: never blocks the receiver: when full, a new sample evicts one chosen uniformly at
  random; batches are drawn uniformly with repetition, only once `watermark` samples are present,
  so the trainer keeps working (re-serving seen samples) while data is short.

    buf = make_buffer("reservoir", capacity=2000, watermark=500, seed=0)
    buf.put(x, y, key=(sim_id, step))    # receiving thread
    batch = buf.get_batch(32)            # training loop; None once the buffer is exhausted
    buf.end_stream()                     # no more samples will come

Samples are float32 vectors stored in preallocated arrays (sized on the first put); every sample
carries its (simulation id, time step) key and a times-served counter.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


class BufferError_(RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass
class Batch:
    x: np.ndarray
    y: np.ndarray
    keys: np.ndarray  # (B, 2) int64: sim id, time step


class _Base:
    kind = "base"

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise BufferError_(f"buffer capacity {capacity} must be >= 1", capacity)
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.cond = threading.Condition()
        self.x = self.y = None
        self.keys = np.zeros((self.capacity, 2), np.int64)
        self.seen = np.zeros(self.capacity, np.int64)
        self.size = 0
        self.received = 0
        self.served = 0
        self.evicted = 0
        self.ended = False

    def _alloc(self, x: np.ndarray, y: np.ndarray):
        need = self.capacity * (x.size + y.size) * 4
        try:
            import psutil  # noqa: PLC0415
            avail = psutil.virtual_memory().available
        except Exception:  # pragma: no cover - psutil missing is not fatal here
            avail = None
        if avail is not None and need > 0.8 * avail:
            raise BufferError_(
                f"buffer of {self.capacity} samples x {x.size + y.size} floats needs "
                f"{need / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB is available; lower "
                f"buffer.capacity", self.capacity)
        self.x = np.zeros((self.capacity, x.size), np.float32)
        self.y = np.zeros((self.capacity, y.size), np.float32)

    def _store(self, i: int, x, y, key):
        self.x[i] = np.ravel(x)
        self.y[i] = np.ravel(y)
        self.keys[i] = key
        self.seen[i] = 0

    def _check(self, x, y):
        if self.x is None:
            self._alloc(np.asarray(x), np.asarray(y))
        elif np.size(x) != self.x.shape[1] or np.size(y) != self.y.shape[1]:
            raise BufferError_(f"sample of sizes ({np.size(x)}, {np.size(y)}) does not match the "
                               f"buffer's ({self.x.shape[1]}, {self.y.shape[1]})",
                               (np.size(x), np.size(y)))

    def put(self, x, y, key=(0, 0), timeout: float | None = None) -> bool:
        """Insert one sample; False if it could not be inserted within `timeout`."""
        with self.cond:
            self._check(x, y)
            if not self.cond.wait_for(lambda: self._has_room() or self.ended, timeout):
                return False
            self._insert(x, y, key)
            self.received += 1
            self.cond.notify_all()
            return True

    def end_stream(self):
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def _take(self, idx: np.ndarray) -> Batch:
        self.seen[idx] += 1
        self.served += len(idx)
        return Batch(self.x[idx].copy(), self.y[idx].copy(), self.keys[idx].copy())

    def get_batch(self, batch_size: int, timeout: float | None = None) -> Batch | None:
        """A batch; None when exhausted (or nothing came within `timeout`: check `exhausted`)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self._ready(batch_size) or self.exhausted, timeout):
                return None
            if self.exhausted:
                return None
            b = self._draw(batch_size)
            self.cond.notify_all()
            return b

    def __len__(self):
        return self.size

    def stats(self) -> dict:
        return {"kind": self.kind, "size": self.size, "received": self.received,
                "served": self.served, "evicted": self.evicted}


class FIFO(_Base):
    kind = "fifo"

    def __init__(self, capacity: int, seed: int = 0):
        super().__init__(capacity, seed)
        self.head = 0  # index of the oldest sample

    def _has_room(self):
        return self.size < self.capacity

    def _insert(self, x, y, key):
        self._store((self.head + self.size) % self.capacity, x, y, key)
        self.size += 1

    def _ready(self, b):
        return self.size >= b or (self.ended and self.size > 0)

    @property
    def exhausted(self):
        return self.ended and self.size == 0

    def _draw(self, b):
        n = min(b, self.size)
        idx = (self.head + np.arange(n)) % self.capacity
        batch = self._take(idx)
        self.head = (self.head + n) % self.capacity
        self.size -= n
        return batch


class FIRO(_Base):
    kind = "firo"

    def _has_room(self):
        return self.size < self.capacity

    def _insert(self, x, y, key):
        self._store(self.size, x, y, key)
        self.size += 1

    _ready = FIFO._ready
    exhausted = FIFO.exhausted

    def _draw(self, b):
        n = min(b, self.size)
        idx = self.rng.choice(self.size, size=n, replace=False)
        batch = self._take(idx)
        # fill the holes with the last samples (served ones are gone)
        keep = np.setdiff1d(np.arange(self.size - n, self.size), idx, assume_unique=True)
        holes = np.sort(idx[idx < self.size - n])
        for h, k in zip(holes, keep):
            self.x[h], self.y[h], self.keys[h], self.seen[h] = \
                self.x[k], self.y[k], self.keys[k], self.seen[k]
        self.size -= n
        return batch


class Reservoir(_Base):
    kind = "reservoir"

    def __init__(self, capacity: int, watermark: int, seed: int = 0):
        super().__init__(capacity, seed)
        if not 1 <= watermark <= capacity:
            raise BufferError_(f"watermark {watermark} must be in 1..capacity ({capacity})",
                               watermark)
        self.watermark = int(watermark)

    def _has_room(self):
        return True  # never blocks: evicts instead

    def _insert(self, x, y, key):
        if self.size < self.capacity:
            self._store(self.size, x, y, key)
            self.size += 1
        else:
            self._store(int(self.rng.integers(self.capacity)), x, y, key)
            self.evicted += 1

    def _ready(self, b):
        return self.size >= self.watermark or (self.ended and self.size > 0)

    @property
    def exhausted(self):
        return self.ended and self.size == 0

    def _draw(self, b):
        return self._take(self.rng.integers(self.size, size=b))


def make_buffer(kind: str, capacity: int, watermark: int = 1, seed: int = 0) -> _Base:
    if kind == "reservoir":
        return Reservoir(capacity, watermark, seed)
    if kind == "fifo":
        return FIFO(capacity, seed)
    if kind == "firo":
        return FIRO(capacity, seed)
    raise BufferError_(f"unknown buffer kind {kind!r}: use reservoir, fifo or firo", kind)
