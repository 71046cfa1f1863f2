"""tcp://HOST:PORT channels: authenticated streams of binary frames, with backpressure and reconnect.

The trainer listens (on exactly the address it is given; never 0.0.0.0 unless asked), producers
connect. Each connection starts with the challenge-response of onlinetrain.auth, then carries
frames back to back in the wire format of onlinetrain.frame (the header announces the length, so
there is no extra framing and nothing is pickled). Every connection has a reader thread that puts
decoded frames into one queue bounded in bytes; when the trainer falls behind, readers stop
reading, the kernel's socket buffers fill and the producers' sends block: that is the backpressure.

    cons = TcpConsumer.listen("10.0.0.5", 5555, study_dir="ot-study")   # creates secret.token
    prod = TcpProducer.connect("10.0.0.5", 5555, timeout=30, token_file="ot-study/secret.token")
    prod.put(frame); prod.close()
    f = cons.get(timeout=1.0)         # Empty after the timeout, FrameError for a malformed frame

Peers that fail the handshake are dropped with a logged reason (`auth_failures`); a frame whose
header is malformed is reported once through get() as FrameError and its connection closed (the
stream cannot be resynchronised). A producer whose trainer goes away reconnects with bounded
retries (`reconnect_timeout`) and resends the frame it was sending, then raises ConsumerGone.
Frames still in the socket buffers of a trainer that crashed are lost (the trainer drops
duplicates, so resending is safe). A producer's close() shuts its sending side and waits for the
trainer to close the connection, which it does once it has queued the last frame: so what a
simulation sent before exiting is queued before a STREAM_END its launcher sends afterwards on
another connection.
"""
from __future__ import annotations

import collections
import logging
import select
import socket
import struct
import threading

import numpy as np

from . import auth
from . import frame as fr
from .frame_codec import Decoder
from .shm_channel import ChannelError, Empty
from .tcp_pool import POOL_MIN, BufferPool, TcpFrame
from .tcp_producer import _tune

log = logging.getLogger(__name__)

MAX_HEADER = fr.MAX_HEADER


# Large payloads are read with a receive low-watermark (SO_RCVLOWAT): the kernel wakes the reader
# once LOWAT_CAP bytes (or the rest of the frame, if less than twice that) are waiting, instead of
# on every segment batch. On localhost this roughly halves the receiver's CPU per byte, and the
# sender spends less on waking it.
LOWAT_MIN = 64 << 10  # payloads below this: one blocking recv (a watermark saves nothing)
LOWAT_CAP = 1 << 20   # the kernel clamps it further to half the largest receive buffer


def _recv_into(sock, mv: memoryview) -> int:
    """Fill `mv`; returns bytes read (less than len(mv) only at end of stream)."""
    got, n = 0, len(mv)
    while got < n:
        k = sock.recv_into(mv[got:], n - got, socket.MSG_WAITALL)
        if k == 0:
            return got
        got += k
    return got


