"""One-pass moments, extrema and threshold exceedance of one (field, time step), vectorised over cells.

Mean and the central sums M2, M3, M4 in float64, one frame (one simulation's values at every cell)
at a time. Each frame adds y = x - k, y^2, y^3, y^4 to four running sums, k being the cell's mean at
the last fold; every FOLD frames the sums are folded into central sums around the new mean
(Pébay's binomial shift), so k never strays from the mean by more than the spread of FOLD samples
and the sums stay well conditioned. This is a block-wise Pébay update: 8 array operations per frame
instead of Welford's 20 for the same four moments. `merge` combines two partial states with Pébay's
pairwise formulas, so the result does not depend on how the frames were split or ordered beyond
rounding (tests/test_stats_moments.py checks it against numpy to 1e-10, any arrival order).

    m = StepMoments(cells=4096, thresholds=[300.0])
    for x in frames: m.update(x)            # x: 1-D array of `cells` values, any float dtype
    m.mean, m.variance(), m.skewness(), m.kurtosis(), m.min, m.max, m.exceedance()

The update walks the cells in blocks of CHUNK so that its temporaries stay in the CPU cache:
memory traffic is one read of the frame and one read+write of s1..s4, min, max (k is only read).
"""
from __future__ import annotations

import threading

import numpy as np

CHUNK = 4096  # cells per block: the state (9 + thresholds arrays) of a block, 32 KiB each, stays in L2
FOLD = 16  # the shift k moves to the mean every FOLD samples (and at n = 2, 4, 8)
MAX_BLOCK = 64  # samples added per pass over the cells by update_block
ARRAYS = ("k", "s1", "s2", "s3", "s4", "min", "max")
_local = threading.local()


