"""The shm ring's contract: exactly-once, per-producer order, wrap-around, backpressure, zero-copy.

Hypothesis drives random interleavings of puts (several producers), gets, batched gets and held
zero-copy frames through a tiny ring; real processes push checksummed frames through a shared one.
"""
import multiprocessing as mp
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onlinetrain import frame as fr
from onlinetrain.shm_channel import (SLOT_HDR, ChannelError, Empty, Full, RingConsumer,
                                     RingProducer)


def _payload(prod: int, seq: int, size: int) -> np.ndarray:
    return ((np.arange(size) * 31 + prod * 7 + seq) % 251).astype(np.uint8)


_op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), st.integers(0, 700)),
    st.tuples(st.just("put_many"), st.integers(0, 2), st.lists(st.integers(0, 300), max_size=4)),
    st.tuples(st.just("get"), st.booleans()),
    st.tuples(st.just("get_many"), st.integers(1, 5)),
    st.tuples(st.just("hold"),),
    st.tuples(st.just("release"),),
)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(_op, max_size=80), capacity=st.sampled_from([1024, 2048, 4096]))
def test_any_interleaving_delivers_exactly_once_in_order(ops, capacity):
    name = f"hyp-{mp.current_process().pid}-{capacity}"
    ring = RingConsumer.create(name, capacity=capacity)
    prods = [RingProducer.attach(name) for _ in range(3)]
    sent = [[] for _ in prods]  # sizes of the frames each producer got in
    got = [[] for _ in prods]
    held = []

    def check(f):
        assert f.array.dtype == np.uint8 and f.params[0] == len(f.array)
        assert np.array_equal(f.array, _payload(f.sim_id, f.time_step, len(f.array)))
        got[f.sim_id].append(f.time_step)

    def put(k, size, many=None):
        frames = [fr.Frame(k, len(sent[k]) + j, np.array([float(s)]), "x", _payload(k, len(sent[k]) + j, s))
                  for j, s in enumerate([size] if many is None else many)]
        for f in frames:  # put_nowait per frame; put_many when the ring is known to have room
            try:
                prods[k].put_nowait(f)
            except Full:
                return
            sent[k].append(len(f.array))

    try:
        for op in ops:
            if op[0] == "put":
                put(op[1], op[2])
            elif op[0] == "put_many":
                put(op[1], None, op[2])
            elif op[0] == "get":
                try:
                    f = ring.get_nowait(copy=op[1])
                except Empty:
                    continue
                check(f)
                if not op[1]:
                    f.release()
            elif op[0] == "get_many":
                try:
                    fs = ring.get_many(op[1], timeout=0)
                except Empty:
                    continue
                assert 1 <= len(fs) <= op[1]
                for f in fs:
                    check(f)
            elif op[0] == "hold":
                try:
                    f = ring.get_nowait(copy=False)
                except Empty:
                    continue
                check(f)
                held.append(f)
            elif held:
                held.pop(0).release()
        for f in held:
            f.release()
        while True:
            try:
                check(ring.get_nowait())
            except Empty:
                break
        for k in range(3):
            assert got[k] == list(range(len(sent[k]))), f"producer {k}: lost, duplicated or reordered"
    finally:
        for p in prods:
            p.close()
        ring.close()


def test_put_many_and_get_many_wrap_around(ring_name):
    with RingConsumer.create(ring_name, capacity=8192) as ring, RingProducer.attach(ring_name) as p:
        out = []
        for rnd in range(50):
            frames = [fr.Frame(0, rnd * 5 + i, array=np.full(100 + 37 * i, i, np.int16))
                      for i in range(5)]
            p.put_many(frames, timeout=1)
            while len(out) < (rnd + 1) * 5:
                out += ring.get_many(3, timeout=1)
        assert [f.time_step for f in out] == list(range(250))
        assert all(np.all(f.array == f.time_step % 5) for f in out)


