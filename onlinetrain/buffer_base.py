"""What every training buffer shares (reservoir.py has the kinds): preallocated float32 rows with
their (simulation, step) keys and times-served counters, one condition variable for the receiver
and the training loop, batch insertion under one lock round-trip, waiting without spinning,
arrival recording, and the state for resumable checkpoints.

    class MyKind(_Base):          # a kind defines _has_room, _insert, _ready, exhausted, _draw
        kind = "mine"
    buf.put_many(x, y, keys); buf.get_batch(32); buf.state_dict(); buf.load_state_dict(d)
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