def scratch(width: int, count: int) -> list[np.ndarray]:
    """`count` float64 work arrays of `width`, reused by every update of this thread."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[0].shape[0] < width or len(bufs) < count:
        bufs = _local.bufs = [np.empty(max(width, CHUNK)) for _ in range(max(count, 8))]
        _local.flag = np.empty(max(width, CHUNK), bool)
    return bufs[:count]


class StepMoments:
    """n, power sums s1..s4 of x - k around a shift k (the mean at the last fold), min, max and
    exceedance counts per cell; the central moments are read from them (`mean`, `m2`, `m3`, `m4`)."""

    def __init__(self, cells: int, thresholds=()):
        self.cells = int(cells)
        self.thresholds = np.asarray(thresholds, np.float64).reshape(-1)
        self.n = 0
        self.k = np.zeros(self.cells)
        self.s1 = np.zeros(self.cells)
        self.s2 = np.zeros(self.cells)
        self.s3 = np.zeros(self.cells)
        self.s4 = np.zeros(self.cells)
        self.min = np.full(self.cells, np.inf)
        self.max = np.full(self.cells, -np.inf)
        self.exceed = np.zeros((len(self.thresholds), self.cells), np.int64)

    @staticmethod
    def floats_per_cell(n_thresholds: int) -> int:
        return len(ARRAYS) + n_thresholds

    # -- updates ---------------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        """Add one sample per cell (`x` is 1-D, `cells` long)."""
        self._add((x,))

    def update_block(self, xs) -> None:
        """Add several samples per cell (1-D arrays): each block of cells is updated with every
        sample while its state is in cache, so the state is read and written once per block of
        up to MAX_BLOCK samples instead of once per sample. The first FOLD samples go one by one."""
        xs = list(xs)
        i = 0
        while i < len(xs) and self.n < FOLD:
            self._add(xs[i:i + 1])
            i += 1
        for j in range(i, len(xs), MAX_BLOCK):
            self._add(xs[j:j + MAX_BLOCK])

    def _add(self, blk) -> None:
        n0 = self.n
        n = self.n = n0 + len(blk)
        thr = self.thresholds
        if n0 == 0:
            x = blk[0]
            self.k[:] = x
            self.min[:] = x
            self.max[:] = x
            for j, t in enumerate(thr):
                self.exceed[j] += x > t
            blk = blk[1:]
        if not blk:
            return
        y, y2 = scratch(min(CHUNK, self.cells), 2)
        flag = _local.flag
        for s in range(0, self.cells, CHUNK):
            e = min(s + CHUNK, self.cells)
            c = e - s
            yk, y2k, fk = y[:c], y2[:c], flag[:c]
            k, s1, s2, s3, s4 = self.k[s:e], self.s1[s:e], self.s2[s:e], self.s3[s:e], self.s4[s:e]
            mn, mx, ex = self.min[s:e], self.max[s:e], self.exceed[:, s:e]
            for x in blk:
                xs = x[s:e]
                np.subtract(xs, k, out=yk)                  # y = x - k
                s1 += yk
                np.multiply(yk, yk, out=y2k)
                s2 += y2k
                yk *= y2k                                   # y^3
                s3 += yk
                y2k *= y2k                                  # y^4
                s4 += y2k
                np.minimum(mn, xs, out=mn)
                np.maximum(mx, xs, out=mx)
                for j, t in enumerate(thr):
                    np.greater(xs, t, out=fk)
                    ex[j] += fk
        if n // FOLD != n0 // FOLD or (n <= FOLD and n & (n - 1) == 0):
            self.fold()

    def fold(self) -> None:
        """Move the shift k to the current mean: s1 = 0, s2..s4 = the central sums M2..M4."""
        if self.n == 0:
            return
        m2, m3, m4 = self.central()
        self.k += self.s1 / self.n
        self.s1[:] = 0.0
        self.s2, self.s3, self.s4 = m2, m3, m4

    def central(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """M2, M3, M4 (sums of (x - mean)^p) from the shifted power sums (binomial shift by
        d = s1 / n, Pébay 2008 eq. 3.1); exact in exact arithmetic, and well conditioned because
        k is the mean of all but the last < FOLD samples."""
        n = max(self.n, 1)
        d = self.s1 / n
        d2 = d * d
        m2 = self.s2 - d * self.s1
        m3 = self.s3 - 3.0 * d * self.s2 + (2.0 * n) * d2 * d
        m4 = self.s4 - 4.0 * d * self.s3 + 6.0 * d2 * self.s2 - (3.0 * n) * d2 * d2
        return m2, m3, m4

    @property
    def mean(self) -> np.ndarray:
        return self.k + self.s1 / max(self.n, 1)

    @property
    def m2(self) -> np.ndarray:
        return self.s2 - self.s1 * (self.s1 / max(self.n, 1))

    @property
    def m3(self) -> np.ndarray:
        return self.central()[1]

    @property
    def m4(self) -> np.ndarray:
        return self.central()[2]

    def merge(self, other: "StepMoments") -> None:
        """Fold `other` (the same cells and thresholds) into this state (Pébay's pairwise formulas)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        na, nb = float(self.n), float(other.n)
        n = na + nb
        m2a, m3a, m4a = self.central()
        m2b, m3b, m4b = other.central()
        d = other.mean - self.mean
        d2 = d * d
        m4 = (m4a + m4b + d2 * d2 * (na * nb * (na * na - na * nb + nb * nb) / n ** 3)
              + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / (n * n)
              + 4.0 * d * (na * m3b - nb * m3a) / n)
        m3 = m3a + m3b + d2 * d * (na * nb * (na - nb) / (n * n)) + 3.0 * d * (na * m2b - nb * m2a) / n
        m2 = m2a + m2b + d2 * (na * nb / n)
        self.k = self.mean + d * (nb / n)
        self.s1 = np.zeros(self.cells)
        self.s2, self.s3, self.s4 = m2, m3, m4
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
        m2, m3, _ = self.central()
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.sqrt(self.n) * m3 / m2 ** 1.5
        return np.where(m2 > 0, g, 0.0)

    def kurtosis(self) -> np.ndarray:
        """Excess kurtosis n M4 / M2^2 - 3 (as scipy.stats.kurtosis); 0 where M2 == 0."""
        m2, _, m4 = self.central()
        with np.errstate(divide="ignore", invalid="ignore"):
            k = self.n * m4 / (m2 * m2) - 3.0
        return np.where(m2 > 0, k, 0.0)

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
