"""The talk's bias table at CPU scale: validation MSE of Offline / FIFO / FIRO / Reservoir training,
and the equal-wall-clock online-vs-offline experiment.

    PYTHONPATH=$PWD python bench/bias.py --quick        # 100 sims, 3 seeds, live runs
    PYTHONPATH=$PWD python bench/bias.py --sims 100 --seeds 6 --sweep-seeds 2 --jobs 2 --no-live
                                                        # the recorded table (docs/benchmarks.md)

1. Table (replay): the heat2d data set of `ot run` (same parameter sets, same adapter) is solved
   once in memory; K simulations at a time emit their steps in time order, interleaved at random
   (bench/bias_replay.py), and each buffer is trained on that arrival order on a simulated clock
   where the trainer consumes `--speed` times the simulations' sample rate. Same MLP, LR halved
   at two fixed batch counts, `--seeds` seeds (default 6), ratios to Offline paired by seed
   (same initial weights, same arrival order). Two budgets: (1) equal gradient steps,
   G = samples / batch for every buffer; (2) the Reservoir trains only while the simulations run
   (post_stream_batches 0) with a trainer `--long-speed` times faster than them (talk: its run
   was ~15 % longer than FIFO's), the others as in (1). Sweeps: trainer speed (FIRO, Reservoir)
   and FIRO's watermark and pseudo_epochs (`--firo-sweep`). `--jobs N` runs replays in N
   processes.
2. Live: one real `ot run` per buffer (real processes, shm ring) with the arrival order recorded;
   its ranking, its mixing (distinct simulations per 100 arrivals) against the model's, and a
   replay of the recorded live order.
3. Equal wall clock: offline (solve, write files, read them, `--epochs` shuffled epochs) against a
   live `ot run` streaming `--online-sims` simulations through the Reservoir for the same number
   of batches; reports the MSE ratio (talk: 0.53) and the time ratio.
Output: a Markdown table, bias.png (validation MSE against batches) in --out, and a last line of
JSON. MSE is in K^2 (the adapter scales T by 100 K).
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_replay import (generate, interleaved_order, replay, val_arrays,  # noqa: E402
                         window_diversity)
from onlinetrain.config import load  # noqa: E402
from onlinetrain.runner import run_study, study_sets  # noqa: E402

KINDS = ("offline", "fifo", "firo", "reservoir")
K2 = 1e4  # (100 K)^2 -> K^2


def base_config(a, n_train, out_dir="ot-study/bias", name="bias"):
    steps = a.steps
    g = n_train * steps // a.batch
    cfg = load(overrides={
        "solver.n": a.grid, "solver.steps": steps, "sampling.n_train": n_train,
        "sampling.n_validation": a.val_sims, "sampling.seed": 0, "simulate.concurrency": a.k,
        "buffer.capacity": a.capacity, "buffer.watermark": a.watermark,
        "train.batch_size": a.batch, "train.lr_milestones": [g * 2 // 5, g * 4 // 5],
        "train.max_batches": g, "train.val_every": 100, "output.dir": out_dir,
        "output.name": name})
    cfg.validation.first_id = n_train
    return cfg, g


def msd(vals, scale=K2):
    v = np.asarray(vals) * scale
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired(rs, off):
    """Per-seed MSE ratio to Offline trained on the same seed: mean, std over seeds."""
    return msd([r["val_mse"] / o["val_mse"] for r, o in zip(rs, off)], 1.0)


def summary(rs, off):
    return {"mse": msd([r["val_mse"] for r in rs]), "ratio": paired(rs, off),
            "wall_s": float(np.mean([r["wall_s"] for r in rs])),
            "batches": float(np.mean([r["batches"] for r in rs])), "received": rs[0]["received"],
            "served": rs[0]["served"], "evicted_unseen": rs[0]["evicted_unseen"]}


_W: dict = {}  # the replay inputs, inherited by the forked workers


def _run(task):
    name, kind, s, speed, mb, kw = task
    r = replay(kind, _W["orders"][s], _W["data"], _W["cfg"], s, speed, mb, _W["val"], **kw)
    r.pop("model")
    return name, r


def run_tasks(tasks, jobs):
    """Replays in `jobs` forked processes (each one torch thread), results in task order."""
    import multiprocessing  # noqa: PLC0415
    t0, out = time.monotonic(), []
    with multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else nullcontext() as pool:
        for i, (name, r) in enumerate(pool.imap(_run, tasks) if pool else map(_run, tasks)):
            out.append((name, r))
            print(f"  [{i + 1}/{len(tasks)} {time.monotonic() - t0:.0f} s] {name} seed "
                  f"{r['seed']}: {r['val_mse'] * K2:.1f} K^2, {r['batches']} batches", flush=True)
    return out


def table_experiment(a, cfg, g, data, tr, val):
    """Budget 1: G gradient steps for every buffer at `speed`. Budget 2 ("long"): the trainer is
    `long_speed` x the simulations' sample rate; the Reservoir trains only while they run
    (post_stream_batches 0: about long_speed x G steps), FIFO/FIRO serve each sample once, Offline
    one epoch (G steps each). FIFO's batches do not depend on the speed, Offline's neither."""
    seeds = range(a.seeds)
    _W.update(orders=[interleaved_order(tr, a.steps, a.k, s) for s in seeds], data=data,
              cfg=cfg, val=val)
    fk = {"watermark": a.firo_watermark, "pseudo_epochs": a.pseudo_epochs}
    tasks = [(k, k, s, a.speed, g, fk if k == "firo" else {}) for k in KINDS for s in seeds]
    tasks += [("long firo", "firo", s, a.long_speed, g, fk) for s in seeds]
    tasks += [("long reservoir", "reservoir", s, a.long_speed, 10**9,
               {"post_stream_batches": 0}) for s in seeds]
    ss = range(a.sweep_seeds)
    tasks += [(f"{k}@{sp}", k, s, sp, g, fk if k == "firo" else {})
              for sp in a.sweep for k in ("firo", "reservoir") for s in ss]
    tasks += [(f"firo wm{wm} pe{pe}", "firo", s, a.speed, g * pe,
               {"watermark": wm, "pseudo_epochs": pe}) for wm, pe in a.firo_sweep for s in ss]
    res: dict = {}
    for name, r in run_tasks(tasks, a.jobs):
        res.setdefault(name, []).append(r)
    off = res["offline"]
    rows = {k: summary(res[k], off) for k in KINDS}
    curves = {k: (np.array([c[0] for c in res[k][0]["curve"]]),
                  np.mean([[c[1] * K2 for c in r["curve"]] for r in res[k]], axis=0))
              for k in KINDS}
    long = {"offline": rows["offline"], "fifo": rows["fifo"],
            "firo": summary(res["long firo"], off),
            "reservoir": summary(res["long reservoir"], off)}
    sweep = {n: summary(rs, off) for n, rs in res.items()
             if n not in KINDS and not n.startswith("long")}
    return rows, long, curves, sweep, window_diversity(_W["orders"][0])


def live_runs(a, g, data, val, work):
    out = {}
    for kind in KINDS:
        cfg, _ = base_config(a, a.train_sims, str(work / f"live-{kind}"), f"bias{os.getpid()}{kind}")
        cfg.buffer.kind = kind
        cfg.buffer.record_arrivals = True
        if kind == "offline":
            cfg.buffer.capacity = a.train_sims * a.steps
        t0 = time.monotonic()
        s = run_study(cfg)
        arr = np.load(work / f"live-{kind}" / "arrivals.npy")
        out[kind] = {"mse": s["val_mse"] * K2, "wall_s": time.monotonic() - t0,
                     "batches": s["batches"],
                     "received": s["samples_received"] - s["validation_samples"],
                     "served": s["buffer"]["served"], "diversity": window_diversity(arr),
                     "arrivals": [tuple(map(int, k)) for k in arr]}
        print(f"  live {kind}: {out[kind]['mse']:.1f} ({out[kind]['wall_s']:.0f} s)", flush=True)
    # the recorded live order, replayed through every buffer (seed 0, same clock model)
    cfg, _ = base_config(a, a.train_sims)
    order = out["fifo"]["arrivals"]
    for kind in KINDS:
        out[kind]["replay_of_live_order"] = replay(kind, order, data, cfg, 0, a.speed, g,
                                                   val)["val_mse"] * K2
    for v in out.values():
        del v["arrivals"]
    return out


def wallclock_experiment(a, work, live_batches_per_s):
    """Offline: solve + write + read + epochs. Online: live ot run, reservoir, many more sims."""
    cfg, g = base_config(a, a.train_sims, str(work / "offline-many"))
    t0 = time.monotonic()
    sets = study_sets(cfg)
    tr_sets = [s for s in sets if s["id"] < a.train_sims]
    d = generate(tr_sets, cfg)
    files = work / "offline-files"
    files.mkdir(exist_ok=True)
    for sid, r in d["row"].items():
        np.save(files / f"sim{sid:05d}-x.npy", d["X"][r])
        np.save(files / f"sim{sid:05d}-y.npy", d["Y"][r])
    del d
    ids = sorted(s["id"] for s in tr_sets)
    X = np.stack([np.load(files / f"sim{i:05d}-x.npy") for i in ids])
    Y = np.stack([np.load(files / f"sim{i:05d}-y.npy") for i in ids])
    data = {"row": {i: r for r, i in enumerate(ids)}, "X": X, "Y": Y}
    order = [(i, st) for i in ids for st in range(1, a.steps + 1)]
    cfg.train.lr_milestones = [g * a.epochs * 2 // 5, g * a.epochs * 4 // 5]
    vset = [s for s in sets if s["id"] >= a.train_sims]
    vdata = generate(vset, cfg)
    val = val_arrays(vdata, [s["id"] for s in vset])
    t_io = time.monotonic() - t0
    r = replay("offline", order, data, cfg, 0, 1e9, g * a.epochs, val, epochs=a.epochs)
    t_off = time.monotonic() - t0
    ocfg, _ = base_config(a, a.online_sims, str(work / "online-many"), f"bias{os.getpid()}on")
    # equal budget: as many batches as the live trainer (measured in part 2) does in t_off
    nb = max(100, int(live_batches_per_s * t_off))
    ocfg.train.max_batches = nb
    ocfg.train.lr_milestones = [nb * 2 // 5, nb * 4 // 5]
    ocfg.buffer.post_stream_batches = -1
    t1 = time.monotonic()
    s = run_study(ocfg)
    t_on = time.monotonic() - t1
    return {"offline_mse": r["val_mse"] * K2, "offline_s": t_off, "offline_gen_io_s": t_io,
            "offline_epochs": a.epochs, "online_mse": s["val_mse"] * K2, "online_s": t_on,
            "online_sims_done": s["sims_done"], "online_samples": s["samples_received"],
            "offline_batches": g * a.epochs, "online_batches": s["batches"], "mse_ratio": s["val_mse"] * K2 / (r["val_mse"] * K2),
            "time_ratio": t_on / t_off}


def plot(curves, path):
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("(matplotlib missing: pip install matplotlib, the `plot` extra; no PNG)")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, (x, y) in curves.items():
        ax.plot(x, y, label=kind, ls="--" if kind == "fifo" else "-")
    ax.set_yscale("log")
    ax.set_xlabel("batches")
    ax.set_ylabel("validation MSE (K$^2$)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench-out/bias")
    ap.add_argument("--no-live", action="store_true", help="skip the live ot runs (2 and 3)")
    ap.add_argument("--seeds", type=int, help="seeds of the table (default 6; --quick 3)")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="trainer / simulation sample rate of budget 1 (equal steps)")
    ap.add_argument("--long-speed", type=float, default=1.15,
                    help="the same for budget 2, where the Reservoir trains while the simulations "
                         "run (talk: its run was ~15%% longer than FIFO's)")
    ap.add_argument("--firo-watermark", type=int, default=500)
    ap.add_argument("--pseudo-epochs", type=int, default=1, help="FIRO's, in the table")
    ap.add_argument("--firo-sweep", default="100:1,1500:1,500:2",
                    help="FIRO watermark:pseudo_epochs pairs tried beside the table ('' for none)")
    ap.add_argument("--no-speed-sweep", action="store_true")
    ap.add_argument("--sims", type=int, help="training simulations (default 250; --quick 100)")
    ap.add_argument("--sweep-seeds", type=int, help="seeds of the sweeps (default 3; --quick 1)")
    ap.add_argument("--jobs", type=int, default=1, help="replays run in this many processes")
    a = ap.parse_args(argv)
    quick = a.quick
    a.grid, a.steps, a.k, a.batch = 32, 100, 8, 10
    a.train_sims = a.sims or (100 if quick else 250)
    a.val_sims = a.train_sims // 5
    a.capacity, a.watermark = 2000, 500
    a.seeds = a.seeds or (3 if quick else 6)
    a.sweep = () if a.no_speed_sweep else (0.5,) if quick else (0.5, 2.0)
    a.sweep_seeds = a.sweep_seeds or (1 if quick else 3)
    a.firo_sweep = [tuple(map(int, t.split(":"))) for t in a.firo_sweep.split(",") if t]
    if quick:
        a.firo_sweep = a.firo_sweep[:1]
    a.epochs = 3 if quick else 10
    a.online_sims = 300 if quick else 1000
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    cfg, g = base_config(a, a.train_sims)
    sets = study_sets(cfg)
    data = generate(sets, cfg)
    tr = [s["id"] for s in sets if s["id"] < a.train_sims]
    val = val_arrays(data, [s["id"] for s in sets if s["id"] >= a.train_sims])
    print(f"heat2d {a.grid}x{a.grid}, {a.steps} steps, {a.train_sims} training + {a.val_sims} "
          f"validation sims, K={a.k}, batch {a.batch}, G={g} batches, LR halved at "
          f"{cfg.train.lr_milestones}, capacity {a.capacity}, watermark {a.watermark}, "
          f"speed {a.speed} (budget 2: {a.long_speed}), FIRO watermark {a.firo_watermark} "
          f"pseudo_epochs {a.pseudo_epochs}, {a.seeds} seeds; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    load0 = os.getloadavg()[0]
    rows, long, curves, sweep, div = table_experiment(a, cfg, g, data, tr, val)
    png = plot(curves, out / "bias.png")
    live = wc = None
    if not a.no_live:
        with tempfile.TemporaryDirectory(prefix="ot-bias-") as work:
            live = live_runs(a, g, data, val, Path(work))
            rate = live["reservoir"]["batches"] / live["reservoir"]["wall_s"]
            wc = wallclock_experiment(a, Path(work), rate)
    off = rows["offline"]["mse"][0]
    for title, tab in (("budget 1: equal gradient steps", rows),
                       (f"budget 2: Reservoir trains while the simulations run (trainer "
                        f"{a.long_speed}x their sample rate)", long)):
        print(f"\n{title}\n| buffer | val MSE (K^2) | paired ratio to Offline | batches | "
              f"samples served | evicted unseen |\n|---|---|---|---|---|---|")
        for k in KINDS:
            r = tab[k]
            print(f"| {k} | {r['mse'][0]:.1f} ± {r['mse'][1]:.1f} | {r['ratio'][0]:.2f} ± "
                  f"{r['ratio'][1]:.2f} | {r['batches']:.0f} | {r['served']} | "
                  f"{r['evicted_unseen']} |")
    print(f"\nsweep ({a.sweep_seeds} seeds; G batches, FIRO pseudo_epochs p: p x G):")
    print("| setting | val MSE (K^2) | paired ratio to Offline | samples received | evicted unseen "
          "|\n|---|---|---|---|---|")
    for k, r in sweep.items():
        print(f"| {k} | {r['mse'][0]:.1f} ± {r['mse'][1]:.1f} | {r['ratio'][0]:.2f} ± "
              f"{r['ratio'][1]:.2f} | {r['received']} | {r['evicted_unseen']} |")
    print(f"\nmodelled order: {div:.1f} distinct simulations per 100 arrivals (K={a.k})")
    if live:
        print("\n| live ot run | val MSE (K^2) | wall (s) | batches | received | distinct sims "
              "/100 arrivals | replay of its order (K^2) |\n|---|---|---|---|---|---|---|")
        for k, r in live.items():
            print(f"| {k} | {r['mse']:.1f} | {r['wall_s']:.0f} | {r['batches']} | {r['received']} "
                  f"| {r['diversity']:.1f} | {r['replay_of_live_order']:.1f} |")
    if wc:
        print(f"\nequal wall clock: offline {wc['offline_epochs']} epochs on {a.train_sims} sims "
              f"(files written and read), {wc['offline_batches']} batches: MSE "
              f"{wc['offline_mse']:.1f} in {wc['offline_s']:.0f} s; online reservoir, "
              f"{wc['online_sims_done']} sims streamed, {wc['online_batches']} batches: MSE "
              f"{wc['online_mse']:.1f} in {wc['online_s']:.0f} s; MSE ratio "
              f"{wc['mse_ratio']:.2f} (talk 0.53), time ratio {wc['time_ratio']:.2f}")
    m = {k: rows[k]["mse"][0] for k in KINDS}
    order_ok = m["reservoir"] <= m["offline"] < m["firo"] < m["fifo"]

    def parts(t):  # the talk's order on paired ratios: Reservoir <= 1 < FIRO < FIFO
        q = {k: t[k]["ratio"][0] for k in KINDS}
        return [q["reservoir"] <= 1.0, 1.0 < q["firo"], q["firo"] < q["fifo"]]
    res = {"bench": "bias", "quick": quick, "png": png,
           "reservoir_over_offline": m["reservoir"] / off, "firo_over_offline": m["firo"] / off,
           "fifo_over_offline": m["fifo"] / off, "talk_order_holds": order_ok,
           "reservoir_le_offline_lt_firo_lt_fifo": [m["reservoir"] <= off, off < m["firo"],
                                                   m["firo"] < m["fifo"]],
           "mse_k2": m, "sweep": {k: v["mse"][0] for k, v in sweep.items()},
           "wall_s": round(time.monotonic() - t_all, 1), "seeds": a.seeds,
           "paired_ratio": {k: rows[k]["ratio"] for k in KINDS},
           "paired_ratio_long": {k: long[k]["ratio"] for k in KINDS},
           "long_batches": {k: long[k]["batches"] for k in KINDS},
           "order_parts_paired": parts(rows), "order_parts_paired_long": parts(long),
           "firo": {"watermark": a.firo_watermark, "pseudo_epochs": a.pseudo_epochs},
           "speed": a.speed, "long_speed": a.long_speed,
           "sweep_ratio": {k: v["ratio"][0] for k, v in sweep.items()},
           "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    if live:
        lm = {k: live[k]["mse"] for k in KINDS}
        res["live_mse_k2"] = lm
        res["live_rank_agrees"] = sorted(KINDS, key=lm.get) == sorted(KINDS, key=m.get)
        res["live_diversity"] = live["fifo"]["diversity"]
        res["model_diversity"] = div
    if wc:
        res["online_over_offline_mse"] = wc["mse_ratio"]
        res["online_over_offline_time"] = wc["time_ratio"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
