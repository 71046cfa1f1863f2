"""Who am I in a multi-rank job: rank, world size and rendezvous from torchrun, Slurm or MPI.

Pure (no torch, no training code), so a transport may use it: mpi_channel builds the DistEnv of its
trainer ranks, ddp.py joins the process group it describes.

    d = env_from(os.environ)     # DistEnv(rank=0, world=1, ...) outside torchrun / srun
    d.rank, d.world, d.local_rank, d.master_addr, d.master_port, d.source
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import OTError


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
