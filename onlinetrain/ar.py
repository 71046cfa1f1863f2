"""Autoregressive mode (`model.mode = "autoregressive"`): u_t+1 = f_theta(u_t, parameters).

The adapter of this mode returns (parameters, u) for a frame: the parameters as a flat vector and
the state u in the model's units, with the field's shape (which the builder receives). It may also
say how a predicted field becomes the next input, as an attribute `next_input(pred, prev) -> next`
on torch tensors (B, field size); without it the prediction is the next input as is. So a rollout
never needs the solver.

    [model]
    mode = "autoregressive"
    adapter = "onlinetrain.ar:ks1d_ar"     # or onlinetrain.ar:heat2d_ar, or your own
    target = "next"                        # or "increment": the model predicts u_t+1 - u_t
    [train]
    unroll = 1                             # steps the loss unrolls (windows of unroll + 1 steps)

    nxt = advance(model, p, u, "next", adapter_next_input(adapter))   # one step, torch
    loss = window_loss(model, p, states, target, next_input)         # states (B, unroll+1, S)
    step = stepper(model, target, next_input, device)                 # numpy in, numpy out

Windows come from onlinetrain.pairs.PairBuffer; rollout validation is onlinetrain.rollout.
"""
from __future__ import annotations

import numpy as np

MODES = ("field", "autoregressive")
TARGETS = ("next", "increment")


class ShapeRecorder:
    """Wraps an autoregressive adapter: remembers the field's shape (for the builder) and flattens."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.shape: tuple | None = None
        self.next_input = adapter_next_input(adapter)

    def __call__(self, frame, cfg):
        p, u = self.adapter(frame, cfg)
        u = np.asarray(u, np.float32)
        if self.shape is None:
            self.shape = tuple(u.shape)
        return np.asarray(p, np.float32).reshape(-1), u.reshape(-1)


def adapter_next_input(adapter):
    return getattr(adapter, "next_input", None)


def advance(model, p, u, target: str = "next", next_input=None):
    """One model step on torch tensors: p (B, P), u (B, S) -> the next input (B, S)."""
    import torch  # noqa: PLC0415
    out = model(torch.cat([p, u], dim=1))
    nxt = u + out if target == "increment" else out
    return nxt if next_input is None else next_input(nxt, u)


def window_loss(model, p, states, target: str = "next", next_input=None):
    """Mean over the window of the MSE of the unrolled prediction against each later state
    (gradients flow through the unroll); states is (B, window, S), p (B, P)."""
    u = states[:, 0]
    loss = 0.0
    w = states.shape[1]
    for j in range(1, w):
        u = advance(model, p, u, target, next_input)
        loss = loss + ((u - states[:, j]) ** 2).mean()
    return loss / (w - 1)


def stepper(model, target: str = "next", next_input=None, device="cpu"):
    """fn(p, u) -> next u on numpy float32 arrays (no gradients): what rollout.evaluate drives."""
    import torch  # noqa: PLC0415

    def step(p: np.ndarray, u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tp = torch.from_numpy(np.ascontiguousarray(p, np.float32)).to(device)
            tu = torch.from_numpy(np.ascontiguousarray(u, np.float32)).to(device)
            return advance(model, tp, tu, target, next_input).cpu().numpy()
    return step


class Autoregressive:
    """What the trainer does differently in this mode, in one place (trainer.py calls these):

        mode = Autoregressive(cfg, adapter)        # adapter: fn(frame, cfg) -> (params, u)
        rx = Receiver(..., mode.wrap(buf), cfg, mode.adapter, ...)
        model = mode.build(builder, *mode.dims())  # after the first batch (or the checkpoint's)
        sse = mode.sse(net, x, y)                  # a batch's x, y as torch tensors
        val = mode.validate(model, rx)             # {"val_mse": one-step MSE, rollout figures}
    """

    def __init__(self, cfg, adapter):
        self.cfg = cfg
        self.adapter = ShapeRecorder(adapter)
        self.target = cfg.model.target
        self.buf = None

    def wrap(self, buf):
        from .pairs import PairBuffer  # noqa: PLC0415
        self.buf = PairBuffer(buf, window=self.cfg.train.unroll + 1)
        return self.buf

    def dims(self) -> tuple[int, int]:
        return self.buf.x_size + self.buf.y_size, self.buf.y_size

    def build(self, builder, in_dim: int, out_dim: int):
        from .models import call_builder  # noqa: PLC0415
        # on resume before any frame: a flat field (what a 1-D builder needs)
        return call_builder(builder, in_dim, out_dim, self.cfg, self.adapter.shape or (out_dim,))

    def sse(self, net, x, y):
        """Sum over the batch of each window's mean squared error (the loop's normalization)."""
        return self.losses(net, x, y).sum()

    def losses(self, net, x, y):
        """Each window's mean squared error, (B,) (Breed scores them per simulation)."""
        w = self.buf.window
        p_size = x.shape[1] - (w - 1) * y.shape[1]
        states = torch_cat_window(x[:, p_size:], y, w)
        u = states[:, 0]
        err = 0.0
        for j in range(1, w):
            u = advance(net, x[:, :p_size], u, self.target, self.adapter.next_input)
            err = err + ((u.float() - states[:, j]) ** 2).mean(dim=1)
        return err / (w - 1)

    def validate(self, model, rx) -> dict:
        from .rollout import evaluate, trajectories  # noqa: PLC0415
        val = rx.val  # a snapshot: the receiver inserts meanwhile
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        try:
            r = evaluate(stepper(model, self.target, self.adapter.next_input, device),
                         trajectories(val))
        finally:
            model.train(was)
        return {"val_mse": r["one_step_mse"], **r}


def torch_cat_window(rest, y, window: int):
    """(B, window, S) states from a batch's [u_t .. u_t+w-2] inputs and its u_t+w-1 target."""
    import torch  # noqa: PLC0415
    return torch.cat([rest, y], dim=1).reshape(len(y), window, -1)


def training_mode(cfg, adapter):
    """Autoregressive(cfg, adapter) in that mode, else None (field mode: the trainer as it was)."""
    return Autoregressive(cfg, adapter) if cfg.model.mode == "autoregressive" else None


# --- adapters of the two reference solvers --------------------------------------------------
def ks1d_ar(frame, cfg):
    """ks1d: parameters (amplitudes as they are, phases / pi), u as it is (O(1) values)."""
    p = np.asarray(frame.params, np.float32).reshape(-1)
    m = p.size // 2
    q = p.copy()
    q[m:] = p[m:] / np.pi
    return q, np.asarray(frame.array, np.float32).reshape(-1)


def _keep_mean(pred, prev):
    """KS conserves the spatial mean: the next input gets the previous input's mean back."""
    return pred - pred.mean(dim=1, keepdim=True) + prev.mean(dim=1, keepdim=True)


ks1d_ar.next_input = _keep_mean


def heat2d_ar(frame, cfg):
    """heat2d: the 5 temperatures scaled to [-1, 1], u = (T - 300 K) / 100 K on the (n, n) grid."""
    from .surrogate import T_CENTER, T_HALF_RANGE, T_SCALE  # noqa: PLC0415
    p = np.asarray(frame.params, np.float32).reshape(-1)
    if p.shape != (5,):
        raise ValueError(f"heat2d_ar expects 5 parameters, frame of simulation {frame.sim_id} has "
                         f"{p.size}: set model.adapter for your solver")
    u = (np.asarray(frame.array, np.float32) - T_CENTER) / T_SCALE
    return (p - T_CENTER) / T_HALF_RANGE, u
