"""Multi-rank training with torch DDP (gloo on CPU, NCCL on GPU): who am I, and the rank's loop.

Rank and world come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), from
Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST -> the first node is the
master) or, for `ot train --from mpi://ROLE`, from the MPI job itself. `ot train` switches to
`train()` below when the world has more than one rank; nothing changes for one rank.

    torchrun --nproc-per-node 2 -m onlinetrain train --from tcp://10.0.0.5:5555 --config s.toml
    # rank r listens on tcp://10.0.0.5:(5555 + LOCAL_RANK) (or $OT_LISTEN_HOST), shm://NAME-r<r>

Each rank has its own channel, Receiver and buffer, so every rank trains on different
simulations (the producers or `ot relay` spread them). Each step the ranks agree, in one
all-reduce, whether every rank can contribute: a rank whose stream ended and whose buffer is
exhausted contributes an empty batch, a rank still waiting for data makes everyone wait (a batch
it already drew is kept for the next step), and the run ends when every rank is exhausted, when
`train.max_batches` is reached, or when any rank stops (error or signal). The loss is the sum of
per-sample errors over the global batch divided by its size, so DDP's gradient average equals
the gradient of one rank training on the union of the batches. Only rank 0 writes metrics, the
checkpoint and the summary; validation loss and counters are all-reduced.
"""
from __future__ import annotations

from .errors import OTError

import dataclasses
import datetime
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class DistError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"
    store: object = field(default=None, compare=False, repr=False)  # a TCPStore already made


