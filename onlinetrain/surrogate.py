"""The heat2d surrogate: default frame adapter and model builder (the documented example).

A user adapts onlinetrain to another solver by naming two functions in the config, as the talk
does with Melissa's server subclass:

    [model]
    adapter = "mypkg.surrogate:frame_to_xy"   # fn(frame, cfg) -> (x, y) float32 1-D arrays
    builder = "mypkg.surrogate:build_model"   # fn(in_dim, out_dim, cfg) -> torch.nn.Module

heat2d's adapter: x = (5 temperatures scaled to [-1, 1], t / t_end), y = (T - 300 K) / 100 K, so
the MSE reported by the trainer is in units of (100 K)^2 (multiply by 1e4 for K^2).
"""
from __future__ import annotations

import numpy as np

T_CENTER, T_HALF_RANGE, T_SCALE = 300.0, 200.0, 100.0


def heat2d_xy(frame, cfg) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(frame.params, dtype=np.float32)
    if p.shape != (5,):
        raise ValueError(f"heat2d adapter expects 5 parameters, frame of simulation {frame.sim_id} "
                         f"has {p.size}: set model.adapter for your solver")
    x = np.empty(6, np.float32)
    x[:5] = (p - T_CENTER) / T_HALF_RANGE
    x[5] = frame.time_step / cfg.solver.steps
    y = (np.asarray(frame.array, dtype=np.float32).reshape(-1) - T_CENTER) / T_SCALE
    return x, y


def build_mlp(in_dim: int, out_dim: int, cfg):
    """The seed's MLP: in -> hidden (ReLU) x layers -> out."""
    import torch.nn as nn  # noqa: PLC0415

    dims = [in_dim] + [cfg.model.hidden] * cfg.model.layers
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*mods)
