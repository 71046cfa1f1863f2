"""Rollout validation, the autoregressive step and loss, and the shape-aware builders."""
import numpy as np
import pytest
import torch

from onlinetrain import ar
from onlinetrain.config import Config
from onlinetrain.models import ModelError, build_conv1d, build_mlp, call_builder
from onlinetrain.rollout import Trajectory, evaluate, nrmse, trajectories
from solvers import ks1d

N, LENGTH, DT, STRIDE = 32, 22.0, 0.25, 4


class ExactKS(torch.nn.Module):
    """The solver's exact one-step map (one output stride of ETDRK4) on float32 states."""

    def __init__(self, n_params, increment=False):
        super().__init__()
        self.n_params, self.increment = n_params, increment
        self.st = ks1d.Stepper(ks1d.KS1DConfig(n=N, length=LENGTH, dt=DT, stride=STRIDE))

    def one(self, u):
        v = np.fft.rfft(u.astype(np.float64))
        for _ in range(STRIDE):
            v = self.st.advance(v)
        return np.fft.irfft(v, N).astype(np.float32)

    def forward(self, x):
        u = x[:, self.n_params:].numpy()
        nxt = np.stack([self.one(r) for r in u])
        return torch.from_numpy(nxt - u if self.increment else nxt)


def ks_trajectories(n_sims=3, steps=60):
    """Held-out data as the receiver keeps it, {(sim, step): (p, u)}, from the float32 map."""
    m = ExactKS(0)
    cfg = ks1d.KS1DConfig(n=N, length=LENGTH)
    val = {}
    for sim in range(n_sims):
        p = np.array([1.0, 0.3 * sim, 0.2, 0.0, 1.0, 2.0], np.float32)
        u = ks1d.initial_field(p, cfg.x, LENGTH).astype(np.float32)
        for t in range(1, steps + 1):
            u = m.one(u)
            val[(10 + sim, t)] = (p, u)
    return val


def test_the_solvers_exact_map_rolls_out_with_zero_error():
    trajs = trajectories(ks_trajectories())
    assert [t.sim_id for t in trajs] == [10, 11, 12] and trajs[0].states.shape == (60, N)
    r = evaluate(ar.stepper(ExactKS(6), "next"), trajs)
    assert r == {"one_step_mse": 0.0, "mean_nRMSE": 0.0, "rollout_horizon": None,
                 "rollout_steps": 59, "rollout_sims": 3}
    # the increment target and the adapter's mean-keeping next input: float32 rounding only
    r = evaluate(ar.stepper(ExactKS(6, increment=True), "increment",
                            ar.ks1d_ar.next_input), trajs)
    assert r["one_step_mse"] < 1e-12 and r["mean_nRMSE"] < 1e-4 and r["rollout_horizon"] is None


def test_a_wrong_map_is_caught_at_the_right_horizon():
    # truth u_t+1 = 0.9 u_t; the model keeps u: nRMSE_j = (1/0.9)^j - 1 crosses 1 at j = 7
    val = {(0, t): (np.zeros(1, np.float32), (0.9 ** t * np.ones(4)).astype(np.float32))
           for t in range(0, 11)}
    r = evaluate(lambda p, u: u, trajectories(val))
    curve = (1 / 0.9) ** np.arange(1, 11) - 1
    assert r["rollout_horizon"] == 7 and r["rollout_steps"] == 10
    assert r["mean_nRMSE"] == pytest.approx(curve.mean(), rel=1e-5)
    assert r["one_step_mse"] == pytest.approx(np.mean([(0.1 * 0.9 ** t) ** 2 for t in range(10)]),
                                              rel=1e-4)
    # a rollout that blows up counts as crossed
    r = evaluate(lambda p, u: u * np.float32(np.inf), trajectories(val))
    assert r["rollout_horizon"] == 1 and r["mean_nRMSE"] == float("inf")


