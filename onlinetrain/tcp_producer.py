"""The sending end of tcp:// channels (see onlinetrain.tcp_channel for the protocol).

    prod = TcpProducer.connect("10.0.0.5", 5555, timeout=30, token_file="s/secret.token")
    prod.put(frame)          # blocks while the trainer is behind; reconnects if it restarted
    prod.close()
"""
from __future__ import annotations

import logging
import select
import socket
import time

import numpy as np

from . import auth
from . import frame as fr
from .frame_codec import Encoder
from .shm_channel import ChannelError, ChannelNotFound, ConsumerGone, Full

log = logging.getLogger(__name__)

SOCK_BUF = 0  # 0: leave the kernel's autotuning of socket buffers on
CLOSE_WAIT_S = 30.0  # close() waits this long at most for the trainer to take the last frames


def _tune(sock: socket.socket):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF) if SOCK_BUF else ():
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        except OSError:
            pass



class TcpProducer:
    """Connect to a listening trainer and put frames (a blocked send is backpressure)."""

    def __init__(self, host: str, port: int, token: bytes, reconnect_timeout: float):
        self.host, self.port, self.token = host, int(port), token
        self.name = f"tcp://{host}:{port}"
        self.reconnect_timeout = reconnect_timeout
        self.sock: socket.socket | None = None
        self.reconnects = 0
        self.closed = False
        self._enc = Encoder()  # header bytes cached per kind/dtype/shape/params/name

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0, token=None, token_file=None,
                study_dir=None, reconnect_timeout: float | None = None, **_ignored) -> "TcpProducer":
        """Connect, waiting up to `timeout` s for the trainer to listen; later reconnects try for
        `reconnect_timeout` s (default: `timeout`, at least 5 s)."""
        p = cls(host, port, None, max(5.0, timeout) if reconnect_timeout is None
                else reconnect_timeout)
        p._token_args = (token, token_file, study_dir)
        p._connect(timeout, first=True)
        return p

    def _connect(self, timeout: float, first: bool = False):
        deadline = time.monotonic() + timeout
        delay, attempts, last = 0.05, 0, None
        while True:
            attempts += 1
            if self.token is None:  # the trainer creates the token: it may not be there yet
                try:
                    self.token = auth.resolve_token(*self._token_args)
                except auth.AuthError as e:
                    if "not found" not in str(e) or time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
            try:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=max(1.0, min(10.0, timeout)))
                try:
                    sock.settimeout(10.0)
                    auth.client_handshake(sock, self.token)
                    sock.settimeout(None)
                    _tune(sock)
                except BaseException:
                    sock.close()
                    raise
                self.sock = sock
                if not first:
                    self.reconnects += 1
                    log.warning("%s: reconnected after %d attempt(s)", self.name, attempts)
                return
            except auth.AuthError:
                raise
            except OSError as e:
                last = e
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        if first:
            raise ChannelNotFound(f"nobody listens on {self.name} (last error: {last}) after "
                                  f"{timeout:g} s: start the trainer (`ot train --from "
                                  f"{self.name}`) first, or check host and port", self.name)
        raise ConsumerGone(f"the trainer at {self.name} went away and did not come back within "
                           f"{timeout:g} s ({attempts} attempts, last error: {last})", self.name)

    def _peer_closed(self) -> bool:
        """The trainer never sends after the handshake: readable means it closed or reset."""
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                return False
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _drop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _send(self, bufs: list, timeout: float | None):
        if timeout is not None:  # the socket is blocking between puts
            self.sock.settimeout(max(timeout, 1e-3))  # 0 would mean non-blocking
        bufs = [memoryview(b).cast("B") for b in bufs if len(b)]
        try:
            while bufs:
                n = self.sock.sendmsg(bufs)
                while n and bufs:
                    if n >= len(bufs[0]):
                        n -= len(bufs[0])
                        bufs.pop(0)
                    else:
                        bufs[0] = bufs[0][n:]
                        n = 0
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(None)

    def _put_bufs(self, bufs: list, timeout: float | None):
        if self.closed:
            raise ChannelError(f"producer of {self.name} is closed", self.name)
        for _ in range(3):
            if self.sock is None or self._peer_closed():
                self._drop()
                log.warning("%s: the trainer closed the connection; reconnecting", self.name)
                self._connect(self.reconnect_timeout)
            try:
                self._send(bufs, timeout)
                return
            except socket.timeout:
                self._drop()  # a partial frame was sent: this connection is unusable
                raise Full(f"{self.name}: the trainer accepted nothing for {timeout:g} s (too slow "
                           f"or stalled)", self.name) from None
            except OSError as e:
                log.warning("%s: send failed (%s); reconnecting", self.name, e)
                self._drop()
        raise ConsumerGone(f"{self.name}: the trainer keeps dropping the connection", self.name)

    def put(self, f: fr.Frame, timeout: float | None = None) -> None:
        """Send one frame; blocks while the trainer is behind (up to `timeout`, then Full)."""
        tmpl, arr = self._enc.prepare(f)  # validates (once per header) before anything is sent
        hdr = bytearray(tmpl)
        self._enc.fill_ids(hdr, 0, f)
        self._put_bufs([hdr, arr.reshape(-1).view(np.uint8)] if arr.nbytes else [hdr], timeout)

    def put_nowait(self, f: fr.Frame) -> None:
        self.put(f, timeout=0.0)

    def put_encoded(self, buf, timeout: float | None = None) -> None:
        """Send an already-encoded frame (validated first)."""
        fr.decode(buf, copy=False)
        self._put_bufs([buf], timeout)

    def close(self, timeout: float = CLOSE_WAIT_S):
        """End the stream and wait (up to `timeout` s) until the trainer has taken every frame:
        it closes its side only after queueing the last one. So frames sent before close() come
        before anything another connection sends after it returns (a launcher's STREAM_END after
        its simulations exited)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(timeout)
                while self.sock.recv(4096):
                    pass
            except OSError:  # timed out or the trainer is gone: nothing more to wait for
                pass
        self._drop()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
