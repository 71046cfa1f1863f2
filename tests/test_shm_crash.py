"""Crash safety of the shm ring with real processes and SIGKILL; stale segments and `ot clean`."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.shm_segment import C_LOCK_KIND, C_READ, C_WRITE, open_segment
from onlinetrain.shm_channel import (ChannelInUse, ConsumerGone, Empty, RingConsumer, RingProducer,
                                     clean_stale, segment_owner, segment_path)

SPAWN = mp.get_context("spawn")


def _victim(name, stuck_at, ready):
    """Puts frames 0..; frame `stuck_at` hangs after its slot is reserved (the test kills us)."""
    with RingProducer.attach(name, timeout=20) as p:
        for i in range(stuck_at + 1):
            if i == stuck_at:
                p.test_hook_after_reserve = lambda: (ready.set(), time.sleep(120))
            p.put(fr.Frame(99, i, array=np.full(64, i, np.int32)), timeout=20)


def _steady(name, sim, n, go):
    with RingProducer.attach(name, timeout=20) as p:
        go.wait(30)
        for i in range(n):
            p.put(fr.Frame(sim, i, array=np.full(300, sim * 1000 + i, np.int32)), timeout=30)


@pytest.mark.timeout(90)
def test_producer_killed_mid_write_is_skipped_and_others_go_on(ring_name):
    with RingConsumer.create(ring_name, capacity=64 << 10) as ring:
        ready, go = SPAWN.Event(), SPAWN.Event()
        victim = SPAWN.Process(target=_victim, args=(ring_name, 5, ready))
        victim.start()
        assert ready.wait(30), "victim never reached its write"
        others = [SPAWN.Process(target=_steady, args=(ring_name, s, 300, go)) for s in range(2)]
        for p in others:
            p.start()
        go.set()
        time.sleep(0.2)  # let the others queue up behind the stuck slot
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        got = {0: [], 1: [], 99: []}
        while len(got[0]) + len(got[1]) < 600:
            for f in ring.get_many(64, timeout=30):
                got[f.sim_id].append(f.time_step)
                want = f.time_step if f.sim_id == 99 else f.sim_id * 1000 + f.time_step
                assert np.all(f.array == want)
        for p in others:
            p.join(20)
            assert p.exitcode == 0
        assert got[0] == list(range(300)) and got[1] == list(range(300))
        assert got[99] == list(range(5))  # the frames before the crash, not the half-written one
        assert ring.abandoned == 1
        with pytest.raises(Empty):
            ring.get(timeout=0.1)


def _hold_lock_forever(name, ready):
    seg = open_segment(name)
    seg.acquire()  # what a producer does while reserving
    ready.set()
    time.sleep(120)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", [1, 0], ids=["robust-mutex", "flock-fallback"])
def test_producer_killed_holding_the_lock_does_not_wedge_the_ring(ring_name, kind):
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring:
        assert ring.seg.ctl[C_LOCK_KIND] == 1  # glibc: the robust mutex
        ring.seg.ctl[C_LOCK_KIND] = kind  # 0: what a libc without robust mutexes gets
        p = RingProducer.attach(ring_name)
        ready = SPAWN.Event()
        holder = SPAWN.Process(target=_hold_lock_forever, args=(ring_name, ready))
        holder.start()
        assert ready.wait(30)
        waiting = threading.Thread(target=p.put, args=(fr.Frame(0, 1, array=np.ones(10)),))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()  # the lock is really held: the put waits for it
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        waiting.join(10)  # the dead holder's lock was handed on
        assert not waiting.is_alive()
        assert ring.get(timeout=5).time_step == 1
        p.put(fr.Frame(0, 2, array=np.ones(10)))  # and works normally afterwards
        assert ring.get(timeout=5).time_step == 2
        p.put_many([fr.Frame(0, 3, array=np.ones(10))] * 3)  # the _reserve path locks too
        assert [f.time_step for f in ring.get_many(8, timeout=5)] == [3, 3, 3]
        p.close()


def _consumer_then_die(name, ready):
    RingConsumer.create(name, capacity=16 << 10)
    ready.set()
    time.sleep(120)


def _start_doomed_consumer(name):
    ready = SPAWN.Event()
    proc = SPAWN.Process(target=_consumer_then_die, args=(name, ready))
    proc.start()
    assert ready.wait(30)
    return proc


def _kill(proc):
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


@pytest.mark.timeout(60)
def test_dead_consumer_unblocks_a_producer_on_a_full_ring(ring_name):
    cons = _start_doomed_consumer(ring_name)
    try:
        with RingProducer.attach(ring_name, timeout=5) as p:
            f = fr.Frame(0, 0, array=np.zeros(2000, np.uint8))
            p.put(f)
            _kill(cons)
            with pytest.raises(ConsumerGone, match="is gone") as e:
                for _ in range(100):
                    p.put(f, timeout=20)  # the ring fills; the dead consumer is noticed while waiting
            assert e.value.name == ring_name
    finally:
        _kill(cons)
        clean_stale(ring_name)


@pytest.mark.timeout(60)
def test_dead_consumer_is_noticed_while_the_ring_has_room(ring_name):
    cons = _start_doomed_consumer(ring_name)
    try:
        with RingProducer.attach(ring_name, timeout=5) as p:
            _kill(cons)
            small = fr.Frame(0, 0, array=np.zeros(1, np.uint8))
            with pytest.raises(ConsumerGone):
                for _ in range(400):  # a slow simulation: one small frame per 50 ms, for 20 s
                    p.put(small)
                    time.sleep(0.05)
                    used = p.seg.ctl[C_WRITE] - p.seg.ctl[C_READ]
                    assert used < 12 << 10, "ConsumerGone was not raised while the ring had room"
    finally:
        _kill(cons)
        clean_stale(ring_name)


@pytest.mark.timeout(60)
def test_stale_segment_of_a_killed_creator_is_replaced_at_next_start(ring_name):
    _kill(_start_doomed_consumer(ring_name))
    assert os.path.exists(segment_path(ring_name))
    assert segment_owner(ring_name)[1] is False
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring, RingProducer.attach(ring_name) as p:
        p.put(fr.Frame(0, 3))
        assert ring.get(timeout=1).time_step == 3


@pytest.mark.timeout(60)
def test_clean_stale_removes_only_dead_segments(ring_name):
    _kill(_start_doomed_consumer(ring_name + "-dead"))
    with RingConsumer.create(ring_name + "-live", capacity=1 << 16):
        assert clean_stale(ring_name) == [ring_name + "-dead"]
        assert not os.path.exists(segment_path(ring_name + "-dead"))
        assert os.path.exists(segment_path(ring_name + "-live"))


@pytest.mark.timeout(60)
def test_ot_clean_command_removes_stale_segments(ring_name):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    _kill(_start_doomed_consumer(ring_name + "-a"))
    _kill(_start_doomed_consumer(ring_name + "-b"))
    with RingConsumer.create(ring_name + "-live", capacity=1 << 16):
        out = subprocess.run([sys.executable, "-m", "onlinetrain", "clean", "--prefix", ring_name],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"removed 2 stale segment(s): {ring_name}-a, {ring_name}-b" in out.stdout
        assert os.path.exists(segment_path(ring_name + "-live"))
        again = subprocess.run([sys.executable, "-m", "onlinetrain", "clean", "--prefix", ring_name],
                               capture_output=True, text=True, env=env, timeout=60)
        assert "removed 0 stale segment(s)" in again.stdout


def test_segment_of_a_creator_killed_before_the_magic_is_stale(ring_name):
    path = segment_path(ring_name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 8192)  # created, sized, never initialised
    os.close(fd)
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert clean_stale(ring_name) == [ring_name]


def test_attacher_is_not_tracked_by_the_resource_tracker(ring_name):
    """An attaching process exiting must not unlink the consumer's segment."""
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring:
        code = ("import sys; sys.path.insert(0, %r); from onlinetrain.shm_channel import RingProducer;"
                "from onlinetrain import frame as fr; p = RingProducer.attach(%r, 5);"
                "p.put(fr.Frame(0, 1)); p.close()") % (
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ring_name)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert os.path.exists(segment_path(ring_name))
        assert ring.get(timeout=1).time_step == 1


