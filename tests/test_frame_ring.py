"""Frames round-trip, and through a real shm ring between two real processes."""
import multiprocessing as mp
import os
import stat
import zlib

import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.shm_channel import (ChannelInUse, ChannelNotFound, Empty, RingConsumer,
                                     RingProducer, segment_path)


def test_encode_decode_roundtrip_all_dtypes():
    for dt in fr.DTYPES.values():
        a = (np.arange(24) % 7).astype(dt).reshape(2, 3, 4)
        f = fr.Frame(5, 9, np.array([1.5, -2.0]), "velocity", a)
        g = fr.decode(fr.encode(f))
        assert (g.sim_id, g.time_step, g.name, g.kind) == (5, 9, "velocity", fr.DATA)
        assert g.array.dtype == dt and np.array_equal(g.array, a)
        assert np.array_equal(g.params, f.params)


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(fr.FrameError, match="complex128 cannot be sent"):
        fr.encode(fr.Frame(0, 0, array=np.zeros(2, complex)))


def _produce(name, n, seed):
    rng = np.random.default_rng(seed)
    with RingProducer.attach(name, timeout=10) as p:
        for i in range(n):
            a = rng.random(int(rng.integers(1, 5000)), dtype=np.float32)
            p.put(fr.Frame(seed, i, np.array([float(zlib.crc32(a.tobytes()))]), "x", a))


@pytest.mark.timeout(60)
def test_frames_cross_processes_through_a_small_ring(ring_name):
    # a 256 KiB ring forces wrap-around and backpressure many times
    with RingConsumer.create(ring_name, capacity=256 << 10) as ring:
        procs = [mp.get_context("spawn").Process(target=_produce, args=(ring_name, 300, s))
                 for s in range(3)]
        for p in procs:
            p.start()
        got = {s: [] for s in range(3)}
        while sum(map(len, got.values())) < 900:
            f = ring.get(timeout=20)
            assert zlib.crc32(f.array.tobytes()) == int(f.params[0])
            got[f.sim_id].append(f.time_step)
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
        assert all(v == list(range(300)) for v in got.values())  # per-producer order, no loss
        with pytest.raises(Empty):
            ring.get(timeout=0.05)


def test_segment_is_private_and_unlinked_by_creator(ring_name):
    ring = RingConsumer.create(ring_name, capacity=1 << 16)
    mode = stat.S_IMODE(os.stat(segment_path(ring_name)).st_mode)
    assert mode == 0o600
    p = RingProducer.attach(ring_name)
    p.close()  # an attacher's close leaves the segment
    assert os.path.exists(segment_path(ring_name))
    ring.close()
    assert not os.path.exists(segment_path(ring_name))


def test_missing_channel_is_a_clear_error(ring_name):
    with pytest.raises(ChannelNotFound, match=f"shm://{ring_name} does not exist"):
        RingProducer.attach(ring_name, timeout=0.1)


def test_second_live_consumer_is_refused(ring_name):
    with RingConsumer.create(ring_name, capacity=1 << 16):
        with pytest.raises(ChannelInUse, match="in use by live pid"):
            RingConsumer.create(ring_name, capacity=1 << 16)


def test_zero_copy_view_and_release(ring_name):
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring, \
            RingProducer.attach(ring_name) as p:
        p.put(fr.Frame(1, 1, array=np.arange(10, dtype=np.float32)))
        f = ring.get(timeout=1, copy=False)
        assert f.array[3] == 3 and not f.array.flags.owndata
        f.release()
        assert f.array is None
