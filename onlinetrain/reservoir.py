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
autoregressive surrogates (u_t -> u_t+1) is in onlinetrain/pairs.py; what the kinds share
(storage, locking, batch insertion, checkpoint state) is in onlinetrain/buffer_base.py.

    state = buf.state_dict()       # plain types and tensors: torch.save, torch.load(weights_only=True)
    buf2 = make_buffer(...same arguments...); buf2.load_state_dict(state)   # serves as buf would
"""
from __future__ import annotations

import numpy as np

from .buffer_base import Batch, BufferError_, _Base, _check_watermark  # noqa: F401 (re-exported)


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
