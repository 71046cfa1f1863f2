"""ks1d verified: fourth order in dt, the linear part exactly, the mean conserved, the spectrum's peak."""
import math

import numpy as np
import pytest

from solvers import ks1d as K

P = [1.0, 0.5, 0.3, 0.0, 1.0, 2.0]
L = 32 * math.pi  # Kassam & Trefethen's setup


def final(params, n, t_end, dt, **kw):
    steps = round(t_end / dt)
    *_, (k, u) = K.solve(params, n=n, steps=1, stride=steps, dt=dt, **kw)
    return u


def test_fourth_order_in_dt():
    t = 4.0
    ref = final(P, 128, t, t / 2048, length=L)
    errs = [np.abs(final(P, 128, t, t / s, length=L) - ref).max() for s in (16, 32, 64, 128)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.7) & (orders < 4.3)), (errs, orders)
    assert errs[-1] < 1e-7


def linear_exact(u0, cfg, t):
    k = cfg.k
    return np.fft.irfft(np.fft.rfft(u0) * np.exp((k ** 2 - k ** 4) * t), cfg.n)


def test_linear_part_is_exact():
    # without u u_x every Fourier mode evolves as exp((k^2 - k^4) t): unstable below |k| = 1
    cfg = K.KS1DConfig(n=64, length=L)
    rng = np.random.default_rng(0)
    u0 = np.fft.irfft(np.fft.rfft(rng.standard_normal(64)) * np.exp(-cfg.k ** 2), 64)
    out = list(K.solve([], n=64, steps=10, initial=u0, nonlinear=False, dt=0.5, length=L))
    for k, u in out:
        assert np.abs(u - linear_exact(u0, cfg, 0.5 * k)).max() < 1e-12 * max(1, np.abs(u).max())
    # a mode with |k| < 1 grew, one with |k| > 1 decayed
    v0, v = np.fft.rfft(u0), np.fft.rfft(out[-1][1])
    assert abs(v[8]) > abs(v0[8]) and abs(v[20]) < abs(v0[20])  # k = 0.5 and k = 1.25


def test_small_amplitude_follows_the_linear_solution():
    # the full (nonlinear) solver with a 1e-6 field: the quadratic term is ~1e-6 relative
    cfg = K.KS1DConfig(n=64, length=L)
    u0 = 1e-6 * K.initial_field([1, 0.5, 0.3, 0.2, 0.0, 1.0, 2.0, 3.0], cfg.x, L)
    *_, (k, u) = K.solve([], n=64, steps=20, initial=u0, dt=0.25, length=L)
    ref = linear_exact(u0, cfg, 5.0)
    assert np.abs(u - ref).max() < 1e-5 * np.abs(ref).max()


def test_mean_is_conserved():
    cfg = K.KS1DConfig(n=64, length=L)
    u0 = K.initial_field(P, cfg.x, L) + 0.7  # non-zero mean
    means = [u.mean() for _, u in K.solve([], n=64, steps=400, initial=u0, dt=0.5, length=L)]
    assert np.abs(np.array(means) - 0.7).max() < 1e-10
    assert np.std(u0) > 0.1 and abs(means[-1] - 0.7) < 1e-10


def test_time_averaged_spectrum_peaks_near_the_most_unstable_mode():
    n, dt = 128, 0.25
    cfg = K.KS1DConfig(n=n, length=L)
    spec = np.zeros(n // 2 + 1)
    for k, u in K.solve(P, n=n, steps=3000, dt=dt, stride=2, length=L):
        if k * 2 * dt > 100:  # after the transient
            spec += np.abs(np.fft.rfft(u)) ** 2
    peak = cfg.k[np.argmax(spec)]
    assert abs(peak - 1 / math.sqrt(2)) <= 0.1, peak
    # a real peak: long waves and short waves carry far less energy
    top = spec.max()
    assert spec[np.argmin(abs(cfg.k - 0.125))] < 0.3 * top
    assert spec[np.argmin(abs(cfg.k - 1.5))] < 0.1 * top
    assert spec[np.argmin(abs(cfg.k - 2.5))] < 1e-3 * top


def test_output_stride_and_steps():
    a = [u for _, u in K.solve(P, n=32, steps=6, dt=0.25, stride=1)]
    b = list(K.solve(P, n=32, steps=3, dt=0.25, stride=2))
    assert [k for k, _ in b] == [1, 2, 3]
    for (_, u), v in zip(b, a[1::2]):
        assert np.array_equal(u, v)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="even number of parameters"):
        list(K.solve([1, 2, 3], n=32, steps=2))
    with pytest.raises(ValueError, match="n=33"):
        list(K.solve(P, n=33, steps=2))
    with pytest.raises(ValueError, match="dt=-1"):
        list(K.solve(P, n=32, steps=2, dt=-1))


def test_blow_up_names_dt():
    with pytest.raises(FloatingPointError, match="lower dt"):
        list(K.solve([50.0, 0.0], n=32, steps=50, dt=5.0, length=L))
