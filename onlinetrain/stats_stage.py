"""Frames staged per time step so that the moments are updated STAGE_FRAMES frames at a time.

A frame-by-frame update of the moments (stats_moments) reads and writes the whole state of its time
step, k, s1..s4, min and max (56 bytes a cell) plus the counters, for the 4 bytes a cell of a
float32 frame: at a million cells that state lives in main memory, not in cache.
`StepMoments.update_block` walks the state once for a block of frames; the stage gathers frames of
the same time step until it holds STAGE_FRAMES of them (bench/stats.py: twice the frames/s at 1M
cells). Frames handed to `add` may be views of the channel's memory that go back after the call,
so staged frames are copies, into buffers that are reused. The result is bit-identical to a
frame-by-frame update (update_block cuts its blocks at the folds), whenever the stage is flushed.

    stage = Stage()
    stage.add(step_moments, xs)   # xs: 1-D frames of one time step; applied now if enough
    stage.flush()                 # before reading any result or state (Statistics does it)

At most `nbytes` (STAGE_BYTES, over every field and step) are held, staged frames and spare
buffers together: past it, the spare buffers go, then the step with the most staged frames is
applied. Statistics does not stage this way the steps of large fields that have quantiles
(their Robbins-Monro update follows the moments frame by frame).

Small fields (stats_rows: their steps are rows of a FieldRows, updated over time steps in rounds of
one frame per step) are staged too, quantiles or not: frames of many time steps make full rounds
even when hundreds of simulations run in lockstep and a channel's batch holds one or two steps.
`add_small` holds them (as float64 copies) until SMALL_FRAMES frames or SMALL_VALUES values are
held (the batch that crosses the limit included); `flush_small` (also by `flush()`, and by reading a small step's moments or quantiles) applies
them per FieldRows: in rounds, or by each step's own update when the rounds would be thin (fewer
than stats_rows.ROUND_MIN frames on average). Either way bit-identical to frame by frame.

    stage.add_small(steps, xs)    # steps: Step objects of small fields, one per frame
"""
from __future__ import annotations

import numpy as np

from .stats_rows import ROUND_MIN

STAGE_FRAMES = 16  # frames of one time step updated together (bench: 16 ~ 32 > 8 > 4 at 1M cells)
STAGE_BYTES = 256 << 20  # most bytes of frames held, over every field and time step
SMALL_FRAMES = 4096  # frames of small fields held before their update (rounds over ~20 steps even
SMALL_VALUES = 1 << 20  # with 200 simulations in lockstep); at most 8 MiB of float64 values


class Stage:
    def __init__(self, frames: int = STAGE_FRAMES, nbytes: int = STAGE_BYTES):
        self.frames, self.nbytes = int(frames), int(nbytes)
        self.held: dict[int, tuple[object, list[np.ndarray]]] = {}  # id(moments) -> frames
        self.bytes = 0
        self.spare: dict[tuple, list[np.ndarray]] = {}  # (dtype, size) -> free buffers
        self.spare_bytes = 0
        self.small: list[tuple[list, np.ndarray]] = []  # (steps, float64 frames) in order
        self.small_frames = self.small_values = 0

    def __contains__(self, mom) -> bool:
        return id(mom) in self.held

    def add(self, mom, xs) -> None:
        """Stage the frames `xs` (1-D arrays) of `mom`'s time step, or update `mom` with them and
        those already staged once there are `frames` of them."""
        key = id(mom)
        got = self.held.get(key)
        held = got[1] if got is not None else []
        size = sum(x.nbytes for x in xs)
        if len(held) + len(xs) >= self.frames or size > self.nbytes:
            mom.update_block(held + list(xs))
            self._release(key)
            return
        for x in xs:
            buf = self._buffer(x)
            np.copyto(buf, x)
            held.append(buf)
            self.bytes += buf.nbytes
        self.held[key] = (mom, held)
        while self.bytes + self.spare_bytes > self.nbytes and self.held:
            if self.spare_bytes:
                self.spare.clear()
                self.spare_bytes = 0
                continue
            big = max(self.held, key=lambda k: len(self.held[k][1]))  # the most staged frames
            self.flush(self.held[big][0])

    def add_small(self, steps, xs) -> None:
        """Stage frames xs (1-D, copied now) of steps of one FieldRows (one Step per frame)."""
        if not len(xs):
            return
        x = np.array(xs, np.float64)
        self.small.append((list(steps), x.reshape(len(x), -1)))
        self.small_frames += len(x)
        self.small_values += x.size
        if self.small_frames >= SMALL_FRAMES or self.small_values >= SMALL_VALUES:
            self.flush_small()

    def flush_small(self) -> None:
        """Apply the staged frames of small fields, in arrival order per step."""
        held, self.small = self.small, []
        self.small_frames = self.small_values = 0
        by_rows: dict[int, tuple] = {}  # id(FieldRows) -> (FieldRows, steps, frames)
        for steps, x in held:
            got = by_rows.setdefault(id(steps[0].rows), (steps[0].rows, [], []))
            got[1].extend(steps)
            got[2].append(x)
        for rows_of, steps, xs in by_rows.values():
            self._apply_small(rows_of, steps, np.concatenate(xs) if len(xs) > 1 else xs[0])

    @staticmethod
    def _apply_small(rows_of, steps, x) -> None:
        rows = np.fromiter((s.row for s in steps), np.int64, len(steps))
        if len(rows) >= ROUND_MIN * np.bincount(rows).max():
            rows_of.add(rows, x)  # over time steps, one frame a step per round
            return
        by_step: dict[int, tuple] = {}  # rounds too thin: each step's own update
        for i, s in enumerate(steps):
            by_step.setdefault(id(s), (s, []))[1].append(i)
        for s, idx in by_step.values():
            s.apply(x[idx])

    def flush(self, mom=None) -> None:
        """Apply what is staged (for `mom` only, or everything, small fields included)."""
        if mom is None and self.small:
            self.flush_small()
        keys = list(self.held) if mom is None else [id(mom)] if id(mom) in self.held else []
        for key in keys:
            m, held = self.held[key]
            m.update_block(held)
            self._release(key)

    def drop(self) -> None:
        """Forget everything staged (the statistics were replaced, e.g. by a checkpoint)."""
        self.small = []
        self.small_frames = self.small_values = 0
        self.held.clear()
        self.bytes = 0
        self.spare.clear()
        self.spare_bytes = 0

    def _buffer(self, x) -> np.ndarray:
        free = self.spare.get((x.dtype.str, x.size))
        if free:
            self.spare_bytes -= free[-1].nbytes
            return free.pop()
        return np.empty(x.size, x.dtype)

    def _release(self, key) -> None:
        got = self.held.pop(key, None)
        if got is None:
            return
        for buf in got[1]:  # kept for the next frames, within the budget
            self.bytes -= buf.nbytes
            if self.bytes + self.spare_bytes + buf.nbytes <= self.nbytes:
                self.spare.setdefault((buf.dtype.str, buf.size), []).append(buf)
                self.spare_bytes += buf.nbytes
