"""POSIX shared-memory ring: many producers, one consumer, variable-size frames, crash-safe.

One segment `/dev/shm/ot_<name>` (mode 0600) holds a 4 KiB control block and a data region. The
consumer (the trainer) creates and unlinks it; producers (simulations) attach and only close.

    ring = RingConsumer.create("demo", capacity=64 << 20)     # trainer side
    prod = RingProducer.attach("demo", timeout=30)             # simulation side, another process
    prod.put(Frame(sim_id=0, time_step=1, params=p, array=field))   # or put_many([...])
    f = ring.get(timeout=1.0)                   # a copy; ring.get(copy=False) is a view: f.release()
    fs = ring.get_many(256, timeout=0.2)        # >= 1 frame, then whatever else is ready
    prod.close(); ring.close()                  # close() of the consumer unlinks the segment

Protocol (byte layout in docs/wire-format.md). Positions are monotonic 64-bit byte counters
(`write_pos`, `read_pos`); a slot lives at `pos % capacity` and is a 64-byte slot header (state,
length, producer pid, sequence, producer id, producer start time) followed by the encoded frame,
padded to 64 bytes. A producer reserves one or more slots under the ring lock (a robust
process-shared pthread mutex, handed on with EOWNERDEAD if its holder dies; `flock` where libc lacks
robust mutexes; see shm_segment.Segment), so no crash deadlocks the ring, writes each slot header with
state WRITING, publishes `write_pos` (one aligned 8-byte store), releases the lock, copies the frames
outside the lock (producers copy in parallel) and finally stores state COMMITTED. A producer killed
before publishing leaves nothing visible; one killed after publishing leaves WRITING slots that the
consumer skips once their producer is dead (counted in `abandoned`). A slot that does not fit before
the end of the region is preceded by a PAD slot. The consumer reads slots in order and advances
`read_pos` when a frame is copied out or, for zero-copy frames, released (in order). Producers check
every CONSUMER_CHECK_S that the consumer is alive, and raise ConsumerGone if not. Readers rely on
x86-64 store ordering (TSO) for the publish order of aligned 8-byte words.
"""
from __future__ import annotations

import collections
import logging
import os
import struct
import time

import numpy as np

from . import frame as fr
from .shm_segment import (CTL_SIZE, C_ABANDONED, C_CLOSED, C_READ, C_REJECTED, C_SEQ, C_WRITE, ChannelError,
                          ChannelInUse, ChannelNotFound, ConsumerGone, Empty, Full, alive,
                          clean_stale, create_segment, f2u, open_segment, proc_start, segment_owner,
                          segment_path, u2f)

__all__ = ["RingProducer", "RingConsumer", "RingFrame", "ChannelError", "ChannelInUse",
           "ChannelNotFound", "ConsumerGone", "Empty", "Full", "clean_stale", "segment_owner",
           "segment_path"]
log = logging.getLogger(__name__)

SLOT_HDR = 64
_SLOT = struct.Struct("<6Q")
_IDS = struct.Struct("<qq")  # sim_id, time_step at byte 16 of a frame  # state, length, pid, seq, producer id, producer start time
S_STATE, S_LEN, S_PID, S_SEQ, S_PROD, S_PTIME = 0, 1, 2, 3, 4, 5
WRITING, COMMITTED, PAD = 1, 2, 3
_BASE = CTL_SIZE + SLOT_HDR  # mmap offset of the frame in the slot at data offset 0
STALL_CHECK_S = 0.05  # a WRITING slot older than this gets its producer's liveness checked
CONSUMER_CHECK_S = 0.5  # producers check the consumer's liveness this often, full ring or not


class _Backoff:
    """Spin, then yield, then sleep up to 1 ms: cheap waiting without a shared condition variable."""

    def __init__(self):
        self.n = 0

    def wait(self):
        self.n += 1
        if self.n < 20:
            return
        time.sleep(0 if self.n < 100 else min(1e-3, 2e-5 * (self.n - 99)))


