"""Pair mode for autoregressive surrogates (u_t -> u_t+1): consecutive steps of one simulation
are kept together and served as one sample.

    buf = PairBuffer(make_buffer("reservoir", capacity=2000, watermark=500, seed=0))
    buf.put(x, y, key=(sim_id, t))   # every step, as for any buffer
    b = buf.get_batch(32)            # b.x = [x_t, y_t], b.y = y_t+1, b.keys = (sim_id, t)
    x_t, u_t = buf.split_input(b.x)  # the two halves of the input

The wrapper holds the latest step of each simulation; when step t+1 of the same simulation
arrives, the pair (step t, step t+1) goes into the inner buffer as ONE sample, so eviction,
random selection and "served once" apply to pairs and a pair is never torn apart. A step that
does not follow the held one (a gap or a restart) starts a new chain and is counted in `gaps`.
`end_sim(sim_id)` forgets a finished simulation's held step. Everything else (end_stream,
exhausted, stats, len) is the inner buffer's.
"""
from __future__ import annotations

import threading

import numpy as np

from .reservoir import BufferError_


class PairBuffer:
    def __init__(self, inner):
        self.inner = inner
        self.kind = f"{inner.kind}+pairs"
        self._held: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self.x_size: int | None = None
        self.gaps = 0

    def put(self, x, y, key=(0, 0), timeout: float | None = None) -> bool:
        """Hold step t; on step t+1 insert the pair. False if the inner put timed out (the new
        step is then not held, so the caller may retry with the same arguments)."""
        sim, step = int(key[0]), int(key[1])
        x = np.asarray(x, np.float32).reshape(-1)
        y = np.asarray(y, np.float32).reshape(-1)
        with self._lock:
            if self.x_size is None:
                self.x_size = x.size
            elif x.size != self.x_size:
                raise BufferError_(f"pair mode: input of size {x.size} does not match earlier "
                                   f"inputs' {self.x_size}", x.size)
            prev = self._held.get(sim)
        if prev is not None and prev[0] == step - 1:
            if not self.inner.put(np.concatenate([prev[1], prev[2]]), y, (sim, prev[0]), timeout):
                return False
        elif prev is not None:
            self.gaps += 1
        with self._lock:
            self._held[sim] = (step, x, y)
        return True

    def end_sim(self, sim_id: int):
        with self._lock:
            self._held.pop(int(sim_id), None)

    def split_input(self, bx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x_t, y_t) halves of a pair batch's inputs."""
        return bx[:, :self.x_size], bx[:, self.x_size:]

    def get_batch(self, batch_size: int, timeout: float | None = None):
        return self.inner.get_batch(batch_size, timeout)

    def end_stream(self):
        with self._lock:
            self._held.clear()
        self.inner.end_stream()

    @property
    def exhausted(self):
        return self.inner.exhausted

    def __len__(self):
        return len(self.inner)

    def stats(self) -> dict:
        return {**self.inner.stats(), "kind": self.kind, "pair_gaps": self.gaps,
                "held": len(self._held)}
