"""Online autoregressive training (Reservoir) against Offline (all pairs, shuffled) on ks1d, judged
by rollout: APEBench's mean_nRMSE over whole held-out trajectories, at equal gradient steps.

    PYTHONPATH=$PWD flock /tmp/ot-bench.lock python bench/rollout.py [--quick]

Data: ks1d simulations (n=32, L=22, dt=0.25, one frame per step), three random sine waves each;
training and held-out simulations drawn with different seeds. Both arms use the real buffers
(onlinetrain.pairs.PairBuffer over reservoir.Reservoir / reservoir.Offline) and the trainer's own
loss and rollout (onlinetrain.ar, onlinetrain.rollout), the same model initialisation per seed, the
same number of gradient steps and the same batch size.
- online: simulations arrive K at a time, their steps interleaved at random (a live ensemble);
  the trainer takes one batch per batch_size arrivals (trainer speed = simulation speed) once the
  watermark is reached, and after the stream ends trains on from the reservoir up to the budget;
- offline: the whole data set first, then shuffled epochs over every pair up to the budget.
Per seed, ratio = online mean_nRMSE / offline mean_nRMSE (paired: same seed, same init). A table
for people, then the LAST line is JSON: the median and geometric mean of the paired ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from onlinetrain import ar, rollout  # noqa: E402
from onlinetrain.config import Config  # noqa: E402
from onlinetrain.models import build_conv1d  # noqa: E402
from onlinetrain.pairs import PairBuffer  # noqa: E402
from onlinetrain.reservoir import make_buffer  # noqa: E402
from solvers import ks1d  # noqa: E402

N, LENGTH, DT = 32, 22.0, 0.25


class _Frame:
    def __init__(self, sim, step, params, u):
        self.sim_id, self.time_step, self.params, self.array = sim, step, params, u


def generate(n_sims: int, steps: int, seed: int, first_id: int = 0) -> dict:
    """{(sim, step): (p, u)} exactly as the ks1d_ar adapter makes them from frames."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_sims):
        p = np.concatenate([rng.uniform(-1, 1, 3), rng.uniform(0, 2 * np.pi, 3)])
        for k, u in ks1d.solve(p, n=N, steps=steps, length=LENGTH, dt=DT):
            out[(first_id + i, k)] = ar.ks1d_ar(_Frame(first_id + i, k, p, u.astype(np.float32)),
                                                None)
    return out


def arrival_order(data: dict, k: int, seed: int) -> list:
    """K simulations at a time, their steps interleaved at random; a finished one is replaced."""
    rng = np.random.default_rng(seed)
    sims = sorted({s for s, _ in data})
    steps = {s: sorted(t for ss, t in data if ss == s) for s in sims}
    pending, running, order = list(sims), {}, []
    while pending or running:
        while pending and len(running) < k:
            s = pending.pop(0)
            running[s] = list(steps[s])
        s = list(running)[int(rng.integers(len(running)))]
        order.append((s, running[s].pop(0)))
        if not running[s]:
            del running[s]
    return order


