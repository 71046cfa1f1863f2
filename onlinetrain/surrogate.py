"""The heat2d surrogate: default frame adapter and model builder (the documented example).

A user adapts onlinetrain to another solver by naming two functions in the config, as the talk
does with Melissa's server subclass:

    [model]
    adapter = "mypkg.surrogate:step_to_xy"    # fn(step, cfg) -> (x, y) float32 1-D arrays
    builder = "mypkg.surrogate:build_model"   # fn(in_dim, out_dim, cfg) -> torch.nn.Module

An adapter takes a `Step` (onlinetrain/step.py, docs/step.md) when marked with `@step_adapter`,
which may also give a vectorised form (as heat2d's does); an unmarked fn(frame, cfg) written for
one field per step keeps working (it gets the step as a whole-field frame).
An adapter may carry `field_shape(cfg) -> tuple` (the shape of y before flattening): `ot report`
then draws held-out fields as images instead of flat profiles.

heat2d's adapter: x = (5 temperatures scaled to [-1, 1], t / t_end), y = (T - 300 K) / 100 K, so
the MSE reported by the trainer is in units of (100 K)^2 (multiply by 1e4 for K^2).
"""
from __future__ import annotations

import numpy as np

from .step import step_adapter

T_CENTER, T_HALF_RANGE, T_SCALE = 300.0, 200.0, 100.0


def _field(step) -> np.ndarray:
    """The step's one field (a format-1 frame's array also works, for callers of the old form)."""
    fields = getattr(step, "fields", None)
    if fields is None:
        return np.asarray(step.array)
    if len(fields) != 1:
        raise ValueError(f"heat2d adapter takes one field, step {step.time_step} of simulation "
                         f"{step.sim_id} has {sorted(fields)}")
    return next(iter(fields.values()))


def _bad_params(sim_id, n):
    return ValueError(f"heat2d adapter expects 5 parameters, simulation {sim_id} has {n}: set "
                      f"model.adapter for your solver")


def heat2d_many(steps, cfg) -> tuple[np.ndarray, np.ndarray]:
    """heat2d_xy for a list of steps at once: (X (n, 6), Y (n, cells)); one numpy pass per batch
    (a step that does not fit raises, and the receiver then adapts that batch one step at a time)."""
    n = len(steps)
    p = np.concatenate([s.params for s in steps])
    if p.size != 5 * n:
        s = next(s for s in steps if np.size(s.params) != 5)
        raise _bad_params(s.sim_id, np.size(s.params))
    x = np.empty((n, 6), np.float32)
    x[:, :5] = (p.reshape(n, 5) - T_CENTER) / T_HALF_RANGE
    x[:, 5] = np.fromiter((s.time_step for s in steps), np.float64, n) / cfg.solver.steps
    fields = [s.fields for s in steps]
    if any(len(f) != 1 for f in fields):
        raise ValueError("heat2d adapter takes one field per step")
    arrs = [a for f in fields for a in f.values()]
    shape = arrs[0].shape
    if any(a.shape != shape for a in arrs):
        raise ValueError(f"heat2d fields of different shapes in one batch ({shape}, ...)")
    y = np.concatenate(arrs, axis=0).reshape(n, -1).astype(np.float32, copy=False)  # a new array
    y -= T_CENTER
    y /= T_SCALE
    return x, y


@step_adapter(batch=heat2d_many)
def heat2d_xy(step, cfg) -> tuple[np.ndarray, np.ndarray]:
    """One step (or format-1 frame) -> (x, y); see the module docstring."""
    p = np.asarray(step.params, dtype=np.float32)
    if p.shape != (5,):
        raise _bad_params(step.sim_id, p.size)
    x = np.empty(6, np.float32)
    x[:5] = (p - T_CENTER) / T_HALF_RANGE
    x[5] = step.time_step / cfg.solver.steps
    y = (np.asarray(_field(step), dtype=np.float32).reshape(-1) - T_CENTER) / T_SCALE
    return x, y


heat2d_xy.field_shape = lambda cfg: (cfg.solver.n, cfg.solver.n)  # y is the n x n field, flat


def build_mlp(in_dim: int, out_dim: int, cfg):
    """The seed's MLP: in -> hidden (ReLU) x layers -> out."""
    import torch.nn as nn  # noqa: PLC0415

    dims = [in_dim] + [cfg.model.hidden] * cfg.model.layers
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*mods)
