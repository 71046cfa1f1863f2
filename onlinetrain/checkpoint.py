"""Resumable trainer checkpoints (format v2, docs/checkpoint.md): one section per component, one
file per rank, written atomically, verified on load, the newest good one used.

A checkpoint holds everything the trainer needs to continue exactly where it was: the `train`
section (model, optimizer, LR scheduler, batch count, dims recorded at build time; rank 0 only),
and per rank the `buffer` (buf.state_dict()), the `receiver` (rx.state_dict(): per-simulation
accounting, validation samples; docs/step.md), the `rng` states (torch, and CUDA when the model
is on a GPU) and the `prefetch` batches drawn but not trained yet.

    state = capture(model, opt, sched, batches, rx, buf, cfg, rank=r, world=n)  # receiver paused
    save(out_dir, state, keep=2)        # <out>/checkpoints/ckpt-000001200[.rank<r>].pt + .sha256
    ck = load_latest(out_dir)           # None if there is none; skips corrupt / half-written ones
    ck = for_rank(ck, rank, world)      # refuses another number of ranks
    restore_stream(ck, rx, buf); restore_training(ck, model, opt, sched, device)

Each file is written to a temporary name, fsync'ed and renamed; its SHA-256 goes to a sidecar
written last, so a checkpoint without a matching sidecar is half-written or corrupt: load_latest
logs a warning naming the file and falls back to the previous one. Loading never unpickles code
(torch.load(weights_only=True, map_location="cpu")); all arrays are stored as tensors. This module
never imports the trainer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from .errors import OTError

log = logging.getLogger(__name__)
DIRNAME = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
_ANY = re.compile(r"^ckpt-(\d{9})(\.rank\d+)?\.(pt|sha256)$")
FORMAT, VERSION = "onlinetrain-checkpoint", 2


class CheckpointError(OTError, RuntimeError):
    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = self.value = path


def _t(a, dtype=None):
    import torch  # noqa: PLC0415
    return torch.from_numpy(np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype)))


# --- the components' sections: the buffer and the receiver own theirs (state_dict /
# load_state_dict).
def _buffer_state(buf) -> dict:
    # the receiver starts afresh on resume and signals the end of the stream again (a resumed
    # study may bring more simulations), so the buffer is saved as not ended
    return {**buf.state_dict(), "ended": False}


def _buffer_load(buf, b: dict):
    from .reservoir import BufferError_  # noqa: PLC0415
    try:
        buf.load_state_dict(b)
    except BufferError_ as e:
        raise CheckpointError(f"{e}; resume with the same [buffer]", None) from None


def _receiver_state(rx) -> dict:
    return rx.state_dict()  # the receiver's own section (onlinetrain/receiver.py, docs/step.md)


def _receiver_load(rx, r: dict):
    rx.load_state_dict(r)


def record_dims(model, in_dim: int, out_dim: int):
    """Remember the (in, out) sizes a model was built with (saved in the train section)."""
    model.ot_dims = (int(in_dim), int(out_dim))
    return model


def model_dims(model) -> list[int]:
    """(in_dim, out_dim) recorded at build time (record_dims), else from the first and last
    Linear layers; CheckpointError if neither is known."""
    if getattr(model, "ot_dims", None) is not None:
        return list(model.ot_dims)
    import torch  # noqa: PLC0415
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not lin:
        raise CheckpointError("the model's input and output sizes are unknown (no Linear layer "
                              "and no record_dims(model, in_dim, out_dim) at build time)", None)
    return [lin[0].in_features, lin[-1].out_features]


def rng_state(device=None) -> dict:
    """torch's CPU generator and, when the model is on a CUDA device, that device's."""
    import torch  # noqa: PLC0415
    d = {"torch": torch.get_rng_state()}
    if device is not None and getattr(device, "type", "") == "cuda":
        d["cuda"] = torch.cuda.get_rng_state(device)
    return d


def restore_rng(d: dict, device=None):
    import torch  # noqa: PLC0415
    torch.set_rng_state(d["torch"])
    if "cuda" in d and device is not None and getattr(device, "type", "") == "cuda":
        torch.cuda.set_rng_state(d["cuda"], device)


def capture(model, opt, sched, batches: int, rx, buf, cfg, *, dims=None, pending=(),
            rank: int = 0, world: int = 1, device=None) -> dict:
    """A consistent snapshot of one rank (the receiver is paused while its accounting and the
    buffer are copied). Rank 0's holds the train section (model, optimizer, scheduler: the same on
    every rank); `pending` are batches drawn from the buffer but not trained yet (the prefetcher's),
    as (x, y, keys) arrays: a resumed run trains them first."""
    pause = getattr(rx, "pause", None)  # a receiving process: its state as of now (rxremote)
    if pause is not None:
        pause()
    try:
        with rx.lock, buf.cond:
            sections = {"buffer": _buffer_state(buf), "receiver": _receiver_state(rx)}
            if getattr(rx, "stats", None) is not None:  # [stats]: docs/stats.md
                from .stats_state import to_tensors  # noqa: PLC0415
                sections["stats"] = to_tensors(rx.stats.state_dict())
    finally:
        if pause is not None:
            rx.resume()
    sections["rng"] = rng_state(device)
    sections["prefetch"] = {"batches": [{"x": _t(x), "y": _t(y), "keys": _t(k, np.int64)}
                                        for x, y, k in pending]}
    if rank == 0:
        sections["train"] = {"batches": int(batches), "model": model.state_dict(),
                             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "dims": list(dims) if dims is not None else model_dims(model)}
    return {"format": FORMAT, "version": VERSION, "batches": int(batches), "ranks": int(world),
            "rank": int(rank), "config": cfg.to_dict(), "sections": sections}


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


def rank_path(main: Path, rank: int) -> Path:
    """Rank r's file next to the main one: ckpt-<batches>.rank<r>.pt."""
    return main.with_name(f"{main.stem}.rank{rank}.pt")


def _write_verified(path: Path, data) -> None:
    path.with_suffix(".sha256").unlink(missing_ok=True)  # never pair new data with an old digest
    _atomic_write(path, lambda fh: fh.write(data))
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(path.with_suffix(".sha256"), lambda fh: fh.write(digest.encode() + b"\n"))


def save(out_dir, state: dict, keep: int = 2, final: bool = False) -> Path:
    """Write one rank's `state` (+ .sha256). Rank 0: checkpoints/ckpt-<batches>.pt, then the
    newest `keep` are kept (with their rank files); `final` also writes <out_dir>/checkpoint.pt.
    Rank r > 0: checkpoints/ckpt-<batches>.rank<r>.pt. With N ranks every rank r > 0 writes first
    and rank 0 last (after a collective), so a main file with its digest commits the checkpoint."""
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415
    d = Path(out_dir) / DIRNAME
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    main = d / f"ckpt-{state['batches']:09d}.pt"
    rank = int(state.get("rank", 0))
    path = main if rank == 0 else rank_path(main, rank)
    _write_verified(path, data)
    if rank == 0 and final:
        _atomic_write(Path(out_dir) / "checkpoint.pt", lambda fh: fh.write(data))
    _fsync_dir(d)
    if rank == 0:
        kept = list_checkpoints(out_dir)[-keep:]
        oldest = int(_NAME.match(kept[0].name)[1]) if kept else 0
        for p in d.iterdir():
            m = _ANY.match(p.name)
            if m and int(m[1]) < oldest:
                p.unlink(missing_ok=True)
    return path


def list_checkpoints(out_dir) -> list[Path]:
    """Checkpoint files (rank 0's main files), oldest first."""
    d = Path(out_dir) / DIRNAME
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def _read_verified(path: Path) -> bytes:
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
    return data


def _load_file(path: Path) -> dict:
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415
    data = _read_verified(path)
    try:  # map_location: a checkpoint written on a GPU resumes on the CPU or another GPU
        ck = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}", str(path)) from None
    if isinstance(ck, dict) and ck.get("format") == 1:
        raise CheckpointError(f"checkpoint {path} has format 1 (written before onlinetrain's "
                              f"checkpoint format 2): this version cannot resume it; start "
                              f"without --resume, or resume with the onlinetrain that wrote it",
                              str(path))
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an onlinetrain checkpoint", str(path))
    if ck.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {ck.get('version')!r}; this "
                              f"onlinetrain reads version {VERSION} (docs/checkpoint.md)",
                              str(path))
    return ck


