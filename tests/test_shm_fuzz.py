"""10,000 fuzzed frames: every decoder path gives a Frame or a clear FrameError, never anything else.

Mutations of valid frames (byte flips, random header fields, truncation, extension) go through
frame.decode, the consumer's cached Decoder, and a live ring (written straight into committed slots,
as a buggy or hostile C writer would); the ring rejects each bad frame and keeps going.
"""
import struct

import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.shm_channel import SLOT_HDR, RingConsumer, RingProducer

FIELDS = [(4, "H"), (6, "H"), (8, "B"), (9, "B"), (10, "B"), (11, "B"), (12, "I"), (32, "Q")]


def _valid(rng):
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(s) for s in rng.integers(0, 5, ndim))
    dt = list(fr.DTYPES.values())[int(rng.integers(len(fr.DTYPES)))]
    arr = np.zeros(shape, dt)
    return fr.encode(fr.Frame(int(rng.integers(100)), int(rng.integers(100)),
                              rng.random(int(rng.integers(0, 4))), "f" * int(rng.integers(0, 9)),
                              arr, int(rng.integers(0, 4))))


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def _mutate(buf: bytes, rng) -> bytes:
    b = bytearray(buf)
    kind = int(rng.integers(6))
    if kind == 0:  # flip random bytes anywhere
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # a header field set to an extreme or random value
        off, code = FIELDS[int(rng.integers(len(FIELDS)))]
        top = (1 << (8 * struct.calcsize(code))) - 1
        struct.pack_into("<" + code, b, off, _pick(rng, [0, 1, top, int.from_bytes(rng.bytes(8), "little") & top]))
    elif kind == 2:  # truncated
        del b[int(rng.integers(len(b))):]
    elif kind == 3:  # extended
        b += bytes(int(rng.integers(1, 64)))
    elif kind == 4 and len(b) >= 56:  # a shape extent rewritten
        struct.pack_into("<Q", b, 48, _pick(rng, [0, 1 << 40, (1 << 64) - 1, 3]))
    else:  # pure noise with a valid magic
        b = bytearray(b"OTFR" + rng.bytes(int(rng.integers(0, 200))))
    return bytes(b)


def _check(fn):
    try:
        f = fn()
    except fr.FrameError as e:
        assert str(e) and hasattr(e, "value")
        return False
    assert isinstance(f, fr.Frame) and f.kind in fr.KINDS
    assert f.array.nbytes == int(np.prod(f.array.shape)) * f.array.itemsize
    return True


@pytest.mark.timeout(120)
def test_ten_thousand_fuzzed_frames_decode_or_fail_cleanly():
    rng = np.random.default_rng(1234)
    dec = fr.Decoder()
    ok = bad = 0
    for _ in range(10_000):
        buf = _mutate(_valid(rng), rng)
        a = _check(lambda: fr.decode(buf))
        b = _check(lambda: dec.decode_at(buf, 0, len(buf), copy=bool(rng.integers(2))))
        assert a == b, f"decode and Decoder disagree on {buf!r}"
        ok += a
        bad += not a
    assert bad > 5000 and ok > 100  # the mutations hit both sides


def _same(a, b):
    return (a.sim_id, a.time_step, a.name, a.kind) == (b.sim_id, b.time_step, b.name, b.kind) and \
        np.array_equal(a.params, b.params) and a.array.dtype == b.array.dtype and \
        a.array.shape == b.array.shape and np.array_equal(a.array, b.array, equal_nan=True)


@pytest.mark.timeout(120)
def test_decoder_primed_with_a_good_frame_agrees_with_decode_on_every_byte_flip():
    """The Decoder's fast path (header equal to the previous frame's) must validate as decode does:
    prime it with a good frame, then decode each single-byte mutation, whole and cut short."""
    frames = [fr.Frame(3, 7, np.array([1.0, 2.0]), "T", np.arange(12, dtype=np.float32).reshape(3, 4)),
              fr.Frame(1, 2, np.zeros(0), "", np.zeros(0, np.uint8), fr.SIM_END),
              fr.Frame(1, 2, np.ones(1), "ab", np.arange(5, dtype=np.int16))]
    cases = fast = 0
    for f in frames:
        good = fr.encode(f)
        for pos in range(len(good)):
            for val in (0, 0xFF, good[pos] ^ 1):
                b = bytearray(good)
                b[pos] = val
                for n in (len(b), len(b) - 1):
                    dec = fr.Decoder()
                    dec.decode_at(good, 0, len(good))  # primes the fast path
                    cut = bytes(b[:n])
                    try:
                        want = fr.decode(cut)
                    except fr.FrameError:
                        want = None
                    try:
                        got = dec.decode_at(cut, 0, n)
                    except fr.FrameError:
                        got = None
                    if 16 <= pos < 32 and n == len(good):  # only the ids differ: the fast path
                        fast += 1
                        assert got is not None and got.key != f.key or val == good[pos]
                    cases += 1
                    assert (want is None) == (got is None), (f, pos, val, n)
                    assert want is None or _same(want, got), (f, pos, val, n)
    assert cases > 1000 and fast > 100  # the fast path was really taken
    good = fr.encode(frames[0])
    dec = fr.Decoder()
    dec.decode_at(good, 0, len(good))
    with pytest.raises(fr.FrameError):  # the header matches, but the buffer is short of `length`
        dec.decode_at(good[:-8], 0, len(good))


@pytest.mark.timeout(120)
def test_ring_rejects_corrupt_slots_and_keeps_going(ring_name):
    rng = np.random.default_rng(99)
    with RingConsumer.create(ring_name, capacity=1 << 16) as ring, RingProducer.attach(ring_name) as p:
        data = ring.seg.data
        rejected = delivered = 0
        for i in range(1000):
            good = _valid(rng)
            bad = _mutate(good, rng)
            p.put_encoded(good)  # slot with the right length...
            off = (ring.seg.ctl[8] - SLOT_HDR - ((len(good) + 63) & ~63)) % ring.seg.capacity
            n = min(len(bad), len(good))
            data[off + SLOT_HDR:off + SLOT_HDR + n] = bad[:n]  # ...then scribbled over
            p.put(fr.Frame(7, i, array=np.full(3, i, np.int64)))
            got = []
            while len(got) < 2:
                try:
                    got += ring.get_many(2, timeout=1)
                except fr.FrameError:
                    rejected += 1
                    if not got:
                        got.append(None)
            assert got[-1].time_step == i and np.all(got[-1].array == i)
            delivered += 1
        assert delivered == 1000 and rejected == ring.rejected and rejected > 300


def test_frame_built_by_hand_from_the_documented_layout_decodes():
    """docs/wire-format.md, byte by byte, as a C writer would follow it."""
    shape, params, name = (2, 3), (300.0, 0.5), "T"
    hlen = (48 + 8 * len(shape) + 8 * len(params) + len(name) + 7) & ~7
    payload = struct.pack("<6f", *range(6))
    buf = bytearray(hlen)
    struct.pack_into("<4sHHBBBBIqqQQ", buf, 0, b"OTFR", 1, hlen, 0, 1, len(shape), len(name),
                     len(params), 42, 7, len(payload), 0)
    struct.pack_into("<2Q2d", buf, 48, *shape, *params)
    buf[48 + 32:48 + 33] = b"T"
    f = fr.decode(bytes(buf) + payload)
    assert (f.sim_id, f.time_step, f.name, f.kind) == (42, 7, "T", fr.DATA)
    assert f.array.dtype == np.float32 and f.array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert f.params.tolist() == [300.0, 0.5]
    assert bytes(buf) == fr.encode_header(f)  # and our encoder writes exactly that
