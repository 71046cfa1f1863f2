"""heat2d against analytic solutions: a decaying sine mode, convergence orders, steady state."""
import numpy as np
import pytest

from solvers import heat2d as H

L = 10.0


def sine_mode(n):
    h = L / (n + 1)
    x = np.arange(1, n + 1) * h
    return np.outer(np.sin(np.pi * x / L), np.sin(np.pi * x / L))


def final(params, n, steps, **kw):
    *_, (k, u) = H.solve(params, n=n, steps=steps, **kw)
    assert k == steps
    return u


def test_decaying_sine_mode_matches_analytic():
    n, t = 63, 1.0
    u = final([0, 0, 0, 0, 0], n, 200, initial=sine_mode(n), t_end=t)
    exact = sine_mode(n) * np.exp(-2 * (np.pi / L) ** 2 * t)
    assert np.abs(u - exact).max() < 2e-3


def test_space_order_two_explicit():
    # dt proportional to h^2 (fixed ratio 0.2), so the error is O(h^2)
    t, errs = 0.5, []
    for n in (9, 19, 39):
        h = L / (n + 1)
        steps = round(t / (0.2 * h * h))
        u = final([0] * 5, n, steps, initial=sine_mode(n), scheme="explicit", t_end=t)
        errs.append(np.abs(u - sine_mode(n) * np.exp(-2 * (np.pi / L) ** 2 * t)).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 1.8), (errs, orders)


def test_time_order_one_implicit():
    # against the semi-discrete exact solution of the sine mode, so only the time error remains
    n, t = 31, 2.0
    h = L / (n + 1)
    lam = -2 * (4 / h ** 2) * np.sin(np.pi * h / (2 * L)) ** 2
    errs = []
    for steps in (10, 20, 40, 80):
        u = final([0] * 5, n, steps, initial=sine_mode(n), t_end=t)
        errs.append(np.abs(u - sine_mode(n) * np.exp(lam * t)).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 0.9) & (orders < 1.1)), (errs, orders)


def test_steady_state_constant_walls():
    u = final([350.0] * 4 + [120.0], 15, 50, t_end=500.0)
    assert np.allclose(u, 350.0, atol=1e-6)


def test_steady_state_centre_is_mean_of_walls():
    # superposition + 90-degree symmetry: the centre of the steady state is the walls' mean
    u = final([100.0, 200.0, 300.0, 400.0, 500.0], 31, 100, t_end=1000.0)
    assert u[15, 15] == pytest.approx(250.0, abs=1e-4)


def test_implicit_and_explicit_agree():
    a = final([100, 200, 300, 400, 500], 15, 400)
    b = final([100, 200, 300, 400, 500], 15, 400, scheme="explicit")
    assert np.abs(a - b).max() < 0.5


def test_unstable_explicit_step_is_a_clear_error():
    with pytest.raises(H.UnstableTimeStep, match=r"alpha\*dt/h\^2 = .* > 0.25.*steps >= \d+"):
        list(H.solve([100] * 5, n=64, steps=100, scheme="explicit"))


def test_wrong_number_of_parameters():
    with pytest.raises(ValueError, match="5 parameters"):
        list(H.solve([1, 2, 3], n=8, steps=2))