def test_backpressure_full_then_room(ring_name):
    with RingConsumer.create(ring_name, capacity=4096) as ring, RingProducer.attach(ring_name) as p:
        f = fr.Frame(0, 0, array=np.zeros(800, np.uint8))
        n = 0
        with pytest.raises(Full, match="stayed full"):
            while True:
                p.put(f, timeout=0.05)
                n += 1
        assert n >= 3
        ring.get()
        p.put_nowait(f)  # one slot freed: fits again
        assert len(ring.get_many(100, timeout=0)) == n


def test_frame_larger_than_ring_is_a_clear_error(ring_name):
    with RingConsumer.create(ring_name, capacity=4096) as ring, RingProducer.attach(ring_name) as p:
        with pytest.raises(Full, match="does not fit ring") as e:
            p.put(fr.Frame(0, 0, array=np.zeros(5000, np.uint8)))
        assert e.value.name == ring_name
        p.put(fr.Frame(0, 1, array=np.zeros(10, np.uint8)))
        assert ring.get(timeout=1).time_step == 1


def test_zero_copy_frames_hold_their_slot_until_released(ring_name):
    with RingConsumer.create(ring_name, capacity=4096) as ring, RingProducer.attach(ring_name) as p:
        big = fr.Frame(0, 0, array=np.arange(700, dtype=np.float32))  # ~2.9 KB of 4 KB
        p.put(big)
        view = ring.get(copy=False)
        with pytest.raises(Full):
            p.put_nowait(big)  # the held view keeps the space
        assert view.array[699] == 699
        view.release()
        p.put_nowait(big)
        assert ring.get().array[5] == 5


def test_params_of_decoded_frames_are_read_only_and_correct(ring_name):
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring, RingProducer.attach(ring_name) as p:
        for i in range(3):
            p.put(fr.Frame(1, i, np.array([1.0, 2.0 + i]), "T", np.ones((2, 3), np.float64)))
        fs = ring.get_many(10, timeout=1)
        assert [f.params[1] for f in fs] == [2.0, 3.0, 4.0]
        assert fs[0].array.shape == (2, 3)
        with pytest.raises(ValueError):
            fs[0].params[0] = 5.0


def test_bad_frames_are_refused_before_anything_is_reserved(ring_name):
    with RingConsumer.create(ring_name, capacity=4096) as ring, RingProducer.attach(ring_name) as p:
        with pytest.raises(fr.FrameError, match="complex128") as e:
            p.put(fr.Frame(0, 0, array=np.zeros(3, complex)))
        assert e.value.value == np.dtype(complex)
        with pytest.raises(fr.FrameError, match="bad magic"):
            p.put_encoded(b"XXXX" + bytes(60))
        with pytest.raises(Exception):
            p.put(fr.Frame(0, 2 ** 70, array=np.zeros(3, np.uint8)))  # id out of range
        p.put(fr.Frame(0, 7, array=np.zeros(3, np.uint8)))
        assert ring.get(timeout=1).time_step == 7  # nothing half-written blocks the ring


def test_closed_ends_raise(ring_name):
    ring = RingConsumer.create(ring_name, capacity=4096)
    p = RingProducer.attach(ring_name)
    p.close()
    with pytest.raises(ChannelError, match="closed"):
        p.put(fr.Frame(0, 0))
    ring.close()
    with pytest.raises(ChannelError, match="closed"):
        ring.get_nowait()


def _produce(name, sim, n):
    rng = np.random.default_rng(sim)
    with RingProducer.attach(name, timeout=20) as p:
        batch = []
        for i in range(n):
            a = rng.random(int(rng.integers(0, 3000)), dtype=np.float32)
            f = fr.Frame(sim, i, np.array([float(zlib.crc32(a.tobytes()))]), "x", a)
            if i % 3 == 0:
                batch.append(f)
                p.put_many(batch, timeout=20)
                batch = []
            else:
                p.put(f, timeout=20)


