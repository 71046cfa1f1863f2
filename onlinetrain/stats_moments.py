"""One-pass moments, extrema and threshold exceedance of one (field, time step), vectorised over cells.

Mean and the central sums M2, M3, M4 in float64, one frame (one simulation's values at every cell)
at a time. Each frame adds y = x - k, y^2, y^3, y^4 to four running sums, k being the cell's mean at
the last fold (at first, the first frame); at n = FIRST_FOLD and then every FOLD frames the sums
are folded into central sums around the new mean (Pébay's binomial shift), so k never strays far
from the mean (a few standard deviations at most) and the sums stay well conditioned. This is a
block-wise Pébay update: 6 array operations per frame for the four moments instead of Welford's 20.
`merge` combines two partial states with Pébay's pairwise formulas, so the result does not depend
on how the frames were split or ordered beyond rounding (tests/test_stats_moments.py checks it
against numpy to 1e-10, any arrival order).

    m = StepMoments(cells=4096, thresholds=[300.0])
    for x in frames: m.update(x)            # x: 1-D array of `cells` values, any float dtype
    m.update_block(xs)                      # several frames at once: the state is read once
    m.mean, m.variance(), m.skewness(), m.kurtosis(), m.min, m.max, m.exceedance()

Cost (bench/stats.py, docs/stats.md): the update walks the cells in blocks of CHUNK, so that its
temporaries (the frame converted to float64 once, its four powers, the threshold flags) stay in
the CPU cache, and writes every result in place (ufuncs with out=, no temporary array). The four
power sums are one (4, cells) array updated by one add; exceedances are counted in uint8 (one byte
per threshold and cell, added to the int64 counts every 255 frames), so the state read and written
per frame is k, the sums, min and max plus a byte per threshold. update_block walks the cells once
for up to MAX_BLOCK frames: each block of cells is updated with every frame while it is in cache.
"""
from __future__ import annotations

import threading

import numpy as np

from .stats_rows import FIRST_FOLD, FOLD, MomentRows, fold_sums

CHUNK = 16384  # cells per block: the temporaries of a block (6 x 128 KiB) stay in L2/L3
MAX_BLOCK = 32  # samples added per pass over the cells by update_block
PENDING_MAX = 255  # frames counted in the uint8 exceedance counters before they go to int64
ARRAYS = ("k", "s1", "s2", "s3", "s4", "min", "max")
_local = threading.local()


def scratch(width: int, rows: int, thresholds: int):
    """Work arrays of this thread, reused by every update: x (width,) float64, powers (4, width)
    float64 and flags (thresholds, width) bool. The fold uses rows >= 4 float64 rows."""
    got = getattr(_local, "bufs", None)
    if got is None or got[0].shape[0] < width or got[1].shape[0] < rows or \
            got[2].shape[0] < thresholds:
        w = max(width, CHUNK)
        got = _local.bufs = (np.empty(w), np.empty((max(rows, 4), w)),
                             np.empty((max(thresholds, 2), w), bool))
    return got


