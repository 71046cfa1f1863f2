"""On-node relay: drain this node's shm ring and forward every frame to trainer ranks (TCP or MPI).

Simulations keep writing to their local ring (one copy, no sockets per simulation); one relay
process per node owns the ring and forwards frames over one authenticated connection per trainer
rank. Frames go to rank `sim_id % ranks` ("round-robin", every rank gets different simulations)
or all to rank `pin` ("pinned", e.g. one relay per node pinned to its node's rank); STREAM_END
goes to every rank. The relay ends after `producers` STREAM_END frames (one per `ot simulate`).

    ot relay shm://sims tcp://10.0.0.5:5555 tcp://10.0.0.5:5556 --token-file s/secret.token
    stats = run_relay("shm://sims", ["tcp://10.0.0.5:5555"], producers=1)

    with relayed("tcp://10.0.0.5:5555") as local:   # built into `ot simulate --relay`
        run_simulations(sets, solver, local, ...)  # children write to shm://<local ring>
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from . import frame as fr
from .channel import parse_url
from .shm_channel import C_CLOSED, ChannelError, Empty, RingConsumer

log = logging.getLogger(__name__)

SPREADS = ("round-robin", "pinned")


class RelayError(ChannelError):
    def __init__(self, message: str, value=None):
        super().__init__(message, None)
        self.value = value


def route(sim_id: int, ranks: int, spread: str = "round-robin", pin: int = 0) -> int:
    """The trainer rank (index into the destinations) that gets simulation `sim_id`."""
    if ranks < 1:
        raise RelayError(f"{ranks} destinations: give at least one trainer URL", ranks)
    if spread == "round-robin":
        return int(sim_id) % ranks
    if spread == "pinned":
        if not 0 <= pin < ranks:
            raise RelayError(f"pin {pin} is not a destination index (0..{ranks - 1})", pin)
        return pin
    raise RelayError(f"unknown spread {spread!r}: use one of {SPREADS}", spread)


def open_destination(url: str, timeout: float, **kw):
    """A producer for one trainer rank: tcp://HOST:PORT or mpi://RANK (see mpi_channel)."""
    if url.startswith("mpi://"):
        from . import mpi_channel  # noqa: PLC0415
        return mpi_channel.MpiProducer.connect(url)
    u = parse_url(url)
    if u.scheme != "tcp":
        raise RelayError(f"relay destination {url!r} must be tcp://HOST:PORT or mpi://RANK", url)
    from .tcp_channel import TcpProducer  # noqa: PLC0415
    return TcpProducer.connect(u.host, u.port, timeout=timeout, **kw)


def run_relay(src: str, dsts: list[str], spread: str = "round-robin", pin: int = 0,
              producers: int = 1, connect_timeout: float = 30.0, ring_mb: int = 64,
              stop_event: threading.Event | None = None, consumer=None, ready=None,
              **token_kw) -> dict:
    """Forward frames from ring `src` (created here unless `consumer` is given) until `producers`
    STREAM_END frames have passed or `stop_event` is set. Returns counters."""
    if not dsts:
        raise RelayError("no destination: give at least one trainer URL", dsts)
    route(0, len(dsts), spread, pin)  # validates spread and pin before anything is opened
    u = parse_url(src)
    if u.scheme != "shm":
        raise RelayError(f"relay source {src!r} must be a local ring shm://NAME", src)
    stats = {"frames": 0, "bytes": 0, "rejected": 0, "stream_ends": 0, "per_rank": [0] * len(dsts)}
    t0 = time.monotonic()
    outs = []
    own = consumer is None
    try:
        if own:
            consumer = RingConsumer.create(u.name, capacity=ring_mb << 20)
        if ready is not None:
            ready.set()
        outs = [open_destination(d, connect_timeout, **token_kw) for d in dsts]
        log.info("relay %s -> %s (%s)", src, ", ".join(dsts), spread)
        while stats["stream_ends"] < producers:
            if stop_event is not None and stop_event.is_set():
                break
            try:
                frames = consumer.get_many(64, timeout=0.2, copy=False)
            except Empty:
                continue
            except fr.FrameError as e:
                stats["rejected"] += 1
                log.warning("relay: dropped a malformed frame from the ring: %s", e)
                continue
            for f in frames:
                try:
                    if f.kind == fr.STREAM_END:
                        stats["stream_ends"] += 1
                        for p in outs:
                            p.put(f)
                    else:
                        r = route(f.sim_id, len(outs), spread, pin)
                        outs[r].put(f)
                        stats["per_rank"][r] += 1
                    stats["frames"] += 1
                    stats["bytes"] += f.array.nbytes
                finally:
                    f.release()
    finally:
        for p in outs:
            p.close()
        if own and consumer is not None:
            consumer.close()
    stats["wall_s"] = round(time.monotonic() - t0, 3)
    return stats


@contextlib.contextmanager
def relayed(url: str, connect_timeout: float = 30.0, ring_mb: int = 64, spread: str = "round-robin",
            pin: int = 0, **token_kw):
    """Run a relay thread from a fresh local ring to `url` (one or more URLs, comma-separated);
    yields the ring's shm:// URL for the simulations. On exit waits for the relay to forward the
    STREAM_END it was given, then re-raises any relay error."""
    name = f"relay-{os.getpid()}-{os.urandom(3).hex()}"
    dsts = [d for d in url.split(",") if d]
    consumer = RingConsumer.create(name, capacity=ring_mb << 20)
    stop = threading.Event()
    box: dict = {}

    def work():
        try:
            box["stats"] = run_relay(f"shm://{name}", dsts, spread, pin, 1, connect_timeout,
                                     stop_event=stop, consumer=consumer, **token_kw)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e
            log.error("relay to %s failed: %s", url, e)
            consumer.seg.ctl[C_CLOSED] = 1  # simulations writing to the ring get ConsumerGone

    th = threading.Thread(target=work, name="ot-relay", daemon=True)
    th.start()
    ok = False
    try:
        yield f"shm://{name}"
        ok = True
    finally:
        if not ok:
            stop.set()
        th.join(timeout=None if ok else 10)
        stop.set()
        th.join(timeout=10)
        consumer.close()
    if "error" in box:
        raise box["error"]


def maybe_relayed(url: str, relay: bool, connect_timeout: float = 30.0):
    """`relayed(url)` for mpi:// (simulation processes are not MPI ranks) or when asked for;
    otherwise `url` itself (simulations connect directly)."""
    if url.startswith("mpi://") or (relay and url.startswith("tcp://")):
        return relayed(url, connect_timeout)
    return contextlib.nullcontext(url)
