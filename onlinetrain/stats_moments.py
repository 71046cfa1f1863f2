"""One-pass moments, extrema and threshold exceedance of one (field, time step), vectorised over cells.

Welford's update extended to the third and fourth central moments (Pébay 2008), in float64, one
frame (one simulation's values at every cell) at a time; `merge` combines two partial states
(Pébay's pairwise formulas), so the result does not depend on how the frames were split or ordered
beyond rounding (tests/test_stats_moments.py checks it against numpy to 1e-10).

    m = StepMoments(cells=4096, thresholds=[300.0])
    for x in frames: m.update(x)            # x: 1-D array of `cells` values, any float dtype
    m.mean, m.variance(), m.skewness(), m.kurtosis(), m.min, m.max, m.exceedance()

The update walks the cells in blocks of CHUNK so that its temporaries stay in the CPU cache:
memory traffic is one read of the frame and one read+write of mean, M2, M3, M4, min, max.
"""
from __future__ import annotations

import threading

import numpy as np

CHUNK = 8192  # cells per block: ~10 float64 temporaries of 64 KiB stay in L2
ARRAYS = ("mean", "m2", "m3", "m4", "min", "max")
_local = threading.local()


def scratch(width: int, count: int) -> list[np.ndarray]:
    """`count` float64 work arrays of `width`, reused by every update of this thread."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[0].shape[0] < width or len(bufs) < count:
        bufs = _local.bufs = [np.empty(max(width, CHUNK)) for _ in range(max(count, 8))]
        _local.flag = np.empty(max(width, CHUNK), bool)
    return bufs[:count]


class StepMoments:
    """n, mean, M2 = sum (x - mean)^2, M3, M4, min, max and exceedance counts per cell."""

    def __init__(self, cells: int, thresholds=()):
        self.cells = int(cells)
        self.thresholds = np.asarray(thresholds, np.float64).reshape(-1)
        self.n = 0
        self.mean = np.zeros(self.cells)
        self.m2 = np.zeros(self.cells)
        self.m3 = np.zeros(self.cells)
        self.m4 = np.zeros(self.cells)
        self.min = np.full(self.cells, np.inf)
        self.max = np.full(self.cells, -np.inf)
        self.exceed = np.zeros((len(self.thresholds), self.cells), np.int64)

    @staticmethod
    def floats_per_cell(n_thresholds: int) -> int:
        return len(ARRAYS) + n_thresholds

    # -- updates ---------------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        """Add one sample per cell (`x` is 1-D, `cells` long)."""
        n = self.n + 1
        self.n = n
        thr = self.thresholds
        if n == 1:
            self.mean[:] = x
            self.min[:] = x
            self.max[:] = x
            for j, t in enumerate(thr):
                self.exceed[j] += x > t
            return
        inv, nm1, c3, c4 = 1.0 / n, float(n - 1), float(n - 2), float(n * n - 3 * n + 3)
        d, dn, t1, dn2, a, b = scratch(min(CHUNK, self.cells), 6)
        flag = _local.flag
        for s in range(0, self.cells, CHUNK):
            e = min(s + CHUNK, self.cells)
            k = e - s
            xs, mu, m2, m3, m4 = x[s:e], self.mean[s:e], self.m2[s:e], self.m3[s:e], self.m4[s:e]
            dk, dnk, t1k, dn2k, ak, bk = d[:k], dn[:k], t1[:k], dn2[:k], a[:k], b[:k]
            np.subtract(xs, mu, out=dk)                 # delta = x - mean
            np.multiply(dk, inv, out=dnk)               # delta / n
            np.multiply(dk, dnk, out=t1k)
            t1k *= nm1                                  # term1 = delta^2 (n - 1) / n
            np.multiply(dnk, dnk, out=dn2k)
            # M4 += term1 dn^2 (n^2 - 3n + 3) + 6 dn^2 M2 - 4 dn M3   (old M2, M3)
            np.multiply(t1k, c4, out=ak)
            np.multiply(m2, 6.0, out=bk)
            ak += bk
            ak *= dn2k
            np.multiply(dnk, m3, out=bk)
            bk *= 4.0
            ak -= bk
            m4 += ak
            # M3 += dn (term1 (n - 2) - 3 M2)   (old M2)
            np.multiply(t1k, c3, out=ak)
            np.multiply(m2, 3.0, out=bk)
            ak -= bk
            ak *= dnk
            m3 += ak
            m2 += t1k
            mu += dnk
            np.minimum(self.min[s:e], xs, out=self.min[s:e])
            np.maximum(self.max[s:e], xs, out=self.max[s:e])
            for j, t in enumerate(thr):
                np.greater(xs, t, out=flag[:k])
                self.exceed[j, s:e] += flag[:k]

    def merge(self, other: "StepMoments") -> None:
        """Fold `other` (the same cells and thresholds) into this state (Pébay's pairwise formulas)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        na, nb = float(self.n), float(other.n)
        n = na + nb
        d = other.mean - self.mean
        d2 = d * d
        m2a, m3a = self.m2, self.m3
        self.m4 = (self.m4 + other.m4 + d2 * d2 * (na * nb * (na * na - na * nb + nb * nb) / n ** 3)
                   + 6.0 * d2 * (na * na * other.m2 + nb * nb * m2a) / (n * n)
                   + 4.0 * d * (na * other.m3 - nb * m3a) / n)
        self.m3 = (m3a + other.m3 + d2 * d * (na * nb * (na - nb) / (n * n))
                   + 3.0 * d * (na * other.m2 - nb * m2a) / n)
        self.m2 = m2a + other.m2 + d2 * (na * nb / n)
        self.mean = self.mean + d * (nb / n)
        self.n = int(n)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
        self.exceed += other.exceed

    # -- results ---------------------------------------------------------------------------------
    def variance(self) -> np.ndarray:
        """Unbiased sample variance M2 / (n - 1) (NaN below two samples)."""
        if self.n < 2:
            return np.full(self.cells, np.nan)
        return self.m2 / (self.n - 1)

    def skewness(self) -> np.ndarray:
        """sqrt(n) M3 / M2^1.5 (the biased estimator, as scipy.stats.skew); 0 where M2 == 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.sqrt(self.n) * self.m3 / self.m2 ** 1.5
        return np.where(self.m2 > 0, g, 0.0)

    def kurtosis(self) -> np.ndarray:
        """Excess kurtosis n M4 / M2^2 - 3 (as scipy.stats.kurtosis); 0 where M2 == 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            k = self.n * self.m4 / (self.m2 * self.m2) - 3.0
        return np.where(self.m2 > 0, k, 0.0)

    def exceedance(self) -> np.ndarray:
        """P(u > t) per threshold and cell, shape (thresholds, cells)."""
        return self.exceed / max(self.n, 1)

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = {k: getattr(self, k).copy() for k in ARRAYS}
        d.update(n=int(self.n), exceed=self.exceed.copy(), thresholds=self.thresholds.copy())
        return d

    def load_state_dict(self, d: dict) -> None:
        for k in ARRAYS:
            setattr(self, k, np.array(d[k], np.float64).reshape(self.cells))
        self.n = int(d["n"])
        self.exceed = np.array(d["exceed"], np.int64).reshape(len(self.thresholds), self.cells)
