"""Resumable trainer checkpoints: written atomically, verified on load, the newest good one used.

A checkpoint holds everything the trainer needs to continue exactly where it was: model,
optimizer, LR scheduler, RNG states (torch and the buffer's numpy generator), batch count, the
buffer's contents (x, y, keys, times served, size, counters), the validation samples, and the
receiver's accounting: every (simulation, time step) taken and the simulations fully received.

    state = capture(model, opt, sched, batches, rx, buf, cfg)   # consistent: receiver paused
    save(out_dir, state, keep=2)        # <out>/checkpoints/ckpt-000001200.pt + .sha256
    ck = load_latest(out_dir)           # None if there is none; skips corrupt / half-written ones
    restore_stream(ck, rx, buf); restore_training(ck, model, opt, sched)

Each file is written to a temporary name, fsync'ed and renamed; its SHA-256 goes to a sidecar
written last, so a checkpoint without a matching sidecar is half-written or corrupt: load_latest
logs a warning naming the file and falls back to the previous one. Loading never unpickles code
(torch.load(weights_only=True)); all arrays are stored as tensors.
"""
from __future__ import annotations

from .errors import OTError

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
DIRNAME = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


class CheckpointError(OTError, RuntimeError):
    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = self.value = path


def _t(a, dtype=None):
    import torch  # noqa: PLC0415
    return torch.from_numpy(np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype)))


def _buffer_state(buf) -> dict:
    if hasattr(buf, "state_dict"):  # a buffer that owns its section (pairs.PairBuffer)
        return {**buf.state_dict(), "ended": False}
    bstate = {"kind": buf.kind, "capacity": buf.capacity, "size": buf.size,
              "received": buf.received, "served": buf.served, "evicted": buf.evicted,
              "head": int(getattr(buf, "head", 0)), "ended": False,
              "rng": buf.rng.bit_generator.state, "keys": _t(buf.keys.copy()),
              "seen": _t(buf.seen.copy())}
    if buf.x is not None:
        bstate["x"], bstate["y"] = _t(buf.x.copy()), _t(buf.y.copy())
    return bstate


def capture(model, opt, sched, batches: int, rx, buf, cfg) -> dict:
    """A consistent snapshot (the receiver is paused while its state and the buffer are copied)."""
    import torch  # noqa: PLC0415
    with rx.lock, buf.cond:
        bstate = _buffer_state(buf)
        seen = np.array(sorted(rx.seen), np.int64).reshape(-1, 2)
        vkeys = list(rx.val)
        recv = {"seen": _t(seen), "sims_done": sorted(rx.sims_done),
                "sims_failed": {str(k): v for k, v in rx.sims_failed.items()},
                "frames": rx.frames, "samples": rx.samples, "duplicates": rx.duplicates,
                "rejected": rx.rejected, "y_count": rx.y_count,
                "y_sum": None if rx.y_sum is None else _t(rx.y_sum.copy()),
                "val_keys": _t(np.array(vkeys, np.int64).reshape(-1, 2))}
        if vkeys:
            recv["val_x"] = _t(np.stack([rx.val[k][0] for k in vkeys]))
            recv["val_y"] = _t(np.stack([rx.val[k][1] for k in vkeys]))
    from .trainer import model_dims  # noqa: PLC0415
    return {"format": 1, "batches": int(batches), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "dims": model_dims(model), "torch_rng": torch.get_rng_state(), "buffer": bstate,
            "receiver": recv, "config": cfg.to_dict()}


def _fsync_dir(d: Path):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_torch(path, obj) -> None:
    """torch.save `obj` to `path` atomically (temporary file, fsync, rename)."""
    import torch  # noqa: PLC0415
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def save(out_dir, state: dict, keep: int = 2, final: bool = False) -> Path:
    """Write `state` as checkpoints/ckpt-<batches>.pt (+ .sha256), keep the newest `keep`.
    `final` also writes <out_dir>/checkpoint.pt (the trained model, as before)."""
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415
    d = Path(out_dir) / DIRNAME
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    path = d / f"ckpt-{state['batches']:09d}.pt"
    path.with_suffix(".sha256").unlink(missing_ok=True)  # never pair new data with an old digest
    _atomic_write(path, lambda fh: fh.write(data))
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(path.with_suffix(".sha256"), lambda fh: fh.write(digest.encode() + b"\n"))
    if final:
        _atomic_write(Path(out_dir) / "checkpoint.pt", lambda fh: fh.write(data))
    _fsync_dir(d)
    for old in list_checkpoints(out_dir)[:-keep]:
        for p in (old, old.with_suffix(".sha256")):
            p.unlink(missing_ok=True)
    return path


