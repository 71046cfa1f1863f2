"""GPU check (not part of CI: no GPU there): the small online run of tests/test_ddp.py with NCCL.

    python bench/gpu_check.py [--sims 16] [--batches 500] [--n 32]     # one GPU, world of 1
    torchrun --nproc-per-node 4 bench/gpu_check.py                     # 4 GPUs of one node
    python bench/gpu_check.py --device cpu --sims 4 --batches 40       # dry run of the script (gloo)

Each rank listens on tcp://127.0.0.1:0 and publishes its port in the study directory; rank 0
starts `ot sample | ot simulate --to shm://NAME` and `ot relay shm://NAME <all ranks>` (so every
rank gets different simulations) and everyone trains with DDP over NCCL on cuda:LOCAL_RANK.
Prints a table and, last, one JSON line: samples/s trained (batches x global batch / wall) and
samples/s received, plus the validation MSE against the mean-field baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OT = [sys.executable, "-m", "onlinetrain"]


def feed(out: Path, world: int, sims: int, n: int, steps: int, ring: str, log: list):
    """Rank 0 only: wait for every rank's endpoint, then relay + simulate; records exit codes."""
    eps = [out / f"endpoint-rank{r}" for r in range(world)]
    t = time.monotonic() + 300
    while not all(e.exists() for e in eps):
        if time.monotonic() > t:
            log.append("endpoints never appeared")
            return
        time.sleep(0.1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OT_TOKEN_FILE": str(out / "secret.token")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    relay = subprocess.Popen(OT + ["relay", f"shm://{ring}"] +
                             [e.read_text().strip() for e in eps], env=env)
    params = subprocess.run(OT + ["sample", "-n", str(sims)], capture_output=True, text=True,
                            check=True, env=env).stdout
    sim = subprocess.run(OT + ["simulate", "--to", f"shm://{ring}", "--n", str(n), "--steps",
                               str(steps), "--concurrency", str(max(1, (os.cpu_count() or 2) - 2))],
                         input=params, text=True, env=env)
    log.append(f"simulate exit {sim.returncode}, relay exit {relay.wait(120)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=16)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the same run with gloo, to check the script where there is no GPU")
    args = ap.parse_args(argv)

    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
                 "`--device cpu` runs the same check with gloo")
    from onlinetrain import config, ddp
    d = ddp.env_from(os.environ)
    if d.world == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        d = ddp.DistEnv(0, 1, 0, "127.0.0.1", port, "single")
    out = Path(args.out or os.environ.get("OT_GPU_CHECK_DIR") or tempfile.mkdtemp(prefix="ot-gpu-"))
    cfg = config.from_dict({
        "solver": {"n": args.n, "steps": args.steps},
        "buffer": {"kind": "reservoir", "capacity": 4000, "watermark": 200},
        "model": {"hidden": 256},
        "train": {"batch_size": args.batch_size, "max_batches": args.batches,
                  "val_every": max(1, args.batches // 5), "device": args.device},
        "validation": {"every": 4},
        "channel": {"url": "tcp://127.0.0.1:0"},
        "output": {"dir": str(out)}})
    log: list = []
    th = None
    if d.rank == 0:
        th = threading.Thread(target=feed, args=(out, d.world, args.sims, args.n, args.steps,
                                                 f"gpu-{uuid.uuid4().hex[:8]}", log), daemon=True)
        th.start()
    t0 = time.monotonic()
    from onlinetrain import trainer
    created = False
    if d.world == 1:  # one rank, but in a process group: DDP and the collectives run for real
        dev = trainer.resolve_device(cfg, d)
        created = ddp.init_group(d, ddp.backend_for(dev), 300)
    try:
        s = trainer.train(cfg, env=d, on_progress=lambda m: print(
            f"batch {m['batch']:>6}  samples {m['samples']:>7}  loss {m['train_loss']:.4g}  "
            f"val {m['val_mse']}  data wait {m['data_wait_frac']}", flush=True)
            if d.rank == 0 else None)
    finally:
        if created:
            ddp.destroy_group()
    wall = time.monotonic() - t0
    if th is not None:
        th.join(180)
    if d.rank == 0:
        fig = {"gpus": d.world, "device": torch.cuda.get_device_name(0) if args.device == "cuda"
               else "cpu (gloo)",
               "samples_per_s_trained": round(s["batches"] * args.batch_size * d.world / wall, 1),
               "samples_per_s_received": round(s["samples_received"] / wall, 1),
               "val_mse": s["val_mse"], "mean_field_mse": s["mean_field_mse"],
               "data_wait_frac": s["data_wait_frac"], "backend": ddp.backend_for(
                   trainer.resolve_device(cfg, d)),
               "val_vs_mean_field": None if not s["mean_field_mse"] else
               round(s["val_mse"] / s["mean_field_mse"], 4), "wall_s": round(wall, 2),
               "feeder": log}
        print(f"{'GPUs':<6}{'trained samples/s':>20}{'received samples/s':>21}{'val/mean-field':>16}")
        print(f"{d.world:<6}{fig['samples_per_s_trained']:>20}{fig['samples_per_s_received']:>21}"
              f"{fig['val_vs_mean_field']!s:>16}")
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
