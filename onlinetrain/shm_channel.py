"""POSIX shared-memory ring: many producers, one consumer, variable-size frames, crash-safe.

One segment `/dev/shm/ot_<name>` (mode 0600) holds a 4 KiB control block and a data region. The
consumer (the trainer) creates and unlinks it; producers (simulations) attach and only close.

    ring = RingConsumer.create("demo", capacity=64 << 20)     # trainer side
    prod = RingProducer.attach("demo", timeout=30)             # simulation side, another process
    prod.put(Frame(sim_id=0, time_step=1, params=p, array=field))
    f = ring.get(timeout=1.0)                   # a copy; ring.get(copy=False) is a view: f.release()
    prod.close(); ring.close()                  # close() of the consumer unlinks the segment

Protocol. Positions are monotonic 64-bit byte counters (`write_pos`, `read_pos`); a slot lives at
`pos % capacity` and is a 64-byte slot header (state, length, producer pid, sequence, producer id,
producer start time) followed by the encoded frame, padded to 64 bytes. A producer reserves a slot
under an open-file-description lock (F_OFD_SETLKW: the kernel drops it if the holder dies, so no
deadlock), writes the slot header with state WRITING, publishes `write_pos`, releases the lock,
copies the frame outside the lock (producers copy in parallel) and finally stores state COMMITTED.
A slot that does not fit before the end of the region is preceded by a PAD slot. The consumer reads
slots in order; a slot stuck in WRITING whose producer is dead is skipped (counted in `abandoned`).
Readers of the ring rely on x86-64 store ordering (TSO) for the publish order of aligned 8-byte words.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import logging
import mmap
import os
import struct
import threading
import time

import numpy as np
import psutil

from . import frame as fr

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
PREFIX = "ot_"
RING_MAGIC = int.from_bytes(b"OTRING01", "little")
CTL_SIZE = 4096
SLOT_HDR = 64
ALIGN = 64
# control block, as uint64 word indices
C_MAGIC, C_CAP, C_OWNER, C_OWNER_T, C_CLOSED = 0, 1, 2, 3, 4
C_WRITE, C_SEQ = 8, 9  # own cache line: producers
C_READ = 16  # own cache line: consumer
C_ABANDONED, C_REJECTED = 24, 25
# slot header words
S_STATE, S_LEN, S_PID, S_SEQ, S_PROD, S_PTIME = 0, 1, 2, 3, 4, 5
WRITING, COMMITTED, PAD = 1, 2, 3
STALL_CHECK_S = 0.05  # a WRITING slot older than this gets its producer's liveness checked


class ChannelError(RuntimeError):
    """Base of channel errors; `name` is the channel."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class Empty(ChannelError):
    pass


class Full(ChannelError):
    pass


class ChannelNotFound(ChannelError):
    pass


class ChannelInUse(ChannelError):
    pass


class ConsumerGone(ChannelError):
    pass


