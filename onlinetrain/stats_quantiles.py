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

import numpy as np

C = 2.0
BETA = 0.6
TOL_RANK = 1.5  # |F_n(q) - a| <= TOL_RANK / sqrt(n)


def tolerance(n: int) -> float:
    """The documented rank tolerance after n values."""
    return TOL_RANK / np.sqrt(max(n, 1))


class StepQuantiles:
    """Robbins-Monro iterates `q` and their weighted averages `avg`, shape (levels, cells)."""

    def __init__(self, cells: int, levels=()):
        self.cells = int(cells)
        self.levels = np.asarray(levels, np.float64).reshape(-1)
        self.n = 0
        self.weight = 0.0
        self.q = np.zeros((len(self.levels), self.cells))
        self.avg = np.zeros_like(self.q)

    @staticmethod
    def floats_per_cell(n_levels: int) -> int:
        return 2 * n_levels

    def update(self, x: np.ndarray, mom) -> None:
        """Add one value per cell; `mom` is the cell's StepMoments, already updated with `x`."""
        n = self.n + 1
        self.n = n
        if n == 1:
            self.q[:] = x
            self.avg[:] = x
            self.weight = 1.0
            return
        scale = mom.m2 * (1.0 / n)
        np.sqrt(scale, out=scale)
        scale *= C * n ** -BETA
        self.weight += n
        w = n / self.weight
        below = np.empty(self.cells, bool)
        step = np.empty(self.cells)
        for j, a in enumerate(self.levels):
            q = self.q[j]
            np.less_equal(x, q, out=below)
            np.subtract(a, below, out=step)
            step *= scale
            q += step
            np.clip(q, mom.min, mom.max, out=q)
            np.subtract(q, self.avg[j], out=step)
            step *= w
            self.avg[j] += step

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
        self.q = np.array(d["q"], np.float64).reshape(shape)
        self.avg = np.array(d["avg"], np.float64).reshape(shape)
