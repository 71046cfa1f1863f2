"""`ot run` against the sum of its solves run alone: does the launch engine give each simulation its
CPU share (no BLAS / OpenMP oversubscription) and add little on top?

    python bench/launch.py [--quick] [--compare]

Baseline: each heat2d solve (n x n, `steps` implicit steps) run alone in a fresh process with the
user's environment, timing the solve loop only; their sum. Then one `ot run` of the same parameter
sets at concurrency 2 (small MLP, reservoir, training ends with the stream), timed from the
command's start to its exit. --compare adds an `ot run` with OMP/OPENBLAS/MKL_NUM_THREADS set to
every usable core (what simulations got before the engine set their share).

Prints a table, then a LAST line of JSON: run_over_solves (the issue asks <= 1.5), and with
--compare oversubscribed_over_solves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onlinetrain import sampler  # noqa: E402
from onlinetrain.launch import THREAD_VARS, usable_cores  # noqa: E402

SOLVE = """
import sys, time, json
from solvers import heat2d
p = json.loads(sys.argv[1])
t = time.perf_counter()
for k, u in heat2d.solve(p, n=int(sys.argv[2]), steps=int(sys.argv[3])):
    pass
print(time.perf_counter() - t)
"""

CONFIG = """
[solver]
n = {n}
steps = {steps}
[sampling]
n_train = {n_train}
n_validation = {n_val}
seed = 1
[simulate]
concurrency = 2
[channel]
ring_mb = 64
[buffer]
capacity = 2000
watermark = 200
post_stream_batches = 0
[model]
hidden = 64
[train]
batch_size = 32
max_batches = 1000000
val_every = 1000
threads = 1
[output]
dir = "{dir}"
name = "bench-launch-{pid}"
"""


def solves_alone(sets, n: int, steps: int, env: dict) -> list[float]:
    out = []
    for s in sets:
        r = subprocess.run([sys.executable, "-c", SOLVE, json.dumps(s["params"]), str(n),
                            str(steps)], env=env, capture_output=True, text=True, check=True)
        out.append(float(r.stdout.strip()))
    return out


def ot_run(d: Path, n: int, steps: int, n_train: int, n_val: int, env: dict) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "bench.toml"
    cfg.write_text(CONFIG.format(n=n, steps=steps, n_train=n_train, n_val=n_val,
                                 dir=d / "study", pid=os.getpid()))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"ot run failed: {r.stderr[-2000:]}")
    s = json.loads((d / "study" / "summary.json").read_text())
    return {"wall": wall, "sims_done": s["sims_done"], "batches": s["batches"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="6 simulations of 40 steps")
    ap.add_argument("--compare", action="store_true", help="also an oversubscribed ot run")
    ap.add_argument("--n", type=int, default=128)
    a = ap.parse_args()
    n_sims, steps = (6, 40) if a.quick else (18, 100)
    n_val = max(1, n_sims // 9)
    cfg_sets = sampler.sample(n_sims - n_val, 1, "halton", sampler.DEFAULT_BOUNDS) + \
        sampler.sample(n_val, 1 + 7919, "uniform", sampler.DEFAULT_BOUNDS)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    alone = solves_alone(cfg_sets, a.n, steps, env)
    rows = [("solves run alone, sum", sum(alone), f"{n_sims} x heat2d {a.n}x{a.n}, {steps} steps; "
             f"mean {sum(alone) / n_sims:.2f} s")]
    with tempfile.TemporaryDirectory(prefix="ot-bench-launch-") as tmp:
        run = ot_run(Path(tmp) / "share", a.n, steps, n_sims - n_val, n_val, env)
        rows.append(("ot run, concurrency 2", run["wall"], f"{run['sims_done']} sims, "
                     f"{run['batches']} batches"))
        result = {"run_over_solves": round(run["wall"] / sum(alone), 3)}
        if a.compare:
            over = dict(env, **{k: str(usable_cores()) for k in THREAD_VARS})
            r2 = ot_run(Path(tmp) / "over", a.n, steps, n_sims - n_val, n_val, over)
            rows.append((f"ot run, {usable_cores()} threads each", r2["wall"],
                         f"{r2['sims_done']} sims, {r2['batches']} batches"))
            result["oversubscribed_over_solves"] = round(r2["wall"] / sum(alone), 3)
    print(f"{'what':<32} {'seconds':>9}  notes   ({usable_cores()} usable cores)")
    for name, sec, note in rows:
        print(f"{name:<32} {sec:>9.2f}  {note}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
