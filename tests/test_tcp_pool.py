"""tcp:// receive path: pooled receive buffers (TcpFrame.release) and the receive low-watermark."""
import socket
import threading
import time

import numpy as np
import pytest

from onlinetrain import auth
from onlinetrain import frame as fr
from onlinetrain import tcp_channel
from onlinetrain.shm_channel import Empty
from onlinetrain.tcp_channel import TcpConsumer, TcpProducer
from onlinetrain.tcp_pool import POOL_ROUND, BufferPool, TcpFrame, size_class

N = 1 << 16  # float32 values: 256 KB frames, above POOL_MIN and LOWAT_MIN


def _frame(sid, step, n=N):
    rng = np.random.default_rng(sid * 100_003 + step)
    return fr.Frame(sid, step, np.arange(3.0), "T", rng.random(n, dtype=np.float32))


def _same(f, sid, step, n=N):
    return f.sim_id == sid and f.time_step == step and np.array_equal(f.array, _frame(sid, step,
                                                                                      n).array)


@pytest.fixture
def cons(tmp_path):
    c = TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path, capacity=4 << 20)
    yield c
    c.close()


def _prod(c, tmp_path):
    return TcpProducer.connect("127.0.0.1", c.port, timeout=5, study_dir=tmp_path)


def test_buffer_pool_reuses_by_size_class_and_stays_bounded():
    pool = BufferPool(max_bytes=4 * POOL_ROUND)
    a = pool.take(POOL_ROUND + 1)
    assert a.nbytes == size_class(POOL_ROUND + 1) == 2 * POOL_ROUND and pool.allocated == 1
    pool.give(a)
    b = pool.take(2 * POOL_ROUND - 5)  # same size class: the same buffer again
    assert b is a and pool.reused == 1 and pool.free_bytes == 0
    pool.give(b)
    pool.give(np.empty(2 * POOL_ROUND, np.uint8))
    assert pool.free_bytes == 4 * POOL_ROUND
    pool.give(np.empty(2 * POOL_ROUND, np.uint8))  # full with its own class: not kept
    assert pool.free_bytes == 4 * POOL_ROUND
    pool.give(np.empty(POOL_ROUND, np.uint8))  # another class: older classes make room
    assert pool.free_bytes == POOL_ROUND and list(pool.free) == [POOL_ROUND]


@pytest.mark.timeout(60)
def test_many_frames_through_a_small_pool_arrive_intact(cons, tmp_path):
    def send():
        with _prod(cons, tmp_path) as p:
            for k in range(120):  # 30 MB through a 4 MB queue + pool
                p.put(_frame(1, k))
    t = threading.Thread(target=send)
    t.start()
    got = 0
    while got < 120:
        for f in cons.get_many(8, timeout=10, copy=False):
            assert isinstance(f, TcpFrame) and _same(f, 1, got)
            got += 1
            f.release()
            assert f.array is None
    t.join()
    # at most ~24 buffers are in use at once (queue of 4 MB, a batch of 8, one being received);
    # the pool keeps 4 MB of free ones, so a slow spell can drop a few to be allocated again later
    assert cons.pool.allocated + cons.pool.reused == 120 and cons.pool.reused >= 60
    assert cons.pool.free_bytes <= cons.capacity


@pytest.mark.timeout(60)
def test_unreleased_and_copied_frames_are_never_overwritten(cons, tmp_path):
    with _prod(cons, tmp_path) as p:
        held = [cons.get(timeout=5, copy=False) for _ in range(p.put(_frame(2, 0)) or 1)]
        p.put(_frame(2, 1))
        held.append(cons.get(timeout=5))  # copy=True: the frame keeps its buffer
        p.put(_frame(2, 2))
        released = cons.get(timeout=5, copy=False)
        released.release()
        released.release()  # twice is harmless
        for k in range(3, 40):
            p.put(_frame(2, k))
            f = cons.get(timeout=5, copy=False)
            assert _same(f, 2, k)
            f.release()
    assert _same(held[0], 2, 0) and _same(held[1], 2, 1)
    held[1].release()  # a copied frame has nothing to give back
    assert held[1].array is not None and cons.pool.reused >= 37


@pytest.mark.timeout(30)
def test_a_large_frame_then_silence_is_delivered_at_once(cons, tmp_path):
    """The watermark never waits for bytes the frame does not owe."""
    for n in (N, 3 * (tcp_channel.LOWAT_CAP // 4) + 123, tcp_channel.LOWAT_MIN // 4):
        p = _prod(cons, tmp_path)
        p.put(_frame(3, n, n))
        t0 = time.monotonic()
        f = cons.get(timeout=10, copy=False)  # the producer stays connected and silent
        assert _same(f, 3, n, n) and time.monotonic() - t0 < 5
        f.release()
        p.close()


@pytest.mark.timeout(30)
def test_a_large_frame_in_slow_pieces_and_one_cut_short(cons, tmp_path):
    data = fr.encode(_frame(4, 0))
    s = socket.create_connection(("127.0.0.1", cons.port))
    auth.client_handshake(s, cons.token)
    for k in range(0, len(data), 50_000):  # pieces smaller than the watermark, with pauses
        s.sendall(data[k:k + 50_000])
        time.sleep(0.02)
    f = cons.get(timeout=10, copy=False)
    assert _same(f, 4, 0)
    f.release()
    s.sendall(data[:len(data) // 2])  # then the peer dies inside a frame
    time.sleep(0.1)
    s.close()
    with pytest.raises(fr.FrameError, match="closed inside a frame"):
        cons.get(timeout=10)
    with pytest.raises(Empty):
        cons.get(timeout=0.2)
