"""Rollout validation of autoregressive surrogates: held-out simulations rolled out whole.

The held-out simulations are kept whole (every step the receiver took from them). At each
validation the model starts from each trajectory's first step and feeds its own predictions back
(`step(p, u) -> next u`, see onlinetrain.ar.stepper) over the full trajectory. Reported:
- `one_step_mse`: teacher-forced, the mean squared error of one step from every true state;
- `mean_nRMSE`: APEBench's metric, the normalized RMSE ||pred_j - ref_j|| / ||ref_j|| of rollout
  step j, averaged over the steps and the simulations;
- `rollout_horizon`: the first rollout step at which the nRMSE (averaged over the simulations)
  exceeds 1, i.e. the prediction is further from the truth than zero is; None if it never does;
- `rollout_steps`, `rollout_sims`: the length of the longest rollout and how many were rolled out.

    trajs = trajectories(rx.val)            # {(sim, step): (p, u)} -> [Trajectory]
    r = evaluate(stepper(model, "next"), trajs)
    r["mean_nRMSE"], r["rollout_horizon"]

Only a simulation's consecutive steps from its first one count (a gap ends its trajectory).
Trajectories of equal length are rolled out together as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trajectory:
    sim_id: int
    params: np.ndarray  # (P,)
    states: np.ndarray  # (T, S): consecutive steps from the first one received
    first_step: int


def trajectories(val: dict, min_steps: int = 2) -> list[Trajectory]:
    """Group {(sim, step): (p, u)} by simulation, in step order, cut at the first gap."""
    by_sim: dict[int, dict[int, tuple]] = {}
    for (sim, step), v in val.items():
        by_sim.setdefault(int(sim), {})[int(step)] = v
    out = []
    for sim in sorted(by_sim):
        steps = by_sim[sim]
        first = min(steps)
        run = []
        t = first
        while t in steps:
            run.append(t)
            t += 1
        if len(run) < min_steps:
            continue
        p = np.asarray(steps[first][0], np.float32).reshape(-1)
        u = np.stack([np.asarray(steps[s][1], np.float32).reshape(-1) for s in run])
        out.append(Trajectory(sim, p, u, first))
    return out


def nrmse(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row: ||pred - ref||_2 / ||ref||_2 (rows of zeros in ref: the error's own norm)."""
    err = np.sqrt(((pred.astype(np.float64) - ref) ** 2).sum(axis=-1))
    norm = np.sqrt((ref.astype(np.float64) ** 2).sum(axis=-1))
    return np.where(norm > 0, err / np.where(norm > 0, norm, 1.0), err)


def evaluate(step, trajs: list[Trajectory], batch: int = 1024) -> dict:
    """One-step MSE, mean nRMSE over full rollouts, and the horizon (see the module docstring)."""
    if not trajs:
        return {"one_step_mse": None, "mean_nRMSE": None, "rollout_horizon": None,
                "rollout_steps": 0, "rollout_sims": 0}
    # teacher-forced one step from every true state
    p_all = np.concatenate([np.repeat(t.params[None], len(t.states) - 1, 0) for t in trajs])
    u_all = np.concatenate([t.states[:-1] for t in trajs])
    v_all = np.concatenate([t.states[1:] for t in trajs])
    se = 0.0
    for i in range(0, len(u_all), batch):
        pred = step(p_all[i:i + batch], u_all[i:i + batch])
        se += float(((pred.astype(np.float64) - v_all[i:i + batch]) ** 2).mean(axis=1).sum())
    one_step = se / len(u_all)
    # free rollouts, equal lengths batched together
    longest = max(len(t.states) for t in trajs) - 1
    curve_sum = np.zeros(longest)
    curve_n = np.zeros(longest)
    per_sim = []
    for length in sorted({len(t.states) for t in trajs}):
        group = [t for t in trajs if len(t.states) == length]
        for i in range(0, len(group), batch):
            g = group[i:i + batch]
            p = np.stack([t.params for t in g])
            ref = np.stack([t.states for t in g])  # (G, T, S)
            u = ref[:, 0]
            errs = np.empty((len(g), length - 1))
            for j in range(1, length):
                u = np.asarray(step(p, u), np.float32)
                errs[:, j - 1] = nrmse(u, ref[:, j])
            curve_sum[:length - 1] += errs.sum(axis=0)
            curve_n[:length - 1] += len(g)
            per_sim += list(errs.mean(axis=1))
    curve = curve_sum / curve_n
    above = np.nonzero(~(curve <= 1.0))[0]  # NaN (a blown-up rollout) counts as crossed
    mean = float(np.mean(per_sim))
    return {"one_step_mse": one_step, "mean_nRMSE": mean if np.isfinite(mean) else float("inf"),
            "rollout_horizon": int(above[0]) + 1 if len(above) else None,
            "rollout_steps": int(longest), "rollout_sims": len(trajs)}
