"""Validation figures of the training loop: the validation MSE and the mean-field baseline.

    mse = validate(model, val_items(rx), device)     # None without validation samples
    base = mean_field_mse(rx, coll)                  # every rank's sums (ddp.Collectives)
"""
from __future__ import annotations

import numpy as np


def validate(model, val, device) -> float | None:
    """Mean over samples of the per-sample MSE on `val`, the (x, y) arrays of the validation set."""
    import torch  # noqa: PLC0415
    xs, ys = val
    if not len(xs):
        return None
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(xs), 1024):
            x = torch.from_numpy(xs[i:i + 1024]).to(device)
            y = torch.from_numpy(ys[i:i + 1024]).to(device)
            total += float(((model(x).float() - y) ** 2).mean(dim=1).sum())
    return total / len(xs)


def val_items(rx) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the validation set: one consistent snapshot (the receiver inserts meanwhile)."""
    if rx is None:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    x, y, _ = rx.val_arrays()
    return x, y


def mean_field_mse(rx, c) -> float | None:
    """MSE of predicting the mean training target (summed over ranks) on the validation set;
    `c`: the loop's ddp.Collectives (every rank calls this together)."""
    if rx is None:
        return None
    n = c.sum([rx.y_count])[0]
    dim = c.max_ints([0 if rx.y_sum is None else rx.y_sum.size])[0]
    y_sum = np.zeros(dim) if rx.y_sum is None or rx.y_sum.size != dim else rx.y_sum
    totals = c.sum(y_sum) if dim else np.zeros(0)
    sse, cnt = 0.0, 0
    ys = val_items(rx)[1]
    if len(ys) and n:
        sse, cnt = float(((ys - totals / n) ** 2).mean(axis=1).sum()), len(ys)
    sse, cnt = c.sum([sse, cnt])
    return float(sse / cnt) if cnt else None
