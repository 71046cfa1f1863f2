"""Multi-rank plumbing for the training loop: process group, collectives on the model's device, DDP.

The loop itself (one loop for 1..N ranks) is trainer.py; this module only knows how ranks find
each other and talk. Rank and world come from torchrun, Slurm or the MPI job (distenv.py).

    d = env_from(os.environ)                          # DistEnv(rank, world, local_rank, ...)
    url = rank_url("tcp://10.0.0.5:5555", d)          # each rank has its own channel
    created = init_group(d, backend_for(device), 300)
    coll = Collectives(device, d.world)
    have, rows = coll.sum_ints([1, 32])               # int64 all-reduce, on `device`
    model = wrap(model, device, d.world)              # DDP when world > 1

Every collective tensor lives on the model's device: NCCL refuses CPU tensors. Without a process group
(one rank) the collectives are local: no copy, no host sync beyond what the caller reads.
A collective that fails because a peer died raises DistError (see `lost_peer`).
"""
from __future__ import annotations

import datetime
import logging
import os

import numpy as np

from .distenv import DistEnv, DistError, env_from, first_host  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def wants_distributed(cfg, environ=None) -> bool:
    """True when the run has several ranks (torchrun, srun) or uses an MPI channel."""
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


def backend_for(device) -> str:
    return "nccl" if getattr(device, "type", str(device)).startswith("cuda") else "gloo"


def init_group(d: DistEnv, backend: str, timeout_s: float) -> bool:
    """Initialise the default process group unless it exists; True if this call created it (so
    the caller destroys only what it initialised)."""
    import torch.distributed as dist  # noqa: PLC0415
    if dist.is_initialized():
        return False
    try:
        dist.init_process_group(backend, init_method=f"tcp://{d.master_addr}:{d.master_port}",
                                rank=d.rank, world_size=d.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # torch raises DistStoreError, RuntimeError, ValueError...
        raise DistError(f"rank {d.rank}/{d.world}: could not join the process group at "
                        f"{d.master_addr}:{d.master_port} within {timeout_s:g} s ({e}); are all "
                        f"ranks started and MASTER_ADDR/MASTER_PORT right?", d.rank) from e
    return True


def destroy_group():
    import torch.distributed as dist  # noqa: PLC0415
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # a dead peer can make this fail too; nothing left to do
            log.debug("destroy_process_group: %s", e)


def lost_peer(rank: int, e: BaseException) -> DistError:
    """The error a rank raises when a collective failed (a peer died, the network went away)."""
    return DistError(f"rank {rank}: a collective failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); another rank has probably "
                     f"died: the job stops; restart every rank with --resume to continue from "
                     f"the newest checkpoint", rank)


def is_dist_error(e: BaseException) -> bool:
    """True for an error of torch.distributed (DDP's gradient all-reduce inside backward())."""
    import torch.distributed as dist  # noqa: PLC0415
    return isinstance(e, getattr(dist, "DistError", ())) or \
        any(s in str(e) for s in ("Gloo", "gloo", "NCCL", "Connection", "connection"))


class Collectives:
    """The loop's collectives, all on `device` (the model's). world == 1: local, no group."""

    def __init__(self, device, world: int, rank: int = 0):
        self.device, self.world, self.rank = device, world, rank
        self.grouped = grouped()  # one rank in a process group (bench/gpu_check.py) talks too

    def _reduce(self, values, dtype, op: str) -> np.ndarray:
        a = np.asarray(values, dtype)
        if not self.grouped:
            return a
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415
        t = torch.as_tensor(a).to(self.device)
        try:
            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                   "min": dist.ReduceOp.MIN}[op])
        except RuntimeError as e:  # DistBackendError and friends derive from it
            raise lost_peer(self.rank, e) from e
        return t.cpu().numpy()

    def sum(self, values) -> np.ndarray:
        """float64 element-wise sum over ranks."""
        return self._reduce(values, np.float64, "sum")

    def sum_ints(self, values) -> list[int]:
        """int64 element-wise sum over ranks (the loop's one small collective per step)."""
        return [int(v) for v in self._reduce(values, np.int64, "sum")]

    def max_ints(self, values) -> list[int]:
        return [int(v) for v in self._reduce(values, np.int64, "max")]

    def min_ints(self, values) -> list[int]:
        return [int(v) for v in self._reduce(values, np.int64, "min")]


def grouped() -> bool:
    """True when a default process group exists (the loop then uses it, even with one rank)."""
    import torch.distributed as dist  # noqa: PLC0415
    return dist.is_available() and dist.is_initialized()


def wrap(model, device, world: int):
    """DistributedDataParallel around `model` in a process group, else the model itself."""
    if world == 1 and not grouped():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
