"""Quantiles of one (field, time step) by Robbins-Monro stochastic approximation, per cell, one pass.

For a level a, the iterate moves after each new value x by

    q <- clip(q + gamma_n * (a - 1{x <= q}), min, max),   gamma_n = C * sigma_n * n**-BETA

(sigma_n: the running standard deviation of the cell, min/max: its running extrema, both from
stats_moments), and the estimate is the weighted average of the iterates, weights proportional to n
(Polyak-Ruppert averaging that forgets the first, far-off iterates). Memory: two arrays per level.

Tolerance (docs/stats.md, tests/test_stats_quantiles.py): measured as a rank, the estimate q of level
a from n simulations satisfies |F_n(q) - a| <= TOL_RANK / sqrt(n), F_n the empirical distribution
function of the n values (so q lies between numpy.quantile(x, a - tol) and numpy.quantile(x, a + tol)),
for light-tailed distributions (normal, uniform, exponential, a normal mixture) and n >= 1000. The
error shrinks like 1/sqrt(n). Heavy tails (e.g. lognormal with sigma >= 1.5) converge more slowly
because sigma_n overstates the spread near the quantile.

    q = StepQuantiles(cells, levels=[0.05, 0.5, 0.95])
    q.update(x, moments)        # after moments.update(x)
    q.values()                   # (levels, cells)
"""
from __future__ import annotations

import threading

import numpy as np

from .stats_moments import CHUNK
from .stats_rows import QuantileRows, gain, rm_scale, rm_step  # gain: C * n**-BETA (constants in stats_rows)

TOL_RANK = 1.5  # |F_n(q) - a| <= TOL_RANK / sqrt(n)


_local = threading.local()


def _scratch(width: int):
    """Work arrays of this thread (x as float64, scale, step, flags), reused by every update."""
    got = getattr(_local, "bufs", None)
    if got is None or got[0].shape[0] < width:
        w = max(width, CHUNK)
        got = _local.bufs = (np.empty(w), np.empty(w), np.empty(w), np.empty(w, bool))
    return got


def tolerance(n: int) -> float:
    """The documented rank tolerance after n values."""
    return TOL_RANK / np.sqrt(max(n, 1))


class StepQuantiles:
    """Robbins-Monro iterates `q` and their weighted averages `avg`, shape (levels, cells)."""

    def __init__(self, cells: int, levels=(), store: QuantileRows | None = None, row: int = 0):
        """The iterates of one time step: its own arrays, or row `row` of `store` (stats_rows)."""
        self.cells = int(cells)
        if store is None:
            store = QuantileRows(1, self.cells, levels)
        self.store, self.row = store, int(row)
        self.levels = store.levels
        self.q = store.q[row]
        self.avg = store.avg[row]

    n = property(lambda self: int(self.store.n[self.row]),
                 lambda self, v: self.store.n.__setitem__(self.row, v))
    weight = property(lambda self: float(self.store.weight[self.row]),
                      lambda self, v: self.store.weight.__setitem__(self.row, v))

    @staticmethod
    def floats_per_cell(n_levels: int) -> int:
        return 2 * n_levels

    def update(self, x: np.ndarray, mom) -> None:
        """Add one value per cell; `mom` is the cell's StepMoments, already updated with `x`.
        Walks the cells in blocks of stats_moments.CHUNK, in place (no full-size temporary)."""
        n = self.n + 1
        self.n = n
        if n == 1:
            self.q[:] = x
            self.avg[:] = x
            self.weight = 1.0
            return
        self.weight += n
        w = n / self.weight
        g = gain(n)
        xbuf, sbuf, stbuf, bbuf = _scratch(min(CHUNK, self.cells))
        for s in range(0, self.cells, CHUNK):
            e = min(s + CHUNK, self.cells)
            c = e - s
            xs, scale, step, below = x[s:e], sbuf[:c], stbuf[:c], bbuf[:c]
            if xs.dtype != np.float64:
                np.copyto(xbuf[:c], xs, casting="unsafe")
                xs = xbuf[:c]
            rm_scale(mom.sums[0, s:e], mom.sums[1, s:e], n, g, scale)
            lo, hi = mom.min[s:e], mom.max[s:e]
            for j, a in enumerate(self.levels):
                rm_step(xs, self.q[j, s:e], self.avg[j, s:e], a, scale, w, lo, hi, below, step)

    def values(self) -> np.ndarray:
        if self.n == 0:
            return np.full_like(self.avg, np.nan)
        return self.avg.copy()

    def state_dict(self) -> dict:
        return {"n": int(self.n), "weight": float(self.weight), "q": self.q.copy(),
                "avg": self.avg.copy(), "levels": self.levels.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.n, self.weight = int(d["n"]), float(d["weight"])
        shape = (len(self.levels), self.cells)
        self.q[:] = np.asarray(d["q"], np.float64).reshape(shape)  # in place: views of the store
        self.avg[:] = np.asarray(d["avg"], np.float64).reshape(shape)
