"""Reusable receive buffers for tcp:// consumers, and the frames that view them.

Receiving a large frame into fresh memory costs a page fault per 4 KB page and a copy into cold
cache; on localhost that was most of the receiver's time. A TcpConsumer therefore receives frames
of at least POOL_MIN bytes into buffers from a BufferPool. A frame taken with `get(copy=False)`
views its buffer; `release()` hands the buffer back for a later frame (as RingFrame.release frees
a ring slot). A frame taken with `get(copy=True)` (the default) keeps its buffer for good: the pool
forgets it, so nothing the caller holds is ever overwritten. An unreleased copy=False frame is
also never overwritten; its buffer is simply not reused.

    pool = BufferPool(max_bytes=64 << 20)
    buf = pool.take(1 << 20)          # uint8 array of at least 1 MB (rounded up to POOL_ROUND)
    pool.give(buf)                    # reused by the next take() of the same size class
"""
from __future__ import annotations

import threading

import numpy as np

from . import frame as fr

POOL_MIN = 64 << 10    # smaller frames get a fresh buffer (malloc serves them without faults)
POOL_ROUND = 64 << 10  # buffer sizes are rounded up to this, so near-equal frames share buffers


def size_class(nbytes: int) -> int:
    return -(-int(nbytes) // POOL_ROUND) * POOL_ROUND


class BufferPool:
    """Free lists of uint8 buffers by size class, at most `max_bytes` kept; thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.lock = threading.Lock()
        self.free: dict[int, list] = {}
        self.free_bytes = 0
        self.reused = self.allocated = 0

    def take(self, nbytes: int) -> np.ndarray:
        cap = size_class(nbytes)
        with self.lock:
            lst = self.free.get(cap)
            if lst:
                self.free_bytes -= cap
                self.reused += 1
                return lst.pop()  # the last one given back: the most likely still in cache
            self.allocated += 1
        return np.empty(cap, np.uint8)

    def give(self, buf: np.ndarray) -> None:
        cap = buf.nbytes
        with self.lock:
            if self.free_bytes + cap > self.max_bytes:  # make room: drop other size classes
                for other in [c for c in self.free if c != cap]:
                    self.free_bytes -= other * len(self.free.pop(other))
            if self.free_bytes + cap <= self.max_bytes:
                self.free.setdefault(cap, []).append(buf)
                self.free_bytes += cap

    def clear(self) -> None:
        with self.lock:
            self.free.clear()
            self.free_bytes = 0


class TcpFrame(fr.Frame):
    """A frame from a tcp:// channel. If it came from get(copy=False) its array may view a pooled
    receive buffer: call `release()` when done with the array (and anything viewing it)."""

    _pool = None
    _buf = None

    def keep(self) -> "TcpFrame":
        """Make the buffer this frame's own for good (what get(copy=True) does)."""
        self._pool = self._buf = None
        return self

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            buf, self._buf = self._buf, None
            self.array = None
            pool.give(buf)
