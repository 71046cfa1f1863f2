"""10,000 fuzzed frames: every decoder path gives a Frame or a clear FrameError, never anything else.

Mutations of valid frames (byte flips, random header fields, truncation, extension) go through
frame.decode, the consumer's cached Decoder, and a live ring (written straight into committed slots,
as a buggy or hostile C writer would); the ring rejects each bad frame and keeps going.
"""
import struct

import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.frame_codec import Decoder
from onlinetrain.shm_channel import SLOT_HDR, RingConsumer, RingProducer

FIELDS = [(4, "H"), (6, "H"), (8, "B"), (9, "B"), (10, "B"), (11, "B"), (12, "I"), (32, "Q"),
          (40, "I"), (44, "B")]


def _valid(rng):
    """A valid v2 frame: a whole field or a piece, with or without metadata, or a control frame."""
    kind = int(rng.integers(0, 6))
    sid, step = int(rng.integers(100)), int(rng.integers(100))
    params = rng.random(int(rng.integers(0, 4)))
    if kind == 4:
        names = ["f" * (i + 1) for i in range(int(rng.integers(0, 3)))]
        return fr.encode(fr.sim_end(sid, {n: (int(rng.integers(0, 9)), int(rng.integers(1, 4)))
                                          for n in names}, params))
    if kind == 5:
        return fr.encode(fr.Frame(sid, 0, params, "why" * int(rng.integers(0, 3)),
                                  np.zeros(0, np.float32), _pick(rng, [fr.SIM_FAILED, fr.STREAM_END])))
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(s) for s in rng.integers(0, 5, ndim))
    dt = list(fr.DTYPES.values())[int(rng.integers(len(fr.DTYPES)))]
    arr = np.zeros(shape, dt)
    gs = off = None
    if kind >= 2:  # a piece of a larger field
        off = tuple(int(v) for v in rng.integers(0, 3, ndim))
        gs = tuple(o + s + int(rng.integers(0, 3)) for o, s in zip(off, shape))
    meta = b'{"t": %d}' % step if kind in (1, 3) else b""
    return fr.encode(fr.Frame(sid, step, params, "f" * int(rng.integers(0, 9)), arr, fr.DATA,
                              gs, off, meta))


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
    elif kind == 4 and len(b) >= 56:  # a shape, global extent or offset word rewritten
        at = 48 + 8 * int(rng.integers(0, max(1, min(3 * b[10], (len(b) - 56) // 8 + 1))))
        struct.pack_into("<Q", b, at, _pick(rng, [0, 1 << 40, (1 << 64) - 1, 3]))
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
    dec = Decoder()
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
    return (a.sim_id, a.time_step, a.name, a.kind, a.global_shape, a.offset, a.meta) == \
        (b.sim_id, b.time_step, b.name, b.kind, b.global_shape, b.offset, b.meta) and \
        np.array_equal(a.params, b.params) and a.array.dtype == b.array.dtype and \
        a.array.shape == b.array.shape and np.array_equal(a.array, b.array, equal_nan=True)


@pytest.mark.timeout(120)
def test_decoder_primed_with_a_good_frame_agrees_with_decode_on_every_byte_flip():
    """The Decoder's fast path (header equal to the previous frame's) must validate as decode does:
    prime it with a good frame, then decode each single-byte mutation, whole and cut short."""
    frames = [fr.Frame(3, 7, np.array([1.0, 2.0]), "T", np.arange(12, dtype=np.float32).reshape(3, 4)),
              fr.sim_end(1, {"T": (2, 1)}),
              fr.Frame(1, 2, np.ones(1), "ab", np.arange(5, dtype=np.int16)),
              fr.Frame(4, 5, np.ones(2), "T", np.arange(6, dtype=np.float64).reshape(2, 3),
                       global_shape=(4, 3), offset=(2, 0)),
              fr.Frame(4, 5, np.ones(2), "T", np.arange(3, dtype=np.float32), meta=b'{"t":1}')]
    cases = fast = 0
    for f in frames:
        good = fr.encode(f)
        for pos in range(len(good)):
            for val in (0, 0xFF, good[pos] ^ 1):
                b = bytearray(good)
                b[pos] = val
                for n in (len(b), len(b) - 1):
                    dec = Decoder()
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
    dec = Decoder()
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
    struct.pack_into("<4sHHBBBBIqqQIB3x", buf, 0, b"OTFR", 2, hlen, 0, 1, len(shape), len(name),
                     len(params), 42, 7, len(payload), 0, 0)
    struct.pack_into("<2Q2d", buf, 48, *shape, *params)
    buf[48 + 32:48 + 33] = b"T"
    f = fr.decode(bytes(buf) + payload)
    assert (f.sim_id, f.time_step, f.name, f.kind) == (42, 7, "T", fr.DATA)
    assert f.array.dtype == np.float32 and f.array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert f.params.tolist() == [300.0, 0.5]
    assert bytes(buf) == fr.encode_header(f)  # and our encoder writes exactly that


def test_piece_with_metadata_built_by_hand_from_the_documented_layout_decodes():
    """A piece (rows 2..3 of a 4 x 3 field) with a metadata blob, byte by byte from the doc."""
    shape, gshape, offset, params, name, meta = (2, 3), (4, 3), (2, 0), (1.0,), "T", b'{"t": 0.5}'
    hlen = (48 + 3 * 8 * len(shape) + 8 * len(params) + len(name) + len(meta) + 7) & ~7
    payload = struct.pack("<6d", *range(6))
    buf = bytearray(hlen)
    struct.pack_into("<4sHHBBBBIqqQIB3x", buf, 0, b"OTFR", 2, hlen, 0, 2, len(shape), len(name),
                     len(params), 9, 3, len(payload), len(meta), 1)
    struct.pack_into("<6Q1d", buf, 48, *shape, *gshape, *offset, *params)
    o = 48 + 56
    buf[o:o + 1] = b"T"
    buf[o + 1:o + 1 + len(meta)] = meta
    f = fr.decode(bytes(buf) + payload)
    assert (f.global_shape, f.offset, f.meta, f.array.shape) == (gshape, offset, meta, shape)
    assert bytes(buf) == fr.encode_header(f)
    assert Decoder().decode_at(bytes(buf) + payload, 0, len(buf) + len(payload)).meta == meta


def test_sim_end_counts_built_by_hand_decode():
    """SIM_END: an int64 (fields, 2) array of (steps, pieces) and the names joined by NUL."""
    meta = b"T\0U"
    payload = struct.pack("<4q", 100, 2, 50, 1)
    hlen = (48 + 16 + len("end") + len(meta) + 7) & ~7
    buf = bytearray(hlen)
    struct.pack_into("<4sHHBBBBIqqQIB3x", buf, 0, b"OTFR", 2, hlen, 1, 4, 2, 3, 0, 5, 250,
                     len(payload), len(meta), 0)
    struct.pack_into("<2Q", buf, 48, 2, 2)
    buf[64:67] = b"end"
    buf[67:67 + len(meta)] = meta
    f = fr.decode(bytes(buf) + payload)
    assert fr.sim_end_counts(f) == {"T": (100, 2), "U": (50, 1)}
    assert fr.encode(f) == fr.encode(fr.sim_end(5, {"T": (100, 2), "U": (50, 1)}))
    with pytest.raises(fr.FrameError, match="announces 2 fields but its metadata names 1"):
        fr.decode(bytes(buf[:67]) + b"T_U" + bytes(buf[70:]) + payload)  # one name, not two


def test_version_1_frame_is_a_clear_error():
    buf = bytearray(fr.encode(fr.Frame(1, 2, array=np.zeros(3, np.float32))))
    struct.pack_into("<H", buf, 4, 1)
    for dec in (lambda: fr.decode(bytes(buf)), lambda: Decoder().decode_at(bytes(buf), 0, len(buf))):
        with pytest.raises(fr.FrameError, match="frame version 1 is not supported .* speaks 2") as e:
            dec()
        assert e.value.value == 1


def test_bad_pieces_and_counts_are_refused_before_sending():
    a = np.zeros((2, 3))
    for gs, off in [((4, 3), None), ((4,), (0,)), ((3, 3), (2, 0)), ((4, 3), (-1, 0))]:
        with pytest.raises(fr.FrameError, match="piece|global"):
            fr.encode(fr.Frame(0, 0, array=a, global_shape=gs, offset=off))
    with pytest.raises(fr.FrameError, match="pieces >= 1"):
        fr.sim_end(0, {"T": (3, 0)})
    with pytest.raises(fr.FrameError, match="build it with frame.sim_end"):
        fr.encode(fr.Frame(0, 0, array=np.zeros(0, np.float32), kind=fr.SIM_END))
    with pytest.raises(fr.FrameError, match="metadata must be bytes of at most 16384"):
        fr.encode(fr.Frame(0, 0, meta=bytes(16385)))