def list_checkpoints(out_dir) -> list[Path]:
    """Checkpoint files, oldest first."""
    d = Path(out_dir) / DIRNAME
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def load(path) -> dict:
    """One checkpoint, verified against its sidecar; CheckpointError naming the file if bad."""
    import torch  # noqa: PLC0415
    path = Path(path)
    side = path.with_suffix(".sha256")
    try:
        data = path.read_bytes()
        want = side.read_text().strip()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} is incomplete ({e}); it was probably being "
                              f"written when the trainer stopped", str(path)) from None
    if hashlib.sha256(data).hexdigest() != want:
        raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 does not match {side.name})",
                              str(path))
    import io  # noqa: PLC0415
    try:
        ck = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}", str(path)) from None
    if not isinstance(ck, dict) or ck.get("format") != 1:
        raise CheckpointError(f"checkpoint {path} is not an onlinetrain checkpoint (format 1)",
                              str(path))
    return ck


def load_latest(out_dir) -> dict | None:
    """The newest good checkpoint (warning about each bad one skipped), None if there is none."""
    bad = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            ck = load(path)
        except CheckpointError as e:
            log.warning("%s; trying the previous checkpoint", e)
            bad.append(str(path))
            continue
        ck["path"] = str(path)
        return ck
    if bad:
        raise CheckpointError(f"no usable checkpoint in {Path(out_dir) / DIRNAME}: "
                              f"{', '.join(bad)} are corrupt or incomplete; remove them to start "
                              f"afresh", bad[0])
    return None


def fully_received(ck: dict | None) -> set[int]:
    return set() if ck is None else set(int(i) for i in ck["receiver"]["sims_done"])


def restore_stream(ck: dict, rx, buf):
    """Put the receiver's accounting and the buffer back (before the receiver starts)."""
    r, b = ck["receiver"], ck["buffer"]
    if not hasattr(buf, "load_state_dict") and (b["kind"] != buf.kind
                                                or b["capacity"] != buf.capacity):
        raise CheckpointError(f"checkpoint {ck.get('path')} has a {b['kind']} buffer of "
                              f"{b['capacity']} samples, the config a {buf.kind} of "
                              f"{buf.capacity}: resume with the same [buffer]", ck.get("path"))
    rx.seen = set(map(tuple, r["seen"].numpy().tolist()))
    rx.sims_done = set(r["sims_done"])
    rx.sims_failed = {int(k): v for k, v in r["sims_failed"].items()}
    rx.frames, rx.samples, rx.duplicates, rx.rejected = \
        r["frames"], r["samples"], r["duplicates"], r["rejected"]
    rx.y_count = r["y_count"]
    rx.y_sum = None if r["y_sum"] is None else r["y_sum"].numpy().copy()
    vk = r["val_keys"].numpy().tolist()
    rx.val = {tuple(k): (r["val_x"][i].numpy().copy(), r["val_y"][i].numpy().copy())
              for i, k in enumerate(vk)}
    if hasattr(buf, "load_state_dict"):
        buf.load_state_dict(b)
        return
    if "x" in b:
        buf.x, buf.y = b["x"].numpy().copy(), b["y"].numpy().copy()
    buf.keys, buf.seen = b["keys"].numpy().copy(), b["seen"].numpy().copy()
    buf.size, buf.received, buf.served, buf.evicted = \
        b["size"], b["received"], b["served"], b["evicted"]
    if hasattr(buf, "head"):
        buf.head = b["head"]
    buf.rng.bit_generator.state = b["rng"]


def restore_training(ck: dict, model, opt, sched) -> int:
    """Model, optimizer, scheduler and torch RNG; returns the batch count."""
    import torch  # noqa: PLC0415
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    return int(ck["batches"])


def trim_metrics(path, batches: int):
    """Drop metric lines logged after the checkpoint (they will be logged again)."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["batch"] <= batches:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            log.warning("%s: dropping a malformed metrics line %r", path, line[:60])
    path.write_text("".join(keep))
