"""Window mode for autoregressive surrogates (u_t -> u_t+1): consecutive steps of one simulation
are kept together and served as one sample, over any of the four buffer kinds.

    buf = PairBuffer(make_buffer("reservoir", capacity=2000, watermark=500, seed=0), window=2)
    buf.put(x, y, key=(sim_id, t))   # every step, as for any buffer (x: parameters, y: state)
    b = buf.get_batch(32)            # b.x = [x_t, y_t .. y_t+w-2], b.y = y_t+w-1, b.keys = (sim, t)
    x_t, states = buf.window_states(b)   # states: (B, window, y size), states[:, 0] = y_t
    x_t, u_t = buf.split_input(b.x)      # pairs (window 2): the two halves of the input

The wrapper holds the latest `window - 1` consecutive steps of each simulation; when the next
step of the same simulation arrives, the window (steps t .. t+w-1) goes into the inner buffer as
ONE sample, so eviction, random selection and "served once" apply to windows and a window is
never torn apart. With steps arriving in order, every run of `window` consecutive steps is formed
exactly once, whatever the interleaving of simulations. A step that does not follow the held ones
(a gap, or a restart that re-sends earlier steps) starts a new chain and is counted in `gaps`.
`end_sim(sim_id)` forgets a finished simulation's held steps. Everything else (end_stream,
exhausted, stats, len) is the inner buffer's. `state_dict()` / `load_state_dict()` carry the
held chains and the inner buffer's own state through a checkpoint.
"""
from __future__ import annotations

import threading

import numpy as np

from .reservoir import BufferError_


class PairBuffer:
    def __init__(self, inner, window: int = 2):
        if not isinstance(window, (int, np.integer)) or window < 2:
            raise BufferError_(f"window {window!r} must be an integer >= 2 (train.unroll + 1)",
                               window)
        self.inner = inner
        self.window = int(window)
        self.kind = f"{inner.kind}+pairs" if window == 2 else f"{inner.kind}+windows{window}"
        # sim id -> list of (step, x, y), consecutive steps, at most window - 1 of them
        self._held: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self.x_size: int | None = None
        self.y_size: int | None = None
        self.gaps = 0
        self.windows = 0

    def put(self, x, y, key=(0, 0), timeout: float | None = None) -> bool:
        """Hold step t; once `window` consecutive steps are held, insert them as one sample.
        False if the inner put timed out (nothing changes, so the caller may retry)."""
        sim, step = int(key[0]), int(key[1])
        x = np.asarray(x, np.float32).reshape(-1)
        y = np.asarray(y, np.float32).reshape(-1)
        with self._lock:
            if self.x_size is None:
                self.x_size, self.y_size = x.size, y.size
            elif x.size != self.x_size or y.size != self.y_size:
                raise BufferError_(f"window mode: step of sizes ({x.size}, {y.size}) does not "
                                   f"match earlier steps' ({self.x_size}, {self.y_size})",
                                   (x.size, y.size))
            chain = self._held.get(sim, [])
        gap = bool(chain) and chain[-1][0] != step - 1
        chain = ([] if gap else list(chain)) + [(step, x, y)]
        if len(chain) >= self.window:
            w = chain[-self.window:]
            wx = np.concatenate([w[0][1]] + [s[2] for s in w[:-1]])
            if not self.inner.put(wx, w[-1][2], (sim, w[0][0]), timeout):
                return False
            with self._lock:
                self.windows += 1
        with self._lock:
            self.gaps += gap
            self._held[sim] = chain[-(self.window - 1):]
        return True

    def put_many(self, x, y, keys, timeout: float | None = None) -> int:
        """put() each row in order; how many went in (fewer only if the inner buffer stayed full
        for `timeout`: the rest changed nothing and may be put again)."""
        for i in range(len(keys)):
            if not self.put(x[i], y[i], keys[i], timeout if i == 0 else 0):
                return i
        return len(keys)

    def end_sim(self, sim_id: int):
        with self._lock:
            self._held.pop(int(sim_id), None)

    def split_input(self, bx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x_t, [y_t .. y_t+w-2]) halves of a batch's inputs (pairs: (x_t, y_t))."""
        return bx[:, :self.x_size], bx[:, self.x_size:]

    def window_states(self, b) -> tuple[np.ndarray, np.ndarray]:
        """(x_t, states) of a batch; states is (B, window, y size): y_t .. y_t+w-1."""
        x_t, rest = self.split_input(b.x)
        states = np.concatenate([rest, b.y], axis=1)
        return x_t, states.reshape(len(b.y), self.window, -1)

    def get_batch(self, batch_size: int, timeout: float | None = None):
        return self.inner.get_batch(batch_size, timeout)

    def end_stream(self):
        with self._lock:
            self._held.clear()
        self.inner.end_stream()

    @property
    def exhausted(self):
        return self.inner.exhausted

    @property
    def cond(self):
        return self.inner.cond

    def __len__(self):
        return len(self.inner)

    def arrivals(self) -> np.ndarray:
        """Windows' keys (sim, first step) in the order they were formed (inner record=True)."""
        return self.inner.arrivals()

    def stats(self) -> dict:
        return {**self.inner.stats(), "kind": self.kind, "pair_gaps": self.gaps,
                "windows": self.windows, "held": len(self._held)}

    # --- checkpoint section --------------------------------------------------------------
    def state_dict(self) -> dict:
        """Held chains, counters and (where it has one) the inner buffer's state; tensors and
        plain values only, so torch.load(weights_only=True) reads it back."""
        import torch  # noqa: PLC0415
        with self._lock:
            rows = [(sim, s, x, y) for sim, ch in sorted(self._held.items()) for s, x, y in ch]
            xs = self.x_size or 0
            ys = self.y_size or 0
            keys = np.array([(r[0], r[1]) for r in rows], np.int64).reshape(-1, 2)
            hx = np.stack([r[2] for r in rows]) if rows else np.zeros((0, xs), np.float32)
            hy = np.stack([r[3] for r in rows]) if rows else np.zeros((0, ys), np.float32)
            state = {"window": self.window, "x_size": self.x_size, "y_size": self.y_size,
                     "gaps": self.gaps, "windows": self.windows,
                     "held_keys": torch.from_numpy(keys), "held_x": torch.from_numpy(hx),
                     "held_y": torch.from_numpy(hy)}
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: dict):
        if "window" not in state:
            raise BufferError_("the checkpoint's buffer holds single steps, not windows: resume "
                               "with the model.mode it was written with", None)
        if int(state["window"]) != self.window:
            raise BufferError_(f"checkpoint has windows of {state['window']} steps, the config "
                               f"{self.window} (train.unroll + 1): resume with the same "
                               f"train.unroll", state["window"])
        keys = np.asarray(state["held_keys"]).reshape(-1, 2)
        hx, hy = np.asarray(state["held_x"]), np.asarray(state["held_y"])
        held: dict[int, list] = {}
        for (sim, s), x, y in zip(keys.tolist(), hx, hy):
            held.setdefault(int(sim), []).append((int(s), x.copy(), y.copy()))
        with self._lock:
            self._held = held
            self.x_size, self.y_size = state["x_size"], state["y_size"]
            self.gaps, self.windows = int(state["gaps"]), int(state["windows"])
        inner = dict(state["inner"])
        if "ended" in state:  # the checkpoint's say (a resumed receiver ends the stream again)
            inner["ended"] = state["ended"]
        self.inner.load_state_dict(inner)