def _int(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise DistError(f"{key}={env[key]!r} is not an integer", env[key]) from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    s = nodelist.strip()
    depth, end = 0, len(s)
    for i, ch in enumerate(s):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = s[:end]
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", first)
    if m:
        first = m[1] + re.split(r"[-,]", m[2])[0] + m[3]
    if not first or "[" in first or "]" in first:
        raise DistError(f"cannot read the first host of Slurm node list {nodelist!r}", nodelist)
    return first


def env_from(env: dict) -> DistEnv:
    """Rank and world from torchrun's or Slurm's variables (pure: pass os.environ or a literal)."""
    if "WORLD_SIZE" in env or "RANK" in env:
        missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
        if missing:
            raise DistError(f"{missing[0]} is not set but {'RANK' if missing[0] != 'RANK' else 'WORLD_SIZE'}"
                            f" is: launch with torchrun or set both", missing[0])
        d = DistEnv(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                    _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                    env.get("MASTER_ADDR", "127.0.0.1"),
                    _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500, "torchrun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise DistError("SLURM_PROCID is set but not SLURM_JOB_NODELIST: run under srun",
                            "SLURM_JOB_NODELIST")
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else \
            29500 + (_int(env, "SLURM_JOB_ID") % 1000 if "SLURM_JOB_ID" in env else 0)
        d = DistEnv(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                    _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                    env.get("MASTER_ADDR") or first_host(nodes), port, "slurm")
    else:
        return DistEnv()
    if d.world < 1 or not 0 <= d.rank < d.world:
        raise DistError(f"rank {d.rank} is not in 0..{d.world - 1} (world size {d.world})", d.rank)
    if not 0 < d.master_port < 65536:
        raise DistError(f"master port {d.master_port} is not a TCP port", d.master_port)
    return d


def wants_distributed(cfg, environ=None) -> bool:
    """True when `ot train` should run this module's loop (several ranks, or an MPI channel)."""
    return env_from(os.environ if environ is None else environ).world > 1 or \
        cfg.channel_url.startswith("mpi://")


def rank_url(url: str, d: DistEnv, environ=None) -> str:
    """The channel of rank `d`: tcp port + local rank (host from $OT_LISTEN_HOST if set),
    shm name + '-r<rank>', mpi unchanged."""
    from .channel import parse_url  # noqa: PLC0415
    environ = os.environ if environ is None else environ
    u = parse_url(url)
    if d.world == 1 or u.scheme == "mpi":
        return url
    if u.scheme == "shm":
        return f"shm://{u.name}-r{d.rank}"
    host = environ.get("OT_LISTEN_HOST") or u.host
    return f"tcp://{host}:{u.port + d.local_rank if u.port else 0}"


def init_group(d: DistEnv, backend: str, timeout_s: float) -> bool:
    """Initialise the default process group unless it exists; True if this call created it (so
    the caller destroys only what it initialised)."""
    import torch.distributed as dist  # noqa: PLC0415
    if dist.is_initialized():
        return False
    try:
        if d.store is None and d.source == "mpi":  # rank 0 holds the store (mpi_channel)
            d = dataclasses.replace(d, store=dist.TCPStore(
                d.master_addr, d.master_port, d.world, is_master=False,
                timeout=datetime.timedelta(seconds=timeout_s)))
        where = {"store": d.store} if d.store is not None else \
            {"init_method": f"tcp://{d.master_addr}:{d.master_port}"}
        dist.init_process_group(backend, rank=d.rank, world_size=d.world,
                                timeout=datetime.timedelta(seconds=timeout_s), **where)
    except Exception as e:  # torch raises DistStoreError, RuntimeError, ValueError...
        raise DistError(f"rank {d.rank}/{d.world}: could not join the process group at "
                        f"{d.master_addr}:{d.master_port} within {timeout_s:g} s ({e}); are all "
                        f"ranks started and MASTER_ADDR/MASTER_PORT right?", d.rank) from e
    return True


def _sum(values, device, op=None) -> np.ndarray:
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    t = torch.tensor(np.asarray(values, np.float64), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t.cpu().numpy()


def _val_sums(model, val, device) -> tuple[float, int]:
    from .trainer import _validate  # noqa: PLC0415
    mse = _validate(model, val, device)
    return (0.0, 0) if mse is None else (mse * len(val), len(val))


def _mean_field(rx, device) -> float | None:
    n = _sum([rx.y_count], device)[0]
    import torch.distributed as dist  # noqa: PLC0415
    dim = int(_sum([0 if rx.y_sum is None else rx.y_sum.size], device, dist.ReduceOp.MAX)[0])
    y_sum = np.zeros(dim) if rx.y_sum is None or rx.y_sum.size != dim else rx.y_sum
    totals = _sum(y_sum, device) if dim else np.zeros(0)
    sse, cnt = 0.0, 0
    if rx.val and n:
        ys = np.stack([v[1] for v in rx.val.values()])
        sse, cnt = float(((ys - totals / n) ** 2).mean(axis=1).sum()), len(ys)
    sse, cnt = _sum([sse, cnt], device)
    return float(sse / cnt) if cnt else None


def train(cfg, consumer=None, expected_sims: int | None = None, on_progress=None,
          stop_event=None, env: DistEnv | None = None) -> dict:
    """One rank of a multi-rank run (same contract as trainer.train; rank 0 returns the summary
    and writes it, other ranks return the same summary without writing anything)."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    from .channel import open_consumer  # noqa: PLC0415
    from .reservoir import make_buffer  # noqa: PLC0415
    from .surrogate import import_function  # noqa: PLC0415
    from .checkpoint import write_torch  # noqa: PLC0415
    from .trainer import Receiver, TrainError, model_dims  # noqa: PLC0415

    t0 = time.monotonic()
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    own = consumer is None
    if own:
        if cfg.channel_url.startswith("mpi://") and env is None:
            consumer = open_consumer(cfg.channel_url)
            env = consumer.dist_env()
            cfg.simulate.producers = consumer.n_producers  # every simulate rank ends once
        env = env or env_from(os.environ)
        consumer = consumer or open_consumer(rank_url(cfg.channel_url, env),
                                             capacity=cfg.channel.ring_mb << 20,
                                             study_dir=cfg.output.dir)
    env = env or env_from(os.environ)
    if getattr(consumer, "port", None) is not None:  # port 0 listeners: tell the producers
        (out / f"endpoint-rank{env.rank}").write_text(f"tcp://{consumer.host}:{consumer.port}\n")
    device = torch.device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    writer = env.rank == 0
    created = False
    rx = None
    try:
        created = init_group(env, backend, float(os.environ.get("OT_DIST_TIMEOUT", "300")))
        adapter = import_function(cfg.model.adapter)
        builder = import_function(cfg.model.builder)
        buf = make_buffer(cfg.buffer.kind, cfg.buffer.capacity, cfg.buffer.watermark,
                          cfg.buffer.seed + env.rank)
        rx = Receiver(consumer, buf, cfg, adapter, expected_sims)
        rx.start()
        metrics = open(out / "metrics.jsonl", "w") if writer else None
        model = ddp_model = opt = sched = None
        pending, batches, sse_acc, n_acc, val_mse, n_stop = None, 0, 0.0, 0, None, 0
        dims = torch.zeros(2, dtype=torch.int64)
        local_error: BaseException | None = None
        while batches < cfg.train.max_batches:
            if pending is None:
                pending = buf.get_batch(cfg.train.batch_size, timeout=0.05)
            stop = stop_event is not None and stop_event.is_set()
            if rx.error is not None and local_error is None:
                local_error = TrainError(f"receiver failed: {rx.error}")
            exhausted = pending is None and buf.exhausted
            flags = torch.tensor([pending is not None, exhausted, stop or local_error is not None,
                                  0 if pending is None else len(pending.x)], dtype=torch.int64)
            dist.all_reduce(flags)
            n_have, n_exh, n_stop, n_rows = (int(v) for v in flags)
            if n_stop:
                break
            if n_exh == env.world:
                break
            if n_have == 0 or n_have + n_exh < env.world:
                continue
            if model is None:
                if pending is not None:
                    dims = torch.tensor([pending.x.shape[1], pending.y.shape[1]])
                dist.all_reduce(dims, op=dist.ReduceOp.MAX)
                model = builder(int(dims[0]), int(dims[1]), cfg).to(device)
                ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
                opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
                sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.train.lr_milestones,
                                                             cfg.train.lr_gamma)
            if pending is not None:
                x, y = torch.from_numpy(pending.x).to(device), torch.from_numpy(pending.y).to(device)
            else:
                x = torch.zeros((0, int(dims[0])), device=device)
                y = torch.zeros((0, int(dims[1])), device=device)
            sse = ((ddp_model(x) - y) ** 2).mean(dim=1).sum()
            loss = sse * (env.world / n_rows)  # DDP averages over ranks: mean over the union
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            pending = None
            batches += 1
            sse_acc += float(sse.detach())
            n_acc += len(x)
            if batches % cfg.train.val_every == 0:
                v_sse, v_n = _sum(_val_sums(model, rx.val, device), device)
                t_sse, t_n = _sum([sse_acc, n_acc], device)
                counts = _sum([rx.samples, len(buf), len(rx.sims_done)], device)
                val_mse = float(v_sse / v_n) if v_n else None
                sse_acc, n_acc = 0.0, 0
                if writer:
                    m = {"batch": batches, "time": round(time.monotonic() - t0, 3),
                         "lr": sched.get_last_lr()[0], "train_loss": float(t_sse / max(t_n, 1)),
                         "val_mse": val_mse, "samples": int(counts[0]), "buffer": int(counts[1]),
                         "sims_done": int(counts[2]), "ranks": env.world}
                    metrics.write(json.dumps(m) + "\n")
                    metrics.flush()
                    if on_progress:
                        on_progress(m)
        if local_error is not None:
            raise local_error
        if stop_event is not None and stop_event.is_set():
            raise KeyboardInterrupt
        if n_stop:
            raise TrainError(f"rank {env.rank}: another rank stopped the run (error or signal); "
                             f"see its log")
        rx.stop_event.set()
        rx.join(timeout=5)
        if model is None:
            raise TrainError(f"no training sample arrived on any of the {env.world} ranks "
                             f"({rx.frames} frames on rank {env.rank}): are simulations sending "
                             f"to every rank's channel?")
        v_sse, v_n = _sum(_val_sums(model, rx.val, device), device)
        val_mse = float(v_sse / v_n) if v_n else None
        tot = _sum([rx.samples, len(rx.val), rx.duplicates, rx.rejected, len(rx.sims_done),
                    len(rx.sims_failed), getattr(consumer, "abandoned", 0)], device).astype(int)
        summary = {"val_mse": val_mse, "mean_field_mse": _mean_field(rx, device),
                   "batches": batches, "samples_received": int(tot[0]),
                   "validation_samples": int(tot[1]), "duplicates_dropped": int(tot[2]),
                   "frames_rejected": int(tot[3]), "sims_done": int(tot[4]),
                   "sims_failed": int(tot[5]), "buffer": buf.stats(),
                   "wall_s": round(time.monotonic() - t0, 3), "abandoned_slots": int(tot[6]),
                   "ranks": env.world, "rank_samples": rx.samples}
        if writer:
            write_torch(out / "checkpoint.pt", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "batches": batches,
                "dims": model_dims(model), "config": cfg.to_dict(), "summary": summary,
                "ranks": env.world})
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        if rx is not None:
            rx.stop_event.set()
            rx.join(timeout=5)
        if writer and "metrics" in locals() and metrics is not None:
            metrics.close()
        if created and dist.is_initialized():
            dist.destroy_process_group()
        if own and consumer is not None:
            consumer.close()