def segment_path(name: str) -> str:
    if not name or "/" in name or len(name) > 200:
        raise ChannelError(f"bad channel name {name!r}: use letters, digits, '-', '_' or '.'", name)
    return os.path.join(SHM_DIR, PREFIX + name)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _proc_start(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return -1.0


def _alive(pid: int, start: float) -> bool:
    """True if process `pid` exists and (when `start` is known) started at `start`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start > 0:
        s = _proc_start(pid)
        return s < 0 or abs(s - start) < 0.5
    return True


class _Backoff:
    """Spin, then yield, then sleep up to 1 ms: cheap waiting without a shared condition variable."""

    def __init__(self):
        self.n = 0

    def wait(self):
        self.n += 1
        if self.n < 50:
            return
        time.sleep(0 if self.n < 200 else min(1e-3, 2e-5 * (self.n - 199)))


class _Segment:
    def __init__(self, name: str, fd: int, mm: mmap.mmap):
        self.name, self.fd, self.mm = name, fd, mm
        self.ctl = np.ndarray((CTL_SIZE // 8,), np.uint64, mm, 0)
        self.capacity = int(self.ctl[C_CAP])
        self.data = memoryview(mm)[CTL_SIZE:CTL_SIZE + self.capacity]
        self.words = np.ndarray((self.capacity // 8,), np.uint64, mm, CTL_SIZE)
        self.owner_time = struct.unpack("<d", struct.pack("<Q", int(self.ctl[C_OWNER_T])))[0]

    def owner_alive(self) -> bool:
        return _alive(int(self.ctl[C_OWNER]), self.owner_time)

    def close(self):
        self.words = self.ctl = None
        self.data.release()
        try:
            self.mm.close()
        except BufferError:
            log.warning("ring %s: zero-copy views still alive at close; mapping kept", self.name)
        os.close(self.fd)


def _open_segment(name: str) -> _Segment:
    fd = os.open(segment_path(name), os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < CTL_SIZE:
            raise ChannelError(f"segment {segment_path(name)} is {size} bytes: not an onlinetrain ring",
                               name)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    if int(np.frombuffer(mm, np.uint64, 1, 0)[0]) != RING_MAGIC:
        mm.close()
        os.close(fd)
        raise ChannelError(f"segment {segment_path(name)} is not an onlinetrain ring (bad magic)", name)
    return _Segment(name, fd, mm)


def segment_owner(name: str) -> tuple[int, bool] | None:
    """(owner pid, owner alive) of an existing segment, or None if there is none or it is not ours."""
    try:
        seg = _open_segment(name)
    except (OSError, ChannelError):
        return None
    try:
        return int(seg.ctl[C_OWNER]), seg.owner_alive()
    finally:
        seg.close()


def clean_stale(prefix: str = "") -> list[str]:
    """Unlink rings of `PREFIX + prefix*` whose creator is dead; returns the names removed."""
    removed = []
    for entry in sorted(os.listdir(SHM_DIR)):
        if not entry.startswith(PREFIX + prefix):
            continue
        name = entry[len(PREFIX):]
        owner = segment_owner(name)
        if owner is not None and not owner[1]:
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(name)
                log.warning("removed stale ring %s of dead pid %d", name, owner[0])
            except FileNotFoundError:
                pass
    return removed


_thread_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
_FLOCK = "hhqqi4x"


def _ofd_lock(fd: int, lock: bool):
    kind = fcntl.F_WRLCK if lock else fcntl.F_UNLCK
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 1, 0))


class RingProducer:
    """Attach to an existing ring and put frames into it (blocking on a full ring: backpressure)."""

    def __init__(self, seg: _Segment):
        self.seg = seg
        self.name = seg.name
        self.pid = os.getpid()
        self.ptime = np.float64(_proc_start(self.pid)).view(np.uint64)
        self.producer_id = int.from_bytes(os.urandom(7), "little")
        self._tlock = _thread_locks[seg.name]
        self.test_hook_after_reserve = None  # tests widen the crash window with this

    @classmethod
    def attach(cls, name: str, timeout: float = 0.0) -> "RingProducer":
        """Attach to ring `name`, waiting up to `timeout` seconds for its consumer to create it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                seg = _open_segment(name)
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

    def _reserve(self, nbytes: int, timeout: float | None) -> int:
        seg = self.seg
        cap = seg.capacity
        slot = SLOT_HDR + _align(nbytes)
        if slot > cap:
            raise Full(f"frame of {nbytes} bytes does not fit ring shm://{self.name} of {cap} bytes; "
                       f"create the ring larger (ring_mb)", self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff, next_check = _Backoff(), time.monotonic() + 0.2
        ctl, words = seg.ctl, seg.words
        while True:
            with self._tlock:
                _ofd_lock(seg.fd, True)
                try:
                    w = int(ctl[C_WRITE])
                    off = w % cap
                    tail = cap - off
                    need = slot if slot <= tail else tail + slot
                    if w + need - int(ctl[C_READ]) <= cap:
                        if slot > tail:
                            i = off // 8
                            words[i + S_LEN] = tail - SLOT_HDR
                            words[i + S_STATE] = PAD
                            w, off = w + tail, 0
                        i = off // 8
                        seq = int(ctl[C_SEQ])
                        words[i + S_LEN] = nbytes
                        words[i + S_PID] = self.pid
                        words[i + S_SEQ] = seq
                        words[i + S_PROD] = self.producer_id
                        words[i + S_PTIME] = self.ptime
                        words[i + S_STATE] = WRITING
                        ctl[C_SEQ] = seq + 1
                        ctl[C_WRITE] = w + slot  # publish
                        return off
                finally:
                    _ofd_lock(seg.fd, False)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.2
                self._check_consumer()
            if deadline is not None and now >= deadline:
                raise Full(f"ring shm://{self.name} stayed full for {timeout:g} s (consumer too slow "
                           f"or stalled)", self.name)
            backoff.wait()

    def _check_consumer(self):
        if self.seg.ctl[C_CLOSED] or not self.seg.owner_alive():
            raise ConsumerGone(f"the consumer of shm://{self.name} (pid {int(self.seg.ctl[C_OWNER])}) "
                               f"is gone; nothing more can be delivered", self.name)

    def put(self, f: fr.Frame, timeout: float | None = None) -> None:
        """Write one frame; blocks while the ring is full (up to `timeout`, then raises Full)."""
        if self.seg is None:
            raise ChannelError(f"producer of shm://{self.name} is closed", self.name)
        if self.seg.ctl[C_CLOSED]:
            self._check_consumer()
        arr = np.asarray(f.array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        hdr = fr.encode_header(f, arr.nbytes)  # validates before anything is reserved
        off = self._reserve(len(hdr) + arr.nbytes, timeout)
        start = off + SLOT_HDR
        data = self.seg.data
        data[start:start + len(hdr)] = hdr
        if arr.nbytes:
            dst = np.frombuffer(data, arr.dtype, arr.size, start + len(hdr)).reshape(arr.shape)
            np.copyto(dst, arr, casting="no")
            del dst
        if self.test_hook_after_reserve is not None:
            self.test_hook_after_reserve()
        self.seg.words[off // 8 + S_STATE] = COMMITTED

    def put_nowait(self, f: fr.Frame) -> None:
        self.put(f, timeout=0.0)

    def put_encoded(self, buf, timeout: float | None = None) -> None:
        """Write an already-encoded frame (e.g. forwarded from TCP); it is validated first."""
        fr.decode(buf, copy=False)
        mv = memoryview(buf).cast("B")
        off = self._reserve(len(mv), timeout)
        self.seg.data[off + SLOT_HDR:off + SLOT_HDR + len(mv)] = mv
        self.seg.words[off // 8 + S_STATE] = COMMITTED

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

    def __init__(self, seg: _Segment):
        self.seg = seg
        self.name = seg.name
        self._pos = int(seg.ctl[C_READ])  # next slot to read (may run ahead of read_pos)
        self._pending: collections.deque = collections.deque()  # [end_pos, released]
        self._stall: dict[int, float] = {}
        self.rejected = 0

    @classmethod
    def create(cls, name: str, capacity: int = 64 << 20) -> "RingConsumer":
        """Create ring `name`; a stale segment of a dead creator is removed, a live one is an error."""
        path = segment_path(name)
        capacity = _align(int(capacity))
        if capacity < 4 * ALIGN:
            raise ChannelError(f"ring capacity {capacity} is too small", name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                owner = segment_owner(name)
                if owner is not None and owner[1]:
                    raise ChannelInUse(f"channel shm://{name} is in use by live pid {owner[0]}; "
                                       f"pick another name or stop that process", name) from None
                log.warning("removing stale ring %s (owner %s is dead)", path,
                            owner[0] if owner else "unknown")
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        else:
            raise ChannelInUse(f"could not create {path}", name)
        try:
            os.ftruncate(fd, CTL_SIZE + capacity)
            mm = mmap.mmap(fd, CTL_SIZE + capacity)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            if e.errno in (errno.ENOMEM, errno.ENOSPC):
                raise ChannelError(f"no room for a {capacity}-byte ring in {SHM_DIR}: {e}", name) from e
            raise
        ctl = np.ndarray((CTL_SIZE // 8,), np.uint64, mm, 0)
        ctl[C_CAP] = capacity
        ctl[C_OWNER] = os.getpid()
        ctl[C_OWNER_T] = np.float64(_proc_start(os.getpid())).view(np.uint64)
        ctl[C_MAGIC] = RING_MAGIC  # last: attachers check it
        del ctl
        return cls(_Segment(name, fd, mm))

    @property
    def abandoned(self) -> int:
        """Slots skipped because their producer died mid-write."""
        return int(self.seg.ctl[C_ABANDONED])

    def _advance(self):
        pend = self._pending
        while pend and pend[0][1]:
            self.seg.ctl[C_READ] = pend.popleft()[0]

    def _release(self, entry):
        entry[1] = True
        self._advance()

    def _next(self, copy: bool):
        """One frame if available now (None if not); raises FrameError for a malformed slot."""
        seg = self.seg
        cap, words = seg.capacity, seg.words
        while self._pos < int(seg.ctl[C_WRITE]):
            off = self._pos % cap
            i = off // 8
            state = int(words[i + S_STATE])
            length = int(words[i + S_LEN])
            end = self._pos + SLOT_HDR + _align(length)
            if state == PAD:
                self._pending.append([end, True])
                self._pos = end
                self._advance()
                continue
            if state == WRITING:
                if not self._writer_dead(self._pos, i):
                    return None
                log.warning("ring %s: producer pid %d died mid-write; slot seq %d skipped", self.name,
                            int(words[i + S_PID]), int(words[i + S_SEQ]))
                seg.ctl[C_ABANDONED] += 1
                self._pending.append([end, True])
                self._pos = end
                self._advance()
                continue
            entry = [end, False]
            self._pending.append(entry)
            self._pos = end
            view = seg.data[off + SLOT_HDR:off + SLOT_HDR + length]
            try:
                f = fr.decode(view, copy=copy)
            except fr.FrameError:
                self.rejected += 1
                seg.ctl[C_REJECTED] += 1
                view.release()
                self._release(entry)
                raise
            if copy:
                view.release()
                self._release(entry)
                return f
            rf = RingFrame(f.sim_id, f.time_step, f.params, f.name, f.array, f.kind)
            rf._ring, rf._entry = self, entry
            return rf
        return None

    def _writer_dead(self, pos: int, i: int) -> bool:
        now = time.monotonic()
        first = self._stall.setdefault(pos, now)
        if now - first < STALL_CHECK_S:
            return False
        self._stall[pos] = now - STALL_CHECK_S / 2  # recheck every STALL_CHECK_S / 2
        words = self.seg.words
        ptime = float(np.uint64(words[i + S_PTIME]).view(np.float64))
        if _alive(int(words[i + S_PID]), ptime):
            return False
        self._stall.pop(pos, None)
        return True

    def get(self, timeout: float | None = None, copy: bool = True) -> fr.Frame:
        """Next frame; blocks up to `timeout` seconds (None: forever), then raises Empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = _Backoff()
        while True:
            f = self._next(copy)
            if f is not None:
                return f
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty(f"no frame on shm://{self.name} within {timeout:g} s", self.name)
            backoff.wait()

    def get_nowait(self, copy: bool = True) -> fr.Frame:
        return self.get(timeout=0.0, copy=copy)

    def get_many(self, max_frames: int = 64, timeout: float | None = None,
                 copy: bool = True) -> list[fr.Frame]:
        """At least one frame (waiting up to `timeout`), then whatever else is ready, up to max."""
        out = [self.get(timeout, copy)]
        while len(out) < max_frames:
            f = self._next(copy)
            if f is None:
                break
            out.append(f)
        return out

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