def load(path) -> dict:
    """One checkpoint (rank 0's view), verified against its sidecar, and every rank file it needs
    verified too; CheckpointError naming the file if anything is bad or missing."""
    path = Path(path)
    ck = _load_file(path)
    for r in range(1, int(ck["ranks"])):
        _read_verified(rank_path(path, r))
    ck["path"] = str(path)
    return ck


def for_rank(ck: dict, rank: int, world: int) -> dict:
    """The checkpoint as rank `rank` of `world` resumes it: the train section of rank 0's file,
    its own buffer / receiver / RNG / prefetch sections. Refuses another number of ranks."""
    if int(ck["ranks"]) != world:
        raise CheckpointError(f"checkpoint {ck['path']} was written by {ck['ranks']} rank(s), "
                              f"this run has {world}: resume with {ck['ranks']} rank(s) (each "
                              f"rank's buffer and accounting are in it), or start afresh "
                              f"without --resume", ck["path"])
    if rank == 0:
        return ck
    path = rank_path(Path(ck["path"]), rank)
    mine = _load_file(path)
    if mine["batches"] != ck["batches"] or mine.get("rank") != rank:
        raise CheckpointError(f"checkpoint {path} does not belong to {ck['path']}", str(path))
    sections = {**mine["sections"], "train": ck["sections"]["train"]}
    return {**ck, "rank": rank, "sections": sections, "rank_path": str(path)}


