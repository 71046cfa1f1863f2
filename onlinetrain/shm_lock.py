"""The ring's reservation lock, shared by every process attached to a segment, crash-proof.

A robust process-shared pthread mutex in the segment (its holder's death hands it to the next locker
with EOWNERDEAD) or, where libc lacks those, `flock` on the process's own open file description plus
a thread lock. The kernel releases either when the holder dies, so a crash never deadlocks the ring.

    ok = init_mutex(mm, MUTEX_AT)                 # creator, once; False: use flock (kind 0)
    lk = make_lock(name, fd, mm, kind, MUTEX_AT)  # every process; None: this libc lacks the mutex
    rc = lk.trylock_call(lk.arg)                  # 0, EBUSY (then lk.lock_call(lk.arg)) or
    lk.unlock_call(lk.arg)                        #   EOWNERDEAD (then make_consistent)

Hot paths call the foreign functions directly with a prebuilt `c_void_p`: no argtypes conversion.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import threading
from types import SimpleNamespace


def _load_pthread():
    """libc's robust-mutex functions through ctypes, or None where they are missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fns = {n: getattr(libc, "pthread_" + n) for n in (
            "mutex_lock", "mutex_unlock", "mutex_consistent", "mutex_init", "mutexattr_init",
            "mutexattr_setpshared", "mutexattr_setrobust")}
    except (OSError, AttributeError):
        return None
    for fn in fns.values():
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
    fns["mutexattr_setpshared"].argtypes = fns["mutexattr_setrobust"].argtypes = [
        ctypes.c_void_p, ctypes.c_int]
    fns["mutex_init"].argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return fns


_PT = _load_pthread()
_RAW = ctypes.CDLL(None) if _PT is not None else None  # own handles: no argtypes on these
_RAW_GIL = ctypes.PyDLL(None) if _PT is not None else None
_thread_locks: dict[str, threading.Lock] = {}


def _address(mm: mmap.mmap, offset: int) -> int:
    ref = ctypes.c_char.from_buffer(mm, offset)
    addr = ctypes.addressof(ref)
    del ref  # no export left behind: mm.close() must still work
    return addr


def init_mutex(mm: mmap.mmap, at: int) -> bool:
    """Initialise a robust process-shared mutex at byte `at` of `mm`; False where libc cannot."""
    if _PT is None:
        return False
    attr = ctypes.create_string_buffer(64)
    return (_PT["mutexattr_init"](attr) == 0 and _PT["mutexattr_setpshared"](attr, 1) == 0
            and _PT["mutexattr_setrobust"](attr, 1) == 0
            and _PT["mutex_init"](_address(mm, at), attr) == 0)


def make_consistent(mm: mmap.mmap, at: int) -> None:
    """After EOWNERDEAD: the mutex is ours and usable again."""
    _PT["mutex_consistent"](_address(mm, at))


def make_lock(name: str, fd: int, mm: mmap.mmap, kind: int, at: int):
    """The lock calls for this process: a namespace with trylock_call, lock_call, unlock_call and
    arg (each call takes arg; lock calls return 0 or an errno). kind 1: the pthread mutex at `at`
    (None if this libc lacks robust mutexes); kind 0: flock on `fd` + a per-name thread lock."""
    if kind == 1:
        if _PT is None:
            return None
        # trylock and unlock never block, so they keep the GIL (PyDLL, cheaper); only a contended
        # lock waits in pthread_mutex_lock with the GIL released (CDLL): a thread of this process
        # that holds the mutex must be able to run to unlock it.
        trylock, block = _RAW_GIL.pthread_mutex_trylock, _RAW.pthread_mutex_lock

        def lock(a):
            rc = trylock(a)
            return block(a) if rc == errno.EBUSY else rc

        return SimpleNamespace(trylock_call=trylock, lock_call=lock,
                               unlock_call=_RAW_GIL.pthread_mutex_unlock,
                               arg=ctypes.c_void_p(_address(mm, at)))
    tlock = _thread_locks.setdefault(name, threading.Lock())

    def flock(_):
        tlock.acquire()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            tlock.release()
            raise
        return 0

    def unflock(_):
        fcntl.flock(fd, fcntl.LOCK_UN)
        tlock.release()

    return SimpleNamespace(trylock_call=flock, lock_call=flock, unlock_call=unflock, arg=None)
