"""Channel URLs and the two ends of a channel, whatever the transport.

    shm://NAME         POSIX shared-memory ring on this node (onlinetrain.shm_channel)
    tcp://HOST:PORT    TCP stream of the same binary frames (onlinetrain.tcp_channel); a
                       consumer given port 0 listens on any free port
    mpi://ROLE         MPI point-to-point inside one MPMD job (onlinetrain.mpi_channel)

    prod = open_producer("shm://demo", timeout=30)   # put(frame), close()
    cons = open_consumer("shm://demo", capacity=64 << 20)  # get(), get_many(), close()
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .shm_channel import ChannelError, RingConsumer, RingProducer

_URL = re.compile(r"^(?P<scheme>shm|tcp|mpi)://(?P<rest>.+)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


@dataclass(frozen=True)
class ChannelURL:
    scheme: str
    name: str = ""  # shm
    host: str = ""  # tcp
    port: int = 0

    def __str__(self):
        if self.scheme == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"{self.scheme}://{self.name}"


def parse_url(url: str) -> ChannelURL:
    m = _URL.match(url or "")
    if not m:
        raise ChannelError(f"bad channel URL {url!r}: use shm://NAME, tcp://HOST:PORT or "
                           f"mpi://ROLE", url)
    rest = m["rest"]
    if m["scheme"] == "mpi":
        if not _NAME.match(rest):
            raise ChannelError(f"bad mpi channel {url!r}: use mpi://ROLE, e.g. mpi://train", url)
        return ChannelURL("mpi", name=rest)
    if m["scheme"] == "shm":
        if not _NAME.match(rest):
            raise ChannelError(f"bad shm channel name {rest!r} in {url!r}: use letters, digits, "
                               f"'.', '-' and '_' (at most 200)", url)
        return ChannelURL("shm", name=rest)
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 <= int(port) < 65536:
        raise ChannelError(f"bad tcp channel {url!r}: use tcp://HOST:PORT with 0 <= PORT < 65536",
                           url)
    return ChannelURL("tcp", host=host.strip("[]"), port=int(port))


def open_producer(url: str, timeout: float = 30.0, **kw):
    """The sending end: an object with put(frame, timeout=None) and close()."""
    u = parse_url(url)
    if u.scheme == "shm":
        return RingProducer.attach(u.name, timeout=timeout)
    if u.scheme == "mpi":
        from . import mpi_channel  # noqa: PLC0415
        return mpi_channel.MpiProducer.connect(url)
    from . import tcp_channel  # noqa: PLC0415 (optional transport, loaded on use)
    return tcp_channel.TcpProducer.connect(u.host, u.port, timeout=timeout, **kw)


def open_consumer(url: str, capacity: int = 64 << 20, **kw):
    """The receiving end: an object with get(timeout), get_many(n, timeout) and close()."""
    u = parse_url(url)
    if u.scheme == "shm":
        return RingConsumer.create(u.name, capacity=capacity)
    if u.scheme == "mpi":
        from . import mpi_channel  # noqa: PLC0415
        return mpi_channel.MpiConsumer.listen(url)
    from . import tcp_channel  # noqa: PLC0415
    return tcp_channel.TcpConsumer.listen(u.host, u.port, **kw)
