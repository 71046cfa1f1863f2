"""mpi://ROLE channels: frames over MPI point-to-point inside one MPMD job (needs the `mpi` extra).

    mpiexec -n 2 ot simulate --to mpi://train --params p.jsonl : -n 2 ot train --from mpi://train

Every process of the job declares once whether it produces or consumes (one Allgather of an
int32 over COMM_WORLD, no pickle). Consumers are the trainer ranks in COMM_WORLD order; producer
k runs every n-th parameter set from index k (`share`) and sends simulation `sim_id` to trainer
`sim_id % n_trainers`, STREAM_END to all of them. A frame is one MPI message of raw bytes in the
onlinetrain.frame format, sent with MPI_Ssend, so a producer blocks until the trainer takes it
(backpressure). Simulations are children of `ot simulate`, not MPI ranks: they write to a local
ring and a relay thread forwards (onlinetrain.relay.relayed). Trainer ranks learn the DDP
rendezvous from trainer 0 (its address and a free port, or MASTER_ADDR/MASTER_PORT if set).

    prod = MpiProducer.connect("mpi://train"); prod.put(frame); prod.close()
    cons = MpiConsumer.listen("mpi://train"); f = cons.get(timeout=1.0); env = cons.dist_env()
"""
from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np

from . import frame as fr
from .shm_channel import ChannelError, Empty

log = logging.getLogger(__name__)

PRODUCER, CONSUMER = 1, 2
TAG_FRAME, TAG_RDV = 7701, 7702
_roles: dict = {}


def _mpi():
    try:
        from mpi4py import MPI  # noqa: PLC0415
    except ImportError:
        raise ChannelError("mpi:// channels need mpi4py and an MPI library: `pip install "
                           "onlinetrain[mpi] mpich` (or your cluster's MPI)", "mpi") from None
    return MPI


def world_roles(role: int) -> tuple[np.ndarray, int]:
    """(role of every COMM_WORLD rank, my rank); collective on first call, cached after."""
    if "roles" not in _roles:
        MPI = _mpi()
        comm = MPI.COMM_WORLD
        allr = np.empty(comm.Get_size(), np.int32)
        comm.Allgather(np.array([role], np.int32), allr)
        _roles.update(roles=allr, rank=comm.Get_rank(), role=role)
    if _roles["role"] != role:
        raise ChannelError("this process already joined the MPI channel with the other role", role)
    return _roles["roles"], _roles["rank"]


def share(sets: list) -> list:
    """The parameter sets this producer rank runs: every n-th from its index among producers."""
    roles, me = world_roles(PRODUCER)
    prods = list(np.flatnonzero(roles == PRODUCER))
    return sets[prods.index(me)::len(prods)]


class MpiProducer:
    def __init__(self, url: str, trainers: list[int]):
        self.name, self.trainers = url, trainers
        self.comm = _mpi().COMM_WORLD

    @classmethod
    def connect(cls, url: str, **_ignored) -> "MpiProducer":
        roles, _ = world_roles(PRODUCER)
        trainers = [int(r) for r in np.flatnonzero(roles == CONSUMER)]
        if not trainers:
            raise ChannelError(f"{url}: no rank of this MPI job trains (launch `ot train --from "
                               f"{url}` in the same mpiexec, after ':')", url)
        return cls(url, trainers)

    def _send(self, f: fr.Frame, dest: int):
        buf = np.empty(fr.encoded_size(f), np.uint8)
        fr.write_into(f, memoryview(buf))
        self.comm.Ssend([buf, _mpi().BYTE], dest=dest, tag=TAG_FRAME)

    def put(self, f: fr.Frame, timeout: float | None = None) -> None:
        if f.kind == fr.STREAM_END:
            for t in self.trainers:
                self._send(f, t)
        else:
            self._send(f, self.trainers[int(f.sim_id) % len(self.trainers)])

    def close(self):
        pass


class MpiConsumer:
    def __init__(self, url: str, roles: np.ndarray, me: int):
        self.name = url
        self.comm = _mpi().COMM_WORLD
        self.trainers = [int(r) for r in np.flatnonzero(roles == CONSUMER)]
        self.n_producers = int((roles == PRODUCER).sum())
        self.index = self.trainers.index(me)
        self.rejected = 0
        self._error: fr.FrameError | None = None  # found by get_many after it had frames

    @classmethod
    def listen(cls, url: str, **_ignored) -> "MpiConsumer":
        roles, me = world_roles(CONSUMER)
        if not (roles == PRODUCER).any():
            log.warning("%s: no rank of this MPI job produces frames", url)
        return cls(url, roles, me)

    def dist_env(self):
        """The DDP rendezvous of the trainer ranks (trainer 0 picks it, point-to-point to others)."""
        from .distenv import DistEnv  # noqa: PLC0415
        MPI = _mpi()
        msg = np.zeros(256, np.uint8)
        if self.index == 0:
            addr = os.environ.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname())
            port = os.environ.get("MASTER_PORT")
            if not port:
                with socket.socket() as s:
                    s.bind((addr, 0))
                    port = s.getsockname()[1]
            raw = f"{addr} {port}".encode()
            msg[:len(raw)] = np.frombuffer(raw, np.uint8)
            for t in self.trainers[1:]:
                self.comm.Send([msg, MPI.BYTE], dest=t, tag=TAG_RDV)
        else:
            self.comm.Recv([msg, MPI.BYTE], source=self.trainers[0], tag=TAG_RDV)
        addr, port = bytes(msg).rstrip(b"\0").decode().split()
        return DistEnv(self.index, len(self.trainers), 0, addr, int(port), "mpi")

    def _next(self):
        if self._error is not None:
            e, self._error = self._error, None
            raise e
        MPI = _mpi()
        st = MPI.Status()
        if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_FRAME, status=st):
            return None
        buf = np.empty(st.Get_count(MPI.BYTE), np.uint8)
        self.comm.Recv([buf, MPI.BYTE], source=st.Get_source(), tag=TAG_FRAME)
        try:
            return fr.decode(buf, copy=False)
        except fr.FrameError as e:
            self.rejected += 1
            log.warning("%s: malformed frame from MPI rank %d: %s", self.name, st.Get_source(), e)
            raise

    def get(self, timeout: float | None = None, copy: bool = True) -> fr.Frame:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 1e-5
        while True:
            f = self._next()
            if f is not None:
                return f
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty(f"no frame on {self.name} within {timeout:g} s", self.name)
            time.sleep(delay)
            delay = min(1e-3, delay * 2)

    def get_nowait(self, copy: bool = True) -> fr.Frame:
        return self.get(0.0, copy)

    def get_many(self, max_frames: int = 64, timeout: float | None = None,
                 copy: bool = True) -> list[fr.Frame]:
        out = [self.get(timeout, copy)]
        while len(out) < max_frames:
            try:
                f = self._next()
            except fr.FrameError as e:
                self._error = e  # raised by the next call; the frames taken are returned
                break
            if f is None:
                break
            out.append(f)
        return out

    def close(self):
        pass
