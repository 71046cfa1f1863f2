"""Cost of the iterative statistics against the memory bound (issue 14).

    python bench/stats.py --quick       # < 1 minute; last line: JSON with the ratios

update_over_memory: frames/s of the moment, extremum and threshold updates (Statistics.update with
2 thresholds, no quantiles, no Sobol'), frame by frame, divided by the frames/s of one numpy pass
`acc += frame` over the same float32 frames into a float64 accumulator (the memory bound). Target
>= 0.1. Statistics stages the frames of a time step (stats_stage) and updates the moments 16 at a
time; the timed region ends with Statistics.flush(), so every frame is in the moments. The state
is warm, as `acc` is: a first, untimed pass of the frames allocates and touches the time step's
state and the stage's buffers (once per time step and per run); the timed pass brings the same
values as other simulations of that step. update_over_memory_batched: the same through
Statistics.update_many, 64 frames of one time step per call (what `ot stats` gets from one
get_many when many simulations run at once).
quantiles_over_memory: the same with 3 quantile levels added; sobol_over_memory: with Sobol' on,
frames arriving as pick-freeze groups of p = 5 (7 frames a group).
train_with_stats_over_without: trainer samples/s with [stats] on (2 thresholds, 1 quantile level)
against off, the same run length: bench/feed.py's "ingest" arm (the real train() on a shm ring, a
producer process sending 4x4 float32 heat2d-like frames paced at 20,000 frames/s), run off, on,
on, off. small_frame_us: the statistics' CPU cost per 4x4 frame in update_many (stats_rows).

Times are process CPU times (time.process_time), best of several runs: on a machine shared with
other work, wall time charges a long update for the time slices other processes took, and a short
baseline pass rarely is; CPU time compares the two fairly (numpy runs these ops on one thread).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from onlinetrain import frame as fr
from onlinetrain.config import StatsConfig
from onlinetrain.stats import Statistics


def best_of(fn, reps: int) -> float:
    """Best of `reps` runs of fn; fn returns its own time (set-up excluded) or None."""
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        own = fn()
        best = min(best, own if own is not None else time.process_time() - t)
    return best


def frames_for(cells: int, n: int, p: int = 5, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    data = rng.normal(300.0, 50.0, (n, cells)).astype(np.float32)
    r = p + 2
    out = []
    for i in range(n):
        g = i // r
        params = np.arange(p, dtype=np.float64) + g  # a consistent pick-freeze group
        role = i % r
        if role >= 2:
            params = params.copy()
            params[role - 2] += 0.5
        elif role == 1:
            params = params + 0.5
        out.append(fr.Frame(i, 1, params, "T", data[i]))
    return out


def measure(cells: int, n: int, reps: int) -> dict:
    fs = frames_for(cells, n)
    acc = np.zeros(cells)

    def memory():
        for f in fs:
            acc.__iadd__(f.array)

    again = [fr.Frame(f.sim_id + n, f.time_step, f.params, f.name, f.array) for f in fs]

    def stats(cfg, batched=False):
        def run(frames):
            if batched:  # the consumer's path: one get_many brings the frames of many simulations
                for i in range(0, len(frames), 64):
                    st.update_many(frames[i:i + 64])
            else:
                for f in frames:
                    st.update(f)
            st.flush()  # frames still staged (stats_stage) are applied inside the timed region

        def timed():
            nonlocal st
            # set-up, not update cost: the field's first frame (memory figure, psutil), the time
            # step's state (allocated and first touched) and the stage's buffers, all warmed by a
            # first pass of the frames, as `acc` is warm in the baseline; the timed pass brings
            # the same values again as other simulations (ids + n) of the same time step
            st = Statistics(cfg, report=lambda m: None)
            run(fs)
            t = time.process_time()
            run(again)
            return time.process_time() - t
        st = None
        return timed
    t_mem = best_of(memory, reps)
    t_mom = best_of(stats(StatsConfig(thresholds=[250.0, 350.0])), reps)
    t_blk = best_of(stats(StatsConfig(thresholds=[250.0, 350.0]), batched=True), reps)
    t_q = best_of(stats(StatsConfig(thresholds=[250.0, 350.0], quantiles=[0.05, 0.5, 0.95])), reps)
    t_s = best_of(stats(StatsConfig(thresholds=[250.0, 350.0], sobol=True)), reps)
    return {"cells": cells, "frames": n, "memory_fps": n / t_mem, "moments_fps": n / t_mom,
            "batched_fps": n / t_blk,
            "quantiles_fps": n / t_q, "sobol_fps": n / t_s}


def small_frames_us(quantiles) -> dict:
    """CPU us per 4x4 frame of Statistics.update_many (2 thresholds), batches of 256 as get_many
    brings them: 'sims' (each simulation's steps in turn: the steps of a batch are updated
    together, stats_rows) and 'lockstep' (200 simulations at the same step: each step's frames
    one after the other). Best of 3."""
    rng = np.random.default_rng(0)
    x = (rng.random((200, 100, 16)) * 100 + 250).astype(np.float32)
    out = {}
    for layout in ("sims", "lockstep"):
        pairs = [(s, t) for s in range(200) for t in range(100)] if layout == "sims" else \
            [(s, t) for t in range(100) for s in range(200)]
        fs = [fr.Frame(s, t, np.zeros(0), "T", x[s, t]) for s, t in pairs]
        best = float("inf")
        for _ in range(3):
            st = Statistics(StatsConfig(thresholds=[300.0, 330.0], quantiles=quantiles),
                            steps_hint=100, report=lambda m: None)
            t = time.process_time()
            for i in range(0, len(fs), 256):
                st.update_many(fs[i:i + 256])
            st.flush()
            best = min(best, time.process_time() - t)
        out[layout] = best / len(fs) * 1e6
    return out


def train_ratio(seconds: float) -> dict:
    """bench/feed.py's ingest arm with [stats] off and on, in the order off, on, on, off (a drift
    of the machine over the run weighs on both arms alike); each arm's rates are the means of its
    two runs."""
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    import uuid  # noqa: PLC0415
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # spawned producers import it
    import feed  # noqa: PLC0415
    feed.use_c_producer()  # as bench/feed.py: the C client, as a solver sends
    tag = uuid.uuid4().hex[:8]
    runs: dict[str, list] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(("off", "on", "on", "off")):
            extra = {"stats.thresholds": [300.0, 330.0], "stats.quantiles": [0.5]} \
                if arm == "on" else {}
            cfg = feed._cfg(os.path.join(tmp, f"{arm}{i}"), **{"channel.ring_mb": 1, **extra})
            runs[arm].append(feed.train_arm(cfg, f"st_{tag}_{arm}{i}", 4, 20_000, 2000, seconds))
    return {arm: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} | {"runs": rs}
            for arm, rs in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and repetitions")
    ap.add_argument("--no-train", action="store_true", help="skip the trainer arms")
    args = ap.parse_args()
    sizes = [(4096, 70), (65536, 70), (1 << 20, 14)] if args.quick else \
        [(4096, 700), (65536, 280), (1 << 20, 70)]
    reps = 3 if args.quick else 5
    rows = [measure(c, n, reps) for c, n in sizes]
    print(f"{'cells':>9} {'acc+=frame/s':>13} {'moments/s':>10} {'ratio':>6} {'batched/s':>10} "
          f"{'ratio':>6} {'+quantiles/s':>13} {'ratio':>6} {'+sobol/s':>9} {'ratio':>6}")
    for r in rows:
        m = r["memory_fps"]
        print(f"{r['cells']:>9} {m:>13.0f} {r['moments_fps']:>10.0f} {r['moments_fps'] / m:>6.3f} "
              f"{r['batched_fps']:>10.0f} {r['batched_fps'] / m:>6.3f} "
              f"{r['quantiles_fps']:>13.0f} {r['quantiles_fps'] / m:>6.3f} {r['sobol_fps']:>9.0f} "
              f"{r['sobol_fps'] / m:>6.3f}")
    small = {"moments": small_frames_us([]), "quantile": small_frames_us([0.5])}
    for what, v in small.items():
        print(f"4x4 frames, update_many, {what:>8}: {v['sims']:.1f} us/frame (simulations in "
              f"turn), {v['lockstep']:.1f} us/frame (200 in lockstep)")
    tr = None if args.no_train else train_ratio(4.0 if args.quick else 15.0)
    if tr:
        for arm, v in tr.items():
            each = ", ".join(f"{r['samples_per_s']:.0f}" for r in v["runs"])
            print(f"train, [stats] {arm:>3}: {v['samples_per_s']:.0f} samples/s (runs: {each}), "
                  f"{v['frames_per_s']:.0f} frames/s adapted")
    big = rows[-1]
    m = big["memory_fps"]
    print(json.dumps({
        "cells": big["cells"], "update_over_memory": round(big["moments_fps"] / m, 4),
        "update_over_memory_batched": round(big["batched_fps"] / m, 4),
        "quantiles_over_memory": round(big["quantiles_fps"] / m, 4),
        "sobol_over_memory": round(big["sobol_fps"] / m, 4),
        "update_over_memory_by_cells": {r["cells"]: round(r["moments_fps"] / r["memory_fps"], 4)
                                        for r in rows},
        "update_over_memory_batched_by_cells": {
            r["cells"]: round(r["batched_fps"] / r["memory_fps"], 4) for r in rows},
        "train_with_stats_over_without": None if not tr else
        round(tr["on"]["samples_per_s"] / tr["off"]["samples_per_s"], 4),
        "ingest_with_stats_over_without": None if not tr else
        round(tr["on"]["frames_per_s"] / max(tr["off"]["frames_per_s"], 1e-9), 4),
        "small_frame_us": {w: {k: round(u, 2) for k, u in v.items()} for w, v in small.items()}}))


if __name__ == "__main__":
    main()
