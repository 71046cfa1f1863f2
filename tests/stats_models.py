"""Test functions with known Sobol' indices, and Python solvers for `ot simulate --solver`.

    ishigami(X) / ishigami_indices()      a = 7, b = 0.1, X ~ U(-pi, pi)^3
    gfun(X, A) / gfun_indices(A)          X ~ U(0, 1)^p
    solver "tests.stats_models:ishigami_solver": one step, a 1-cell field holding f(params)
"""
import numpy as np

A_ISH, B_ISH = 7.0, 0.1
G_A = np.array([0.0, 1.0, 4.5, 9.0, 99.0, 99.0])


def ishigami(X, a=A_ISH, b=B_ISH):
    X = np.asarray(X, np.float64)
    return np.sin(X[..., 0]) + a * np.sin(X[..., 1]) ** 2 + b * X[..., 2] ** 4 * np.sin(X[..., 0])


def ishigami_indices(a=A_ISH, b=B_ISH):
    v = a ** 2 / 8 + b * np.pi ** 4 / 5 + b ** 2 * np.pi ** 8 / 18 + 0.5
    v1, v2 = 0.5 * (1 + b * np.pi ** 4 / 5) ** 2, a ** 2 / 8
    v13 = b ** 2 * np.pi ** 8 / 18 - b ** 2 * np.pi ** 8 / 50
    return np.array([v1, v2, 0.0]) / v, np.array([v1 + v13, v2, v13]) / v


def gfun(X, a=G_A):
    return np.prod((np.abs(4 * np.asarray(X, np.float64) - 2) + a) / (1 + a), axis=-1)


def gfun_indices(a=G_A):
    vi = 1 / (3 * (1 + a) ** 2)
    v = np.prod(1 + vi) - 1
    return vi / v, vi * np.prod(1 + vi) / (1 + vi) / v


def ishigami_solver(params):
    """`ot simulate --solver tests.stats_models:ishigami_solver`: one step, one cell."""
    yield 1, np.array([ishigami(np.asarray(params))], np.float64)
