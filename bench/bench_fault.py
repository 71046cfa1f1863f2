"""Cost of fault tolerance: a checkpoint vs a training batch, a ledger claim vs a bare append.

    python bench/bench_fault.py [--quick]

Prints a table, then a LAST line of JSON with the figures, each a ratio against a baseline
measured in the same run:
- checkpoint_over_batch: capture + save of a full checkpoint (heat2d 32x32 MLP, reservoir of
  2000 samples) divided by one training step (batch 32) -> a checkpoint costs this many batches;
- claim_over_append: one ledger claim + done (filelock, fsync) divided by one bare
  open/append/close of the same line without lock or fsync.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from onlinetrain import checkpoint, config  # noqa: E402
from onlinetrain.ledger import Ledger, worker_id  # noqa: E402
from onlinetrain.reservoir import make_buffer  # noqa: E402
from onlinetrain.surrogate import build_mlp  # noqa: E402
from onlinetrain.trainer import Receiver  # noqa: E402


def bench_checkpoint(d: Path, reps: int):
    cfg = config.load(None, {})
    torch.set_num_threads(1)
    buf = make_buffer("reservoir", 2000, 500, 0)
    rx = Receiver(None, buf, cfg, None)
    rng = np.random.default_rng(0)
    for i in range(2000):
        buf.put(rng.random(6, np.float32), rng.random(1024, np.float32), (i // 100, i % 100))
        rx.seen.add((i // 100, i % 100))
    model = build_mlp(6, 1024, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1000], 0.5)

    def step():
        b = buf.get_batch(32)
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(b.x)), torch.from_numpy(b.y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    step()
    t = time.perf_counter()
    for _ in range(reps * 10):
        step()
    batch_s = (time.perf_counter() - t) / (reps * 10)
    t = time.perf_counter()
    for i in range(reps):
        checkpoint.save(d, checkpoint.capture(model, opt, sched, i + 1, rx, buf, cfg))
    ck_s = (time.perf_counter() - t) / reps
    size = checkpoint.list_checkpoints(d)[-1].stat().st_size
    return batch_s, ck_s, size


def bench_ledger(d: Path, n: int):
    led = Ledger.create(d, [{"id": i, "params": [1.0] * 5} for i in range(n)])
    w = worker_id()
    t = time.perf_counter()
    for _ in range(n):
        [s] = led.claim(w)
        led.done(s["id"], w)
    claim_s = (time.perf_counter() - t) / n
    line = json.dumps({"ev": "claim", "id": 1, "worker": w, "pid": 1, "pstart": 0.0}) + "\n"
    p = d / "bare.jsonl"
    t = time.perf_counter()
    for _ in range(2 * n):
        with open(p, "a") as fh:
            fh.write(line)
    append_s = (time.perf_counter() - t) / n  # two appends per claim + done
    return claim_s, append_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        batch_s, ck_s, size = bench_checkpoint(Path(tmp) / "ck", 3 if a.quick else 10)
        claim_s, append_s = bench_ledger(Path(tmp) / "led", 50 if a.quick else 500)
    print(f"{'what':<40} {'time':>12}")
    print(f"{'training step (batch 32, 32x32 MLP)':<40} {batch_s * 1e3:>9.2f} ms")
    print(f"{'checkpoint capture + save':<40} {ck_s * 1e3:>9.2f} ms  ({size / 2**20:.1f} MiB)")
    print(f"{'ledger claim + done (lock, fsync)':<40} {claim_s * 1e3:>9.3f} ms")
    print(f"{'bare append x2 (no lock, no fsync)':<40} {append_s * 1e3:>9.3f} ms")
    print(json.dumps({"checkpoint_over_batch": round(ck_s / batch_s, 2),
                      "claim_over_append": round(claim_s / append_s, 2),
                      "checkpoint_ms": round(ck_s * 1e3, 2), "batch_ms": round(batch_s * 1e3, 3),
                      "claim_ms": round(claim_s * 1e3, 3), "checkpoint_mib": round(size / 2**20, 2),
                      "quick": a.quick}))


if __name__ == "__main__":
    main()