def _recv_lowat(sock, poller, mv: memoryview) -> int:
    """Fill `mv` like _recv_into, sleeping until a watermark of bytes is there.

    Never MSG_WAITALL with a watermark: a blocking recv that has copied part of the data would wait
    for `lowat` *more* bytes, which may never come (the frame ends). Here every sleep is a poll for
    at most the bytes the frame still owes, then a non-blocking recv takes all that is there. The
    watermark is back at 1 on return, so the next header read never waits for more than it asks."""
    got, n, lowat = 0, len(mv), 1
    try:
        while got < n:
            want = n - got if n - got < 2 * LOWAT_CAP else LOWAT_CAP  # no short last piece
            if want != lowat:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                lowat = want
            poller.poll()  # readable: >= lowat bytes waiting, or end of stream / error
            try:
                k = sock.recv_into(mv[got:], n - got, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if k == 0:
                return got
            got += k
        return got
    finally:
        if lowat != 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


class TcpConsumer:
    """Listen for producers; get()/get_many() like shm_channel.RingConsumer."""

    def __init__(self, lsock: socket.socket, token: bytes, capacity: int, max_frame: int,
                 handshake_timeout: float):
        self.lsock, self.token = lsock, token
        self.host, self.port = lsock.getsockname()[:2]
        self.name = f"tcp://{self.host}:{self.port}"
        self.capacity, self.max_frame = int(capacity), int(max_frame)
        self.handshake_timeout = handshake_timeout
        self.cond = threading.Condition()
        self.queue: collections.deque = collections.deque()  # (frame or FrameError, nbytes)
        self.queued_bytes = 0
        self.pool = BufferPool(self.capacity)  # receive buffers given back by TcpFrame.release
        self.closed = False
        self.conns: dict[int, socket.socket] = {}
        self.threads: list[threading.Thread] = []
        self.frames = self.bytes = self.rejected = self.auth_failures = self.connections = 0
        self.abandoned = 0
        self.acceptor = threading.Thread(target=self._accept_loop, name="ot-tcp-accept",
                                         daemon=True)
        self.acceptor.start()

    @classmethod
    def listen(cls, host: str, port: int, token=None, token_file=None, study_dir=None,
               capacity: int = 64 << 20, max_frame: int = 1 << 31, handshake_timeout: float = 10.0,
               backlog: int = 128, **_ignored) -> "TcpConsumer":
        """Listen on host:port (port 0: any free port, see `.port`); the token comes from
        `token`, `token_file`, $OT_TOKEN_FILE or `<study_dir>/secret.token` (created if absent)."""
        if not host:
            raise ChannelError("tcp channel needs a host to listen on, e.g. tcp://127.0.0.1:5555 "
                               "or the node's address on the fast network", host)
        if host in ("0.0.0.0", "::"):
            log.warning("listening on all interfaces (%s): any host that can reach this node may "
                        "try to connect; only the study token keeps them out", host)
        key = auth.resolve_token(token, token_file, study_dir, create=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host, port))
            lsock.listen(backlog)
            lsock.settimeout(0.2)
        except OSError as e:
            lsock.close()
            raise ChannelError(f"cannot listen on tcp://{host}:{port}: {e}; pick another port or "
                               f"an address of this node", f"{host}:{port}") from None
        return cls(lsock, key, capacity, max_frame, handshake_timeout)

    # --- receiving side (threads) -------------------------------------------------------------
    def _accept_loop(self):
        while not self.closed:
            try:
                conn, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                                 name=f"ot-tcp-{peer[0]}:{peer[1]}")
            with self.cond:
                if self.closed:
                    conn.close()
                    break
                self.conns[id(conn)] = conn
                self.threads = [x for x in self.threads if x.is_alive()] + [t]
            t.start()

    def _push(self, item, nbytes: int) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.closed or not self.queue
                               or self.queued_bytes + nbytes <= self.capacity)
            if self.closed:
                return False
            self.queue.append((item, nbytes))
            self.queued_bytes += nbytes
            self.cond.notify_all()
            return True

    def _reject(self, peer, why: str, value):
        log.warning("%s: refused a frame from %s:%s: %s", self.name, peer[0], peer[1], why)
        with self.cond:
            self.rejected += 1
        self._push(fr.FrameError(f"frame from {peer[0]}:{peer[1]} refused: {why}", value), 0)

    def _serve(self, conn: socket.socket, peer):
        try:
            conn.settimeout(self.handshake_timeout)
            try:
                auth.server_handshake(conn, self.token)
            except (auth.AuthError, OSError) as e:
                with self.cond:
                    self.auth_failures += 1
                log.warning("%s: refused connection from %s:%s: %s", self.name, peer[0], peer[1],
                            e or type(e).__name__)
                return
            conn.settimeout(None)
            _tune(conn)
            with self.cond:
                self.connections += 1
            self._read_frames(conn, peer)
        except OSError as e:
            if not self.closed:
                log.warning("%s: connection from %s:%s failed: %s", self.name, peer[0], peer[1], e)
        finally:
            with self.cond:
                self.conns.pop(id(conn), None)
            conn.close()

    def _read_frames(self, conn, peer):
        fixed = bytearray(fr.FIXED_SIZE)
        fmv = memoryview(fixed)
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        dec = Decoder()  # one per connection: a producer's frames share their header
        while not self.closed:
            got = _recv_into(conn, fmv)
            if got == 0:
                return  # clean end of stream
            if got < fr.FIXED_SIZE:
                return self._reject(peer, f"connection closed inside a frame header ({got} bytes)",
                                    got)
            magic, version, hlen, *_rest, payload_len, _res = struct.unpack_from(
                "<4sHHBBBBIqqQQ", fixed)
            if magic != fr.MAGIC or version != fr.VERSION:
                return self._reject(peer, f"not an onlinetrain frame (magic {bytes(magic)!r}, "
                                          f"version {version})", bytes(magic))
            total = hlen + payload_len
            if not fr.FIXED_SIZE <= hlen <= MAX_HEADER or total > self.max_frame:
                return self._reject(peer, f"frame announces {hlen}+{payload_len} bytes (limit "
                                          f"{self.max_frame})", total)
            pooled = total >= POOL_MIN
            buf = self.pool.take(total) if pooled else np.empty(total, np.uint8)
            mv = memoryview(buf)[:total]
            mv[:fr.FIXED_SIZE] = fixed
            rest = total - fr.FIXED_SIZE
            got = (_recv_lowat(conn, poller, mv[fr.FIXED_SIZE:]) if rest >= LOWAT_MIN
                   else _recv_into(conn, mv[fr.FIXED_SIZE:]))
            if got < rest:
                return self._reject(peer, "connection closed inside a frame", total)
            try:
                f = dec.decode_at(mv, 0, total, False, TcpFrame)
            except fr.FrameError as e:  # length framing is intact: drop this frame only
                if pooled:
                    self.pool.give(buf)
                self._reject(peer, str(e), e.value)
                continue
            if pooled:
                f._pool, f._buf = self.pool, buf
            if not self._push(f, total):
                return

    # --- consumer API ------------------------------------------------------------------------
    def _pop(self, copy: bool):
        item, nbytes = self.queue.popleft()
        self.queued_bytes -= nbytes
        self.cond.notify_all()
        if isinstance(item, fr.FrameError):
            raise item
        self.frames += 1
        self.bytes += nbytes
        return item.keep() if copy else item

    def get(self, timeout: float | None = None, copy: bool = True) -> TcpFrame:
        """Next frame; blocks up to `timeout` seconds (None: forever), then raises Empty.

        copy=True: the frame's array is its own (received into it; no extra copy is made).
        copy=False: the array may view a pooled receive buffer; call `f.release()` when done with
        it (the trainer does), so the buffer is reused instead of fresh memory being faulted in."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.queue or self.closed, timeout):
                raise Empty(f"no frame on {self.name} within {timeout:g} s", self.name)
            if not self.queue:
                raise ChannelError(f"{self.name} is closed", self.name)
            return self._pop(copy)

    def get_nowait(self, copy: bool = True) -> fr.Frame:
        return self.get(timeout=0.0, copy=copy)

    def get_many(self, max_frames: int = 64, timeout: float | None = None,
                 copy: bool = True) -> list[fr.Frame]:
        """At least one frame (waiting up to `timeout`), then whatever else is ready, up to max;
        a queued FrameError is raised by the next call, never dropping frames already taken."""
        out = [self.get(timeout, copy)]
        with self.cond:
            while len(out) < max_frames and self.queue and \
                    not isinstance(self.queue[0][0], fr.FrameError):
                out.append(self._pop(copy))
        return out

    @property
    def n_connections(self) -> int:
        with self.cond:
            return len(self.conns)

    def close(self):
        with self.cond:
            if self.closed:
                return
            self.closed = True
            conns = list(self.conns.values())
            self.cond.notify_all()
        self.lsock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.acceptor.join(timeout=2)
        for t in self.threads:
            t.join(timeout=2)
        self.queue.clear()
        self.pool.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


from .tcp_producer import TcpProducer  # noqa: E402,F401  (re-exported: channel.py uses it)
