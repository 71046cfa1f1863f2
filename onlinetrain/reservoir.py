"""Training buffers between the receiving thread and the training loop: FIFO, FIRO, Reservoir, Offline.

- FIFO: each sample served once, in arrival order; `put` blocks when full (backpressure).
- FIRO: each sample served `pseudo_epochs` times (default 1), drawn at random among those present,
  and only while at least `watermark` samples are present (Melissa's `per_server_watermark`) or
  once the stream has ended; a sample leaves after its last serving; `put` blocks when full.
- Reservoir: never blocks the receiver: when full, a new sample evicts one chosen uniformly at
  random; batches are drawn uniformly with repetition, only once `watermark` samples are present,
  so the trainer keeps working (re-serving seen samples) while data is short. After the stream
  ends it keeps serving for `post_stream_batches` batches (-1: until the trainer stops).
- Offline: the unbiased reference; holds the whole data set (capacity >= all samples), serves
  nothing until the stream ends, then `epochs` fully shuffled epochs, each sample once per epoch.

    buf = make_buffer("reservoir", capacity=2000, watermark=500, seed=0)
    buf.put(x, y, key=(sim_id, step))    # receiving thread
    batch = buf.get_batch(32)            # training loop; None once the buffer is exhausted
    buf.end_stream()                     # no more samples will come

FIFO starts serving at one batch (Melissa's FIFO has no watermark either).
End of stream: FIFO/FIRO drain what is left (the last batch may be short) and are then exhausted;
the Reservoir serves `post_stream_batches` more batches; Offline serves its epochs.
Waiting is on a condition variable (never a spin): `stats()["wakeups"]` counts predicate checks.
Given a seed and an arrival order, every buffer serves the same batches (replayable); with
`record=True` the keys are logged in arrival order (`arrivals()`), which is what a replay needs.
Samples are float32 vectors stored in preallocated arrays (sized on the first put); every sample
carries its (simulation id, time step) key and a times-served counter (`seen`). Pair mode for
autoregressive surrogates (u_t -> u_t+1) is in onlinetrain/pairs.py.

    state = buf.state_dict()       # plain types and tensors: torch.save, torch.load(weights_only=True)
    buf2 = make_buffer(...same arguments...); buf2.load_state_dict(state)   # serves as buf would
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .errors import OTError


class BufferError_(OTError, RuntimeError):
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

    def __init__(self, capacity: int, seed: int = 0, record: bool = False):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise BufferError_(f"buffer capacity {capacity!r} must be an integer >= 1", capacity)
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.cond = threading.Condition()
        self.x = self.y = None
        # sized on the first put, after the memory check
        self.keys = np.zeros((0, 2), np.int64)
        self.seen = np.zeros(0, np.int64)
        self.size = 0
        self.received = 0
        self.served = 0
        self.evicted = 0
        self.evicted_unseen = 0  # evicted before ever being served
        self.batches = 0
        self.wakeups = 0  # predicate evaluations of waiting calls (a spin would make this huge)
        self.ended = False
        self._arrivals: list | None = [] if record else None

    def _alloc(self, x: np.ndarray, y: np.ndarray):
        need = self.capacity * ((x.size + y.size) * 4 + 3 * 8)  # + key and times-served
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
        self.keys = np.zeros((self.capacity, 2), np.int64)
        self.seen = np.zeros(self.capacity, np.int64)

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
            if not self.cond.wait_for(lambda: self._woke() and (self._has_room() or self.ended),
                                      timeout):
                return False
            self._insert(x, y, key)
            self.received += 1
            if self._arrivals is not None:
                self._arrivals.append(tuple(int(k) for k in key))
            self.cond.notify_all()
            return True

    def put_many(self, x, y, keys, timeout: float | None = None) -> int:
        """Insert the rows of `x`, `y` (keys: (n, 2)) under one lock round-trip, in order; returns
        how many went in (fewer than n only if the buffer stayed full for `timeout`)."""
        n = len(keys)
        if n == 0:
            return 0
        with self.cond:
            self._check(x[0], y[0])
            if x.shape[1:] != (self.x.shape[1],) or y.shape[1:] != (self.y.shape[1],):
                raise BufferError_(f"samples of shapes {x.shape}, {y.shape} do not match the "
                                   f"buffer's rows ({self.x.shape[1]}, {self.y.shape[1]})",
                                   (x.shape, y.shape))
            done = 0
            while done < n:
                if not self.cond.wait_for(lambda: self._woke() and (self._has_room() or self.ended),
                                          timeout if done == 0 else 0):
                    break
                k = self._insert_many(x[done:], y[done:], keys[done:])
                if self._arrivals is not None:
                    self._arrivals.extend(map(tuple, keys[done:done + k].tolist()))
                done += k
                self.received += k
                self.cond.notify_all()
            return done

    def _insert_many(self, x, y, keys) -> int:
        """Insert rows while there is room (at least one); how many."""
        k = 0
        while k < len(keys) and (k == 0 or self._has_room()):
            self._insert(x[k], y[k], keys[k])
            k += 1
        return k

    def _woke(self) -> bool:
        self.wakeups += 1
        return True

    def arrivals(self) -> np.ndarray:
        """(n, 2) int64 keys in arrival order (only with record=True)."""
        if self._arrivals is None:
            raise BufferError_("arrivals were not recorded: create the buffer with record=True",
                               None)
        with self.cond:
            return np.array(self._arrivals, np.int64).reshape(-1, 2)

    def end_stream(self):
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def _take(self, idx: np.ndarray) -> Batch:
        np.add.at(self.seen, idx, 1)
        self.served += len(idx)
        self.batches += 1
        return Batch(self.x[idx].copy(), self.y[idx].copy(), self.keys[idx].copy())

    def get_batch(self, batch_size: int, timeout: float | None = None) -> Batch | None:
        """A batch; None when exhausted (or nothing came within `timeout`: check `exhausted`)."""
        with self.cond:
            if batch_size < 1:
                raise BufferError_(f"batch size {batch_size} must be >= 1", batch_size)
            if not self.cond.wait_for(
                    lambda: self._woke() and (self._ready(batch_size) or self.exhausted), timeout):
                return None
            if self.exhausted:
                return None
            b = self._draw(batch_size)
            self.cond.notify_all()
            return b

    def __len__(self):
        return self.size

    def stats(self) -> dict:
        with self.cond:
            present = self.seen[:self.size] if self.kind != "fifo" else None
            return {"kind": self.kind, "size": self.size, "received": self.received,
                    "served": self.served, "batches": self.batches, "evicted": self.evicted,
                    "evicted_unseen": self.evicted_unseen, "wakeups": self.wakeups,
                    "mean_seen_present": (float(present.mean()) if present is not None
                                          and len(present) else None)}


    # --- state for resumable checkpoints: plain types and tensors only ---
    _scalars = ("size", "received", "served", "evicted", "evicted_unseen", "batches", "ended")
    _extra: tuple = ()  # a kind's own position (FIFO head, Offline order and epoch, ...)

    def state_dict(self) -> dict:
        """Contents, times served, counters, RNG state and the kind's position: what a new buffer
        of the same kind and capacity needs to serve exactly the batches this one would."""
        import torch  # noqa: PLC0415
        with self.cond:
            d = {"kind": self.kind, "capacity": self.capacity,
                 "rng": self.rng.bit_generator.state}
            for k in self._scalars + self._extra:
                v = getattr(self, k)
                d[k] = torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v
            for k in ("keys", "seen", "x", "y"):
                if getattr(self, k) is not None:
                    d[k] = torch.from_numpy(getattr(self, k).copy())
            if self._arrivals is not None:
                d["arrivals"] = torch.tensor(self._arrivals, dtype=torch.int64).reshape(-1, 2)
            return d

    def load_state_dict(self, d: dict) -> None:
        """Continue from `state_dict()` (also reads format-1 checkpoints' buffer section)."""
        kind, cap = d.get("kind"), d.get("capacity")
        if kind != self.kind or cap != self.capacity:
            raise BufferError_(f"buffer state of a {kind} buffer of {cap} samples cannot be "
                               f"loaded into a {self.kind} buffer of {self.capacity}: use the "
                               f"same buffer.kind and buffer.capacity", (kind, cap))
        size = int(d.get("size", -1))
        if not 0 <= size <= self.capacity or ("x" in d) != ("y" in d):
            raise BufferError_(f"buffer state holds {size} samples for capacity "
                               f"{self.capacity}, or x without y: it is damaged", size)
        with self.cond:
            for k in self._scalars + self._extra:
                if k in d:
                    v = d[k]
                    setattr(self, k, v.numpy().copy() if hasattr(v, "numpy") else v)
            self.keys, self.seen = d["keys"].numpy().copy(), d["seen"].numpy().copy()
            self.x = d["x"].numpy().copy() if "x" in d else None
            self.y = d["y"].numpy().copy() if "y" in d else None
            self.rng.bit_generator.state = d["rng"]
            if self._arrivals is not None and "arrivals" in d:
                self._arrivals = [tuple(r) for r in d["arrivals"].tolist()]
            self.cond.notify_all()


def _check_watermark(watermark, capacity):
    if not isinstance(watermark, (int, np.integer)) or not 1 <= watermark <= capacity:
        raise BufferError_(f"watermark {watermark!r} must be an integer in 1..capacity "
                           f"({capacity})", watermark)


class FIFO(_Base):
    kind = "fifo"
    _extra = ("head",)

    def __init__(self, capacity: int, seed: int = 0, record: bool = False):
        super().__init__(capacity, seed, record)
        self.head = 0  # index of the oldest sample

    def _has_room(self):
        return self.size < self.capacity

    def _insert(self, x, y, key):
        self._store((self.head + self.size) % self.capacity, x, y, key)
        self.size += 1

    def _ready(self, b):
        # a full buffer is ready even below one batch: put blocks when full, so waiting for
        # more would deadlock a trainer whose batch is larger than the capacity
        return self.size >= min(b, self.capacity) or (self.ended and self.size > 0)

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
    """First in, random out (see the module docstring); at most once per sample per batch."""
    kind = "firo"

    def __init__(self, capacity: int, watermark: int = 1, seed: int = 0, pseudo_epochs: int = 1,
                 record: bool = False):
        super().__init__(capacity, seed, record)
        _check_watermark(watermark, capacity)
        if not isinstance(pseudo_epochs, (int, np.integer)) or pseudo_epochs < 1:
            raise BufferError_(f"pseudo_epochs {pseudo_epochs!r} must be an integer >= 1 (times "
                               f"each sample is served)", pseudo_epochs)
        self.watermark = int(watermark)
        self.pseudo_epochs = int(pseudo_epochs)

    _has_room = FIFO._has_room

    def _insert(self, x, y, key):
        self._store(self.size, x, y, key)
        self.size += 1

    def _ready(self, b):
        # never more than the capacity: a full buffer is always ready (put blocks when full)
        return (self.size >= max(self.watermark, min(b, self.capacity))
                or (self.ended and self.size > 0))

    exhausted = FIFO.exhausted

    def _draw(self, b):
        n = min(b, self.size)
        idx = self.rng.choice(self.size, size=n, replace=False)
        batch = self._take(idx)
        gone = idx[self.seen[idx] >= self.pseudo_epochs]  # served for the last time
        # fill the holes below the new size with the survivors above it
        m = self.size - len(gone)
        keep = np.setdiff1d(np.arange(m, self.size), gone, assume_unique=True)
        holes = np.sort(gone[gone < m])
        for a in (self.x, self.y, self.keys, self.seen):
            a[holes] = a[keep]
        self.size = m
        return batch


class Reservoir(_Base):
    kind = "reservoir"
    _extra = ("batches_at_end",)

    def __init__(self, capacity: int, watermark: int, seed: int = 0,
                 post_stream_batches: int = -1, record: bool = False):
        super().__init__(capacity, seed, record)
        _check_watermark(watermark, capacity)
        if post_stream_batches < -1:
            raise BufferError_(f"post_stream_batches {post_stream_batches} must be >= 0, or -1 "
                               f"(serve until the trainer stops)", post_stream_batches)
        self.watermark = int(watermark)
        self.post_stream_batches = int(post_stream_batches)
        self.batches_at_end: int | None = None

    def end_stream(self):
        with self.cond:
            if self.batches_at_end is None:
                self.batches_at_end = self.batches
            super().end_stream()

    def _has_room(self):
        return True  # never blocks: evicts instead

    def _insert(self, x, y, key):
        if self.size < self.capacity:
            self._store(self.size, x, y, key)
            self.size += 1
        else:
            i = int(self.rng.integers(self.capacity))
            self.evicted_unseen += int(self.seen[i] == 0)
            self._store(i, x, y, key)
            self.evicted += 1

    def _insert_many(self, x, y, keys) -> int:
        """Vectorised `_insert`: the same draws, in the same order, as one `_insert` per row."""
        n = len(keys)
        m = min(n, self.capacity - self.size)
        if m:
            sl = slice(self.size, self.size + m)
            self.x[sl], self.y[sl], self.keys[sl], self.seen[sl] = x[:m], y[:m], keys[:m], 0
            self.size += m
        if n > m:
            idx = self.rng.integers(self.capacity, size=n - m)
            uniq, first = np.unique(idx, return_index=True)
            # a slot drawn twice held, the second time, a sample just stored and never served
            self.evicted_unseen += int((self.seen[idx[first]] == 0).sum()) + (len(idx) - len(uniq))
            self.x[idx], self.y[idx], self.keys[idx], self.seen[idx] = x[m:], y[m:], keys[m:], 0
            self.evicted += n - m
        return n

    def _ready(self, b):
        return self.size >= self.watermark or (self.ended and self.size > 0)

    @property
    def exhausted(self):
        if not self.ended:
            return False
        if self.size == 0:
            return True
        return (self.post_stream_batches >= 0
                and self.batches - self.batches_at_end >= self.post_stream_batches)

    def _draw(self, b):
        return self._take(self.rng.integers(self.size, size=b))


class Offline(_Base):
    """The whole data set, then `epochs` shuffled epochs (the talk's unbiased reference)."""
    kind = "offline"
    _extra = ("epoch", "pos", "order")

    def __init__(self, capacity: int, seed: int = 0, epochs: int = 1, record: bool = False):
        super().__init__(capacity, seed, record)
        if not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise BufferError_(f"offline epochs {epochs!r} must be an integer >= 1", epochs)
        self.epochs = int(epochs)
        self.epoch = 0
        self.order: np.ndarray | None = None
        self.pos = 0

    def _has_room(self):
        return True  # never blocks; a full Offline buffer is an error (see _insert)

    def _insert(self, x, y, key):
        if self.size >= self.capacity:
            raise BufferError_(f"offline buffer is full at capacity {self.capacity}: it must hold "
                               f"the whole data set; raise buffer.capacity to at least the number "
                               f"of training samples", self.capacity)
        self._store(self.size, x, y, key)
        self.size += 1

    def _ready(self, b):
        return self.ended and self.size > 0

    @property
    def exhausted(self):
        return self.ended and (self.size == 0 or self.epoch >= self.epochs)

    def _draw(self, b):
        if self.order is None or self.pos >= self.size:
            self.order = self.rng.permutation(self.size)
            self.pos = 0
        idx = self.order[self.pos:self.pos + b]
        self.pos += len(idx)
        if self.pos >= self.size:
            self.epoch += 1
        return self._take(idx)


KINDS = ("reservoir", "fifo", "firo", "offline")


def make_buffer(kind: str, capacity: int, watermark: int = 1, seed: int = 0, *,
                post_stream_batches: int = -1, epochs: int = 1, pseudo_epochs: int = 1,
                record: bool = False) -> _Base:
    """A buffer by name; `watermark` is the Reservoir's and FIRO's, `post_stream_batches` the
    Reservoir's, `pseudo_epochs` FIRO's, `epochs` Offline's."""
    if kind == "reservoir":
        return Reservoir(capacity, watermark, seed, post_stream_batches, record)
    if kind == "fifo":
        return FIFO(capacity, seed, record)
    if kind == "firo":
        return FIRO(capacity, watermark, seed, pseudo_epochs, record)
    if kind == "offline":
        return Offline(capacity, seed, epochs, record)
    raise BufferError_(f"unknown buffer kind {kind!r}: use {', '.join(KINDS)}", kind)


def from_config(b, seed_offset: int = 0) -> _Base:
    """The buffer a [buffer] section (config.BufferConfig) describes; rank r passes seed_offset=r."""
    return make_buffer(b.kind, b.capacity, b.watermark, b.seed + seed_offset,
                       post_stream_batches=b.post_stream_batches, epochs=b.epochs,
                       pseudo_epochs=b.pseudo_epochs, record=b.record_arrivals)
