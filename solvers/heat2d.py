"""Reference solver of the seed's use case: the 2D heat equation dT/dt = alpha * laplacian(T).

Square [0, L]^2 with Dirichlet walls T(0,y)=Tx1, T(L,y)=Tx2, T(x,0)=Ty1, T(x,L)=Ty2 and uniform
initial temperature T_IC. Unknowns are the n x n interior nodes of a uniform grid (h = L / (n + 1)),
5-point stencil. Two time schemes:
- implicit Euler (default, unconditionally stable), each step solved by matrix-free conjugate
  gradient warm-started from the previous step (as Melissa's example solver);
- explicit Euler, only if alpha * dt / h^2 <= 1/4, else `UnstableTimeStep`.

Three ways to use it:
- library:  `for step, field in heat2d.solve([Tx1, Tx2, Ty1, Ty2, T_IC], n=32, steps=100): ...`
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

N_PARAMS = 5
PARAM_NAMES = ("Tx1", "Tx2", "Ty1", "Ty2", "T_IC")


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
    cg_tol: float = 1e-10

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


def _cg(apply_a, b: np.ndarray, x: np.ndarray, tol: float, maxiter: int) -> np.ndarray:
    r = b - apply_a(x)
    p = r.copy()
    rr = float(np.vdot(r, r))
    stop = tol * tol * max(float(np.vdot(b, b)), 1e-300)
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
    return x


def solve(params: Sequence[float], n: int = 32, steps: int = 100, *, initial: np.ndarray | None = None,
          **kw) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, T at t = k * dt) for k = 1..steps; T is an (n, n) float64 array, x along axis 0.

    `params` = (Tx1, Tx2, Ty1, Ty2, T_IC). `initial` overrides the uniform T_IC (analytic tests).
    """
    cfg = Heat2DConfig(n=n, steps=steps, **kw)
    if len(params) != N_PARAMS:
        raise ValueError(f"heat2d takes {N_PARAMS} parameters {PARAM_NAMES}, got {len(params)}: "
                         f"{list(params)}")
    walls = [float(v) for v in params[:4]]
    h, dt, a = cfg.h, cfg.dt, cfg.alpha
    u = np.full((n, n), float(params[4])) if initial is None else np.array(initial, dtype=np.float64)
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

    for k in range(1, steps + 1):
        u = _cg(apply_a, u + wall_rhs, u.copy(), cfg.cg_tol, maxiter=10 * n)
        yield k, u


def main(argv=None):
    """Standalone instrumented program: solve and stream every step through the client API."""
    from onlinetrain import client

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--to", help="channel URL (default: $OT_CHANNEL)")
    ap.add_argument("--sim-id", type=int, help="simulation id (default: $OT_SIM_ID)")
    ap.add_argument("--params", type=float, nargs=N_PARAMS, help="Tx1 Tx2 Ty1 Ty2 T_IC "
                    "(default: $OT_PARAMS)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--scheme", default="implicit")
    args = ap.parse_args(argv)
    with client.init(channel=args.to, sim_id=args.sim_id, params=args.params) as sim:
        for k, field in solve(sim.params, n=args.n, steps=args.steps, scheme=args.scheme):
            sim.send(k, field.astype(np.float32), name="T")


if __name__ == "__main__":
    main()
