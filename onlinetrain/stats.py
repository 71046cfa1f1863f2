"""Iterative statistics of a stream of frames, per field, per time step and per cell (docs/stats.md).

Frames are taken in any arrival order. Every DATA frame of a followed field updates the moments,
extrema, threshold exceedances (stats_moments) and quantiles (stats_quantiles) of its time step;
with `sobol`, frames are also gathered into pick-freeze groups (group = sim_id // R, role =
sim_id % R, R = p + 2 or 2p + 2) and a group enters the Martinez estimator (stats_sobol) of a time
step once all its members' frames of that step arrived. A group whose member failed for good
(SIM_FAILED without a later SIM_END) is counted in `groups_failed`; the steps it lacks never enter.

    st = Statistics(cfg.stats, steps_hint=cfg.solver.steps, report=print)
    for f in frames: st.update(f)     # also SIM_END / SIM_FAILED / STREAM_END frames
    st.save("out/stats.npz"); st.summary()
    ck["stats"] = st.state_dict()     # numpy arrays; to_tensors() for torch.save(weights_only)
    st.flush()                        # apply the staged frames (stats_stage); results, save and
                                      # state_dict do it themselves, as does reading a Step's mom

A frame that is a piece of a field (frame format v2: `global_shape` and `offset`, one piece per MPI
rank) is copied into its place in the whole field (onlinetrain.assembly.Piece); the field enters the
statistics once its last piece arrived, so they always see whole fields. Fields being assembled are
not part of the checkpoint (the simulation is re-run, as for the receiver's Assembler); a
SIM_FAILED drops its simulation's unfinished fields (the restart sends every piece again).

Memory: cells x steps x (7 + thresholds + ceil(thresholds / 8) + 2 quantile levels [+ 2(p+2) + 4p
with sobol]) x 8 bytes, plus the frames of groups in flight, the fields being assembled from
pieces and, for large fields without quantiles, up to stats_stage.STAGE_BYTES of frames staged
for block updates (small fields: up to 8 MiB of frames, plus one batch, staged to be updated over
time steps, stats_rows; without stats.steps their steps are allocated 16 at a time).
It is reported at a field's first frame, and refused (StatsMemoryError, before anything is
accumulated) when it exceeds the free memory (psutil).
"""
from __future__ import annotations

import logging

import numpy as np

from . import frame as fr
from .assembly import Piece
from .stats_io import field_results, save_npz
from .stats_moments import StepMoments
from .stats_quantiles import StepQuantiles
from .stats_rows import small
from .stats_sobol import StepSobol
from .stats_stage import STAGE_FRAMES, Stage
from .stats_state import (Field, Step, StatsError, StatsMemoryError, _fmt, free_memory,
                          load_state_dict, state_dict, to_tensors)

log = logging.getLogger(__name__)
__all__ = ["Statistics", "StatsError", "StatsMemoryError", "to_tensors"]


def stats_wanted(cfg) -> bool:
    """Whether `ot run` / `ot train` feed the statistics: the config sets a key of [stats]."""
    return any(k.startswith("stats.") for k in getattr(cfg, "given", ()))