def _in_private_dev_shm(mount_opts: str, code: str) -> subprocess.CompletedProcess:
    """Run Python `code` (the repository importable) with a fresh tmpfs mounted over /dev/shm with
    `mount_opts`, in a private mount namespace (`unshare -m`: needs root, as CI has)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r})\n" + code
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount -t tmpfs -o {mount_opts} tmpfs /dev/shm && exec \"$0\" -c \"$1\"",
                        sys.executable, code], capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    return p


@pytest.mark.timeout(60)
def test_full_dev_shm_is_a_clear_error_at_create_not_a_sigbus_later(ring_name):
    """A ring larger than the room left in /dev/shm fails at create with a clear error and leaves
    no file; one that fits works. Real: a 4 MiB tmpfs over /dev/shm in a private mount namespace."""
    p = _in_private_dev_shm("size=4m", (
        "import os\n"
        "from onlinetrain.shm_channel import RingConsumer, ChannelError\n"
        "try:\n"
        "    RingConsumer.create(%r, 16 << 20)\n"
        "    print('created')\n"
        "except ChannelError as e:\n"
        "    print('error:', e)\n"
        "print('left:', sorted(os.listdir('/dev/shm')))\n"
        "with RingConsumer.create(%r, 1 << 20) as r:\n"
        "    print('small ring ok', r.seg.capacity)\n") % (ring_name, ring_name + "-small"))
    assert f"error: no room for a {16 << 20}-byte ring in /dev/shm" in p.stdout
    assert "free space there or ask for a smaller ring" in p.stdout
    assert "left: []" in p.stdout
    assert "small ring ok 1048576" in p.stdout


@pytest.mark.timeout(60)
def test_ring_uses_huge_pages_where_dev_shm_allows_them(ring_name):
    """Where /dev/shm is mounted huge=advise, the creator's mapping of the ring is PMD-mapped huge
    pages, and so are the pages an attacher writes (it maps lazily: the 4 MiB frame it puts), and
    frames still round-trip (private mount namespace)."""
    p = _in_private_dev_shm("size=64m,huge=advise", (
        "import numpy as np\n"
        "from onlinetrain import frame as fr\n"
        "from onlinetrain.shm_channel import RingConsumer, RingProducer\n"
        "def pmd():\n"
        "    t = open('/proc/self/smaps_rollup').read()\n"
        "    return int(t.split('ShmemPmdMapped:')[1].split()[0])\n"
        "with RingConsumer.create(%r, 8 << 20) as ring:\n"
        "    one = pmd()\n"
        "    with RingProducer.attach(%r) as p:\n"
        "        a = np.arange(1 << 20, dtype=np.float32)\n"
        "        p.put(fr.Frame(1, 2, np.ones(3), 'T', a))\n"
        "        two = pmd()\n"
        "        g = ring.get(timeout=5)\n"
        "        print('pmd_kb', one, two, 'same', bool(np.array_equal(g.array, a)))\n") % (
        ring_name, ring_name))
    _, one, two, _, same = p.stdout.split()
    assert int(one) >= 6 << 10, p.stdout       # the creator's mapping: most of 8 MiB in 2 MiB pages
    assert int(two) >= int(one) + (4 << 10), p.stdout  # the attacher's, where it wrote 4 MiB
    assert same == "True"


def test_create_never_removes_a_file_that_is_not_a_stale_ring(ring_name, monkeypatch):
    """A segment another process is still creating (no magic yet) or another program's file is
    waited on, then refused; it is never unlinked (create used to unlink any non-ring file)."""
    from onlinetrain import shm_segment
    monkeypatch.setattr(shm_segment, "CREATE_WAIT_S", 0.5)
    path = segment_path(ring_name)
    with open(path, "wb") as fh:
        fh.write(b"not a ring" + bytes(8182))
    try:
        t0 = time.monotonic()
        with pytest.raises(ChannelInUse, match="not a usable onlinetrain ring"):
            RingConsumer.create(ring_name, capacity=1 << 16)
        assert time.monotonic() - t0 >= 0.5  # it waited for a creator to finish
        assert open(path, "rb").read(10) == b"not a ring"
    finally:
        os.unlink(path)