class RingProducer:
    """Attach to an existing ring and put frames into it (blocking on a full ring: backpressure)."""

    def __init__(self, seg):
        self.seg = seg
        self.name = seg.name
        self.pid = os.getpid()
        self.ptime = f2u(proc_start(self.pid))
        self.producer_id = int.from_bytes(os.urandom(7), "little")
        self._enc = fr.Encoder()
        self._next_check = time.monotonic() + CONSUMER_CHECK_S
        self.test_hook_after_reserve = None  # tests widen the crash window with this

    @classmethod
    def attach(cls, name: str, timeout: float = 0.0) -> "RingProducer":
        """Attach to ring `name`, waiting up to `timeout` seconds for its consumer to create it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                seg = open_segment(name)
            except ChannelError:  # being created right now (no magic yet), or not a ring at all
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
                continue
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    raise ChannelNotFound(
                        f"channel shm://{name} does not exist ({segment_path(name)} not found after "
                        f"{timeout:g} s): start the consumer (`ot train --from shm://{name}`) first, "
                        f"or check the name", name) from None
                time.sleep(0.05)
                continue
            if not seg.owner_alive() or seg.ctl[C_CLOSED]:
                seg.close()
                if time.monotonic() >= deadline:
                    raise ConsumerGone(f"channel shm://{name} exists but its consumer is gone", name)
                time.sleep(0.05)
                continue
            return cls(seg)

    def _reserve(self, sizes, timeout: float | None) -> list[int]:
        """Reserve slots for as many of `sizes` as fit now (at least one, waiting up to `timeout`)."""
        seg = self.seg
        cap, ctl, q, data = seg.capacity, seg.ctl, seg.q, seg.data
        pack, pid, prod, ptime = _SLOT.pack_into, self.pid, self.producer_id, self.ptime
        deadline = backoff = None
        while True:
            seg.acquire()
            try:
                w, seq, limit = ctl[C_WRITE], ctl[C_SEQ], ctl[C_READ] + cap
                offs = []
                for nbytes in sizes:
                    slot = SLOT_HDR + ((nbytes + 63) & ~63)
                    off = w % cap
                    tail = cap - off
                    if slot > tail:
                        if w + tail + slot > limit:
                            break
                        q[(off >> 3) + S_LEN] = tail - SLOT_HDR
                        q[off >> 3] = PAD
                        w, off = w + tail, 0
                    elif w + slot > limit:
                        break
                    pack(data, off, WRITING, nbytes, pid, seq, prod, ptime)
                    seq += 1
                    w += slot
                    offs.append(off)
                if offs:
                    ctl[C_SEQ] = seq
                    ctl[C_WRITE] = w  # publish
                    return offs
            finally:
                seg.release()
            if backoff is None:  # the ring is full: wait for room (backpressure)
                big = SLOT_HDR + ((max(sizes) + 63) & ~63)
                if big > cap:
                    raise Full(f"frame of {max(sizes)} bytes does not fit ring shm://{self.name} of "
                               f"{cap} bytes; create the ring larger (ring_mb)", self.name)
                backoff = _Backoff()
                deadline = None if timeout is None else time.monotonic() + timeout
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + CONSUMER_CHECK_S / 2
                self._check_consumer()
            if deadline is not None and now >= deadline:
                raise Full(f"ring shm://{self.name} stayed full for {timeout:g} s (consumer too slow "
                           f"or stalled)", self.name)
            backoff.wait()

    def _check_consumer(self):
        if self.seg.ctl[C_CLOSED] or not self.seg.owner_alive():
            raise ConsumerGone(f"the consumer of shm://{self.name} (pid {self.seg.owner}) is gone; "
                               f"nothing more can be delivered", self.name)

    def _ready(self):
        if self.seg is None:
            raise ChannelError(f"producer of shm://{self.name} is closed", self.name)
        now = time.monotonic()
        if self.seg.ctl[C_CLOSED] or now >= self._next_check:
            self._next_check = now + CONSUMER_CHECK_S
            self._check_consumer()

    def _write(self, off: int, hdr: bytes, f: fr.Frame, arr: np.ndarray):
        data, q = self.seg.data, self.seg.q
        start = off + SLOT_HDR
        end = start + len(hdr)
        try:
            data[start:end] = hdr
            _IDS.pack_into(data, start + 16, f.sim_id, f.time_step)
            if arr.nbytes:
                data[end:end + arr.nbytes] = memoryview(arr).cast("B")
            if self.test_hook_after_reserve is not None:
                self.test_hook_after_reserve()
        except BaseException:  # never leave a live WRITING slot behind: the consumer skips a PAD
            q[off >> 3] = PAD
            raise
        q[off >> 3] = COMMITTED

    def put(self, f: fr.Frame, timeout: float | None = None) -> None:
        """Write one frame; blocks while the ring is full (up to `timeout`, then raises Full)."""
        seg = self.seg
        if seg is None or seg.ctl[C_CLOSED] or time.monotonic() >= self._next_check:
            self._ready()
            seg = self.seg
        hdr, arr = self._enc.prepare(f)  # validates before anything is reserved
        nbytes = len(hdr) + arr.nbytes
        slot = SLOT_HDR + ((nbytes + 63) & ~63)
        ctl, cap = seg.ctl, seg.capacity
        seg.acquire()  # fast path: room without wrapping; everything else goes to _reserve
        try:
            w = ctl[C_WRITE]
            off = w % cap
            if off + slot <= cap and w + slot <= ctl[C_READ] + cap:
                seq = ctl[C_SEQ]
                _SLOT.pack_into(seg.data, off, WRITING, nbytes, self.pid, seq, self.producer_id,
                                self.ptime)
                ctl[C_SEQ] = seq + 1
                ctl[C_WRITE] = w + slot  # publish
            else:
                off = -1
        finally:
            seg.release()
        if off < 0:
            off = self._reserve((nbytes,), timeout)[0]
        self._write(off, hdr, f, arr)

    def put_nowait(self, f: fr.Frame) -> None:
        self.put(f, timeout=0.0)

    def put_many(self, frames, timeout: float | None = None) -> None:
        """Write frames in order, reserving as many slots as fit under one lock (fewer syscalls).

        `timeout` applies to each wait for room; on Full, the frames before the failing one are in.
        """
        self._ready()
        enc = [self._enc.prepare(f) for f in frames]
        i = 0
        while i < len(frames):
            offs = self._reserve([len(h) + a.nbytes for h, a in enc[i:i + 1024]], timeout)
            for off in offs:
                self._write(off, enc[i][0], frames[i], enc[i][1])
                i += 1

    def put_encoded(self, buf, timeout: float | None = None) -> None:
        """Write an already-encoded frame (e.g. forwarded from TCP); it is validated first."""
        self._ready()
        fr.decode(buf, copy=False)
        mv = memoryview(buf).cast("B")
        off = self._reserve((len(mv),), timeout)[0]
        self.seg.data[off + SLOT_HDR:off + SLOT_HDR + len(mv)] = mv
        self.seg.q[off >> 3] = COMMITTED

    def close(self):
        if self.seg is not None:
            self.seg.close()
            self.seg = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        self._dec = fr.Decoder()
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
        backoff = _Backoff()
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