def load_latest(out_dir) -> dict | None:
    """The newest good checkpoint (warning about each bad one skipped), None if there is none."""
    bad = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return load(path)
        except CheckpointError as e:
            if "format 1" in str(e) or "has version" in str(e):
                raise
            log.warning("%s; trying the previous checkpoint", e)
            bad.append(str(path))
    if bad:
        raise CheckpointError(f"no usable checkpoint in {Path(out_dir) / DIRNAME}: "
                              f"{', '.join(bad)} are corrupt or incomplete; remove them to start "
                              f"afresh", bad[0])
    return None


def receiver_sections(ck: dict) -> list[dict]:
    """Every rank's receiver section of checkpoint `ck` (rank 0's view), rank 0 first."""
    if ck is None:
        return []
    out = [ck["sections"]["receiver"]] if int(ck.get("rank", 0)) == 0 else \
        [_load_file(Path(ck["path"]))["sections"]["receiver"]]
    for r in range(1, int(ck["ranks"])):
        out.append(_load_file(rank_path(Path(ck["path"]), r))["sections"]["receiver"])
    return out


def fully_received(ck: dict | None) -> set[int]:
    """Simulations whose every step, field and piece (as their SIM_END announced) reached the
    trainer (any rank) by checkpoint `ck`."""
    from .receiver import fully_received as done  # noqa: PLC0415
    return {i for r in receiver_sections(ck) for i in done(r)}


def restore_stream(ck: dict, rx, buf):
    """Put the receiver's accounting and the buffer back (before the receiver starts)."""
    try:
        _buffer_load(buf, ck["sections"]["buffer"])
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {ck.get('path')}: {e}", ck.get("path")) from None
    _receiver_load(rx, ck["sections"]["receiver"])
    if getattr(rx, "stats", None) is not None:
        if "stats" in ck["sections"]:
            rx.stats.load_state_dict(ck["sections"]["stats"])
        else:
            log.warning("checkpoint %s has no statistics section: the statistics start from the "
                        "frames received from now on", ck.get("path"))


def pending_batches(ck: dict) -> list[tuple]:
    """Batches drawn but not trained when the checkpoint was taken, as (x, y, keys) arrays."""
    return [(b["x"].numpy(), b["y"].numpy(), b["keys"].numpy())
            for b in ck["sections"].get("prefetch", {}).get("batches", [])]


def restore_training(ck: dict, model, opt, sched, device=None) -> int:
    """Model, optimizer, scheduler and RNG (torch, and CUDA's when on a GPU); the batch count."""
    t = ck["sections"]["train"]
    model.load_state_dict(t["model"])
    opt.load_state_dict(t["optimizer"])
    sched.load_state_dict(t["scheduler"])
    restore_rng(ck["sections"]["rng"], device)
    return int(t["batches"])


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
