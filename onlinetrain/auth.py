"""The study's secret token and the challenge-response handshake of network channels.

The trainer creates `<study dir>/secret.token` (32 random bytes, hex, mode 0600) the first time it
listens on a network channel; producers read the same file (shared file system, or copied by the
user). The token never crosses the wire: both sides prove they know it with HMAC-SHA256 over fresh
random nonces, and the producer also checks the trainer's proof (no frames to an impostor).

    token = load_or_create(study_dir)                        # trainer side
    token = resolve_token(token_file="/shared/s/secret.token")  # producer side (or OT_TOKEN_FILE)
    server_handshake(sock, token)   # raises AuthError with the reason; the caller logs and drops
    client_handshake(sock, token)

Handshake (all sizes in bytes): server -> HELLO(8) + nonce_s(32); client -> nonce_c(32) +
HMAC(token, "ot-client" + nonce_s + nonce_c)(32); server -> "OK" + HMAC(token, "ot-server" +
nonce_c + nonce_s)(32), or "NO" + a reason and closes.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from .shm_channel import ChannelError

log = logging.getLogger(__name__)

TOKEN_NAME = "secret.token"
ENV_TOKEN_FILE = "OT_TOKEN_FILE"
HELLO = b"OTTCP1\0\0"
NONCE = 32
MAC = 32


class AuthError(ChannelError):
    """Authentication failed or no token is available; `value` is the offending path or peer."""

    def __init__(self, message: str, value=None):
        super().__init__(message, None)
        self.value = value


def token_path(study_dir) -> Path:
    return Path(study_dir) / TOKEN_NAME


def load_token(path) -> bytes:
    """Read a token file; refuse one that group or others may read (it would not be secret)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AuthError(f"token file {path} not found: start the trainer first (it creates it) or "
                        f"copy the study's {TOKEN_NAME} and point {ENV_TOKEN_FILE} at it",
                        str(path)) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(f"token file {path} has mode {stat.S_IMODE(st.st_mode):o}: other users could "
                        f"read it; run `chmod 600 {path}`", str(path))
    raw = path.read_text().strip()
    try:
        token = bytes.fromhex(raw)
    except ValueError:
        raise AuthError(f"token file {path} does not hold a hex token", str(path)) from None
    if len(token) < 16:
        raise AuthError(f"token in {path} is {len(token)} bytes, at least 16 are needed", str(path))
    return token


def load_or_create(study_dir) -> bytes:
    """The study's token, created (mode 0600) if it does not exist yet; safe when several trainer
    ranks race to create it (written to a private file, then linked into place atomically)."""
    path = token_path(study_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{TOKEN_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
            log.info("created study token %s (mode 0600)", path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return load_token(path)


def resolve_token(token: bytes | str | None = None, token_file=None, study_dir=None,
                  create: bool = False) -> bytes:
    """First of: `token`, `token_file`, $OT_TOKEN_FILE, `<study_dir>/secret.token` (created when
    `create`); an AuthError says what to set when none is available."""
    if token is not None:
        return bytes.fromhex(token) if isinstance(token, str) else bytes(token)
    if token_file:
        return load_token(token_file)
    if os.environ.get(ENV_TOKEN_FILE):
        return load_token(os.environ[ENV_TOKEN_FILE])
    if study_dir is not None:
        return load_or_create(study_dir) if create else load_token(token_path(study_dir))
    raise AuthError(f"no token for the network channel: set {ENV_TOKEN_FILE} to the study's "
                    f"{TOKEN_NAME} (or pass --token-file)", None)


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AuthError(f"peer closed the connection during the handshake ({len(buf)} of {n} "
                            f"bytes)", len(buf))
        buf += chunk
    return bytes(buf)


def _mac(token: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(token, label + a + b, hashlib.sha256).digest()


def server_handshake(sock, token: bytes) -> None:
    """Challenge the peer; raises AuthError (after telling the peer why) if it fails."""
    nonce_s = secrets.token_bytes(NONCE)
    sock.sendall(HELLO + nonce_s)
    reply = _recv_exact(sock, NONCE + MAC)
    nonce_c, proof = reply[:NONCE], reply[NONCE:]
    if reply[:4] == b"OTFR":
        why = "peer sent frames without authenticating (old client or wrong protocol)"
    elif not hmac.compare_digest(proof, _mac(token, b"ot-client", nonce_s, nonce_c)):
        why = "peer does not know the study token (wrong or missing secret.token)"
    else:
        sock.sendall(b"OK" + _mac(token, b"ot-server", nonce_c, nonce_s))
        return
    try:
        sock.sendall(b"NO" + why.encode()[:200])
    except OSError:
        pass
    raise AuthError(why)


def client_handshake(sock, token: bytes) -> None:
    """Answer the server's challenge and check its proof; raises AuthError if either fails."""
    hello = _recv_exact(sock, len(HELLO) + NONCE)
    if hello[:len(HELLO)] != HELLO:
        raise AuthError(f"the server is not an onlinetrain trainer (greeting {hello[:8]!r})",
                        hello[:8])
    nonce_s = hello[len(HELLO):]
    nonce_c = secrets.token_bytes(NONCE)
    sock.sendall(nonce_c + _mac(token, b"ot-client", nonce_s, nonce_c))
    status = _recv_exact(sock, 2)
    if status == b"NO":
        sock.settimeout(1.0)
        try:
            why = sock.recv(200).decode(errors="replace")
        except OSError:
            why = "no reason given"
        raise AuthError(f"the trainer refused this producer: {why}", why)
    proof = _recv_exact(sock, MAC)
    if status != b"OK" or not hmac.compare_digest(proof, _mac(token, b"ot-server", nonce_c,
                                                                nonce_s)):
        raise AuthError("the trainer could not prove it knows the study token: refusing to send "
                        "frames to it (wrong secret.token on one side?)")