@pytest.mark.timeout(120)
def test_eight_producer_processes_deliver_every_frame_once(ring_name):
    n = 400
    with RingConsumer.create(ring_name, capacity=512 << 10) as ring:
        procs = [mp.get_context("spawn").Process(target=_produce, args=(ring_name, s, n))
                 for s in range(8)]
        for p in procs:
            p.start()
        got = {s: [] for s in range(8)}
        while sum(map(len, got.values())) < 8 * n:
            for f in ring.get_many(64, timeout=30, copy=False):
                assert zlib.crc32(f.array.tobytes()) == int(f.params[0])
                got[f.sim_id].append(f.time_step)
                f.release()
        for p in procs:
            p.join(20)
            assert p.exitcode == 0
        assert all(v == list(range(n)) for v in got.values())
        with pytest.raises(Empty):
            ring.get(timeout=0.05)
        assert ring.abandoned == 0


@pytest.mark.timeout(60)
def test_attach_waits_through_a_ring_still_being_created(ring_name):
    """A producer that opens the file between O_CREAT and the magic retries instead of failing."""
    import os
    import threading
    from onlinetrain.shm_channel import segment_path
    fd = os.open(segment_path(ring_name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)  # exists, 0 bytes: what a producer sees at the start of RingConsumer.create
    made = []
    t = threading.Timer(0.5, lambda: made.append(RingConsumer.create(ring_name, capacity=1 << 16)))
    t.start()
    try:
        with RingProducer.attach(ring_name, timeout=20) as p:
            p.put(fr.Frame(0, 5))
        t.join()
        assert made[0].get(timeout=1).time_step == 5
    finally:
        t.join()
        for r in made:
            r.close()


def test_header_caches_follow_every_change_between_consecutive_frames(ring_name):
    """Producer and consumer reuse the previous frame's header when it looks the same; every field
    that can change between two frames (even of the same objects, mutated in place) must show."""
    ring = RingConsumer.create(ring_name, 1 << 20)
    prod = RingProducer.attach(ring_name)
    try:
        p = np.array([1.0, 2.0])
        a = np.arange(12, dtype=np.float32)
        sent = []

        def put(f):
            sent.append((f.sim_id, f.time_step, f.params.copy(), f.name, f.kind, np.array(f.array),
                         f.global_shape, f.offset, f.meta))
            prod.put(f)

        f = fr.Frame(1, 0, p, "T", a)
        put(f)
        f.time_step = 1
        put(f)                                      # same header: the fast paths
        p[1] = 3.0
        f.time_step = 2
        put(f)                                      # params changed in place, same object
        f.params = p.astype(np.float32)         # another dtype (converted to float64)
        put(f)
        f.params = p
        f.name = "U"
        put(f)                                      # name
        f.kind = fr.SIM_FAILED
        put(f)                                      # kind
        f.kind = fr.DATA
        f.array = a.reshape(3, 4)
        put(f)                                      # shape, same bytes
        f.array = a.astype(np.float64)
        put(f)                                      # dtype
        f.array = np.arange(24, dtype=np.float32)[::2]
        put(f)                                      # same shape and dtype as `a`, not contiguous
        f.array = a.astype(">f4")
        put(f)                                      # big-endian
        f.array = a
        a[0] = 99.0
        put(f)                                      # array values changed in place
        f.global_shape, f.offset = (20,), (4,)
        put(f)                                      # a piece
        f.offset = (8,)
        put(f)                                      # another offset
        f.global_shape = (30,)
        put(f)                                      # another global shape
        f.meta = b'{"t": 1}'
        put(f)                                      # metadata
        f.meta = b'{"t": 2}'
        put(f)                                      # other metadata, same length
        f.global_shape = f.offset = None
        put(f)                                      # the whole field again
        f.meta = b""
        put(f)
        got = ring.get_many(64, timeout=1)
        assert len(got) == len(sent)
        for g, (sim, step, params, name, kind, arr, gs, off, meta) in zip(got, sent):
            assert (g.sim_id, g.time_step, g.name, g.kind) == (sim, step, name, kind)
            assert (g.global_shape, g.offset, g.meta) == (gs, off, meta)
            assert np.array_equal(g.params, np.asarray(params, np.float64))
            assert g.array.shape == arr.shape and np.array_equal(g.array, arr)
            assert g.array.dtype == arr.dtype.newbyteorder("<")
    finally:
        prod.close()
        ring.close()


def test_producer_fast_path_cases_and_bad_ids(ring_name, monkeypatch):
    """Frames that take the producer's fast path (same layout as the previous frame) in every
    shape it must handle: strided, reversed and unaligned 1-d arrays, zero-size n-d arrays, params
    changed in place; ids that cannot be sent are refused before anything is reserved, on the fast
    path and on the wrap path, and the ring goes on."""
    layouts = []
    orig = RingProducer._layout
    monkeypatch.setattr(RingProducer, "_layout", lambda self, f: layouts.append(1) or orig(self, f))
    ring = RingConsumer.create(ring_name, 4096)
    prod = RingProducer.attach(ring_name)
    try:
        p = np.array([1.0, 2.0])
        rec = np.zeros(6, dtype=[("id", "i1"), ("x", "<f4")])
        rec["x"] = np.arange(6) + 0.5
        cases = [  # (primer array, array that must take the fast path)
            (np.arange(6, dtype=np.float32), np.arange(12, dtype=np.float32)[::2]),
            (np.arange(6, dtype=np.float32), np.arange(6, dtype=np.float32)[::-1]),
            (np.arange(6, dtype=np.float32), rec["x"]),  # unaligned: numpy exports "=f"
            (np.zeros((0, 3), np.float64), np.zeros((0, 3), np.float64)),
            (np.zeros((3, 0), np.int16), np.zeros((3, 0), np.int16)),
            (np.ones((2, 3), np.float64), np.arange(6.0).reshape(2, 3)),
        ]
        step = 0
        for primer, arr in cases:
            for a in (primer, arr):
                step += 1
                n = len(layouts)
                prod.put(fr.Frame(7, step, p, "T", a))
                g = ring.get(timeout=1)
                assert g.key == (7, step) and g.array.shape == a.shape
                assert np.array_equal(g.array, a) and np.array_equal(g.params, p)
            assert len(layouts) == n, f"{arr!r} did not take the fast path"
        p[0] = 9.0  # in place, same object: the header must follow
        prod.put(fr.Frame(7, 99, p, "T", np.ones((2, 3))))
        assert ring.get(timeout=1).params.tolist() == [9.0, 2.0]
        q = p.copy()
        prod.put(fr.Frame(7, 100, q, "T", np.ones((2, 3))))
        q.dtype = np.int64  # same object, same bytes, other values: sent as encode() sees them
        prod.put(fr.Frame(7, 101, q, "T", np.ones((2, 3))))
        assert ring.get(timeout=1).params.tolist() == [9.0, 2.0]
        assert ring.get(timeout=1).params.tolist() == q.astype(np.float64).tolist()
        # ids that do not fit: a clear error, nothing reserved, the next frame arrives
        a = np.ones(200, np.float32)
        for bad in (2 ** 63, 1.5):
            prod.put(fr.Frame(7, 1, p, "T", a))
            ring.get(timeout=1)
            with pytest.raises(fr.FrameError, match="int64 range"):
                prod.put(fr.Frame(7, bad, p, "T", a))  # fast path
        cap = ring.seg.capacity
        slot = SLOT_HDR + ((fr.header_size(1, 2, 1) + a.nbytes + 63) & ~63)
        for _ in range(16):  # move the write position until the next put must wrap
            if cap - ring.seg.ctl[8] % cap < slot:
                break
            prod.put(fr.Frame(7, 2, p, "T", a))
            ring.get(timeout=1)
        w = ring.seg.ctl[8]
        assert cap - w % cap < slot, "the next frame should need the wrap path"
        with pytest.raises(fr.FrameError, match="int64 range"):
            prod.put(fr.Frame(7, 2 ** 63, p, "T", a))  # wrap path
        prod.put(fr.Frame(7, 3, p, "T", a))
        assert ring.get(timeout=1).key == (7, 3)
        with pytest.raises(fr.FrameError, match="int64 range"):
            prod.put_many([fr.Frame(7, 4, p, "T", a), fr.Frame(7, -2 ** 64, p, "T", a)])
        prod.put(fr.Frame(7, 5, p, "T", a))
        assert ring.get(timeout=1).key == (7, 5)
    finally:
        prod.close()
        ring.close()
