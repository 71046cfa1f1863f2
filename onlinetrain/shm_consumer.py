"""The consuming end of a shm ring: RingConsumer (create, get, get_many, close) and RingFrame.

    ring = RingConsumer.create("demo", capacity=64 << 20)
    fs = ring.get_many(256, timeout=0.2)            # copies; copy=False gives views: f.release()
    ring.abandoned, ring.rejected                   # slots of dead writers, malformed frames

Usually imported from onlinetrain.shm_channel, which describes the protocol.
"""
from __future__ import annotations

import collections
import logging
import os
import time

from . import frame as fr
from .frame_codec import Decoder
from .shm_segment import (C_ABANDONED, C_CLOSED, C_READ, C_REJECTED, C_WRITE, COMMITTED, CTL_SIZE,
                          PAD, S_PID, S_PTIME, S_SEQ, SLOT_HDR, WRITING, Backoff, ChannelError,
                          Empty, alive, create_segment, segment_path, u2f)

log = logging.getLogger(__name__)
STALL_CHECK_S = 0.05  # a WRITING slot older than this gets its producer's liveness checked
_BASE = CTL_SIZE + SLOT_HDR  # mmap offset of the frame in the slot at data offset 0


class RingFrame(fr.Frame):
    """A frame whose array views ring memory; call `release()` when done with it."""

    _ring = None
    _entry = None

    def release(self):
        if self._ring is not None:
            self._ring._release(self._entry)
            self._ring = None
            self.array = None


class RingConsumer:
    """Create a ring and read frames from it. Exactly one consumer per ring."""

    def __init__(self, seg):
        self.seg = seg
        self.name = seg.name
        self._pos = seg.ctl[C_READ]  # next slot to read (may run ahead of read_pos)
        self._pending: collections.deque = collections.deque()  # [end_pos, released] in order
        self._stall: dict[int, float] = {}
        self._dec = Decoder()
        self.rejected = 0

    @classmethod
    def create(cls, name: str, capacity: int = 64 << 20) -> "RingConsumer":
        """Create ring `name`; a stale segment of a dead creator is removed, a live one is an error."""
        return cls(create_segment(name, capacity))

    @property
    def abandoned(self) -> int:
        """Slots skipped because their producer died mid-write."""
        return self.seg.ctl[C_ABANDONED]

    def _done(self, end: int):
        """The slot ending at `end` is consumed (copied or skipped)."""
        if self._pending:
            self._pending.append([end, True])
            self._advance()
        else:
            self.seg.ctl[C_READ] = end

    def _advance(self):
        pend, ctl = self._pending, self.seg.ctl
        while pend and pend[0][1]:
            ctl[C_READ] = pend.popleft()[0]

    def _release(self, entry):
        entry[1] = True
        if self.seg is not None:
            self._advance()

    def _scan(self, max_frames: int, copy: bool) -> list:
        """Up to `max_frames` frames available now; raises FrameError for a malformed first slot."""
        seg = self.seg
        cap, q, mm, ctl = seg.capacity, seg.q, seg.mm, seg.ctl
        dec, pend = self._dec.decode_at, self._pending
        out = []
        pos, w = self._pos, ctl[C_WRITE]
        while pos < w and len(out) < max_frames:
            off = pos % cap
            i = off >> 3
            state, length = q[i], q[i + 1]
            end = pos + SLOT_HDR + ((length + 63) & ~63)
            if end > w or off + SLOT_HDR + length > cap:
                raise ChannelError(f"ring shm://{self.name} is corrupt: slot at {pos} announces "
                                   f"{length} bytes", self.name)
            if state == COMMITTED:
                try:
                    if copy:
                        f = dec(mm, off + _BASE, length, True)
                    else:
                        f = dec(mm, off + _BASE, length, False, RingFrame)
                except fr.FrameError:
                    if out:  # hand out the good ones; the bad one raises on the next call
                        break
                    self.rejected += 1
                    ctl[C_REJECTED] += 1
                    self._pos = end
                    self._done(end)
                    raise
                if copy:
                    if pend:
                        pend.append([end, True])
                else:
                    entry = [end, False]
                    pend.append(entry)
                    f._ring, f._entry = self, entry
                out.append(f)
                pos = end
                continue
            if state == PAD:
                pos = end
                if pend:
                    pend.append([end, True])
                continue
            if state == WRITING and self._writer_dead(pos, i):
                log.warning("ring %s: producer pid %d died mid-write; slot seq %d skipped",
                            self.name, q[i + S_PID], q[i + S_SEQ])
                ctl[C_ABANDONED] += 1
                pos = end
                if pend:
                    pend.append([end, True])
                continue
            if state not in (WRITING, COMMITTED, PAD):
                raise ChannelError(f"ring shm://{self.name} is corrupt: slot state {state}",
                                   self.name)
            break  # a slot still being written: wait for it
        if pos != self._pos:
            self._pos = pos
            if self._stall:
                self._stall = {k: v for k, v in self._stall.items() if k >= pos}
            if pend:
                self._advance()
            else:
                ctl[C_READ] = pos
        return out

    def _writer_dead(self, pos: int, i: int) -> bool:
        now = time.monotonic()
        first = self._stall.setdefault(pos, now)
        if now - first < STALL_CHECK_S:
            return False
        self._stall[pos] = now - STALL_CHECK_S / 2  # recheck every STALL_CHECK_S / 2
        q = self.seg.q
        if alive(q[i + S_PID], u2f(q[i + S_PTIME])):
            return False
        self._stall.pop(pos, None)
        return True

    def get_many(self, max_frames: int = 64, timeout: float | None = None,
                 copy: bool = True) -> list[fr.Frame]:
        """At least one frame (waiting up to `timeout`), then whatever else is ready, up to max."""
        if self.seg is None:
            raise ChannelError(f"consumer of shm://{self.name} is closed", self.name)
        out = self._scan(max_frames, copy)
        if out:
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff()
        while True:
            backoff.wait()
            out = self._scan(max_frames, copy)
            if out:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty(f"no frame on shm://{self.name} within {timeout:g} s", self.name)

    def get(self, timeout: float | None = None, copy: bool = True) -> fr.Frame:
        """Next frame; blocks up to `timeout` seconds (None: forever), then raises Empty."""
        return self.get_many(1, timeout, copy)[0]

    def get_nowait(self, copy: bool = True) -> fr.Frame:
        return self.get(timeout=0.0, copy=copy)

    def close(self, unlink: bool = True):
        if self.seg is None:
            return
        self.seg.ctl[C_CLOSED] = 1
        path = segment_path(self.name)
        self.seg.close()
        self.seg = None
        if unlink:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
