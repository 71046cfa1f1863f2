"""The named POSIX shared-memory segment under a ring: create, open, liveness, stale cleanup.

    seg = create_segment("demo", capacity=64 << 20)   # /dev/shm/ot_demo, mode 0600, owner = this pid
    seg = open_segment("demo")                          # attach (raises FileNotFoundError if absent)
    seg.owner_alive(); seg.close()
    clean_stale()                                       # unlink rings whose creator is dead

Segments are plain files in /dev/shm opened with os.open + mmap, so Python's resource tracker never
sees them (it would unlink an attacher's segment at exit). Only the creator unlinks. The control block
is 4 KiB of little-endian uint64 words (see docs/wire-format.md); `ctl` and `q` are memoryviews cast
to 'Q' over the control block and the data region.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import time

import psutil

from .errors import ChannelError, ChannelInUse, ChannelNotFound, ConsumerGone, Empty, Full  # noqa: F401  (re-exported)
from .shm_lock import init_mutex, make_consistent, make_lock

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
PREFIX = "ot_"
RING_MAGIC = int.from_bytes(b"OTRING01", "little")
CTL_SIZE = 4096
ALIGN = 64
# control block, as uint64 word indices
C_MAGIC, C_CAP, C_OWNER, C_OWNER_T, C_CLOSED = 0, 1, 2, 3, 4
C_WRITE, C_SEQ = 8, 9  # own cache line: producers
C_READ = 16  # own cache line: consumer
C_ABANDONED, C_REJECTED = 24, 25
C_LOCK_KIND = 5  # 1: robust process-shared pthread mutex at byte MUTEX_AT; 0: flock on the file
MUTEX_AT = 512  # own cache lines, 64 bytes reserved (glibc's pthread_mutex_t is 40)
EOWNERDEAD = getattr(errno, "EOWNERDEAD", 130)
# slot header: 8 little-endian u64 words before each frame in the data region
SLOT_HDR = 64
SLOT = struct.Struct("<6Q")  # state, length, producer pid, sequence, producer id, start time
S_STATE, S_LEN, S_PID, S_SEQ, S_PROD, S_PTIME = 0, 1, 2, 3, 4, 5
WRITING, COMMITTED, PAD = 1, 2, 3
# the creator maps every page up front: a first touch of a tmpfs page costs microseconds
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
CREATE_WAIT_S = 8.0  # how long create waits on a segment that is not (yet) a ring
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; not in Python 3.11's mmap module


def _map(fd: int, size: int, create: bool) -> mmap.mmap:
    """Map the segment. Its creator faults every page in now (a full /dev/shm fails here with
    OSError, not with SIGBUS on a later write); an attacher (a producer, often one short
    simulation) maps without faulting and touches only the pages it writes: faulting a 64 MB ring
    in costs ~30 ms, which a study of short simulations paid at every attach (bench/attach.py).
    The mapping asks for huge pages first: tmpfs gives them where /dev/shm is mounted with
    huge=advise|within_size|always (never by default), and copies into 2 MiB pages are ~1.4x
    faster at large frames (bench/memcpy_kinds.py). The creator's pages must be faulted through
    the advised mapping for that, and writable (MADV_POPULATE_WRITE: a page mapped for reading
    and written later has its huge mapping split into 4 KiB ones); older kernels fall back to
    posix_fallocate + MAP_POPULATE (small pages)."""
    mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    if not create:
        return mm
    try:
        mm.madvise(_MADV_POPULATE_WRITE)
        return mm
    except (AttributeError, OSError) as e:
        if getattr(e, "errno", None) in (errno.EFAULT, errno.ENOMEM):  # /dev/shm is full
            mm.close()
            raise OSError(errno.ENOSPC, f"cannot allocate {size} bytes of shared memory") from e
        # anything else (older kernel, a seccomp filter): allocate, then map populated
    mm.close()
    os.posix_fallocate(fd, 0, size)
    return mmap.mmap(fd, size, flags=_MAP_FLAGS)


def segment_path(name: str) -> str:
    if not name or "/" in name or "\0" in name or len(name) > 200:
        raise ChannelError(f"bad channel name {name!r}: use letters, digits, '-', '_' or '.'", name)
    return os.path.join(SHM_DIR, PREFIX + name)


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def f2u(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def u2f(x: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", x))[0]


def proc_start(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return -1.0


def alive(pid: int, start: float) -> bool:
    """True if process `pid` exists and (when `start` is known) started at `start` (no pid reuse)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OverflowError:
        return False
    if start > 0:
        s = proc_start(pid)
        if s < 0:
            return psutil.pid_exists(pid)
        return abs(s - start) < 0.5
    return True


