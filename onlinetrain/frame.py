"""Self-describing binary frames: the one wire format of onlinetrain (shm ring, TCP, MPI).

A frame (format version 2) is a fixed 48-byte little-endian header, a variable part (shape; for a
piece of a larger field its global shape and offset; parameters, field name, metadata), padding to a
multiple of 8 bytes, then the raw array bytes (C order). No pickle anywhere: a frame from a crashed
or hostile peer is rejected with a `FrameError` naming the bad value. The byte layout is documented
in docs/wire-format.md (the contract for C and Fortran writers).

    >>> import numpy as np
    >>> f = Frame(sim_id=3, time_step=7, params=np.array([1.0, 2.0]), name="T",
    ...           array=np.zeros((4, 4), np.float32))
    >>> g = decode(encode(f))
    >>> (g.sim_id, g.time_step, g.array.shape)
    (3, 7, (4, 4))
    >>> p = Frame(3, 7, name="T", array=np.zeros((2, 4)), global_shape=(4, 4), offset=(2, 0),
    ...           meta=b'{"t": 0.5}')       # rows 2..3 of a 4 x 4 field
    >>> decode(encode(p)).offset
    (2, 0)
    >>> sim_end_counts(decode(encode(sim_end(3, {"T": (100, 2)}))))   # 100 steps, 2 pieces each
    {'T': (100, 2)}
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import OTError

MAGIC = b"OTFR"
VERSION = 2
# magic, version, header_len, kind, dtype, ndim, name_len, n_params, sim_id, time_step, payload_len,
# meta_len, flags (3 reserved zero bytes follow)
_FIXED = struct.Struct("<4sHHBBBBIqqQIB3x")
FIXED_SIZE = _FIXED.size  # 48 bytes
MAX_NDIM = 8
MAX_PARAMS = 4096
MAX_NAME = 255
MAX_META = 16384  # bytes of metadata per frame ("small": a few numbers as JSON)
MAX_DIM = 1 << 48  # one extent; larger ones are rejected before numpy sees them
FLAG_PIECE = 1  # flags bit 0: global shape and offset follow the shape (the frame is a piece)
_IDS = struct.Struct("<qq")  # sim_id, time_step at byte 16
_IDS_AT = 16
_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")
_NO_META = bytes(4)

# Frame kinds
DATA = 0  # one time step of one field of one simulation (the whole field or one piece of it)
SIM_END = 1  # the simulation sent everything; per field: steps and pieces per step (sim_end())
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
    """One frame. `global_shape` and `offset` (tuples, one entry per axis of `array`) say where
    `array` lies in the whole field; None for both: `array` is the whole field. `meta`: the optional
    metadata blob (JSON bytes by convention; b"" when absent)."""
    sim_id: int
    time_step: int
    params: np.ndarray = field(default_factory=lambda: np.zeros(0))
    name: str = "field"
    array: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: int = DATA
    global_shape: tuple | None = None
    offset: tuple | None = None
    meta: bytes = b""

    @property
    def key(self) -> tuple[int, int]:
        return (self.sim_id, self.time_step)


def dtype_code(dtype) -> int:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == "=" else np.dtype(dtype)
    if dt not in DTYPE_CODES:
        raise FrameError(f"dtype {np.dtype(dtype)} cannot be sent; use one of "
                         f"{sorted(str(d) for d in DTYPES.values())}", dtype)
    return DTYPE_CODES[dt]


def header_size(ndim: int, n_params: int, name_len: int, meta_len: int = 0,
                piece: bool = False) -> int:
    raw = FIXED_SIZE + 8 * ndim * (3 if piece else 1) + 8 * n_params + name_len + meta_len
    return (raw + 7) // 8 * 8


MAX_HEADER = header_size(MAX_NDIM, MAX_PARAMS, MAX_NAME, MAX_META, True)  # fits header_len's u16


def _box(shape, global_shape, offset) -> tuple[tuple, tuple] | None:
    """The checked (global_shape, offset) of a piece of extent `shape`, or None (a whole field)."""
    if global_shape is None and offset is None:
        return None
    if global_shape is None or offset is None:
        raise FrameError(f"a piece needs both global_shape and offset, got global_shape="
                         f"{global_shape!r}, offset={offset!r}", (global_shape, offset))
    try:
        g, o = tuple(int(v) for v in global_shape), tuple(int(v) for v in offset)
    except (TypeError, ValueError):
        raise FrameError(f"global_shape {global_shape!r} and offset {offset!r} must be sequences "
                         f"of integers", (global_shape, offset)) from None
    if len(g) != len(shape) or len(o) != len(shape):
        raise FrameError(f"piece of shape {tuple(shape)} needs {len(shape)} global extents and "
                         f"offsets, got global_shape={g}, offset={o}", (g, o))
    for s, gs, off in zip(shape, g, o):
        if gs > MAX_DIM or off < 0 or gs < 0 or off + s > gs:
            raise FrameError(f"piece of shape {tuple(shape)} at offset {o} does not lie inside "
                             f"global shape {g}", (g, o))
    return g, o


def _sim_end_names(meta: bytes, n: int) -> list[str]:
    names = meta.split(b"\0") if meta else []
    if len(names) != n or not all(names):
        raise FrameError(f"SIM_END announces {n} fields but its metadata names {len(names)} "
                         f"(field names joined by one NUL byte, none empty)", meta)
    try:
        out = [v.decode("utf-8") for v in names]
    except UnicodeDecodeError as e:
        raise FrameError(f"SIM_END field name is not UTF-8: {e}", meta) from None
    if len(set(out)) != n:
        raise FrameError(f"SIM_END names a field twice: {out}", out)
    return out


def _check_sim_end(code: int, shape: tuple, meta: bytes) -> None:
    if DTYPES[code] != _I8 or len(shape) != 2 or shape[1] != 2:
        raise FrameError(f"SIM_END must carry an int64 array of shape (fields, 2), got "
                         f"{DTYPES[code]} {tuple(shape)}: build it with frame.sim_end()", shape)
    _sim_end_names(meta, shape[0])


def encode_header(f: Frame, payload_len: int | None = None) -> bytes:
    """The header bytes of `f` (everything before the payload)."""
    arr = np.asarray(f.array)
    params = np.ascontiguousarray(f.params, dtype="<f8").reshape(-1)
    name = f.name.encode("utf-8")
    meta = f.meta or b""
    if arr.ndim > MAX_NDIM:
        raise FrameError(f"array has {arr.ndim} dimensions, at most {MAX_NDIM} are allowed", arr.ndim)
    if len(params) > MAX_PARAMS:
        raise FrameError(f"{len(params)} parameters, at most {MAX_PARAMS} are allowed", len(params))
    if len(name) > MAX_NAME:
        raise FrameError(f"field name {f.name!r} is longer than {MAX_NAME} bytes", f.name)
    if not isinstance(meta, (bytes, bytearray)) or len(meta) > MAX_META:
        raise FrameError(f"metadata must be bytes of at most {MAX_META} (JSON text encoded), got "
                         f"{type(meta).__name__} of {len(meta)}", len(meta))
    if f.kind not in KINDS:
        raise FrameError(f"unknown frame kind {f.kind}", f.kind)
    code = dtype_code(arr.dtype)
    box = _box(arr.shape, f.global_shape, f.offset)
    if f.kind == SIM_END:
        _check_sim_end(code, arr.shape, bytes(meta))
    if payload_len is None:
        payload_len = arr.nbytes
    hlen = header_size(arr.ndim, len(params), len(name), len(meta), box is not None)
    fixed = _FIXED.pack(MAGIC, VERSION, hlen, f.kind, code, arr.ndim, len(name), len(params),
                        int(f.sim_id), int(f.time_step), payload_len, len(meta),
                        FLAG_PIECE if box else 0)
    dims = arr.shape if box is None else arr.shape + box[0] + box[1]
    out = bytearray(hlen)
    out[:FIXED_SIZE] = fixed
    o = FIXED_SIZE
    out[o:o + 8 * len(dims)] = np.asarray(dims, dtype="<u8").tobytes()
    o += 8 * len(dims)
    out[o:o + 8 * len(params)] = params.tobytes()
    o += 8 * len(params)
    out[o:o + len(name)] = name
    o += len(name)
    out[o:o + len(meta)] = meta
    return bytes(out)


def encoded_size(f: Frame) -> int:
    arr = np.asarray(f.array)
    return header_size(arr.ndim, np.size(f.params), len(f.name.encode("utf-8")), len(f.meta or b""),
                       f.global_shape is not None) + arr.nbytes


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


def decode(buf, copy: bool = True, cls=Frame) -> Frame:
    """Decode one frame from a bytes-like object; `copy=False` returns an array viewing `buf`."""
    mv = memoryview(buf).cast("B")
    if len(mv) < FIXED_SIZE:
        raise FrameError(f"frame of {len(mv)} bytes is shorter than the {FIXED_SIZE}-byte header",
                         len(mv))
    (magic, version, hlen, kind, code, ndim, name_len, n_params, sim_id, time_step, payload_len,
     meta_len, flags) = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not an onlinetrain frame",
                         bytes(magic))
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this reader speaks {VERSION}); "
                         f"rebuild the writer (C client, onlinetrain) at format version {VERSION}",
                         version)
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}", kind)
    if code not in DTYPES:
        raise FrameError(f"unknown dtype code {code}", code)
    if ndim > MAX_NDIM:
        raise FrameError(f"ndim {ndim} exceeds {MAX_NDIM}", ndim)
    if n_params > MAX_PARAMS:
        raise FrameError(f"{n_params} parameters exceed {MAX_PARAMS}", n_params)
    if meta_len > MAX_META:
        raise FrameError(f"{meta_len} bytes of metadata exceed {MAX_META}", meta_len)
    if flags & ~FLAG_PIECE:
        raise FrameError(f"unknown flags {flags:#x} (only bit 0, piece, is defined)", flags)
    piece = bool(flags & FLAG_PIECE)
    if hlen != header_size(ndim, n_params, name_len, meta_len, piece):
        raise FrameError(f"header length {hlen} does not match ndim={ndim}, n_params={n_params}, "
                         f"name_len={name_len}, meta_len={meta_len}, piece={piece}", hlen)
    if len(mv) != hlen + payload_len:
        raise FrameError(f"frame is {len(mv)} bytes but its header announces {hlen}+{payload_len}",
                         len(mv))
    o = FIXED_SIZE
    dims = struct.unpack_from(f"<{ndim * (3 if piece else 1)}Q", mv, o)
    shape = dims[:ndim]
    if any(s > MAX_DIM for s in shape):
        raise FrameError(f"shape {shape} has an extent above {MAX_DIM}", shape)
    box = _box(shape, dims[ndim:2 * ndim], dims[2 * ndim:]) if piece else None
    o += 8 * len(dims)
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
    meta = bytes(mv[o + name_len:o + name_len + meta_len])
    arr = np.frombuffer(mv, dtype, count, hlen).reshape(shape)
    if kind == SIM_END:
        _check_sim_end(code, shape, meta)
        if (arr < 0).any():
            raise FrameError(f"SIM_END counts must be >= 0, got {arr.tolist()}", arr.tolist())
    if copy:
        arr = arr.copy()
    g, off = box if box is not None else (None, None)
    return cls(sim_id, time_step, params, name, arr, kind, g, off, meta)


def sim_end(sim_id: int, counts: dict, params=()) -> Frame:
    """The SIM_END frame of simulation `sim_id`: `counts` maps each field name to (steps, pieces
    per step), totals over every rank. Its time_step is the number of data frames announced."""
    names, rows = [], []
    for k, v in counts.items():
        try:
            steps, pieces = (int(x) for x in v)
        except (TypeError, ValueError):
            raise FrameError(f"SIM_END count for field {k!r} must be (steps, pieces), got {v!r}",
                             v) from None
        if steps < 0 or pieces < 1 or not k or "\0" in k:
            raise FrameError(f"SIM_END count {k!r}: ({steps}, {pieces}) needs a non-empty name "
                             f"without NUL, steps >= 0 and pieces >= 1", (k, v))
        names.append(k.encode("utf-8"))
        rows.append((steps, pieces))
    arr = np.array(rows, dtype="<i8").reshape(len(rows), 2)
    return Frame(sim_id, int((arr[:, 0] * arr[:, 1]).sum()), np.asarray(params, dtype=np.float64),
                 "end", arr, SIM_END, meta=b"\0".join(names))


def sim_end_counts(f: Frame) -> dict[str, tuple[int, int]]:
    """What a SIM_END announces: {field name: (steps, pieces per step)}."""
    if f.kind != SIM_END:
        raise FrameError(f"frame of kind {KINDS.get(f.kind, f.kind)} carries no SIM_END counts",
                         f.kind)
    arr = np.asarray(f.array)
    _check_sim_end(dtype_code(arr.dtype), arr.shape, f.meta)
    names = _sim_end_names(f.meta, arr.shape[0])
    return {k: (int(s), int(p)) for k, (s, p) in zip(names, arr.tolist())}
