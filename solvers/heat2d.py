"""Reference solver of the seed's use case: the 2D heat equation dT/dt = alpha * laplacian(T).

Square [0, L]^2 with Dirichlet walls T(0,y)=Tx1, T(L,y)=Tx2, T(x,0)=Ty1, T(x,L)=Ty2 and uniform
initial temperature T_IC. Unknowns are the n x n interior nodes of a uniform grid (h = L / (n + 1)),
5-point stencil.

PARAMETER ORDER (five temperatures, in K):
- "onlinetrain" (default): Tx1, Tx2, Ty1, Ty2, T_IC   (the four walls, then the initial value)
- "melissa":               T_IC, Tx1, Tx2, Ty1, Ty2   (Melissa's heat example: initial value first)
Both orders accept any five numbers, so a Melissa user's parameter sets run without error in the
default order and give a different (wrong) answer: set `solver.param_order = "melissa"` in the
study's TOML (or `param_order="melissa"` / `--param-order melissa` here).

Two time schemes:
- implicit Euler (default, unconditionally stable), each step solved by matrix-free conjugate
  gradient warm-started from the previous step's field (Melissa's example solver restarts CG from
  zero at each step; both stop at the same relative residual `cg_tol`). CG that reaches its
  iteration cap without converging raises `CGNotConverged`;
- explicit Euler, only if alpha * dt / h^2 <= 1/4, else `UnstableTimeStep`.

Three ways to use it:
- library:  `for step, field in heat2d.solve([Tx1, Tx2, Ty1, Ty2, T_IC], n=32, steps=100): ...`
            `heat2d.solve([T_IC, Tx1, Tx2, Ty1, Ty2], param_order="melissa")`
- standalone instrumented program streaming to a channel (env set by `ot simulate`, or flags):
      python -m solvers.heat2d --to shm://demo --sim-id 3 --params 100 200 300 400 500
- through `ot simulate` (the default solver).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

from onlinetrain.errors import OTError

N_PARAMS = 5
PARAM_NAMES = ("Tx1", "Tx2", "Ty1", "Ty2", "T_IC")  # the default order, "onlinetrain"
PARAM_ORDERS = {"onlinetrain": PARAM_NAMES, "melissa": ("T_IC", "Tx1", "Tx2", "Ty1", "Ty2")}


class CGNotConverged(OTError, ArithmeticError):
    """An implicit step's conjugate gradient hit `maxiter` above `cg_tol`; `step`, `residual`
    (relative), `tol` and `maxiter` say where and how far it got."""

    def __init__(self, message: str, step: int, residual: float, tol: float, maxiter: int):
        super().__init__(message)
        self.step, self.residual, self.tol, self.maxiter = step, residual, tol, maxiter


class UnstableTimeStep(ValueError):
    """Explicit scheme asked for with alpha*dt/h^2 > 1/4; `ratio` is the offending value."""

    def __init__(self, message: str, ratio: float):
        super().__init__(message)
        self.ratio = ratio


@dataclasses.dataclass
class Heat2DConfig:
    n: int = 32  # interior nodes per side
    steps: int = 100
    length: float = 10.0  # L, as Melissa's example
    alpha: float = 1.0
    t_end: float = 1.0
    scheme: str = "implicit"  # or "explicit"
    cg_tol: float = 1e-10  # relative residual |b - A x| / |b| at which an implicit step stops
    cg_maxiter: int = 0  # CG iterations per step before CGNotConverged (0: n * n, the unknowns)
    param_order: str = "onlinetrain"  # or "melissa": see the module docstring

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"heat2d n={self.n}: need at least 2 interior nodes per side")
        if self.steps < 1:
            raise ValueError(f"heat2d steps={self.steps}: need at least 1")
        for k in ("length", "alpha", "t_end"):
            if not getattr(self, k) > 0:
                raise ValueError(f"heat2d {k}={getattr(self, k)}: must be > 0")
        if self.scheme not in ("implicit", "explicit"):
            raise ValueError(f"heat2d scheme={self.scheme!r}: use 'implicit' or 'explicit'")
        if self.param_order not in PARAM_ORDERS:
            raise ValueError(f"heat2d param_order={self.param_order!r}: use 'onlinetrain' "
                             f"{PARAM_ORDERS['onlinetrain']} or 'melissa' {PARAM_ORDERS['melissa']}")
        if not (isinstance(self.cg_maxiter, int) and self.cg_maxiter >= 0):
            raise ValueError(f"heat2d cg_maxiter={self.cg_maxiter!r}: an integer >= 0 (0: n * n)")

    def check_stable(self) -> None:
        """Raise UnstableTimeStep if the explicit scheme is asked for with alpha*dt/h^2 > 1/4."""
        if self.scheme != "explicit":
            return
        ratio = self.alpha * self.dt / (self.h * self.h)
        if ratio > 0.25:
            need = math.ceil(self.alpha * self.t_end / (0.25 * self.h * self.h))
            raise UnstableTimeStep(
                f"explicit heat2d is unstable: alpha*dt/h^2 = {ratio:.4g} > 0.25 (n={self.n}, "
                f"steps={self.steps}); use steps >= {need} or scheme='implicit'", ratio)

    @property
    def h(self) -> float:
        return self.length / (self.n + 1)

    @property
    def dt(self) -> float:
        return self.t_end / self.steps


def laplacian(u: np.ndarray, h: float, walls: Sequence[float] = (0, 0, 0, 0)) -> np.ndarray:
    """5-point Laplacian of interior field u[i, j] (i along x, j along y) with Dirichlet walls."""
    tx1, tx2, ty1, ty2 = walls
    p = np.empty((u.shape[0] + 2, u.shape[1] + 2), dtype=u.dtype)
    p[1:-1, 1:-1] = u
    p[0, :], p[-1, :], p[:, 0], p[:, -1] = tx1, tx2, ty1, ty2
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * u) / (h * h)


def split_params(params: Sequence[float], order: str = "onlinetrain") -> tuple[list[float], float]:
    """([Tx1, Tx2, Ty1, Ty2], T_IC) from five temperatures given in `order` (PARAM_ORDERS)."""
    names = PARAM_ORDERS.get(order)
    if names is None:
        raise ValueError(f"heat2d param_order={order!r}: use one of {sorted(PARAM_ORDERS)}")
    if len(params) != N_PARAMS:
        raise ValueError(f"heat2d takes {N_PARAMS} parameters {names} (param_order={order!r}), "
                         f"got {len(params)}: {list(params)}")
    by = {k: float(v) for k, v in zip(names, params)}
    return [by["Tx1"], by["Tx2"], by["Ty1"], by["Ty2"]], by["T_IC"]


def _cg(apply_a, b: np.ndarray, x: np.ndarray, tol: float, maxiter: int, step: int = 0) -> np.ndarray:
    """Solve A x = b (A symmetric positive definite) from the guess x, to |r| <= tol |b|."""
    r = b - apply_a(x)
    p = r.copy()
    rr = float(np.vdot(r, r))
    bb = max(float(np.vdot(b, b)), 1e-300)
    stop = tol * tol * bb
    for _ in range(maxiter):
        if rr <= stop:
            break
        ap = apply_a(p)
        a = rr / float(np.vdot(p, ap))
        x += a * p
        r -= a * ap
        rr_new = float(np.vdot(r, r))
        p *= rr_new / rr
        p += r
        rr = rr_new
    if not rr <= stop:  # also NaN
        res = math.sqrt(rr / bb)
        raise CGNotConverged(
            f"heat2d step {step}: conjugate gradient stopped at maxiter={maxiter} with relative "
            f"residual {res:.3g} > cg_tol={tol:g}; raise cg_maxiter, loosen cg_tol, or take more "
            f"(smaller) time steps", step, res, tol, maxiter)
    return x


def solve(params: Sequence[float], n: int = 32, steps: int = 100, *, initial: np.ndarray | None = None,
          **kw) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, T at t = k * dt) for k = 1..steps; T is an (n, n) float64 array, x along axis 0.

    `params` = (Tx1, Tx2, Ty1, Ty2, T_IC), or (T_IC, Tx1, Tx2, Ty1, Ty2) with
    `param_order="melissa"`. `initial` overrides the uniform T_IC (analytic tests).
    """
    cfg = Heat2DConfig(n=n, steps=steps, **kw)
    walls, t_ic = split_params(params, cfg.param_order)
    h, dt, a = cfg.h, cfg.dt, cfg.alpha
    u = np.full((n, n), t_ic) if initial is None else np.array(initial, dtype=np.float64)
    if u.shape != (n, n):
        raise ValueError(f"initial field has shape {u.shape}, expected {(n, n)}")
    if cfg.scheme == "explicit":
        cfg.check_stable()
        for k in range(1, steps + 1):
            u = u + a * dt * laplacian(u, h, walls)
            yield k, u
        return
    # implicit Euler: (I - a dt L) u_new = u_old + a dt * (wall terms)
    wall_rhs = laplacian(np.zeros_like(u), h, walls) * (a * dt)

    def apply_a(x):
        return x - (a * dt) * laplacian(x, h)

    maxiter = cfg.cg_maxiter or n * n
    for k in range(1, steps + 1):
        u = _cg(apply_a, u + wall_rhs, u.copy(), cfg.cg_tol, maxiter, step=k)
        yield k, u


def main(argv=None):
    """Standalone instrumented program: solve and stream every step through the client API."""
    from onlinetrain import client

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--to", help="channel URL (default: $OT_CHANNEL)")
    ap.add_argument("--sim-id", type=int, help="simulation id (default: $OT_SIM_ID)")
    ap.add_argument("--params", type=float, nargs=N_PARAMS, help="Tx1 Tx2 Ty1 Ty2 T_IC, or "
                    "T_IC Tx1 Tx2 Ty1 Ty2 with --param-order melissa (default: $OT_PARAMS)")
    ap.add_argument("--param-order", choices=sorted(PARAM_ORDERS), default="onlinetrain")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--scheme", default="implicit")
    args = ap.parse_args(argv)
    with client.init(channel=args.to, sim_id=args.sim_id, params=args.params) as sim:
        for k, field in solve(sim.params, n=args.n, steps=args.steps, scheme=args.scheme,
                              param_order=args.param_order):
            sim.send(k, field.astype(np.float32), name="T")


if __name__ == "__main__":
    main()
