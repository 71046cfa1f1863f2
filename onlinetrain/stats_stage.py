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
applied. Statistics does not stage the steps that have quantiles (their Robbins-Monro update
follows the moments frame by frame).
"""
from __future__ import annotations

import numpy as np

STAGE_FRAMES = 16  # frames of one time step updated together (bench: 16 ~ 32 > 8 > 4 at 1M cells)
STAGE_BYTES = 256 << 20  # most bytes of frames held, over every field and time step


class Stage:
    def __init__(self, frames: int = STAGE_FRAMES, nbytes: int = STAGE_BYTES):
        self.frames, self.nbytes = int(frames), int(nbytes)
        self.held: dict[int, tuple[object, list[np.ndarray]]] = {}  # id(moments) -> frames
        self.bytes = 0
        self.spare: dict[tuple, list[np.ndarray]] = {}  # (dtype, size) -> free buffers
        self.spare_bytes = 0

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

    def flush(self, mom=None) -> None:
        """Apply what is staged (for `mom` only, or everything)."""
        keys = list(self.held) if mom is None else [id(mom)] if id(mom) in self.held else []
        for key in keys:
            m, held = self.held[key]
            m.update_block(held)
            self._release(key)

    def drop(self) -> None:
        """Forget everything staged (the statistics were replaced, e.g. by a checkpoint)."""
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
