"""Pieces -> steps, and per-simulation accounting of what has arrived (complete or re-run).

A data frame brings one (simulation, step, field), whole or as one n-D piece (`global_shape`,
`offset`, the piece's extent is its array's shape). The `Assembler` writes pieces into the whole
field, drops a piece it already has (dedup by simulation, step, field and piece box), and returns
a `Step` once the step's fields are complete. It keeps, per simulation, a bitmap of the steps each
field completed and the number of pieces they took, so its memory grows with simulations, not
samples; a simulation whose SIM_END arrived and announced counts were all met is `done`, and its
bitmaps are then dropped (only its id is kept).

    asm = Assembler(fields=None)        # required field names; None: one field, any name
    step = asm.add(frame)               # a Step once complete, else None; asm.duplicates counts
    asm.sim_end(frame)                  # -> "done" | "incomplete" (holes: the launcher re-runs it)
    asm.sim_failed(frame)
    d = asm.state_dict(); asm.load_state_dict(d)   # plain types (torch.load(weights_only=True))

Steps still being assembled (some pieces in) are not part of the state: after a resume their
simulation lacks them, so it ends incomplete and is re-run; re-sent steps it already completed are
dropped as duplicates, the missing ones fill the holes (docs/step.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from . import frame as fr
from .step import Step

log = logging.getLogger(__name__)


class _Bits:
    """A growable bitmap of non-negative step numbers (negative ones in a small set)."""
    __slots__ = ("b", "neg", "n")

    def __init__(self, b: bytes = b"", neg=(), n: int = 0):
        self.b, self.neg, self.n = bytearray(b), set(neg), n

    def has(self, i: int) -> bool:
        if i < 0:
            return i in self.neg
        j = i >> 3
        return j < len(self.b) and bool(self.b[j] >> (i & 7) & 1)

    def set(self, i: int) -> None:
        if self.has(i):
            return
        self.n += 1
        if i < 0:
            self.neg.add(i)
            return
        j = i >> 3
        if j >= len(self.b):
            self.b.extend(bytes(max(j + 1 - len(self.b), len(self.b))))
        self.b[j] |= 1 << (i & 7)

    def clear(self, i: int) -> None:
        if not self.has(i):
            return
        self.n -= 1
        if i < 0:
            self.neg.discard(i)
        else:
            self.b[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def copy(self) -> "_Bits":
        return _Bits(bytes(self.b), self.neg, self.n)

    def union(self, other: "_Bits") -> "_Bits":
        a, b = (self.b, other.b) if len(self.b) >= len(other.b) else (other.b, self.b)
        out = bytearray(a)
        for i, v in enumerate(b):
            out[i] |= v
        return _Bits(out, self.neg | other.neg, sum(bin(v).count("1") for v in out)
                     + len(self.neg | other.neg))

    def intersect(self, other: "_Bits") -> "_Bits":
        out = bytearray(a & b for a, b in zip(self.b, other.b))
        neg = self.neg & other.neg
        return _Bits(out, neg, sum(bin(v).count("1") for v in out) + len(neg))

    def steps(self) -> list[int]:
        bits = np.unpackbits(np.frombuffer(bytes(self.b), np.uint8), bitorder="little")
        return sorted(self.neg) + np.flatnonzero(bits).tolist()

    def state(self) -> list:
        return [bytes(self.b).rstrip(b"\0").hex(), sorted(self.neg), self.n]

    @classmethod
    def from_state(cls, s) -> "_Bits":
        return cls(bytes.fromhex(s[0]), s[1], int(s[2]))


@dataclass
class _Sim:
    steps: dict = field(default_factory=dict)  # field name -> [_Bits of completed steps, pieces]
    only: str | None = None  # adapter without declared fields: the simulation's first field
    fast: str | None = None  # the one field a step needs (None: several), for add()'s fast path
    counts: dict | None = None  # SIM_END's {field: (steps, pieces per step)}, None before it
    ended: bool = False


class Piece:
    """One (simulation, step, field) being assembled from pieces (also used by onlinetrain.stats).

        p = Piece.of(frame)          # an empty field of the frame's global shape and dtype
        p.place(frame)               # True: complete, False: more to come, None: a duplicate box
    """
    __slots__ = ("array", "filled", "boxes", "meta", "total")

    def __init__(self, shape, dtype):
        self.array = np.empty(shape, dtype)
        self.total = self.array.size
        self.filled = 0
        self.boxes: set = set()
        self.meta = b""

    @classmethod
    def of(cls, f) -> "Piece":
        gs = getattr(f, "global_shape", None)
        return cls(tuple(gs) if gs is not None else f.array.shape, f.array.dtype)

    def place(self, f) -> bool | None:
        """Copy piece `f` into the field; whether the field is now complete, None when this box
        already arrived. FrameError (nothing changed) for a piece whose global shape or dtype
        differ from the earlier pieces', or that overlaps them."""
        a = f.array
        gs, off = getattr(f, "global_shape", None), getattr(f, "offset", None)
        if gs is None:
            gs, off = a.shape, (0,) * a.ndim
        gs, off = tuple(gs), tuple(off)
        if self.array.shape != gs or self.array.dtype != a.dtype:
            raise fr.FrameError(f"piece of field {f.name!r} (simulation {f.sim_id}, step "
                                f"{f.time_step}) has global shape {gs} of {a.dtype}, earlier "
                                f"pieces {self.array.shape} of {self.array.dtype}", gs)
        box = (off, a.shape)
        if box in self.boxes:
            return None
        if self.filled + a.size > self.total or any(
                all(o < bo + be and bo < o + e for o, e, bo, be in zip(off, a.shape, *b))
                for b in self.boxes):
            raise fr.FrameError(f"piece at {off} of extent {a.shape} overlaps others of field "
                                f"{f.name!r} (simulation {f.sim_id}, step {f.time_step})", box)
        self.array[tuple(slice(o, o + e) for o, e in zip(off, a.shape))] = a
        self.boxes.add(box)
        self.filled += a.size
        meta = getattr(f, "meta", b"") or b""
        if meta and not self.meta:
            self.meta = meta
        return self.filled == self.total


