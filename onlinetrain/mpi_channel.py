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

import json
import logging
import os
import socket
import sys
import time

import numpy as np

from . import frame as fr
from .shm_channel import ChannelError, Empty

log = logging.getLogger(__name__)

PRODUCER, CONSUMER = 1, 2
TAG_FRAME, TAG_RDV, TAG_SETS = 7701, 7702, 7703
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


def share_read(read, stdin: bool = False) -> list:
    """Like `share`, but only the first producer rank calls `read()` and sends the sets, as JSON
    text, to the other producers. `stdin`: read() reads stdin, which mpiexec gives to rank 0
    alone; when rank 0 is not a producer, the job is ended with an error saying so."""
    MPI, (roles, me) = _mpi(), world_roles(PRODUCER)
    prods = [int(r) for r in np.flatnonzero(roles == PRODUCER)]
    comm = MPI.COMM_WORLD
    if stdin and prods[0] != 0:
        if me == prods[0]:  # the other ranks would wait for sets forever: end the whole job
            sys.stderr.write("Error: the parameter sets come from stdin, which mpiexec gives to "
                             "rank 0 only, and rank 0 of this MPI job is not `ot simulate`: put "
                             "`ot simulate` first on the mpiexec line, or pass --params FILE\n")
            sys.stderr.flush()
            comm.Abort(2)
        else:
            comm.Barrier()  # never returns: the Abort above ends the job
    if me == prods[0]:
        sets = read()
        raw = np.frombuffer(json.dumps(sets).encode(), np.uint8)
        for p in prods[1:]:
            comm.Send([np.array([raw.size], np.int64), MPI.INT64_T], dest=p, tag=TAG_SETS)
            comm.Send([raw, MPI.BYTE], dest=p, tag=TAG_SETS)
    else:
        n = np.zeros(1, np.int64)
        comm.Recv([n, MPI.INT64_T], source=prods[0], tag=TAG_SETS)
        raw = np.empty(int(n[0]), np.uint8)
        comm.Recv([raw, MPI.BYTE], source=prods[0], tag=TAG_SETS)
        sets = json.loads(raw.tobytes())
    return sets[prods.index(me)::len(prods)]


def rendezvous_address() -> str:
    """An address of this host that other hosts can reach: not 127.x (Debian maps the host name
    to 127.0.1.1), else the source address of the default route."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for *_, sa in infos:
        if not sa[0].startswith("127."):
            return sa[0]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, the route is looked up
            addr = s.getsockname()[0]
    except OSError:
        addr = "127.0.0.1"
    if addr.startswith("127."):
        raise ChannelError("cannot find a non-loopback address of this host for the trainers' "
                           "rendezvous: set MASTER_ADDR", addr)
    return addr


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
        """The DDP rendezvous of the trainer ranks, through trainer 0 (point-to-point): every
        trainer sends it its host name; it starts the TCP store on a port the kernel picks (held
        from then on: no bind-then-close race), and answers each with its address, that port and
        the trainer's local rank (its index among the trainers on its host, for cuda:N). The
        address is 127.0.0.1 when all trainers share one host, else MASTER_ADDR or a
        non-loopback address of this host (rendezvous_address)."""
        from .distenv import DistEnv  # noqa: PLC0415
        MPI = _mpi()
        msg = np.zeros(256, np.uint8)
        host = socket.gethostname().encode()[:255]
        store = None
        if self.index == 0:
            hosts = [host]
            for t in self.trainers[1:]:
                self.comm.Recv([msg, MPI.BYTE], source=t, tag=TAG_RDV)
                hosts.append(bytes(msg).rstrip(b"\0"))
            one_host = len(set(hosts)) == 1
            addr = "127.0.0.1" if one_host and "MASTER_ADDR" not in os.environ else \
                os.environ.get("MASTER_ADDR") or rendezvous_address()
            import torch.distributed as dist  # noqa: PLC0415
            store = dist.TCPStore("0.0.0.0" if not one_host else addr,
                                  int(os.environ.get("MASTER_PORT", "0")), len(self.trainers),
                                  is_master=True, wait_for_workers=False)
            port = store.port
            for i, t in enumerate(self.trainers):
                local = hosts[:i].count(hosts[i])
                raw = f"{addr} {port} {local}".encode()
                msg[:] = 0
                msg[:len(raw)] = np.frombuffer(raw, np.uint8)
                if i == 0:
                    mine = bytes(msg)
                else:
                    self.comm.Send([msg, MPI.BYTE], dest=t, tag=TAG_RDV)
        else:
            msg[:len(host)] = np.frombuffer(host, np.uint8)
            self.comm.Send([msg, MPI.BYTE], dest=self.trainers[0], tag=TAG_RDV)
            self.comm.Recv([msg, MPI.BYTE], source=self.trainers[0], tag=TAG_RDV)
            mine = bytes(msg)
        addr, port, local = mine.rstrip(b"\0").decode().split()
        return DistEnv(self.index, len(self.trainers), int(local), addr, int(port), "mpi",
                       store=store)

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
