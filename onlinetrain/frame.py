"""Self-describing binary frames: the one wire format of onlinetrain (shm ring, TCP, MPI).

A frame is a fixed 48-byte little-endian header, a variable part (shape, parameters, field name),
padding to a multiple of 8 bytes, then the raw array bytes (C order). No pickle anywhere: a frame
from a crashed or hostile peer is rejected with a `FrameError` naming the bad value. The byte layout
is documented in docs/wire-format.md.

    >>> import numpy as np
    >>> f = Frame(sim_id=3, time_step=7, params=np.array([1.0, 2.0]), name="T",
    ...           array=np.zeros((4, 4), np.float32))
    >>> g = decode(encode(f))
    >>> (g.sim_id, g.time_step, g.array.shape)
    (3, 7, (4, 4))
"""
from __future__ import annotations

from .errors import OTError

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"OTFR"
VERSION = 1
# magic, version, header_len, kind, dtype, ndim, name_len, n_params, sim_id, time_step, payload_len,
# reserved (0)
_FIXED = struct.Struct("<4sHHBBBBIqqQQ")
FIXED_SIZE = _FIXED.size  # 48 bytes
MAX_NDIM = 8
MAX_PARAMS = 4096
MAX_NAME = 255
MAX_DIM = 1 << 48  # one extent; larger ones are rejected before numpy sees them
_IDS = struct.Struct("<qq")  # sim_id, time_step at byte 16
_IDS_AT = 16
_F8 = np.dtype("<f8")

# Frame kinds
DATA = 0  # one time step of one simulation
SIM_END = 1  # the simulation sent all its steps; time_step = number of steps sent
SIM_FAILED = 2  # the simulation failed and will not send more; name holds the reason
STREAM_END = 3  # a producer (one `ot simulate`) has no more simulations
KINDS = {DATA: "data", SIM_END: "sim_end", SIM_FAILED: "sim_failed", STREAM_END: "stream_end"}

DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("<i8"),
          5: np.dtype("u1"), 6: np.dtype("<f2"), 7: np.dtype("<i2"), 8: np.dtype("<u2")}
DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}