class Segment:
    """An open ring segment. `acquire()`/`release()` is the producers' reservation lock (see
    onlinetrain.shm_lock: a robust process-shared mutex or flock; no crash deadlocks the ring).
    Hot paths call `rc = lock_call(lock_arg)` / `unlock_call(lock_arg)` directly (rc != 0: `_recover`);
    `trylock_call(lock_arg)` may instead return EBUSY (then call lock_call)."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap):
        self.name, self.fd, self.mm = name, fd, mm
        self.ctl = memoryview(mm)[:CTL_SIZE].cast("Q")
        self.capacity = self.ctl[C_CAP]
        self.data = memoryview(mm)[CTL_SIZE:CTL_SIZE + self.capacity]
        self.q = self.data.cast("Q")
        self._typed: dict[str, memoryview | None] = {}
        self.owner = self.ctl[C_OWNER]
        self.owner_time = u2f(self.ctl[C_OWNER_T])
        lk = make_lock(name, fd, mm, self.ctl[C_LOCK_KIND], MUTEX_AT)
        if lk is None:
            raise ChannelError(f"ring shm://{name} uses a pthread mutex this libc lacks", name)
        self.lock_call, self.unlock_call, self.lock_arg = lk.lock_call, lk.unlock_call, lk.arg
        self.trylock_call = lk.trylock_call

    def acquire(self):
        rc = self.lock_call(self.lock_arg)
        if rc:
            self._recover(rc)

    def release(self):
        self.unlock_call(self.lock_arg)

    def _recover(self, rc: int):
        if rc != EOWNERDEAD:
            raise ChannelError(f"ring shm://{self.name}: pthread_mutex_lock failed: "
                               f"{os.strerror(rc)}", self.name)
        make_consistent(self.mm, MUTEX_AT)
        log.warning("ring %s: a producer died holding the ring lock; lock recovered", self.name)

    def owner_alive(self) -> bool:
        return alive(self.owner, self.owner_time)

    def typed_view(self, fmt: str) -> memoryview | None:
        """The data region as items of struct format `fmt` (e.g. "f"), or None if it cannot be."""
        if fmt not in self._typed:
            try:
                self._typed[fmt] = self.data.cast(fmt)
            except (TypeError, ValueError):
                self._typed[fmt] = None
        return self._typed[fmt]

    def close(self):
        try:
            for v in (*self._typed.values(), self.q, self.data, self.ctl):
                if v is not None:
                    v.release()
            self.mm.close()
        except BufferError:  # the mapping stays until those views are garbage
            log.warning("ring %s: zero-copy views still alive at close; mapping kept", self.name)
        os.close(self.fd)


def open_segment(name: str) -> Segment:
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < CTL_SIZE:
            raise ChannelError(f"segment {path} is {size} bytes: not an onlinetrain ring", name)
        # read the magic before mapping (and before any write to the mapping)
        magic, cap = struct.unpack("<QQ", os.pread(fd, 16, 0))
        if magic != RING_MAGIC or cap % ALIGN or CTL_SIZE + cap > size:
            raise ChannelError(f"segment {path} is not an onlinetrain ring (bad magic or size)",
                               name)
        mm = _map(fd, size, create=False)
    except BaseException:
        os.close(fd)
        raise
    return Segment(name, fd, mm)


def create_segment(name: str, capacity: int) -> Segment:
    """Create ring segment `name`; a stale one of a dead creator is removed, a live one is an error."""
    path = segment_path(name)
    capacity = align(int(capacity))
    if capacity < 4 * ALIGN:
        raise ChannelError(f"ring capacity {capacity} is too small: use at least {4 * ALIGN} bytes",
                           name)
    deadline = time.monotonic() + CREATE_WAIT_S
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            owner = segment_owner(name)
        if owner is not None and owner[1]:
            raise ChannelInUse(f"channel shm://{name} is in use by live pid {owner[0]}; "
                               f"pick another name or stop that process", name)
        if owner is None and os.path.exists(path):
            # being created by another process right now, or not a ring at all: never remove it
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise ChannelInUse(f"{path} exists but is not a usable onlinetrain ring (another "
                               f"process is still creating it, or it is another program's file); "
                               f"pick another name, or remove it if it is garbage", name)
        if owner is not None:
            log.warning("removing stale ring %s (owner %s is dead)", path, owner[0])
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if time.monotonic() >= deadline:
            raise ChannelInUse(f"could not create {path}: another process keeps creating it", name)
    try:
        os.ftruncate(fd, CTL_SIZE + capacity)
        mm = _map(fd, CTL_SIZE + capacity, create=True)  # ENOSPC now rather than SIGBUS later
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        if e.errno in (errno.ENOMEM, errno.ENOSPC):
            raise ChannelError(f"no room for a {capacity}-byte ring in {SHM_DIR}: {e}; free space "
                               f"there or ask for a smaller ring", name) from e
        raise
    struct.pack_into("<QQQQQ", mm, 8, capacity, os.getpid(), f2u(proc_start(os.getpid())), 0,
                     1 if init_mutex(mm, MUTEX_AT) else 0)
    struct.pack_into("<Q", mm, 0, RING_MAGIC)  # last: attachers check it
    return Segment(name, fd, mm)


def segment_owner(name: str) -> tuple[int, bool] | None:
    """(owner pid, owner alive) of an existing segment, or None if there is none or it is not ours.

    A segment whose creator died before writing the magic (empty, or all-zero first word) reports
    owner 0, dead, once it is older than a few seconds; anything else that is not a ring is left alone.
    """
    try:
        seg = open_segment(name)
    except FileNotFoundError:
        return None
    except (OSError, ChannelError):
        try:
            path = segment_path(name)
            age = time.time() - os.stat(path).st_mtime
            with open(path, "rb") as fh:
                head = fh.read(8)
        except OSError:
            return None
        return (0, False) if age > 5 and head.strip(b"\0") == b"" else None
    try:
        return seg.owner, seg.owner_alive()
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


class Backoff:
    """Spin, then yield, then sleep up to 1 ms: cheap waiting without a shared condition variable."""

    def __init__(self):
        self.n = 0

    def wait(self):
        self.n += 1
        if self.n < 20:
            return
        time.sleep(0 if self.n < 100 else min(1e-3, 2e-5 * (self.n - 99)))
