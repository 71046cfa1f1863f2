"""The state of the statistics: errors, per-field and per-step containers, checkpoint section.

    d = state_dict(st)            # plain ints / strings / dicts and numpy arrays
    torch.save(to_tensors(d), f)  # torch.load(f, weights_only=True) reads it back
    load_state_dict(st, d)        # numpy arrays or tensors; continues exactly where st was
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import OTError
from .stats_moments import StepMoments
from .stats_quantiles import StepQuantiles
from .stats_rows import FieldRows, small
from .stats_sobol import StepSobol

STATE_VERSION = 1
ROWS_MORE = 16  # steps per FieldRows without a steps_hint, or past it
ROWS_BYTES = 64 << 20  # most bytes of one FieldRows (moments and quantiles of its steps)


class StatsError(OTError, ValueError):
    """Bad statistics input or configuration; `value` is the offending value."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


class StatsMemoryError(StatsError, MemoryError):
    """The statistics would need `need` bytes, more than the `free` bytes available."""

    def __init__(self, message: str, need: int, free: int):
        super().__init__(message, need)
        self.need, self.free = need, free


def free_memory() -> int:
    import psutil  # noqa: PLC0415
    return int(psutil.virtual_memory().available)


def _fmt(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024


class Step:
    """The statistics of one (field, time step). `add(xs)` takes frames of the step; with a
    `stage` (stats_stage) they may be held and applied later in blocks: reading `mom` or `q`
    applies what is staged first. Large fields without quantiles stage per step (the moments
    updated STAGE_FRAMES at a time); with `rows` (stats_rows.FieldRows, small fields) the moments
    and quantiles are row `row` of the field's arrays and the frames are staged with those of the
    field's other steps, then updated over time steps. `apply(xs)` is the step's own update, now."""
    __slots__ = ("_mom", "_q", "sob", "stage", "rows", "row")

    def __init__(self, cells, cfg, p, stage=None, rows=None, row=0):
        self.rows, self.row = rows, row
        self._mom = StepMoments(cells, cfg.thresholds, rows and rows.mom, row)
        self._q = StepQuantiles(cells, cfg.quantiles, rows and rows.q, row) \
            if cfg.quantiles else None
        self.sob = StepSobol(cells, p) if cfg.sobol else None
        self.stage = stage if self._q is None or rows is not None else None

    def _applied(self) -> None:
        st = self.stage
        if st is None:
            return
        if self.rows is not None:
            if st.small:
                st.flush_small()
        elif self._mom in st:
            st.flush(self._mom)

    @property
    def mom(self) -> StepMoments:
        self._applied()
        return self._mom

    @property
    def q(self) -> StepQuantiles | None:
        self._applied()
        return self._q

    def add(self, xs) -> None:
        """Add frames (1-D arrays, views allowed: what is kept is copied)."""
        if self.stage is None:
            self.apply(xs)
        elif self.rows is not None:
            self.stage.add_small([self] * len(xs), xs)
        else:
            self.stage.add(self._mom, xs)

    def apply(self, xs) -> None:
        """Add frames now. With quantiles, frame by frame: each Robbins-Monro step uses the
        moments of the frames up to its own."""
        if self._q is None:
            self._mom.update_block(xs)
        else:
            for x in xs:
                self._mom.update(x)
                self._q.update(x, self._mom)


class Field:
    """A followed field: its time steps' statistics, the frames seen, Sobol' groups in flight.
    A field of 1 to stats_rows.ROWS_CELLS cells keeps its steps' moments and quantiles in
    FieldRows (rows_for: the steps_hint steps, then ROWS_MORE at a time), updated over time
    steps."""

    def __init__(self, name: str, shape: tuple, p: int, steps_hint: int = 0):
        self.name, self.shape, self.p = name, tuple(int(s) for s in shape), p
        self.cells = int(np.prod(self.shape, dtype=np.int64))
        self.steps: dict[int, Step] = {}
        self.pending: dict[tuple[int, int], dict[int, np.ndarray]] = {}  # (group, step) -> members
        self.seen: set[tuple[int, int]] = set()
        self.steps_hint = int(steps_hint)
        self.rows: list[FieldRows] = []  # small fields only

    def rows_for(self, cfg) -> int:
        """Steps of the next FieldRows (allocated at once): the first holds the steps_hint steps
        the memory figure counted; without a hint, and past it, ROWS_MORE steps at a time; at
        most ROWS_BYTES a FieldRows."""
        per_step = self.cells * 8 * (StepMoments.floats_per_cell(len(cfg.thresholds))
                                     + StepQuantiles.floats_per_cell(len(cfg.quantiles)))
        want = self.steps_hint if not self.rows and self.steps_hint else ROWS_MORE
        return max(1, min(want, ROWS_BYTES // per_step))

    def new_step(self, t: int, cfg, stage=None) -> Step:
        """The statistics of time step t, created empty."""
        rows = row = None
        if small(self.cells):
            row = self.rows[-1].take() if self.rows else None
            if row is None:
                self.rows.append(FieldRows(self.rows_for(cfg), self.cells, cfg.thresholds,
                                           cfg.quantiles))
                row = self.rows[-1].take()
            rows = self.rows[-1]
        s = self.steps[t] = Step(self.cells, cfg, self.p, stage, rows, row or 0)
        return s


# -- checkpoint section ----------------------------------------------------------------------------
def state_dict(st) -> dict:
    """Everything needed to continue exactly: plain ints/floats/strings, lists and numpy arrays."""
    st.stage.flush()
    fields = {}
    for name, fld in st.fields.items():
        seen = np.array(sorted(fld.seen), np.int64).reshape(-1, 2)
        steps = {}
        for t, s in fld.steps.items():
            d = {"mom": s.mom.state_dict()}
            if s.q is not None:
                d["q"] = s.q.state_dict()
            if s.sob is not None:
                d["sob"] = s.sob.state_dict()
            steps[str(t)] = d
        pending = {f"{g}:{t}": {str(r): a.copy() for r, a in m.items()}
                   for (g, t), m in fld.pending.items()}
        fields[name] = {"shape": list(fld.shape), "p": fld.p, "steps": steps, "seen": seen,
                        "pending": pending}
    return {"version": STATE_VERSION, "p": st.p, "fields": fields, "counts": dict(st.counts),
            "reasons": dict(st.reasons), "memory_bytes": int(st.memory_bytes),
            "group_params": {str(g): {str(r): a.copy() for r, a in m.items()}
                             for g, m in st.group_params.items()},
            "groups_checked": np.array(sorted(st.groups_checked), np.int64),
            "groups_rejected": {str(g): w for g, w in st.groups_rejected.items()},
            "sims_done": np.array(sorted(st.sims_done), np.int64),
            "sims_failed": {str(s): w for s, w in st.sims_failed.items()},
            "config": dataclasses.asdict(st.cfg)}


def _np(a, dtype=None):
    if hasattr(a, "detach"):  # a torch tensor from the checkpoint
        a = a.detach().cpu().numpy()
    return np.array(a, dtype)


def load_state_dict(st, d: dict) -> None:
    if int(d.get("version", -1)) != STATE_VERSION:
        raise StatsError(f"statistics state version {d.get('version')!r} is not "
                         f"{STATE_VERSION}: it was written by another onlinetrain", d.get("version"))
    cfg = dataclasses.asdict(st.cfg)
    for k in ("thresholds", "quantiles", "sobol", "second_order"):
        if list(np.atleast_1d(cfg[k])) != list(np.atleast_1d(d["config"][k])):
            raise StatsError(f"stats.{k} = {cfg[k]!r} differs from the checkpoint's "
                             f"{d['config'][k]!r}: resume with the same [stats] section",
                             cfg[k])
    st.p = int(d["p"])
    st.stage.drop()
    st.fields = {}
    for name, fd in d["fields"].items():
        fld = Field(name, tuple(int(s) for s in fd["shape"]), int(fd["p"]), st.steps_hint)
        for t, sd in fd["steps"].items():
            s = fld.new_step(int(t), st.cfg, st.stage)
            s.mom.load_state_dict({k: _np(v) for k, v in sd["mom"].items()})
            if s.q is not None:
                s.q.load_state_dict({k: _np(v) for k, v in sd["q"].items()})
            if s.sob is not None:
                s.sob.load_state_dict({k: _np(v) for k, v in sd["sob"].items()})
        fld.seen = {(int(a), int(b)) for a, b in _np(fd["seen"], np.int64).reshape(-1, 2)}
        for key, m in fd["pending"].items():
            g, t = key.split(":")
            fld.pending[(int(g), int(t))] = {int(r): _np(a, np.float64) for r, a in m.items()}
        st.fields[name] = fld
    st.counts.update({k: int(v) for k, v in d["counts"].items()})
    st.pieces = {}  # fields being assembled are not in the state (the simulation is re-run)
    st.reasons = {k: int(v) for k, v in d["reasons"].items()}
    st.memory_bytes = int(d["memory_bytes"])
    st.group_params = {int(g): {int(r): _np(a, np.float64) for r, a in m.items()}
                       for g, m in d["group_params"].items()}
    st.groups_checked = {int(g) for g in _np(d["groups_checked"], np.int64)}
    st.groups_rejected = {int(g): str(w) for g, w in d["groups_rejected"].items()}
    st.sims_done = {int(s) for s in _np(d["sims_done"], np.int64)}
    st.sims_failed = {int(s): str(w) for s, w in d["sims_failed"].items()}


def to_tensors(d):
    """A copy of a state dict with every numpy array as a torch tensor (torch.save-able, and
    readable with torch.load(weights_only=True)); load_state_dict takes either form."""
    import torch  # noqa: PLC0415
    if isinstance(d, dict):
        return {k: to_tensors(v) for k, v in d.items()}
    if isinstance(d, list):
        return [to_tensors(v) for v in d]
    if isinstance(d, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(d))
    return d


