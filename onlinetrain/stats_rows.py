"""Storage of the moments and quantiles of many time steps, and their update vectorised over steps.

A time step's StepMoments / StepQuantiles (stats_moments, stats_quantiles) are views of one row of
these (rows, cells) arrays. For a small field (at most ROWS_CELLS cells, e.g. a 4x4 probe) the cost
of a frame is numpy's per-call overhead, not its data: the ~20 calls of a frame's update take
~40 us for 16 values. `FieldRows.add` updates the rows of a batch of frames of different time steps
with the same ~20 calls, on (frames, cells) arrays: one frame per row and round, so a step's frames
still enter in arrival order, and every operation is the one the frame-by-frame update does, so
the result is bit-identical to it (tests/test_stats_rows.py).

    rows = FieldRows(nrows=100, cells=16, thresholds=[300.0], levels=[0.5])
    m = StepMoments(16, [300.0], rows.mom, row=3)     # the view of row 3 (time step t)
    rows.add([3, 7, 3], [x0, x1, x2])                 # x0 then x2 into row 3, x1 into row 7

The fold of the power sums (FIRST_FOLD, FOLD) and the Robbins-Monro gain (C, BETA) are defined
here, the storage's level, and used by both updates.
"""
from __future__ import annotations

import threading

import numpy as np

ROWS_CELLS = 1024  # fields up to this many cells are updated over time steps (FieldRows; bench:
# 2-8x faster than step by step at 16-256 cells, even at 1,024, slower at 4,096)
ROUND_MIN = 2  # staged frames go to FieldRows.add when its rounds average this many frames
ROUND_VALUES = 1 << 16  # most frames x cells updated by one round's calls (temporaries ~512 KiB)
FIRST_FOLD = 8  # the shift k (the first sample) moves to the mean once n reaches FIRST_FOLD,
FOLD = 64  # then every FOLD samples (a fold costs about one frame's update)
C = 2.0  # Robbins-Monro gain gamma_n = C * sigma_n * n**-BETA (stats_quantiles)
BETA = 0.6
_gains = np.zeros(1)  # gain(n) at index n (index 0 unused); only ever replaced by a longer one
_gains_lock = threading.Lock()


def gain(n: int) -> float:
    """C * n**-BETA, as Python computes it (the frame-by-frame update's value, bit for bit)."""
    return C * n ** -BETA


def gains(n: np.ndarray) -> np.ndarray:
    """gain(n) of each n (a table grown on demand, under a lock: the same floats as gain())."""
    global _gains
    table = _gains
    top = int(n.max())
    if top >= len(table):
        with _gains_lock:
            table = _gains
            if top >= len(table):
                more = [gain(i) for i in range(len(table), max(top + 1, 2 * len(table)))]
                table = _gains = np.concatenate([table, more])
    return table[n]


def small(cells: int) -> bool:
    """Whether a field of `cells` cells is updated over time steps (FieldRows)."""
    return 0 < cells <= ROWS_CELLS


def fold_sums(s1, s2, s3, s4, k, n, d, d2, t) -> None:
    """Move the shift k to the mean, in place: s1 = 0 and s2..s4 = the central sums M2..M4
    (Pébay's binomial shift by d = s1 / n). n is a float or an array broadcasting against the
    sums (one n per row); d, d2, t are work arrays of the sums' shape. The one formula of both
    updates (StepMoments.fold, MomentRows.fold), hence their bit-identical results."""
    np.divide(s1, n, out=d)
    np.multiply(d, d, out=d2)
    # M4 = s4 - 4 d s3 + 6 d^2 s2 - 3 n d^4
    np.multiply(d, s3, out=t)
    t *= 4.0
    s4 -= t
    np.multiply(d2, s2, out=t)
    t *= 6.0
    s4 += t
    np.multiply(d2, d2, out=t)
    t *= 3.0 * n
    s4 -= t
    # M3 = s3 - 3 d s2 + 2 n d^3
    np.multiply(d, s2, out=t)
    t *= 3.0
    s3 -= t
    np.multiply(d2, d, out=t)
    t *= 2.0 * n
    s3 += t
    # M2 = s2 - d s1
    np.multiply(d, s1, out=t)
    s2 -= t
    k += d
    s1[...] = 0.0