class FrameError(OTError, ValueError):
    """A frame that cannot be decoded or encoded; `value` is the offending value."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass
class Frame:
    sim_id: int
    time_step: int
    params: np.ndarray = field(default_factory=lambda: np.zeros(0))
    name: str = "field"
    array: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: int = DATA

    @property
    def key(self) -> tuple[int, int]:
        return (self.sim_id, self.time_step)


def dtype_code(dtype) -> int:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == "=" else np.dtype(dtype)
    if dt not in DTYPE_CODES:
        raise FrameError(f"dtype {np.dtype(dtype)} cannot be sent; use one of "
                         f"{sorted(str(d) for d in DTYPES.values())}", dtype)
    return DTYPE_CODES[dt]


def header_size(ndim: int, n_params: int, name_len: int) -> int:
    raw = FIXED_SIZE + 8 * ndim + 8 * n_params + name_len
    return (raw + 7) // 8 * 8


def encode_header(f: Frame, payload_len: int | None = None) -> bytes:
    """The header bytes of `f` (everything before the payload)."""
    arr = np.asarray(f.array)
    params = np.ascontiguousarray(f.params, dtype="<f8").reshape(-1)
    name = f.name.encode("utf-8")
    if arr.ndim > MAX_NDIM:
        raise FrameError(f"array has {arr.ndim} dimensions, at most {MAX_NDIM} are allowed", arr.ndim)
    if len(params) > MAX_PARAMS:
        raise FrameError(f"{len(params)} parameters, at most {MAX_PARAMS} are allowed", len(params))
    if len(name) > MAX_NAME:
        raise FrameError(f"field name {f.name!r} is longer than {MAX_NAME} bytes", f.name)
    if f.kind not in KINDS:
        raise FrameError(f"unknown frame kind {f.kind}", f.kind)
    code = dtype_code(arr.dtype)
    if payload_len is None:
        payload_len = arr.nbytes
    hlen = header_size(arr.ndim, len(params), len(name))
    fixed = _FIXED.pack(MAGIC, VERSION, hlen, f.kind, code, arr.ndim, len(name), len(params),
                        int(f.sim_id), int(f.time_step), payload_len, 0)
    out = bytearray(hlen)
    out[:FIXED_SIZE] = fixed
    o = FIXED_SIZE
    out[o:o + 8 * arr.ndim] = np.asarray(arr.shape, dtype="<u8").tobytes()
    o += 8 * arr.ndim
    out[o:o + 8 * len(params)] = params.tobytes()
    o += 8 * len(params)
    out[o:o + len(name)] = name
    return bytes(out)


def encoded_size(f: Frame) -> int:
    arr = np.asarray(f.array)
    return header_size(arr.ndim, np.size(f.params), len(f.name.encode("utf-8"))) + arr.nbytes


def encode(f: Frame) -> bytes:
    arr = np.asarray(f.array)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    data = np.ascontiguousarray(arr, dtype=dt)
    return encode_header(f, data.nbytes) + data.tobytes()


def write_into(f: Frame, buf: memoryview, offset: int = 0) -> int:
    """Encode `f` straight into `buf` at `offset` (one copy of the array); returns bytes written."""
    arr = np.asarray(f.array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    hdr = encode_header(f, arr.nbytes)
    end = offset + len(hdr)
    buf[offset:end] = hdr
    if arr.nbytes:
        dst = np.frombuffer(buf, dtype=arr.dtype, count=arr.size, offset=end).reshape(arr.shape)
        np.copyto(dst, arr, casting="no")
    return len(hdr) + arr.nbytes


def decode(buf, copy: bool = True) -> Frame:
    """Decode one frame from a bytes-like object; `copy=False` returns an array viewing `buf`."""
    mv = memoryview(buf).cast("B")
    if len(mv) < FIXED_SIZE:
        raise FrameError(f"frame of {len(mv)} bytes is shorter than the {FIXED_SIZE}-byte header",
                         len(mv))
    (magic, version, hlen, kind, code, ndim, name_len, n_params, sim_id, time_step, payload_len,
     _reserved) = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not an onlinetrain frame",
                         bytes(magic))
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this reader speaks {VERSION})",
                         version)
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}", kind)
    if code not in DTYPES:
        raise FrameError(f"unknown dtype code {code}", code)
    if ndim > MAX_NDIM:
        raise FrameError(f"ndim {ndim} exceeds {MAX_NDIM}", ndim)
    if n_params > MAX_PARAMS:
        raise FrameError(f"{n_params} parameters exceed {MAX_PARAMS}", n_params)
    if hlen != header_size(ndim, n_params, name_len):
        raise FrameError(f"header length {hlen} does not match ndim={ndim}, n_params={n_params}, "
                         f"name_len={name_len}", hlen)
    if len(mv) != hlen + payload_len:
        raise FrameError(f"frame is {len(mv)} bytes but its header announces {hlen}+{payload_len}",
                         len(mv))
    o = FIXED_SIZE
    shape = struct.unpack_from(f"<{ndim}Q", mv, o)
    if any(s > MAX_DIM for s in shape):
        raise FrameError(f"shape {shape} has an extent above {MAX_DIM}", shape)
    o += 8 * ndim
    dtype = DTYPES[code]
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize != payload_len:
        raise FrameError(f"shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
                         f"payload has {payload_len}", shape)
    params = np.frombuffer(mv, "<f8", n_params, o).astype("=f8")
    o += 8 * n_params
    try:
        name = bytes(mv[o:o + name_len]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(f"field name is not UTF-8: {e}", bytes(mv[o:o + name_len])) from None
    arr = np.frombuffer(mv, dtype, count, hlen).reshape(shape)
    if copy:
        arr = arr.copy()
    return Frame(sim_id=sim_id, time_step=time_step, params=params, name=name, array=arr, kind=kind)


def _le_contiguous(a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


class Encoder:
    """Header bytes cached per (kind, dtype, shape, params, name): one pack per new combination.

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
        key = (arr.shape, dt.num, f.name, f.kind, pkey)
        hdr = self._cache.get(key)
        if hdr is None:
            hdr = encode_header(Frame(0, 0, f.params, f.name, arr, f.kind), arr.nbytes)
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
                return decode(buf[offset:offset + length], copy)  # raises the clear error
            hlen = buf[offset + 6] | buf[offset + 7] << 8
            if hlen < FIXED_SIZE or hlen > length:
                return decode(buf[offset:offset + length], copy)
            head, tail = bytes(buf[offset:offset + _IDS_AT]), bytes(buf[offset + 32:offset + hlen])
            key = head + tail  # ids excluded
            ent = self._cache.get(key)
            if ent is None:
                g = decode(buf[offset:offset + length], copy=False)
                g.params.flags.writeable = False
                ent = (g.kind, g.array.dtype, g.array.shape, g.array.size, g.params, g.name,
                       length - hlen)
                if len(self._cache) >= self._max:
                    self._cache.clear()
                self._cache[key] = ent
            if hlen + ent[6] != length:
                return decode(buf[offset:offset + length], copy)
            self._last = (length, head, hlen, tail, ent)
        kind, dtype, shape, count, params, name, _ = ent
        sim_id, time_step = _IDS.unpack_from(buf, offset + _IDS_AT)
        arr = np.frombuffer(buf, dtype, count, offset + hlen)
        if copy:  # one copy into a fresh writable array
            arr = arr.copy()
        if len(shape) != 1:
            arr = arr.reshape(shape)
        return cls(sim_id, time_step, params, name, arr, kind)
