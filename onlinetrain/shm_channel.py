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
robust mutexes; see shm_lock), so no crash deadlocks the ring, writes each slot header with
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

import logging
import os
import struct
import time
from errno import EBUSY

import numpy as np

from . import frame as fr
from .frame_codec import Encoder
from .shm_consumer import RingConsumer, RingFrame
from .shm_segment import (C_CLOSED, C_READ, C_SEQ, C_WRITE, COMMITTED, PAD, S_LEN, SLOT,
                          SLOT_HDR, WRITING, Backoff, ChannelError, ChannelInUse, ChannelNotFound,
                          ConsumerGone, Empty, Full, clean_stale, f2u, open_segment, proc_start,
                          segment_owner, segment_path)

__all__ = ["RingProducer", "RingConsumer", "RingFrame", "ChannelError", "ChannelInUse",
           "ChannelNotFound", "ConsumerGone", "Empty", "Full", "clean_stale", "segment_owner",
           "segment_path", "SLOT_HDR"]
log = logging.getLogger(__name__)

_IDS = struct.Struct("<qq")  # sim_id, time_step at byte 16 of a frame
_IDS_AT, _IDS_END = 16, 32
# a slot header (6 words, 2 zero words) followed by a frame's first 32 bytes (16 + sim_id, time_step)
_SLOT_IDS = struct.Struct("<6Q16x16sqq")
_slot_struct: dict[int, struct.Struct] = {}  # _SLOT_IDS + the rest of a frame header, by length
_monotonic = time.monotonic
_NDARRAY, _F8 = np.ndarray, np.dtype("<f8")
_SPIN = 8  # trylocks before a contended put blocks
CONSUMER_CHECK_S = 0.5  # producers check the consumer's liveness this often, full ring or not

def _bad_ids(f: fr.Frame) -> fr.FrameError:
    return fr.FrameError(f"sim_id and time_step must be integers in the int64 range, got sim_id="
                         f"{f.sim_id!r}, time_step={f.time_step!r}", (f.sim_id, f.time_step))


def _ids(f: fr.Frame) -> bytes:
    """The frame's packed ids; FrameError (before anything is reserved) if they cannot be sent."""
    try:
        return _IDS.pack(f.sim_id, f.time_step)
    except struct.error:
        raise _bad_ids(f) from None


