"""`Step`: what an adapter receives, one time step of one simulation with all its fields assembled.

The receiver (onlinetrain/receiver.py) assembles the pieces of each (simulation, step, field) that
frames bring; once a step's expected fields are complete it hands the adapter one `Step`. The
contract is documented in docs/step.md.

    @step_adapter(fields=("T", "U"))            # the fields this adapter needs (None: any one field)
    def my_xy(step, cfg):                       # step.fields["T"]: the whole field, global shape
        return np.r_[step.params, step.time_step], np.r_[step.fields["T"].ravel(), ...]

    def old_xy(frame, cfg): ...                 # an adapter of a frame (format-1 signature) keeps
                                                #   working: it gets step.as_frame()
    one, many, fields = resolve_adapter(fn, cfg)  # how the receiver calls either kind
                                                #   (cfg.model.adapter_message = "melissa": fn
                                                #   gets Melissa's message, melissa_message.py)

An adapter may add a vectorised form, `many(steps, cfg) -> (X, Y)` with one row per step, given
through `step_adapter(batch=...)`: the receiver calls it once per batch of steps it took from the
channel, which removes the per-sample Python cost of small frames (docs/receiver.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import frame as fr
from .errors import OTError
from .melissa_message import melissa_adapter


class StepError(OTError, ValueError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass(slots=True)
class Step:
    """One assembled time step. `fields` maps each field name to its whole (global-shape) array;
    `meta` maps a field name to the metadata bytes its frames carried (only fields that had some)."""
    sim_id: int
    time_step: int
    params: np.ndarray
    fields: dict[str, np.ndarray]
    meta: dict[str, bytes] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.sim_id, self.time_step)

    def as_frame(self) -> fr.Frame:
        """The step as a whole-field frame, for an adapter written for a single field."""
        if len(self.fields) != 1:
            raise StepError(f"step {self.time_step} of simulation {self.sim_id} has fields "
                            f"{sorted(self.fields)}; an adapter of one frame takes one field: "
                            f"write a step adapter (onlinetrain.step.step_adapter)",
                            sorted(self.fields))
        (name, arr), = self.fields.items()
        return fr.Frame(self.sim_id, self.time_step, self.params, name, arr)


def step_adapter(fn: Callable | None = None, *, fields=None, batch: Callable | None = None):
    """Mark `fn(step, cfg) -> (x, y)` as an adapter of a `Step`. `fields`: the field names a step
    must have before it is handed over (None: one field, whatever its name); `batch`: the
    vectorised form, `batch(steps, cfg) -> (X, Y)` with one row per step."""
    if fields is not None:
        fields = tuple(fields)
        if not fields or not all(isinstance(n, str) and n for n in fields):
            raise StepError(f"step_adapter fields {fields!r} must be non-empty field names",
                            fields)

    def mark(f):
        f.takes_step = True
        f.fields = fields
        f.batch = batch
        return f
    return mark if fn is None else mark(fn)


def resolve_adapter(fn: Callable, cfg=None):
    """(one, many, fields): `one(step, cfg)` for any adapter (a frame adapter is wrapped), `many`
    the vectorised form or None, `fields` the required field names or None (one field). With
    `cfg.model.adapter_message == "melissa"`, `fn` is a Melissa process_simulation_data."""
    model = getattr(cfg, "model", None)
    if getattr(model, "adapter_message", "onlinetrain") == "melissa":
        one, fields = melissa_adapter(fn, cfg)
        return one, None, fields
    if getattr(fn, "takes_step", False):
        return fn, getattr(fn, "batch", None), getattr(fn, "fields", None)

    def one(step, cfg):
        return fn(step.as_frame(), cfg)
    one.__name__ = getattr(fn, "__name__", "adapter")
    return one, None, None
