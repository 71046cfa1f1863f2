"""Breed against the non-breed sampler at equal simulation budget and equal gradient steps (issue 16).

    python bench/breed.py --quick       # heat2d and ks1d, 5 paired seeds, a few minutes on 2 cores
    python bench/breed.py               # 10 seeds, a larger budget

The online study is emulated in one process, synchronously, so the two arms differ ONLY in how the
parameter sets after the first generation are chosen: generation 0 is `window` uniform sets (the
same for both arms); after each generation's simulations have run, the model trains `steps_per_gen`
batches drawn uniformly from every sample received so far, and its per-sample training losses feed
a ScoreBoard (breed.py, as the trainer's scores.py does); then the next `window` sets come from
  - breed:     Breeder (Melissa's defaults: sigma 0.005, R 0.15 -> 0.75 over 10 resamplings,
               uniform exploration) with the ScoreBoard's scores;
  - non-breed: the same Breeder code with R = 0, i.e. only its uniform exploration draws.
Both arms run the same number of simulations and the same number of gradient steps, from the same
model initialisation (torch seed = the pair's seed). The held-out set is uniform, drawn with its
own seed, the same for both arms of a pair.

Reported per problem (mean over seeds, and the paired ratio breed / non-breed, geometric mean
over seeds): validation MSE over every held-out sample, and the mean MSE of the worst 10% of
held-out simulations (the tail Breed targets). The last line is JSON with those ratios.
--plot PATH: the parameter sets Breed chose over the generations (first two parameters of one
seed per problem, coloured by generation, a line from parent to child), as a PNG (matplotlib).

Problems: heat2d (n 12, 20 steps, 5 temperatures in [100, 500] K; x = (scaled params, t),
y = the field, as onlinetrain.surrogate) and ks1d (examples/ks1d.toml's solver: n 32, L 22,
dt 0.25, 80 frames; 3 amplitudes + 3 phases; a one-step MLP (params, u_t) -> u_t+1 - u_t).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onlinetrain.breed import Breeder, BreedConfig, ScoreBoard  # noqa: E402
from onlinetrain.sampler import sample  # noqa: E402
from solvers import heat2d, ks1d  # noqa: E402

KS_BOUNDS = [[-1.0, 1.0]] * 3 + [[0.0, 6.2832]] * 3


def heat2d_sim(p, lo, hi):
    steps = 20
    xs, ys = [], []
    for k, f in heat2d.solve(p, n=12, steps=steps):
        xs.append(np.r_[(np.asarray(p) - 300.0) / 200.0, k / steps])
        ys.append((f.reshape(-1) - 300.0) / 100.0)
    return np.asarray(xs, np.float32), np.asarray(ys, np.float32)


def ks1d_sim(p, lo, hi):
    u_prev = ks1d.initial_field(p, ks1d.KS1DConfig(n=32, length=22.0).x, 22.0)
    scaled = 2 * (np.asarray(p) - lo) / (hi - lo) - 1
    xs, ys = [], []
    for _, u in ks1d.solve(p, n=32, steps=80, length=22.0, dt=0.25, stride=1):
        xs.append(np.r_[scaled, u_prev])
        ys.append(u - u_prev)
        u_prev = u
    return np.asarray(xs, np.float32), np.asarray(ys, np.float32)


PROBLEMS = {"heat2d": ([[100.0, 500.0]] * 5, heat2d_sim), "ks1d": (KS_BOUNDS, ks1d_sim)}


def mlp(i, o, hidden=64):
    return torch.nn.Sequential(torch.nn.Linear(i, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, o))


def run_arm(problem, seed, breed: bool, a) -> dict:
    bounds, sim = PROBLEMS[problem]
    lo, hi = np.array(bounds).T
    cfg = BreedConfig(window=a.window) if breed else BreedConfig(window=a.window, start=0.0,
                                                                    end=0.0)
    br = Breeder(cfg, bounds, seed=seed)
    sets = {s["id"]: s["params"] for s in sample(a.window, seed, "uniform", bounds)}  # gen 0
    gens, parents = dict.fromkeys(sets, 0), dict.fromkeys(sets)
    data_x, data_y, data_s = [], [], []
    board = ScoreBoard()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = opt = None
    next_id = a.window
    for g in range(a.n_train // a.window):
        for sid in [i for i, gg in gens.items() if gg == g]:
            x, y = sim(sets[sid], lo, hi)
            data_x.append(x)
            data_y.append(y)
            data_s.append(np.full(len(x), sid))
        X, Y, S = (torch.from_numpy(np.concatenate(data_x)), torch.from_numpy(np.concatenate(data_y)),
                   np.concatenate(data_s))
        if model is None:
            model = mlp(X.shape[1], Y.shape[1])
            opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        for _ in range(a.steps_per_gen):
            idx = rng.integers(0, len(X), a.batch)
            per = ((model(X[idx]) - Y[idx]) ** 2).mean(dim=1)
            opt.zero_grad()
            per.mean().backward()
            opt.step()
            board.update(S[idx], per.detach().numpy())
        if next_id >= a.n_train:
            break
        scores = board.scores()
        done = sorted(sets)
        pending = list(range(next_id, next_id + a.window))
        for c in br.resample({i: scores.get(i) for i in done}, {i: sets[i] for i in done},
                             pending):
            sets[c.id], gens[c.id], parents[c.id] = c.params, c.generation, c.parent
        next_id += a.window
    return {"model": model, "sets": sets, "gens": gens, "parents": parents}


def evaluate(model, problem, held) -> tuple[float, float]:
    bounds, sim = PROBLEMS[problem]
    lo, hi = np.array(bounds).T
    per_sim, sse, n = [], 0.0, 0
    with torch.no_grad():
        for x, y in held:
            err = ((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean(dim=1).numpy()
            per_sim.append(float(err.mean()))
            sse, n = sse + float(err.sum()), n + len(err)
    k = max(1, math.ceil(0.1 * len(per_sim)))
    return sse / n, float(np.mean(sorted(per_sim)[-k:]))


def plot(runs: dict, path: Path):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.6))
    for ax, (problem, r) in zip(np.atleast_1d(axes), runs.items()):
        sets, gens, parents = r["sets"], r["gens"], r["parents"]
        for sid, p in sets.items():
            if parents[sid] is not None:
                q = sets[parents[sid]]
                ax.plot([q[0], p[0]], [q[1], p[1]], color="0.55", lw=0.8, zorder=1)
        sc = ax.scatter([p[0] for p in sets.values()], [p[1] for p in sets.values()],
                        c=[gens[i] for i in sets], cmap="viridis", s=[30 if parents[i] is None
                                                                      else 14 for i in sets],
                        zorder=2)
        fig.colorbar(sc, ax=ax, label="generation")
        nb = sum(p is not None for p in parents.values())
        ax.set(xlabel="parameter 0", ylabel="parameter 1",
               title=f"{problem}: Breed's {len(sets)} sets, {nb} bred (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--problems", default="heat2d,ks1d")
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args()
    a.seeds = a.seeds or (5 if a.quick else 10)
    a.n_train, a.window = (48, 8) if a.quick else (96, 8)
    a.steps_per_gen, a.batch, a.lr, a.n_held = (200 if a.quick else 300), 32, 1e-3, 30
    torch.set_num_threads(1)
    t0 = time.monotonic()
    out, shown = {}, {}
    print(f"{a.seeds} paired seeds; {a.n_train} training simulations in generations of "
          f"{a.window}; {a.steps_per_gen} batches of {a.batch} after each generation "
          f"({a.n_train // a.window * a.steps_per_gen} gradient steps); {a.n_held} uniform "
          f"held-out simulations")
    print(f"{'problem':8} {'seed':>4} {'val MSE non-breed':>18} {'val MSE breed':>14} "
          f"{'worst10% non-breed':>19} {'worst10% breed':>15}")
    for problem in a.problems.split(","):
        bounds, sim = PROBLEMS[problem]
        lo, hi = np.array(bounds).T
        rows = []
        for seed in range(a.seeds):
            held = [sim(s["params"], lo, hi) for s in
                    sample(a.n_held, 10_000 + seed, "uniform", bounds)]
            res = {}
            for arm in ("non-breed", "breed"):
                r = run_arm(problem, seed, arm == "breed", a)
                res[arm] = evaluate(r["model"], problem, held)
                if arm == "breed" and seed == 0:
                    shown[problem] = r
            rows.append(res)
            print(f"{problem:8} {seed:>4} {res['non-breed'][0]:>18.4g} {res['breed'][0]:>14.4g} "
                  f"{res['non-breed'][1]:>19.4g} {res['breed'][1]:>15.4g}", flush=True)
        ratio = {k: float(np.exp(np.mean([math.log(r["breed"][j] / r["non-breed"][j])
                                          for r in rows])))
                 for j, k in ((0, "val_mse"), (1, "worst10"))}
        wins = {k: sum(r["breed"][j] < r["non-breed"][j] for r in rows)
                for j, k in ((0, "val_mse"), (1, "worst10"))}
        mean = {arm: [float(np.mean([r[arm][j] for r in rows])) for j in (0, 1)]
                for arm in ("non-breed", "breed")}
        print(f"{problem:8} mean {mean['non-breed'][0]:>18.4g} {mean['breed'][0]:>14.4g} "
              f"{mean['non-breed'][1]:>19.4g} {mean['breed'][1]:>15.4g}")
        print(f"{problem:8} breed/non-breed (paired geometric mean): val MSE "
              f"{ratio['val_mse']:.3f} (breed better in {wins['val_mse']}/{a.seeds}), worst 10% "
              f"{ratio['worst10']:.3f} (better in {wins['worst10']}/{a.seeds})")
        out[f"{problem}_val_mse_ratio"] = round(ratio["val_mse"], 4)
        out[f"{problem}_worst10_ratio"] = round(ratio["worst10"], 4)
        out[f"{problem}_val_mse_wins"] = wins["val_mse"]
        out[f"{problem}_worst10_wins"] = wins["worst10"]
    if a.plot:
        plot(shown, a.plot)
        print(f"picture: {a.plot}")
    out["seeds"] = a.seeds
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
