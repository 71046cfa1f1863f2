"""Cached encoding and decoding of frames for the transports' hot paths (frame.py is the format):
a header is packed, or parsed and validated, once per distinct header, ids excepted.

    enc = Encoder(); hdr, arr = enc.prepare(frame)          # producers (shm ring, TCP)
    dec = Decoder(); f = dec.decode_at(buf, offset, length)  # consumers; same checks as decode
"""
from __future__ import annotations

import numpy as np

from .frame import (_F8, _IDS, _IDS_AT, _NO_META, DATA, FIXED_SIZE, Frame, _box, decode,
                    encode_header)

def _le_contiguous(a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


class Encoder:
    """Header bytes cached per (kind, dtype, shape, params, name, box, meta): one pack per new
    combination.

        enc = Encoder()
        hdr, arr = enc.prepare(frame)     # header template (ids not filled) + C-contiguous LE array
        buf[o:o + len(hdr)] = hdr; enc.fill_ids(buf, o, frame); buf[o + len(hdr):...] = arr bytes
    """

    def __init__(self, max_entries: int = 256):
        self._cache: dict = {}
        self._max = max_entries

    def prepare(self, f: Frame) -> tuple[bytes, np.ndarray]:
        arr = f.array
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous or \
                (dt := arr.dtype).byteorder == ">":
            arr = _le_contiguous(arr)
            dt = arr.dtype
        p = f.params
        pkey = p.tobytes() if type(p) is np.ndarray and p.dtype == _F8 else \
            np.ascontiguousarray(p, dtype="<f8").tobytes()
        gs, off, meta = f.global_shape, f.offset, f.meta
        if gs is not None or off is not None:
            gs, off = _box(arr.shape, gs, off) or (None, None)
        if type(meta) is not bytes:
            meta = bytes(meta) if isinstance(meta, (bytearray, memoryview)) else meta
        key = (arr.shape, dt.num, f.name, f.kind, pkey, gs, off, meta)
        try:
            hdr = self._cache.get(key)
        except TypeError:  # unhashable metadata: encode_header names it
            hdr = key = None
        if hdr is None:
            hdr = encode_header(Frame(0, 0, f.params, f.name, arr, f.kind, gs, off, meta),
                                arr.nbytes)
            if key is None:
                return hdr, arr
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = hdr
        return hdr, arr

    @staticmethod
    def fill_ids(buf, offset: int, f: Frame) -> None:
        _IDS.pack_into(buf, offset + _IDS_AT, int(f.sim_id), int(f.time_step))


class Decoder:
    """`decode` with the header parsed once per distinct header (ids excluded).

    Frames of one simulation share their header, so the consumer compares the header with the
    previous frame's (two byte-string compares) or, failing that, pays one dict look-up.
    The `params` array of a decoded frame is shared between such frames and is read-only.
    Control frames and frames with metadata (which may change every frame) are decoded whole.
    """

    def __init__(self, max_entries: int = 4096):
        self._cache: dict = {}
        self._max = max_entries
        # previous frame: (length, first 16 bytes, header length, header bytes after the ids, ent)
        self._last = (-1, None, 0, None, None)

    def decode_at(self, buf, offset: int, length: int, copy: bool = True, cls=Frame) -> Frame:
        """Decode the `length`-byte frame at `offset` of `buf` (an mmap, bytes or 'B' memoryview)."""
        last = self._last
        hlen = last[2]
        if length == last[0] and offset + length <= len(buf) and \
                buf[offset:offset + _IDS_AT] == last[1] and \
                buf[offset + 32:offset + hlen] == last[3]:
            ent = last[4]  # the same header as the previous frame (the first 16 bytes hold hlen)
        else:
            if length < FIXED_SIZE or offset + length > len(buf):
                return decode(buf[offset:offset + length], copy, cls)  # raises the clear error
            hlen = buf[offset + 6] | buf[offset + 7] << 8
            if hlen < FIXED_SIZE or hlen > length or buf[offset + 8] != DATA or \
                    buf[offset + 40:offset + 44] != _NO_META:
                return decode(memoryview(buf)[offset:offset + length], copy, cls)
            head, tail = bytes(buf[offset:offset + _IDS_AT]), bytes(buf[offset + 32:offset + hlen])
            key = head + tail  # ids excluded
            ent = self._cache.get(key)
            if ent is None:
                g = decode(buf[offset:offset + length], copy=False)
                g.params.flags.writeable = False
                ent = (g.kind, g.array.dtype, g.array.shape, g.array.size, g.params, g.name,
                       length - hlen, g.global_shape, g.offset)
                if len(self._cache) >= self._max:
                    self._cache.clear()
                self._cache[key] = ent
            if hlen + ent[6] != length:
                return decode(buf[offset:offset + length], copy, cls)
            self._last = (length, head, hlen, tail, ent)
        kind, dtype, shape, count, params, name, _, gshape, off = ent
        sim_id, time_step = _IDS.unpack_from(buf, offset + _IDS_AT)
        arr = np.frombuffer(buf, dtype, count, offset + hlen)
        if copy:  # one copy into a fresh writable array
            arr = arr.copy()
        if len(shape) != 1:
            arr = arr.reshape(shape)
        return cls(sim_id, time_step, params, name, arr, kind, gshape, off)