class Statistics:
    """The statistics of every followed field; `update(frame)` for each frame received."""

    def __init__(self, cfg, steps_hint: int = 0, report=None, free=free_memory):
        self.cfg = cfg
        self.steps_hint = int(cfg.steps or steps_hint or 0)
        self.report = report or log.info
        self.free = free
        self.fields: dict[str, Field] = {}
        self.p = int(cfg.n_params)
        self.group_params: dict[int, dict[int, np.ndarray]] = {}
        self.groups_checked: set[int] = set()
        self.groups_rejected: dict[int, str] = {}
        self.groups_complete: dict[str, int] = {}
        self.sims_done: set[int] = set()
        self.sims_failed: dict[int, str] = {}
        self.counts = {"frames": 0, "accepted": 0, "duplicates": 0, "other_fields": 0,
                       "rejected": 0, "stream_ends": 0, "pieces": 0}
        self.pieces: dict[tuple[str, int, int], Piece] = {}  # (field, sim, step) being assembled
        self.reasons: dict[str, int] = {}
        self.memory_bytes = 0
        self.stage = Stage()  # frames staged for block updates (stats_stage)
        self.stage_counted = 0  # bytes of the stage's budget counted in memory_bytes

    # -- layout ----------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return 2 * self.p + 2 if self.cfg.second_order else self.p + 2

    def floats_per_cell(self, p: int) -> int:
        n = StepMoments.floats_per_cell(len(self.cfg.thresholds))
        n += StepQuantiles.floats_per_cell(len(self.cfg.quantiles))
        return n + (StepSobol.floats_per_cell(p) if self.cfg.sobol else 0)

    def _reject(self, reason: str, msg: str, *args):
        self.counts["rejected"] += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        log.warning(msg, *args)

    # -- updates ---------------------------------------------------------------------------------
    def update(self, f) -> bool:
        """Account for one frame; True when its values entered the statistics."""
        got = self._accept(f)
        if got is None:
            return False
        step, x = got
        step.add((x,))
        return True

    def update_many(self, frames) -> int:
        """Account for a batch of frames (e.g. one get_many). The frames of small fields are
        staged together and updated over time steps (stats_stage, stats_rows); the frames of one
        (field, time step) of a larger field go to its Step together (staged without quantiles: the
        moments' state is read and written once for all of them). Returns the frames accepted."""
        small: dict[int, tuple] = {}  # id(FieldRows) -> (steps, frames)
        blocks: dict[int, tuple] = {}  # id(Step) -> (step, frames)
        n = 0
        for f in frames:
            got = self._accept(f)
            if got is None:
                continue
            n += 1
            step, x = got
            if step.rows is not None:
                got = small.get(id(step.rows))
                if got is None:
                    got = small[id(step.rows)] = ([], [])
                got[0].append(step)
                got[1].append(x)
            else:
                blocks.setdefault(id(step), (step, []))[1].append(x)
        for steps, xs in small.values():
            self.stage.add_small(steps, xs)
        for step, xs in blocks.values():
            step.add(xs)
        return n

    def flush(self) -> None:
        """Apply the staged frames (stats_stage); every result and the state do it first."""
        self.stage.flush()

    def _accept(self, f):
        """Checks and accounting of one frame; (step, values) when they enter the statistics."""
        counts = self.counts
        counts["frames"] += 1
        if f.kind != fr.DATA:
            return self._control(f)
        name = f.name
        if self.cfg.fields and name not in self.cfg.fields:
            counts["other_fields"] += 1
            return None
        key = (int(f.sim_id), int(f.time_step))
        arr = f.array
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        fld = self.fields.get(name)
        if fld is not None and key in fld.seen:
            counts["duplicates"] += 1
            return None
        gshape = getattr(f, "global_shape", None)
        if gshape is not None and tuple(gshape) != arr.shape:  # a piece (one MPI rank's part)
            arr = self._join(f, key)
            if arr is None:
                return None
        if fld is None:
            fld = self._new_field(f, arr)
        if arr.shape != fld.shape:
            return self._reject("shape", "field %r: frame (sim %d, step %d) has shape %s, the "
                                "field's first frame had %s; frame left out", name, key[0], key[1],
                                arr.shape, fld.shape)
        in_group = self.cfg.sobol and self._check_member(f)
        x = arr.reshape(-1)
        step = fld.steps.get(key[1])
        if step is None:
            step = fld.new_step(key[1], self.cfg, self.stage)
            if self.steps_hint and len(fld.steps) == self.steps_hint + 1:
                log.warning("field %r: more time steps than the %d the memory figure assumed",
                            name, self.steps_hint)
        fld.seen.add(key)
        if in_group:
            self._sobol_member(fld, step, key, x)
        counts["accepted"] += 1
        return step, x

    def _control(self, f) -> None:
        """A frame that is not data: the stream's or a simulation's end, a failure."""
        if f.kind == fr.STREAM_END:
            self.counts["stream_ends"] += 1
        elif f.kind == fr.SIM_END:
            self.sims_done.add(f.sim_id)
            self.sims_failed.pop(f.sim_id, None)  # failed, restarted, finished
        elif f.kind == fr.SIM_FAILED:
            if f.sim_id not in self.sims_done:
                self.sims_failed[f.sim_id] = f.name
            for k in [k for k in self.pieces if k[1] == f.sim_id]:
                del self.pieces[k]  # a restarted simulation sends every piece again
        return None

    def _join(self, f, key):
        """The whole field once the last of its pieces arrived (onlinetrain.assembly.Piece), else
        None: the pieces are copied into a field of the global shape until it is complete."""
        pk = (f.name, *key)
        p = self.pieces.get(pk)
        try:
            if p is None:
                p = Piece.of(f)
            done = p.place(f)
        except fr.FrameError as e:
            return self._reject("piece", "field %r: %s; piece left out", f.name, e)
        if done is None:
            self.counts["duplicates"] += 1
            return None
        self.counts["pieces"] += 1
        if not done:
            self.pieces[pk] = p
            return None
        self.pieces.pop(pk, None)
        return p.array

    def _new_field(self, f, arr) -> Field:
        p = self.p
        if self.cfg.sobol and p == 0:
            p = self.p = len(f.params)
            if p == 0:
                raise StatsError(f"field {f.name!r}: stats.sobol is on but frames carry no "
                                 f"parameters; set stats.n_params", f.name)
        fld = Field(f.name, arr.shape, p, self.steps_hint)
        steps = self.steps_hint or 1
        need = fld.cells * steps * self.floats_per_cell(p) * 8
        staged = 0 if self.cfg.quantiles or small(fld.cells) else min(  # stats_stage: frames
            self.stage.nbytes - self.stage_counted, STAGE_FRAMES * steps * arr.nbytes)  # held
        free = self.free()
        per = "" if self.steps_hint else " per time step (steps unknown: set stats.steps)"
        self.report(f"statistics of field {f.name!r}: {fld.cells} cells x {steps} steps x "
                    f"{self.floats_per_cell(p)} values x 8 bytes = {_fmt(need)}{per}"
                    + (f", plus up to {_fmt(staged)} of frames staged for block updates"
                       if staged else "")
                    + (f", plus the frames of pick-freeze groups in flight ({self.rows} per group)"
                       if self.cfg.sobol else ""))
        need += staged
        if self.memory_bytes + need > free:
            raise StatsMemoryError(
                f"statistics of field {f.name!r} need {_fmt(self.memory_bytes + need)} "
                f"({need} bytes for this field), only {_fmt(free)} are free: follow fewer fields "
                f"(stats.fields), thresholds or quantile levels, or run on a bigger node",
                self.memory_bytes + need, free)
        self.memory_bytes += need
        self.stage_counted += staged
        self.fields[f.name] = fld
        return fld

    def _reject_group(self, g: int, why: str) -> bool:
        self.groups_rejected[g] = why
        self.group_params.pop(g, None)
        self._drop_group(g)
        log.warning("pick-freeze group %d left out of the Sobol' indices (its frames still count "
                    "in the moments): %s", g, why)
        return False

    def _check_member(self, f) -> bool:
        """Whether f may join its pick-freeze group: its role (sim_id % R) is consistent with the
        parameters of the group's other members (E_k = A with column k from B)."""
        sid = int(f.sim_id)
        g, role = divmod(sid, self.rows)
        if g in self.groups_rejected or role >= self.p + 2:
            return False
        if g in self.groups_checked:
            return True
        params = np.asarray(f.params, np.float64)
        if len(params) != self.p:
            return self._reject_group(g, f"simulation {sid} has {len(params)} parameters, not "
                                         f"{self.p} (stats.n_params)")
        members = self.group_params.setdefault(g, {})
        members.setdefault(role, params.copy())
        if len(members) < self.p + 2:
            return True
        a, b = members.get(0), members.get(1)
        for r in range(2, self.p + 2):
            e = members.get(r)
            k = r - 2
            want = a.copy()
            want[k] = b[k]
            if not np.array_equal(e, want):
                return self._reject_group(g, (
                    f"simulation {g * self.rows + r} (role E{k + 1}) has parameters {e.tolist()}, "
                    f"expected A with column {k + 1} taken from B: {want.tolist()}; sample with "
                    f"`ot sample --method pick-freeze` (and stats.second_order as --second-order)"))
        self.groups_checked.add(g)
        del self.group_params[g]
        return True

    def _drop_group(self, g: int):
        for fld in self.fields.values():
            for k in [k for k in fld.pending if k[0] == g]:
                del fld.pending[k]

    def _sobol_member(self, fld: Field, step: Step, key, x):
        g, role = divmod(key[0], self.rows)
        members = fld.pending.setdefault((g, key[1]), {})
        members[role] = np.array(x, np.float64)
        if len(members) == fld.p + 2 and g in self.groups_checked:
            ys = np.stack([members[r] for r in range(fld.p + 2)])
            del fld.pending[(g, key[1])]
            step.sob.update(ys)

    # -- results ---------------------------------------------------------------------------------
    def group_counts(self) -> dict:
        """Complete / failed / incomplete pick-freeze groups (over every field and step)."""
        r = self.rows
        failed = {sid // r for sid in self.sims_failed}
        pending = {g for fld in self.fields.values() for g, _ in fld.pending}
        complete = max((s.sob.n for fld in self.fields.values() for s in fld.steps.values()
                        if s.sob is not None), default=0)
        return {"complete": complete, "failed": len(failed), "rejected": len(self.groups_rejected),
                "incomplete": len(pending - failed - set(self.groups_rejected)),
                "expected": self.cfg.groups}

    def results(self) -> dict:
        """The arrays of stats.npz (docs/stats.md), keyed FIELD/NAME."""
        self.flush()
        out = {}
        for name, fld in self.fields.items():
            out.update(field_results(name, fld, self.cfg))
        return out

    def save(self, path) -> None:
        self.flush()
        save_npz(path, self)

    def state_dict(self) -> dict:
        return state_dict(self)

    def load_state_dict(self, d: dict) -> None:
        load_state_dict(self, d)