def _counts(f) -> dict | None:
    """SIM_END's announced counts, None where the frame format carries none (format 1)."""
    get = getattr(fr, "sim_end_counts", None)
    return None if get is None else get(f)


class Assembler:
    def __init__(self, fields=None):
        self.fields = None if fields is None else tuple(fields)
        self.sims: dict[int, _Sim] = {}
        self.done: set[int] = set()
        self.failed: dict[int, str] = {}
        self.incomplete: set[int] = set()  # SIM_END arrived with holes
        self.ended: set[int] = set()  # done, failed or incomplete: nothing more is expected
        self.done_range: dict[int, tuple[int, int]] = {}  # done: steps first..first+n-1
        self.done_bits: dict[int, _Bits] = {}  # done with steps that are not one range
        self.pending: dict[tuple, dict] = {}  # (sim, step) -> {field: Piece | completed array}
        self.params: dict[tuple, np.ndarray] = {}
        self.duplicates = 0
        self.ignored = 0  # complete fields the adapter does not take
        self._warned = False

    # --- data --------------------------------------------------------------------------------
    def add(self, f) -> Step | None:
        """Account for one data frame; the completed Step or None. FrameError for a piece that does
        not fit its field (the frame is counted rejected by the caller, nothing is changed)."""
        sid, ts, name = f.sim_id, f.time_step, f.name
        s = self.sims.get(sid)
        if s is not None and name == s.fast and f.global_shape is None and ts >= 0 and \
                not self.pending and not s.ended:  # the common case, inlined: a whole field
            fs = s.steps[name]
            b, j, bit = fs[0].b, ts >> 3, 1 << (ts & 7)
            if j < len(b):
                if b[j] & bit:
                    self.duplicates += 1
                    return None
            else:
                b.extend(bytes(max(j + 1 - len(b), len(b))))
            b[j] |= bit
            fs[0].n += 1
            fs[1] += 1
            meta = f.meta
            return Step(sid, ts, f.params, {name: f.array}, {name: meta} if meta else {})
        if sid in self.done:
            self.duplicates += 1
            return None
        if s is None:
            s = self.sims[sid] = _Sim()
            if self.fields is not None and len(self.fields) == 1:
                s.fast = self.fields[0]
        fs = s.steps.get(name)
        if fs is None:
            fs = s.steps[name] = [_Bits(), 0]
            if s.only is None and self.fields is None:
                s.only = s.fast = name
        if fs[0].has(ts):
            self.duplicates += 1
            return None
        key = (sid, ts)
        pend = self.pending.get(key)
        if getattr(f, "global_shape", None) is None and (pend is None or name not in pend):
            arr, meta, npieces = f.array, getattr(f, "meta", b"") or b"", 1  # a whole field
        else:
            arr, meta, npieces = self._piece(f, key, pend)
            if arr is None:
                return None
        fs[0].set(ts)
        fs[1] += npieces
        step = self._complete(s, sid, ts, name, arr, meta, f.params, npieces)
        if s.ended:
            self._check_done(sid, s)
        return step

    def _piece(self, f, key, pend):
        p = None if pend is None else pend.get(f.name)
        if p is None:
            p = Piece.of(f)
        done = p.place(f)
        if done is None:
            self.duplicates += 1
            return None, b"", 0
        if not done:
            if pend is None:
                pend = self.pending[key] = {}
                self.params[key] = np.array(f.params)
            pend[f.name] = p
            return None, b"", 0
        if pend is not None:
            pend.pop(f.name, None)
            if not pend:
                self.pending.pop(key, None)
                self.params.pop(key, None)
        return p.array, p.meta, len(p.boxes)

    def _complete(self, s: _Sim, sid, ts, name, arr, meta, params, npieces) -> Step | None:
        need = self.fields if self.fields is not None else (s.only,)
        if name not in need:
            self.ignored += 1
            if self.fields is None and not self._warned:
                self._warned = True
                log.warning("simulation %d sends fields %s; the adapter takes one field (%s): "
                            "declare the fields it needs with onlinetrain.step.step_adapter("
                            "fields=...)", sid, sorted(s.steps), s.only)
            return None
        if len(need) == 1:
            return Step(sid, ts, params, {name: arr}, {name: meta} if meta else {})
        key = (sid, ts)
        pend = self.pending.get(key)
        if pend is None:
            pend = self.pending[key] = {}
            self.params[key] = np.array(params)
        pend[name] = (np.array(arr), meta, npieces)  # may view the channel's memory: a copy
        if not all(s.steps[n][0].has(ts) if n in s.steps else False for n in need):
            return None
        parts = {n: pend.pop(n) for n in need}
        prm = self.params.get(key, params)
        if not pend:
            self.pending.pop(key, None)
            self.params.pop(key, None)
        return Step(sid, ts, prm, {n: v[0] for n, v in parts.items()},
                    {n: v[1] for n, v in parts.items() if v[1]})

    # --- control -----------------------------------------------------------------------------
    def sim_end(self, f) -> str:
        """Record a SIM_END: "done" when everything it announces has arrived, else "incomplete"."""
        sid = f.sim_id
        if sid in self.done:
            return "done"
        s = self.sims.setdefault(sid, _Sim())
        s.counts, s.ended = _counts(f), True
        self.failed.pop(sid, None)  # it failed, was restarted and finished
        return self._check_done(sid, s)

    def _check_done(self, sid: int, s: _Sim) -> str:
        if s.counts is not None:
            for name, (steps, pieces) in s.counts.items():
                got = s.steps.get(name)
                if steps and (got is None or got[0].n < steps or got[1] < steps * pieces):
                    self.incomplete.add(sid)
                    self.ended.add(sid)
                    return "incomplete"
        self.incomplete.discard(sid)
        self.done.add(sid)
        steps = _taken({n: v[0] for n, v in s.steps.items()}, s.only, self.fields)
        st = steps.steps()
        if st and not steps.neg and st[-1] - st[0] + 1 == len(st):
            self.done_range[sid] = (st[0], len(st))  # contiguous: three numbers
        else:
            self.done_bits[sid] = steps
        self.ended.add(sid)
        del self.sims[sid]
        for k in [k for k in self.pending if k[0] == sid]:  # pieces beyond what it announced
            self.pending.pop(k)
            self.params.pop(k, None)
        return "done"

    def sim_failed(self, f) -> bool:
        """Record a SIM_FAILED; False if the simulation had already completed (a late report)."""
        if f.sim_id in self.done:
            return False
        self.failed[f.sim_id] = f.name
        self.ended.add(f.sim_id)
        return True

    def missing(self, sid: int) -> dict[str, int]:
        """{field: steps still missing} of an ended simulation (for the incomplete report)."""
        s = self.sims.get(sid)
        if s is None or s.counts is None:
            return {}
        return {n: st - (s.steps[n][0].n if n in s.steps else 0) for n, (st, _) in s.counts.items()
                if n not in s.steps or s.steps[n][0].n < st}

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        import torch  # noqa: PLC0415
        steps = {sid: {n: [v[0], v[1]] for n, v in s.steps.items()} for sid, s in self.sims.items()}
        for (sid, ts), pend in self.pending.items():  # complete fields waiting for the others:
            for n, v in pend.items():                  # their data is not saved, so neither are
                if isinstance(v, tuple) and sid in steps:  # they (the step comes again)
                    b = steps[sid][n]
                    b[0] = b[0].copy()
                    b[0].clear(ts)
                    b[1] -= v[2]
        open_ = {str(sid): {"steps": {n: v[0].state() + [v[1]] for n, v in steps[sid].items()},
                            "only": s.only, "ended": s.ended,
                            "counts": None if s.counts is None else
                            {n: [int(a), int(b)] for n, (a, b) in s.counts.items()}}
                 for sid, s in self.sims.items()}
        rows = [(sid, *self.done_range.get(sid, (-1, -1))) for sid in sorted(self.done)]
        return {"done": torch.tensor(rows, dtype=torch.int64).reshape(-1, 3),
                "done_bits": {str(k): v.state() for k, v in self.done_bits.items()},
                "sims_failed": {str(k): v for k, v in self.failed.items()},
                "open": open_, "duplicates": self.duplicates, "ignored": self.ignored,
                "fields": None if self.fields is None else list(self.fields)}

    def load_state_dict(self, d: dict) -> None:
        rows = d["done"].tolist()
        self.done = set(r[0] for r in rows)
        self.done_range = {r[0]: (r[1], r[2]) for r in rows if r[2] >= 0}
        self.done_bits = {int(k): _Bits.from_state(v) for k, v in d["done_bits"].items()}
        self.failed = {int(k): v for k, v in d["sims_failed"].items()}
        self.sims, self.incomplete = {}, set()
        for sid, o in d["open"].items():
            s = _Sim(steps={n: [_Bits.from_state(v[:3]), int(v[3])] for n, v in o["steps"].items()},
                     only=o["only"], ended=bool(o["ended"]),
                     counts=None if o["counts"] is None else
                     {n: (int(a), int(b)) for n, (a, b) in o["counts"].items()})
            s.fast = s.only if self.fields is None else \
                (self.fields[0] if len(self.fields) == 1 else None)
            self.sims[int(sid)] = s
            if s.ended:
                self.incomplete.add(int(sid))
        self.ended = self.done | set(self.failed) | self.incomplete
        self.duplicates, self.ignored = int(d["duplicates"]), int(d["ignored"])
        self.pending, self.params = {}, {}


def steps_received(state: dict) -> list[tuple[int, int]]:
    """Every (simulation, step) an Assembler state counts complete (for tests and reports; this
    list grows with samples, the state itself does not)."""
    out = []
    for sid, lo, n in state["done"].tolist():
        if n >= 0:
            out += [(sid, lo + k) for k in range(n)]
    for sid, b in state["done_bits"].items():
        out += [(int(sid), k) for k in _Bits.from_state(b).steps()]
    for sid, o in state["open"].items():
        steps = _taken({n: _Bits.from_state(v[:3]) for n, v in o["steps"].items()}, o["only"],
                       state["fields"])
        out += [(int(sid), k) for k in steps.steps()]
    return sorted(out)


def _taken(bits: dict, only, fields) -> _Bits:
    """The steps handed to the adapter: complete in every needed field."""
    need = fields if fields is not None else ([only] if only is not None else list(bits))
    out = None
    for n in need:
        b = bits.get(n, _Bits())
        out = b if out is None else out.intersect(b)
    return out if out is not None else _Bits()