def rm_scale(s1, s2, n, g, out) -> None:
    """out = g * sigma_n, sigma_n^2 = (s2 - s1 (s1 / n)) / n (as StepMoments.m2 / n): the
    Robbins-Monro step size of each cell; n and g floats or per-row arrays."""
    np.divide(s1, n, out=out)
    out *= s1
    np.subtract(s2, out, out=out)
    out *= 1.0 / n
    np.sqrt(out, out=out)
    out *= g


def rm_step(x, q, avg, a, scale, w, lo, hi, below, step) -> None:
    """One Robbins-Monro step of level a, in place: q <- clip(q + scale (a - 1{x <= q}), lo, hi),
    then avg <- avg + w (q - avg). below (bool) and step are work arrays of x's shape."""
    np.less_equal(x, q, out=below)
    np.subtract(a, below, out=step)
    step *= scale
    q += step
    np.maximum(q, lo, out=q)  # clip to [min, max]
    np.minimum(q, hi, out=q)
    np.subtract(q, avg, out=step)
    step *= w
    avg += step


class MomentRows:
    """n, shift k, power sums s1..s4 (rows, 4, cells), min, max, exceedance counts (rows,
    thresholds, cells; int64, and the uint8 counters of the frame-by-frame update) of `rows` time
    steps. A row is contiguous: a step's own update (StepMoments) works on it as on its own arrays."""

    def __init__(self, nrows: int, cells: int, thresholds=()):
        self.thresholds = np.asarray(thresholds, np.float64).reshape(-1)
        t = len(self.thresholds)
        self.n = np.zeros(nrows, np.int64)
        self.npending = np.zeros(nrows, np.int64)
        self.k = np.zeros((nrows, cells))
        self.sums = np.zeros((nrows, 4, cells))
        self.min = np.full((nrows, cells), np.inf)
        self.max = np.full((nrows, cells), -np.inf)
        self.exceed = np.zeros((nrows, t, cells), np.int64)
        self.pending = np.zeros((nrows, t, cells), np.uint8)

    def add(self, r: np.ndarray, x: np.ndarray) -> None:
        """One sample per row: x[i] (float64, cells) into row r[i]; the rows are distinct."""
        n0 = self.n[r]
        thr = self.thresholds[:, None]
        first = n0 == 0
        if first.any():  # the first sample sets k, min and max and adds nothing to s1..s4
            rf, xf = r[first], x[first]
            self.k[rf] = xf
            self.min[rf] = xf
            self.max[rf] = xf
            if len(thr):
                self.exceed[rf] += xf[:, None] > thr
            self.n[rf] = 1
            keep = ~first
            r, x, n0 = r[keep], x[keep], n0[keep]
            if not len(r):
                return
        p = np.empty((len(r), 4, x.shape[1]))
        y, y2 = p[:, 0], p[:, 1]
        np.subtract(x, self.k[r], out=y)             # y = x - k
        np.multiply(y, y, out=y2)                    # y^2
        np.multiply(y, y2, out=p[:, 2])              # y^3
        np.multiply(y2, y2, out=p[:, 3])             # y^4
        self.sums[r] += p
        self.min[r] = np.minimum(self.min[r], x)
        self.max[r] = np.maximum(self.max[r], x)
        if len(thr):
            self.exceed[r] += x[:, None] > thr
        n = n0 + 1
        self.n[r] = n
        fold = (n // FOLD != n0 // FOLD) | ((n0 < FIRST_FOLD) & (n >= FIRST_FOLD))
        if fold.any():
            self.fold(r[fold])

    def fold(self, r: np.ndarray) -> None:
        """StepMoments.fold of the rows r (fold_sums, one n per row)."""
        n = self.n[r].astype(np.float64)[:, None]
        s, k = self.sums[r], self.k[r]
        d, d2, t = np.empty_like(k), np.empty_like(k), np.empty_like(k)
        fold_sums(s[:, 0], s[:, 1], s[:, 2], s[:, 3], k, n, d, d2, t)
        self.sums[r] = s
        self.k[r] = k


class QuantileRows:
    """Robbins-Monro iterates q and their averages avg (rows, levels, cells), n and the averaging
    weight of `rows` time steps."""

    def __init__(self, nrows: int, cells: int, levels=()):
        self.levels = np.asarray(levels, np.float64).reshape(-1)
        self.n = np.zeros(nrows, np.int64)
        self.weight = np.zeros(nrows)
        self.q = np.zeros((nrows, len(self.levels), cells))
        self.avg = np.zeros_like(self.q)

    def add(self, r: np.ndarray, x: np.ndarray, mom: MomentRows) -> None:
        """One sample per row (distinct rows), after `mom` was updated with it."""
        n = self.n[r] + 1
        self.n[r] = n
        first = n == 1
        if first.any():
            rf, xf = r[first], x[first]
            self.q[rf] = xf[:, None]
            self.avg[rf] = xf[:, None]
            self.weight[rf] = 1.0
            keep = ~first
            r, x, n = r[keep], x[keep], n[keep]
            if not len(r):
                return
        wt = self.weight[r] + n
        self.weight[r] = wt
        w = (n / wt)[:, None]
        nf = n.astype(np.float64)[:, None]
        scale = np.empty_like(x)
        rm_scale(mom.sums[r, 0], mom.sums[r, 1], nf, gains(n)[:, None], scale)
        lo, hi = mom.min[r], mom.max[r]
        q, avg = self.q[r], self.avg[r]
        below, step = np.empty(x.shape, bool), np.empty_like(x)
        for j, a in enumerate(self.levels):
            rm_step(x, q[:, j], avg[:, j], a, scale, w, lo, hi, below, step)
        self.q[r] = q
        self.avg[r] = avg


class FieldRows:
    """The moments (and quantiles, with `levels`) of up to `nrows` time steps of one field."""

    def __init__(self, nrows: int, cells: int, thresholds=(), levels=()):
        self.nrows, self.cells = int(nrows), int(cells)
        self.used = 0
        self.mom = MomentRows(self.nrows, self.cells, thresholds)
        self.q = QuantileRows(self.nrows, self.cells, levels) if len(levels) else None

    def take(self) -> int | None:
        """A free row, or None when all are used."""
        if self.used == self.nrows:
            return None
        self.used += 1
        return self.used - 1

    def add(self, rows, xs) -> None:
        """Frames xs ((frames, cells) or a list of 1-D frames, any real dtype) into rows (one per
        frame, repeats allowed): as each row's frames entered one by one, in order."""
        rows = np.asarray(rows, np.int64)
        xs = np.asarray(xs, np.float64).reshape(len(rows), self.cells)
        for idx in _rounds(rows, max(1, ROUND_VALUES // self.cells)):
            x = xs[idx]
            r = rows[idx]
            self.mom.add(r, x)
            if self.q is not None:
                self.q.add(r, x, self.mom)


def _rounds(rows: np.ndarray, most: int):
    """Index arrays into `rows`, each with distinct rows and at most `most` entries, such that a
    row's entries come in their order: round j holds each row's j-th entry."""
    m = len(rows)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    start = np.ones(m, bool)
    np.not_equal(srt[1:], srt[:-1], out=start[1:])
    if start.all() and m <= most:
        yield np.arange(m)
        return
    first = np.maximum.accumulate(np.where(start, np.arange(m), 0))  # where each row's run starts
    occ = np.empty(m, np.int64)
    occ[order] = np.arange(m) - first  # the entry's rank among its row's entries
    for j in range(int(occ.max()) + 1):
        idx = np.flatnonzero(occ == j)
        for s in range(0, len(idx), most):
            yield idx[s:s + most]