class RingProducer:
    """Attach to an existing ring and put frames into it (blocking on a full ring: backpressure)."""

    def __init__(self, seg):
        self.seg = seg
        self.name = seg.name
        self.pid = os.getpid()
        self.ptime = f2u(proc_start(self.pid))
        self.producer_id = int.from_bytes(os.urandom(7), "little")
        self._enc = Encoder()
        self._last = (None,) * 12 + ((None, None, None),)  # the previous frame's (see _layout)
        self._limit = 0  # read_pos + capacity as last seen (a lower bound of the true one)
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
        pack, pid, prod, ptime = SLOT.pack_into, self.pid, self.producer_id, self.ptime
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
                backoff = Backoff()
                deadline = None if timeout is None else time.monotonic() + timeout
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + CONSUMER_CHECK_S / 2
                self._check_consumer()
            if deadline is not None and now >= deadline:
                raise Full(f"ring shm://{self.name} stayed full for {timeout:g} s (consumer too slow "
                           f"or stalled)", self.name)
            backoff.wait()

    def _refresh_limit(self, ctl, cap) -> int:
        self._limit = lim = ctl[C_READ] + cap
        return lim

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

    def _layout(self, f: fr.Frame):
        """Validate and encode `f`'s header (Encoder cache); remember it as the layout of the
        frames that follow: (shape, dtype, name, kind, params bytes, head, struct of slot header +
        frame header, header length, tail, params object, destination view, its item size).
        A 1-d array is copied through a view of the ring typed like it (any strides, cheaper than
        a byte cast; item size k); others as bytes (k = 1); k = 0: no bytes at all.
        Then (global_shape, offset, meta) as given.
        Returns (layout, array): the array made C-contiguous little-endian if it was not."""
        hdr, arr = self._enc.prepare(f)  # validates before anything is reserved
        p = f.params
        pb = p.tobytes() if type(p) is np.ndarray and p.dtype is _F8 else None
        tail = hdr[_IDS_END:]
        st = _slot_struct.get(len(tail))
        if st is None:
            st = _slot_struct[len(tail)] = struct.Struct(f"{_SLOT_IDS.format}{len(tail)}s")
        dst = None
        if arr.ndim == 1 and arr.size:
            fmt = arr.data.format
            dst = self.seg.typed_view(fmt)
            if dst is not None and (dst.format != fmt or dst.itemsize != arr.itemsize):
                dst = None
        dst, k = (dst, arr.itemsize) if dst is not None else (self.seg.data, 1)
        if not arr.nbytes:
            dst, k = None, 0  # nothing to copy (and no byte cast of a zero-size n-d array)
        box = (f.global_shape, f.offset, f.meta)
        lay = (arr.shape, arr.dtype, f.name, f.kind, pb, hdr[:_IDS_AT], st, len(hdr), tail, p,
               dst, k, box)
        if pb is not None and arr is f.array and type(box[2]) is bytes and \
                all(v is None or type(v) is tuple for v in box[:2]):
            self._last = lay  # (immutable box and meta only: compared, never trusted)
        return lay, arr

    def put(self, f: fr.Frame, timeout: float | None = None) -> None:
        """Write one frame; blocks while the ring is full (up to `timeout`, then raises Full)."""
        seg = self.seg
        if seg is None or seg.ctl[C_CLOSED] or _monotonic() >= self._next_check:
            self._ready()
            seg = self.seg
        # fast path: the frame looks like the previous one (same array layout, name, kind, the
        # same params object with the same values, the same box and metadata), so its header is the
        # previous one's but for the ids
        arr, p, lay = f.array, f.params, self._last
        fast = False
        if type(arr) is _NDARRAY and arr.shape == lay[0] and arr.dtype is lay[1] and \
                p is lay[9] and p.dtype is _F8 and f.name == lay[2] and f.kind == lay[3] and \
                p.tobytes() == lay[4] and type(m := f.meta) is bytes and m == (b := lay[12])[2] and \
                (f.offset is None if b[1] is None else type(o := f.offset) is tuple and o == b[1]) \
                and (f.global_shape is None if b[0] is None else
                     type(g := f.global_shape) is tuple and g == b[0]):
            if lay[11] != 1:  # 1-d: typed copy, any strides; or no bytes at all
                src, fast = arr, True
            elif (src := arr.data).c_contiguous:
                src, fast = src.cast("B"), True
        if not fast:
            lay, arr = self._layout(f)
            src = arr if lay[11] != 1 else memoryview(arr).cast("B")
        hl = lay[7]
        nb = arr.nbytes
        nbytes = hl + nb
        slot = SLOT_HDR + ((nbytes + 63) & ~63)
        ctl, cap, data = seg.ctl, seg.capacity, seg.data
        rc = seg.trylock_call(seg.lock_arg)  # fast path: room without wrapping; else _reserve
        if rc:
            if rc == EBUSY:  # held for well under a microsecond: retry a few times before
                for _ in range(_SPIN):  # sleeping in the kernel (futex wait + wake ~10 us)
                    rc = seg.trylock_call(seg.lock_arg)
                    if rc != EBUSY:
                        break
                else:
                    rc = seg.lock_call(seg.lock_arg)
            if rc:
                seg._recover(rc)  # EOWNERDEAD: ours now, made consistent; anything else raises
        try:
            w = ctl[C_WRITE]
            off = w % cap
            end = w + slot
            # read_pos only grows, so a stale copy of it is a safe lower bound: re-read the
            # consumer's cache line only when that copy says the ring is full
            if off + slot <= cap and (end <= self._limit or end <= self._refresh_limit(ctl, cap)):
                seq = ctl[C_SEQ]
                # slot header (state WRITING) and the frame header, ids included, in one pack
                try:
                    lay[6].pack_into(data, off, WRITING, nbytes, self.pid, seq, self.producer_id,
                                     self.ptime, lay[5], f.sim_id, f.time_step, lay[8])
                except struct.error:  # bad ids: nothing is published yet
                    raise _bad_ids(f) from None
                ctl[C_SEQ] = seq + 1
                ctl[C_WRITE] = end  # publish
            else:
                off = -1
        finally:
            seg.unlock_call(seg.lock_arg)
        ids = None
        if off < 0:  # wrap or full: the general path
            ids = _ids(f)  # checked before anything is reserved
            off = self._reserve((nbytes,), timeout)[0]
        try:
            if ids is not None:
                h = off + SLOT_HDR
                data[h:h + _IDS_AT] = lay[5]
                data[h + _IDS_AT:h + _IDS_END] = ids
                data[h + _IDS_END:h + hl] = lay[8]
            if nb:
                k = lay[11]
                end = (off + SLOT_HDR + hl) // k  # frame headers are padded to 8 bytes
                try:
                    lay[10][end:end + nb // k] = src
                except ValueError:  # an unaligned array exports a non-native format: as bytes
                    end *= k
                    data[end:end + nb] = memoryview(np.ascontiguousarray(src)).cast("B")
            if self.test_hook_after_reserve is not None:
                self.test_hook_after_reserve()
        except BaseException:  # never leave a live WRITING slot behind: the consumer skips a PAD
            seg.q[off >> 3] = PAD
            raise
        seg.q[off >> 3] = COMMITTED

    def put_nowait(self, f: fr.Frame) -> None:
        self.put(f, timeout=0.0)

    def put_many(self, frames, timeout: float | None = None) -> None:
        """Write frames in order, reserving as many slots as fit under one lock (fewer syscalls).

        `timeout` applies to each wait for room; on Full, the frames before the failing one are in.
        """
        self._ready()
        enc = [self._enc.prepare(f) for f in frames]
        for f in frames:  # ids checked before anything is reserved, as in put
            _ids(f)
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
