"""Melissa's message shape for adapters (`model.adapter_message = "melissa"`).

A Melissa deep-learning server turns each time step into a sample with
`process_simulation_data(msg, config) -> (x, y)`, reading `msg.simulation_id`, `msg.time_step`,
`msg.parameters` (a list of floats) and `msg.data[field]` (the whole field, 1-D: the ranks' vectors
joined in rank order). With this switch the receiver hands the adapter such a message, so a
Melissa server's method ports by changing at most its signature line (docs/from-melissa.md):

    [model]
    adapter = "heat_server:process_simulation_data"
    adapter_message = "melissa"
    fields = ["temperature"]          # Melissa's study_options.field_names: each message has them

    def process_simulation_data(msg, config):              # or (self, msg, config_dict)
        x = np.array(msg.parameters + [msg.time_step], dtype=np.float32)
        return x, msg.data["temperature"].astype(np.float32)

A function whose first parameter is named `self` gets a `MelissaStudy` view of the study as
`self` (`self.nb_parameters`, `self.nb_time_steps`, `self.field_names`, `self.config_dict`), the
attributes a Melissa server method reads. (x, y) may be numpy arrays, lists or torch tensors.

    one, fields = melissa_adapter(fn, cfg)     # what onlinetrain.step.resolve_adapter uses
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from .errors import OTError


class MelissaMessageError(OTError, ValueError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass(slots=True)
class SimulationData:
    """One time step of one simulation, every field of `model.fields` complete. `data[field]` is
    a 1-D float array valid during the adapter call only (copy what you keep); `metadata[field]`
    the JSON text the field's pieces carried (melissa_send_with_metadata), if any."""
    simulation_id: int
    time_step: int
    data: dict
    parameters: list
    metadata: dict = field(default_factory=dict)


class MelissaStudy:
    """`self` of an adapter written as a Melissa server method: the study's sizes."""

    def __init__(self, cfg):
        self.nb_parameters = len(cfg.sampling.bounds)
        self.nb_time_steps = cfg.solver.steps
        self.field_names = list(cfg.model.fields)
        self.config_dict = cfg.to_dict()

    def __repr__(self):
        return (f"MelissaStudy(nb_parameters={self.nb_parameters}, "
                f"nb_time_steps={self.nb_time_steps}, field_names={self.field_names})")


def to_message(step) -> SimulationData:
    """A Step (onlinetrain.step) as Melissa's SimulationData."""
    meta = {k: v.decode("utf-8", "replace") for k, v in step.meta.items()}
    return SimulationData(int(step.sim_id), int(step.time_step),
                          {k: np.ravel(v) for k, v in step.fields.items()},
                          [float(p) for p in step.params], meta)


def _array(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor (Melissa servers return tensors)
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float32)


def melissa_adapter(fn, cfg):
    """(one, fields): `one(step, cfg) -> (x, y)` calling `fn` with a SimulationData, and the
    field names each step must have (None: the simulation's one field)."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    name = getattr(fn, "__qualname__", repr(fn))
    method = bool(params) and params[0].name == "self"
    if len(params) - method < 2:
        raise MelissaMessageError(
            f"model.adapter {name} takes {len(params)} positional argument(s): with "
            f"model.adapter_message = \"melissa\" it must be process_simulation_data(msg, config) "
            f"or (self, msg, config)", name)
    study = MelissaStudy(cfg) if method else None

    def one(step, c):
        msg = to_message(step)
        x, y = fn(study, msg, c) if method else fn(msg, c)
        return _array(x), _array(y)
    one.__name__ = getattr(fn, "__name__", "adapter")
    return one, (tuple(cfg.model.fields) or None)
