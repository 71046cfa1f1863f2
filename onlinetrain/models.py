"""Model builders that know the field's shape: the MLP and a small periodic 1D convolutional net.

A builder is fn(in_dim, out_dim, cfg, shape=None) -> torch.nn.Module taking a flat (B, in_dim)
batch to (B, out_dim). In autoregressive mode the input is [parameters, u_t] and `shape` is the
field's shape (what the adapter returned for u), so a builder can lay u out on its grid:

    [model]
    mode = "autoregressive"
    builder = "onlinetrain.models:build_conv1d"   # or onlinetrain.models:build_mlp
    hidden = 32      # conv1d: channels
    layers = 3       # conv1d: hidden convolutions (kernel 5, circular padding)

`call_builder` passes `shape` only to builders that accept it, so the seed's three-argument
builders (onlinetrain.surrogate:build_mlp, users' own) keep working.
"""
from __future__ import annotations

import inspect
import math

from .errors import OTError


class ModelError(OTError, ValueError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def call_builder(builder, in_dim: int, out_dim: int, cfg, shape=None):
    """builder(in_dim, out_dim, cfg[, shape=shape]): shape only if the builder takes it."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "shape" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    return builder(in_dim, out_dim, cfg, shape=shape) if takes else builder(in_dim, out_dim, cfg)


def build_mlp(in_dim: int, out_dim: int, cfg, shape=None):
    """The seed's MLP (in -> hidden (ReLU) x layers -> out); the shape is not needed."""
    from .surrogate import build_mlp as mlp  # noqa: PLC0415
    return mlp(in_dim, out_dim, cfg)


def build_conv1d(in_dim: int, out_dim: int, cfg, shape=None):
    """[p, u] -> next u (or its increment) with periodic 1D convolutions: u is one channel, each
    parameter a constant channel; `model.layers` convolutions of `model.hidden` channels (kernel
    5, circular padding, GELU), then a 1x1 convolution back to one channel."""
    import torch  # noqa: PLC0415
    import torch.nn as nn  # noqa: PLC0415

    if shape is None or len(shape) != 1:
        raise ModelError(f"build_conv1d needs a 1-D field, got shape {shape!r}: use "
                         f"onlinetrain.models:build_mlp for other fields", shape)
    n = int(shape[0])
    n_params = in_dim - n
    if n_params < 0 or out_dim != n:
        raise ModelError(f"build_conv1d: input of {in_dim} and output of {out_dim} values do not "
                         f"fit a field of {n} points (input = parameters + field, output = "
                         f"field)", (in_dim, out_dim))
    hidden, layers = cfg.model.hidden, cfg.model.layers

    class PeriodicConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            mods, ch = [], 1 + n_params
            for _ in range(layers):
                mods += [nn.Conv1d(ch, hidden, 5, padding=2, padding_mode="circular"), nn.GELU()]
                ch = hidden
            mods.append(nn.Conv1d(ch, 1, 1))
            self.net = nn.Sequential(*mods)
            self.dims = (in_dim, out_dim)  # what model_dims() reports (no Linear layer here)

        def forward(self, x):
            p, u = x[:, :n_params], x[:, n_params:]
            chans = [u.unsqueeze(1)] + ([p.unsqueeze(2).expand(-1, -1, n)] if n_params else [])
            return self.net(torch.cat(chans, dim=1)).squeeze(1)

    return PeriodicConv1d()


def field_size(shape) -> int:
    return int(math.prod(shape)) if shape else 0
