"""The held-out fields the trainer validates on, kept small for `ot report`: validation_fields.npz.

At every validation (and at the end) the trainer saves, for up to MAX_SIMS held-out simulations
and up to MAX_STEPS of their time steps (first, middle, last received), the true target, the
model's prediction and the input, so a report shows true / predicted / error side by side whatever
`train.checkpoint_every` is, also for a running or crashed study. Written to a temporary name,
then renamed (a reader never sees half a file); plain numpy arrays, never pickle:

    sim_ids (k,) int64, steps (k,) int64, x (k, in) float32, y_true / y_pred (k, out) float32,
    shape (d,) int64: the field's shape when the adapter knows it (`adapter.field_shape(cfg)`),
    else empty (the report then plots flat profiles); batch () int64: the batch count.

    save(out_dir, model, rx, device, cfg, batch)   # rx: the Receiver (val {(sim, step): (x, y)})
    data = load(out_dir)                                  # dict of arrays, or None
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FILENAME = "validation_fields.npz"
MAX_SIMS, MAX_STEPS = 3, 3


def pick(keys) -> list[tuple[int, int]]:
    """Up to MAX_SIMS simulations (lowest ids) x MAX_STEPS steps (first, middle, last)."""
    by: dict[int, list[int]] = {}
    for sid, step in keys:
        by.setdefault(sid, []).append(step)
    out = []
    for sid in sorted(by)[:MAX_SIMS]:
        steps = sorted(by[sid])
        idx = sorted({0, len(steps) // 2, len(steps) - 1})[:MAX_STEPS]
        out += [(sid, steps[i]) for i in idx]
    return out


def field_shape(adapter, cfg) -> tuple:
    """The field's shape if the adapter tells it (an attribute `field_shape(cfg)`), else ()."""
    fn = getattr(adapter, "field_shape", None)
    try:
        shape = tuple(int(d) for d in fn(cfg)) if fn is not None else ()
    except Exception:  # a user's helper may fail: fall back to flat profiles
        shape = ()
    return shape


def save(out_dir, model, rx, device, cfg, batch: int) -> Path | None:
    """Predict the picked held-out samples of the receiver `rx` with `model`; write FILENAME
    atomically. Nothing without a model or held-out samples."""
    import torch  # noqa: PLC0415
    if model is None or rx is None:
        return None
    val = rx.val  # one consistent snapshot (the receiver inserts meanwhile)
    keys = pick(list(val.keys()))
    pairs = [val[k] for k in keys]
    if not keys:
        return None
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    y = np.stack([p[1] for p in pairs]).astype(np.float32)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    model.train(was_training)
    adapter = getattr(rx, "adapter", None)
    shape = field_shape(adapter, cfg) if adapter is not None else ()
    if shape and int(np.prod(shape)) != y.shape[1]:
        shape = ()
    path = Path(out_dir) / FILENAME
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, sim_ids=np.array([k[0] for k in keys], np.int64),
             steps=np.array([k[1] for k in keys], np.int64), x=x, y_true=y, y_pred=pred,
             shape=np.array(shape, np.int64), batch=np.array(batch, np.int64))
    os.replace(tmp, path)
    return path


def load(out_dir) -> dict | None:
    """The arrays of FILENAME in `out_dir`, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / FILENAME
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