class StepMoments:
    """n, power sums s1..s4 of x - k around a shift k (the mean at the last fold), min, max and
    exceedance counts per cell; the central moments are read from them (`mean`, `m2`, `m3`, `m4`)."""

    def __init__(self, cells: int, thresholds=(), store: MomentRows | None = None, row: int = 0):
        """The state of one time step: its own arrays, or row `row` of `store` (stats_rows: the
        arrays of many time steps, updated together by FieldRows.add)."""
        self.cells = int(cells)
        if store is None:
            store = MomentRows(1, self.cells, thresholds)
        self.store, self.row = store, int(row)
        self.thresholds = store.thresholds
        self.k = store.k[row]
        self.sums = store.sums[row]  # s1..s4, one array: one add per frame
        self.min = store.min[row]
        self.max = store.max[row]
        self._exceed = store.exceed[row]
        self._pending = store.pending[row]  # frames over t since the last flush, uint8

    n = property(lambda self: int(self.store.n[self.row]),
                 lambda self, v: self.store.n.__setitem__(self.row, v))
    _npending = property(lambda self: int(self.store.npending[self.row]),
                         lambda self, v: self.store.npending.__setitem__(self.row, v))

    @staticmethod
    def floats_per_cell(n_thresholds: int) -> int:
        """8-byte values per cell: k, s1..s4, min, max, an int64 count per threshold, and the
        uint8 counters (one byte per threshold, rounded up to whole values)."""
        return len(ARRAYS) + n_thresholds + (n_thresholds + 7) // 8

    s1 = property(lambda self: self.sums[0])
    s2 = property(lambda self: self.sums[1])
    s3 = property(lambda self: self.sums[2])
    s4 = property(lambda self: self.sums[3])

    @property
    def exceed(self) -> np.ndarray:
        """Counts of frames above each threshold, (thresholds, cells) int64."""
        self._flush_counts()
        return self._exceed

    def _flush_counts(self) -> None:
        if self._npending:
            self._exceed += self._pending
            self._pending[:] = 0
            self._npending = 0

    # -- updates ---------------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        """Add one sample per cell (`x` is 1-D, `cells` long)."""
        self._add((x,))

    def update_block(self, xs) -> None:
        """Add several samples per cell (1-D arrays): each block of cells is updated with every
        sample while its state is in cache, so the state is read and written once per block of
        up to MAX_BLOCK samples instead of once per sample. Blocks end at the folds, so the
        result is bit-identical to update() frame by frame, in the same order."""
        xs = list(xs)
        i = 0
        while i < len(xs):
            n = self.n
            to_fold = (FIRST_FOLD if n < FIRST_FOLD else (n // FOLD + 1) * FOLD) - n
            m = min(len(xs) - i, MAX_BLOCK, to_fold)
            self._add(xs[i:i + m])
            i += m

    def _add(self, blk) -> None:
        if not len(blk):
            return
        n0 = self.n
        n = self.n = n0 + len(blk)
        if self._npending + len(blk) > PENDING_MAX:
            self._flush_counts()
        self._npending += len(blk)
        thr = self.thresholds[:, None]
        nt = len(self.thresholds)
        if n0 == 0:  # the first sample sets the shift k (and min, max) and adds nothing to s1..s4
            x = blk[0]
            self.k[:] = x
            self.min[:] = self.k
            self.max[:] = self.k
            if nt:
                np.add(self._pending, np.greater(self.k, thr), out=self._pending,
                       casting="unsafe")
            blk = blk[1:]
        if blk:
            self._kernel(blk, thr, nt)
        if n // FOLD != n0 // FOLD or (n0 < FIRST_FOLD <= n):
            self.fold()

    def _kernel(self, blk, thr, nt) -> None:
        xbuf, pbuf, fbuf = scratch(min(CHUNK, self.cells), 4, nt)
        f8buf = fbuf.view(np.uint8)
        for s in range(0, self.cells, CHUNK):
            e = min(s + CHUNK, self.cells)
            c = e - s
            xf, p, fl, f8 = xbuf[:c], pbuf[:4, :c], fbuf[:nt, :c], f8buf[:nt, :c]
            p0, p1, p2, p3 = p
            k, sums, mn, mx, cnt = (self.k[s:e], self.sums[:, s:e], self.min[s:e],
                                    self.max[s:e], self._pending[:, s:e])
            for x in blk:
                xs = x[s:e]
                if xs.dtype == np.float64:
                    xf = xs
                else:
                    np.copyto(xf, xs, casting="unsafe")  # float32 frames: converted once
                np.subtract(xf, k, out=p0)                  # y = x - k
                np.multiply(p0, p0, out=p1)                 # y^2
                np.multiply(p0, p1, out=p2)                 # y^3
                np.multiply(p1, p1, out=p3)                 # y^4
                np.add(sums, p, out=sums)                   # s1..s4 in one call
                np.minimum(mn, xf, out=mn)
                np.maximum(mx, xf, out=mx)
                if nt:
                    np.greater(xf, thr, out=fl)             # every threshold in one call
                    np.add(cnt, f8, out=cnt)
                xf = xbuf[:c]

    def fold(self) -> None:
        """Move the shift k to the current mean: s1 = 0, s2..s4 = the central sums M2..M4
        (computed in place, block by block of cells)."""
        if self.n == 0:
            return
        n = float(self.n)
        _, w, _ = scratch(min(CHUNK, self.cells), 6, 0)
        for s in range(0, self.cells, CHUNK):
            e = min(s + CHUNK, self.cells)
            c = e - s
            s1, s2, s3, s4 = self.sums[:, s:e]
            fold_sums(s1, s2, s3, s4, self.k[s:e], n, w[0, :c], w[1, :c], w[2, :c])

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
        self.k[:] = self.mean + d * (nb / n)
        self.sums[0] = 0.0
        self.sums[1], self.sums[2], self.sums[3] = m2, m3, m4
        self.n = int(n)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
        self._flush_counts()
        self._exceed += other.exceed

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
        for k in ("k", "min", "max"):  # in place: the arrays may be views of a store's rows
            getattr(self, k)[:] = np.asarray(d[k], np.float64).reshape(self.cells)
        for i in range(4):
            self.sums[i] = np.asarray(d[f"s{i + 1}"], np.float64).reshape(self.cells)
        self.n = int(d["n"])
        self._exceed[:] = np.asarray(d["exceed"], np.int64).reshape(len(self.thresholds), self.cells)
        self._pending[:] = 0
        self._npending = 0