def test_trajectories_start_at_the_first_step_and_stop_at_a_gap():
    one = (np.ones(2, np.float32), np.ones(3, np.float32))
    val = {(1, s): one for s in (4, 5, 6, 8)} | {(2, 0): one} | {(3, s): one for s in (0, 1)}
    t = trajectories(val)
    assert [(x.sim_id, x.first_step, len(x.states)) for x in t] == [(1, 4, 3), (3, 0, 2)]
    assert evaluate(lambda p, u: u, [])["mean_nRMSE"] is None
    assert nrmse(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0


def test_window_loss_unrolls_through_the_model():
    torch.manual_seed(0)
    val = ks_trajectories(1, 5)
    states = torch.from_numpy(np.stack([val[(10, t)][1] for t in range(1, 5)]))[None]  # (1,4,N)
    p = torch.zeros(1, 6)
    assert float(ar.window_loss(ExactKS(6), p, states)) == 0.0
    cfg = Config()
    cfg.model.hidden, cfg.model.layers = 8, 1
    net = build_conv1d(6 + N, N, cfg, shape=(N,))
    loss = ar.window_loss(net, p, states, "increment")
    loss.backward()
    assert loss.item() > 0 and all(q.grad is not None for q in net.parameters())
    # unroll 3: the third prediction depends on the first (gradient through the unroll)
    u = states[:, 0].clone().requires_grad_(True)
    x = ar.advance(net, p, ar.advance(net, p, ar.advance(net, p, u, "increment"), "increment"))
    x.sum().backward()
    assert u.grad.abs().sum() > 0


def test_conv1d_is_periodic_and_shift_equivariant():
    cfg = Config()
    cfg.model.hidden, cfg.model.layers = 8, 2
    net = build_conv1d(3 + 16, 16, cfg, shape=(16,))
    x = torch.randn(2, 19)
    shifted = torch.cat([x[:, :3], torch.roll(x[:, 3:], 5, dims=1)], dim=1)
    with torch.no_grad():
        assert torch.allclose(torch.roll(net(x), 5, dims=1), net(shifted), atol=1e-6)
    assert net.dims == (19, 16)
    with pytest.raises(ModelError, match=r"shape \(4, 4\)") as e:
        build_conv1d(21, 16, cfg, shape=(4, 4))
    assert e.value.value == (4, 4)
    with pytest.raises(ModelError, match="do not fit"):
        build_conv1d(10, 16, cfg, shape=(16,))


def test_builders_get_the_shape_only_if_they_take_it():
    got = {}

    def three(i, o, cfg):
        got["three"] = (i, o)
        return "m3"

    def four(i, o, cfg, shape=None):
        got["four"] = shape
        return "m4"

    assert call_builder(three, 5, 4, None, shape=(4,)) == "m3" and got["three"] == (5, 4)
    assert call_builder(four, 5, 4, None, shape=(2, 2)) == "m4" and got["four"] == (2, 2)
    assert isinstance(call_builder(build_mlp, 5, 4, Config(), shape=(4,)), torch.nn.Sequential)


def test_ar_adapters_and_shape_recorder():
    class F:  # a frame as the receiver hands it over
        sim_id, time_step = 3, 7
        params = np.array([1.0, 2.0, 0.0, np.pi], np.float32)
        array = np.arange(12, dtype=np.float32).reshape(3, 4)

    rec = ar.ShapeRecorder(ar.ks1d_ar)
    p, u = rec(F, None)
    assert rec.shape == (12,) and np.allclose(p, [1, 2, 0, 1]) and u.shape == (12,)
    assert rec.next_input is ar.ks1d_ar.next_input
    F.params = np.full(5, 500, np.float32)
    F.array = np.full((3, 3), 400, np.float32)
    rec = ar.ShapeRecorder(ar.heat2d_ar)
    p, u = rec(F, None)
    assert rec.shape == (3, 3) and np.allclose(p, 1) and np.allclose(u, 1) and rec.next_input is None
    F.params = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="5 parameters"):
        rec(F, None)