def train_arm(kind: str, data: dict, order: list, val: list, cfg, seed: int, budget: int) -> dict:
    torch.manual_seed(seed)
    inner = (make_buffer("reservoir", cfg.buffer.capacity, cfg.buffer.watermark, seed)
             if kind == "reservoir" else
             make_buffer("offline", len(data), seed=seed, epochs=10 ** 6))
    mode = ar.Autoregressive(cfg, ar.ks1d_ar)
    buf = mode.wrap(inner)
    mode.adapter.shape = (N,)
    model = mode.build(build_conv1d, 6 + N, N)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.train.lr_milestones, cfg.train.lr_gamma)
    bs = cfg.train.batch_size
    steps = 0

    def step():
        nonlocal steps
        b = buf.get_batch(bs, timeout=0)
        if b is None:
            return False
        loss = mode.sse(model, torch.from_numpy(b.x), torch.from_numpy(b.y)) / len(b.x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
        return True

    t0 = time.perf_counter()
    for i, key in enumerate(order):
        buf.put(*data[key], key=key)
        if kind == "reservoir" and (i + 1) % bs == 0 and steps < budget:
            step()  # one batch per batch_size arrivals, once the watermark is reached
    trained_during_stream = steps
    buf.end_stream()
    while steps < budget:
        if not step():
            raise RuntimeError(f"{kind}: buffer exhausted after {steps} steps")
    r = rollout.evaluate(ar.stepper(model, cfg.model.target, ar.ks1d_ar.next_input), val)
    return {**r, "steps": steps, "during_stream": trained_during_stream,
            "windows": buf.windows, "wall_s": time.perf_counter() - t0,
            "evicted_unseen": buf.stats().get("evicted_unseen", 0)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None, help="gradient steps (smoke tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n_train, n_val, steps = (24, 4, 60) if args.quick else (48, 8, 100)
    seeds = args.seeds or (5 if args.quick else 8)
    budget = args.budget or (800 if args.quick else 3000)
    cfg = Config()
    cfg.model.hidden, cfg.model.layers, cfg.model.target = 16, 3, "increment"
    cfg.train.batch_size, cfg.train.lr = 32, 1e-3
    cfg.train.lr_milestones, cfg.train.unroll = [budget // 2, budget * 5 // 6], 1
    total = n_train * (steps - 1)
    cfg.buffer.capacity, cfg.buffer.watermark = total // 2, total // 10
    data = generate(n_train, steps, seed=1)
    val = rollout.trajectories(generate(n_val, steps, seed=2, first_id=10_000))
    rows = []
    for seed in range(seeds):
        order = arrival_order(data, k=4, seed=seed)
        on = train_arm("reservoir", data, order, val, cfg, seed, budget)
        off = train_arm("offline", data, order, val, cfg, seed, budget)
        rows.append((seed, on, off))
        print(f"seed {seed}: online {on['mean_nRMSE']:.4g} (horizon {on['rollout_horizon']}), "
              f"offline {off['mean_nRMSE']:.4g} (horizon {off['rollout_horizon']})", flush=True)
    ratios = [on["mean_nRMSE"] / off["mean_nRMSE"] for _, on, off in rows]
    print(f"\nks1d n={N} L={LENGTH} dt={DT}: {n_train} training + {n_val} held-out simulations "
          f"of {steps} steps ({total} pairs), conv1d 16x3, batch 32, {budget} gradient steps; "
          f"reservoir capacity {cfg.buffer.capacity}, watermark {cfg.buffer.watermark}, K=4")
    print(f"{'seed':>4} {'online nRMSE':>13} {'offline nRMSE':>14} {'ratio':>8} "
          f"{'horizon on/off':>15} {'1-step MSE on/off':>20}")
    for (seed, on, off), r in zip(rows, ratios):
        print(f"{seed:>4} {on['mean_nRMSE']:>13.4g} {off['mean_nRMSE']:>14.4g} {r:>8.3g} "
              f"{str(on['rollout_horizon']) + '/' + str(off['rollout_horizon']):>15} "
              f"{on['one_step_mse']:>9.3g}/{off['one_step_mse']:<9.3g}")
    finite = [r for r in ratios if math.isfinite(r) and r > 0]
    fig = {"online_over_offline_mean_nRMSE_median": round(statistics.median(ratios), 4),
           "online_over_offline_mean_nRMSE_geomean": (round(math.exp(statistics.fmean(
               math.log(r) for r in finite)), 4) if finite else None),
           "online_better": sum(r < 1 for r in ratios), "seeds": seeds, "gradient_steps": budget,
           "online_mean_nRMSE": [round(on["mean_nRMSE"], 4) for _, on, _ in rows],
           "offline_mean_nRMSE": [round(off["mean_nRMSE"], 4) for _, _, off in rows],
           "online_horizon": [on["rollout_horizon"] for _, on, _ in rows],
           "offline_horizon": [off["rollout_horizon"] for _, _, off in rows]}
    print(json.dumps(fig))
    return fig


if __name__ == "__main__":
    main()
