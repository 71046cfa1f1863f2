"""In-memory replay for bench/bias.py: heat2d data set, live-like arrival orders, and training a
surrogate from any buffer on a simulated clock.

    sets = study_sets(cfg)                       # the very parameter sets `ot run` would use
    data = generate(sets, cfg)                   # X (n_sims, steps, 6), Y (n_sims, steps, n*n)
    order = interleaved_order(train_ids, steps, k=8, seed=0)
    res = replay("reservoir", order, data, cfg, seed=0, speed=1.0, max_batches=2500)

The clock: one time unit per arriving sample (the simulations' throughput), one batch every
batch_size / speed units (the trainer's throughput; speed = trainer samples/s over simulation
samples/s). A FIFO/FIRO put that finds the buffer full waits for the next batch (backpressure);
a trainer whose buffer is not ready waits for the next arrival. So the buffers see exactly the
interleaving and the relative rates of a live run, deterministically.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from onlinetrain.reservoir import make_buffer
from onlinetrain.surrogate import T_CENTER, T_HALF_RANGE, T_SCALE, build_mlp
from solvers import heat2d


def generate(sets: list[dict], cfg) -> dict:
    """Solve every set in memory; x/y exactly as the heat2d adapter builds them from frames."""
    n, steps = cfg.solver.n, cfg.solver.steps
    ids = np.array([s["id"] for s in sets])
    X = np.empty((len(sets), steps, 6), np.float32)
    Y = np.empty((len(sets), steps, n * n), np.float32)
    for r, s in enumerate(sets):
        p = np.asarray(s["params"], np.float32)
        X[r, :, :5] = (p - T_CENTER) / T_HALF_RANGE
        for k, field in heat2d.solve(s["params"], n=n, steps=steps, scheme=cfg.solver.scheme):
            X[r, k - 1, 5] = k / steps
            Y[r, k - 1] = (field.astype(np.float32).reshape(-1) - T_CENTER) / T_SCALE
    return {"row": {int(i): r for r, i in enumerate(ids)}, "X": X, "Y": Y}


def interleaved_order(sim_ids, steps: int, k: int, seed: int) -> list[tuple[int, int]]:
    """K simulations at a time, each emitting steps 1..steps in order; the next step comes from a
    running simulation chosen at random (equal-speed solvers with jitter); a finished one is
    replaced by the next pending simulation, as `ot run` schedules them."""
    rng = np.random.default_rng(seed)
    pending, running, order = list(sim_ids), [], []
    nxt = {}
    while pending or running:
        while pending and len(running) < k:
            s = pending.pop(0)
            running.append(s)
            nxt[s] = 1
        s = running[int(rng.integers(len(running)))]
        order.append((s, nxt[s]))
        nxt[s] += 1
        if nxt[s] > steps:
            running.remove(s)
    return order


def window_diversity(order, window: int = 100) -> float:
    """Mean number of distinct simulations per window of consecutive arrivals (mixing measure)."""
    sims = np.asarray(order)[:, 0]
    w = [len(set(sims[i:i + window].tolist())) for i in range(0, len(sims) - window + 1, window)]
    return float(np.mean(w)) if w else float("nan")


def val_arrays(data, val_ids):
    rows = [data["row"][i] for i in val_ids]
    X, Y = data["X"][rows], data["Y"][rows]
    return torch.from_numpy(X.reshape(-1, X.shape[-1])), torch.from_numpy(Y.reshape(-1, Y.shape[-1]))


def val_mse(model, vx, vy) -> float:
    with torch.no_grad():
        tot = 0.0
        for i in range(0, len(vx), 2048):
            tot += float(((model(vx[i:i + 2048]) - vy[i:i + 2048]) ** 2).mean(1).sum())
    return tot / len(vx)


def new_model(cfg, out_dim: int, seed: int):
    torch.manual_seed(seed)
    model = build_mlp(6, out_dim, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.train.lr_milestones, cfg.train.lr_gamma)
    return model, opt, sched


def step(model, opt, sched, b):
    loss = torch.nn.functional.mse_loss(model(torch.from_numpy(b.x)), torch.from_numpy(b.y))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def replay(kind: str, order, data, cfg, seed: int, speed: float, max_batches: int,
           val=None, val_every: int = 100, epochs: int = 1, pseudo_epochs: int = 1,
           watermark: int | None = None, post_stream_batches: int = -1) -> dict:
    """Train from `kind` fed with `order` on the simulated clock; returns MSE, curve, counts.
    Training stops at `max_batches` or when the buffer is exhausted (FIFO/FIRO drained, the
    Reservoir's `post_stream_batches` served: 0 trains only while the simulations run)."""
    torch.set_num_threads(cfg.train.threads)
    bs = cfg.train.batch_size
    n = len(order)
    cap = n if kind == "offline" else cfg.buffer.capacity
    buf = make_buffer(kind, cap, watermark or cfg.buffer.watermark, seed, epochs=epochs,
                      pseudo_epochs=pseudo_epochs, post_stream_batches=post_stream_batches)
    model, opt, sched = new_model(cfg, data["Y"].shape[-1], seed)
    X, Y, row = data["X"], data["Y"], data["row"]
    t_data = t_train = 0.0
    dt_batch = bs / speed
    i = batches = 0
    blocked = False
    curve = []
    t0 = time.perf_counter()
    stream_end_batch = None
    while batches < max_batches:
        if i < n and t_data <= t_train and not blocked:
            sim, st = order[i]
            r = row[sim]
            if buf.put(X[r, st - 1], Y[r, st - 1], (sim, st), timeout=0):
                i += 1
                t_data += 1.0
                if i == n:
                    buf.end_stream()
                    stream_end_batch = batches
            else:
                blocked = True  # full: the simulations wait for the trainer
            continue
        b = buf.get_batch(bs, timeout=0)
        if b is None:
            if buf.exhausted or i >= n:
                break
            t_train = max(t_train, t_data)  # the trainer waits for the next sample
            blocked = False
            continue
        step(model, opt, sched, b)
        batches += 1
        t_train += dt_batch
        blocked = False
        if val is not None and batches % val_every == 0:
            curve.append((batches, val_mse(model, *val)))
    s = buf.stats()
    return {"kind": kind, "seed": seed, "val_mse": val_mse(model, *val) if val else None,
            "curve": curve, "batches": batches, "received": s["received"], "served": s["served"],
            "evicted_unseen": s["evicted_unseen"], "stream_end_batch": stream_end_batch,
            "wall_s": time.perf_counter() - t0, "model": model}
