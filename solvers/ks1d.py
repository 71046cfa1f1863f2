"""Second reference solver: the 1D Kuramoto-Sivashinsky equation u_t + u u_x + u_xx + u_xxxx = 0.

Periodic on [0, L], Fourier pseudo-spectral in space (numpy real FFTs), ETDRK4 in time (Cox &
Matthews 2002 with the contour-integral coefficients of Kassam & Trefethen 2005). The linear part
u_t = -u_xx - u_xxxx is integrated exactly (mode k grows/decays as exp((k^2 - k^4) t)); modes with
|k| < 1 are unstable, the most unstable being k = 1/sqrt(2), and the nonlinear term moves energy
between them: for L of a few dozen and more the solution is spatio-temporally chaotic.

Parameters: the initial field is a sum of m sine waves, u0(x) = sum_j a_j sin(2 pi j x / L + phi_j),
j = 1..m, given as params = (a_1..a_m, phi_1..phi_m) (any even count; default m = 3).
Config: grid n (even), length L, solver step dt, output every `stride` solver steps, `steps` outputs.

Three ways to use it:
- library:  `for k, u in ks1d.solve([1, .5, .2, 0, 1, 2], n=128, steps=100): ...`
  (yields k = 1..steps and u at t = k * stride * dt, an (n,) float64 array on x_i = i L / n)
- standalone instrumented program streaming to a channel (env set by `ot simulate`, or flags):
      python -m solvers.ks1d --to shm://demo --sim-id 3 --params 1 .5 .2 0 1 2
- through `ot simulate --solver ks1d` / `solver.kind = "ks1d"`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

DEFAULT_LENGTH = 32 * math.pi  # Kassam & Trefethen's domain


@dataclasses.dataclass
class KS1DConfig:
    n: int = 128  # grid points (even)
    steps: int = 100  # output frames
    length: float = DEFAULT_LENGTH
    dt: float = 0.25  # ETDRK4 step
    stride: int = 1  # solver steps per output frame
    contour_points: int = 32  # M of the contour integrals

    def __post_init__(self):
        if not (isinstance(self.n, int) and self.n >= 4 and self.n % 2 == 0):
            raise ValueError(f"ks1d n={self.n!r}: need an even integer >= 4")
        for k in ("steps", "stride", "contour_points"):
            v = getattr(self, k)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"ks1d {k}={v!r}: need an integer >= 1")
        for k in ("length", "dt"):
            if not getattr(self, k) > 0:
                raise ValueError(f"ks1d {k}={getattr(self, k)!r}: must be > 0")

    @property
    def x(self) -> np.ndarray:
        return np.arange(self.n) * (self.length / self.n)

    @property
    def k(self) -> np.ndarray:
        """Wavenumbers of the rfft modes (0 .. n/2), in radians per unit length."""
        return 2 * np.pi * np.fft.rfftfreq(self.n, d=self.length / self.n)


def initial_field(params: Sequence[float], x: np.ndarray, length: float) -> np.ndarray:
    p = [float(v) for v in params]
    if len(p) < 2 or len(p) % 2:
        raise ValueError(f"ks1d takes an even number of parameters (a_1..a_m, phi_1..phi_m), got "
                         f"{len(p)}: {p}")
    m = len(p) // 2
    u = np.zeros_like(x)
    for j in range(1, m + 1):
        u += p[j - 1] * np.sin(2 * np.pi * j * x / length + p[m + j - 1])
    return u


def etdrk4_coefficients(lin: np.ndarray, dt: float, m: int = 32):
    """E, E2, Q, f1, f2, f3 of ETDRK4 for the diagonal linear operator `lin` (Kassam & Trefethen:
    each phi-function evaluated as a mean over M points of a circle of radius 1 around dt*lin)."""
    e = np.exp(dt * lin)
    e2 = np.exp(dt * lin / 2)
    r = np.exp(1j * np.pi * (np.arange(1, m + 1) - 0.5) / m)
    lr = dt * lin[:, None] + r[None, :]
    q = dt * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = dt * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr ** 2)) / lr ** 3, axis=1))
    f2 = dt * np.real(np.mean((2 + lr + np.exp(lr) * (lr - 2)) / lr ** 3, axis=1))
    f3 = dt * np.real(np.mean((-4 - 3 * lr - lr ** 2 + np.exp(lr) * (4 - lr)) / lr ** 3, axis=1))
    return e, e2, q, f1, f2, f3


class Stepper:
    """One ETDRK4 step of the KS equation on the rfft coefficients v (advance(v) -> v)."""

    def __init__(self, cfg: KS1DConfig, nonlinear: bool = True):
        self.cfg = cfg
        k = cfg.k
        self.lin = k ** 2 - k ** 4
        self.e, self.e2, self.q, self.f1, self.f2, self.f3 = etdrk4_coefficients(
            self.lin, cfg.dt, cfg.contour_points)
        g = -0.5j * k  # u u_x = (u^2 / 2)_x
        g[-1] = 0.0  # the Nyquist mode of an odd derivative of a real field is zero
        self.g = g if nonlinear else np.zeros_like(g)
        self.n = cfg.n

    def nonlin(self, v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, self.n)
        return self.g * np.fft.rfft(u * u)

    def advance(self, v: np.ndarray) -> np.ndarray:
        nv = self.nonlin(v)
        a = self.e2 * v + self.q * nv
        na = self.nonlin(a)
        b = self.e2 * v + self.q * na
        nb = self.nonlin(b)
        c = self.e2 * a + self.q * (2 * nb - nv)
        nc = self.nonlin(c)
        return self.e * v + nv * self.f1 + 2 * (na + nb) * self.f2 + nc * self.f3


def solve(params: Sequence[float], n: int = 128, steps: int = 100, *, initial=None,
          nonlinear: bool = True, **kw) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, u at t = k * stride * dt) for k = 1..steps; u is an (n,) float64 array.

    `params` = (a_1..a_m, phi_1..phi_m); `initial` overrides the sine waves (tests);
    `nonlinear=False` drops u u_x (the linear part alone, solved exactly)."""
    cfg = KS1DConfig(n=n, steps=steps, **kw)
    if initial is None:
        u = initial_field(params, cfg.x, cfg.length)
    else:
        u = np.array(initial, dtype=np.float64)
        if u.shape != (n,):
            raise ValueError(f"initial field has shape {u.shape}, expected {(n,)}")
    st = Stepper(cfg, nonlinear)
    v = np.fft.rfft(u)
    for k in range(1, steps + 1):
        with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is reported below
            for _ in range(cfg.stride):
                v = st.advance(v)
        u = np.fft.irfft(v, n)
        if not np.all(np.isfinite(u)):
            raise FloatingPointError(f"ks1d blew up at output step {k} (dt={cfg.dt}): lower dt")
        yield k, u


def main(argv=None):
    """Standalone instrumented program: solve and stream every output step through the client API."""
    from onlinetrain import client

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--to", help="channel URL (default: $OT_CHANNEL)")
    ap.add_argument("--sim-id", type=int, help="simulation id (default: $OT_SIM_ID)")
    ap.add_argument("--params", type=float, nargs="+", help="a_1..a_m phi_1..phi_m "
                    "(default: $OT_PARAMS)")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--length", type=float, default=DEFAULT_LENGTH)
    ap.add_argument("--dt", type=float, default=0.25)
    ap.add_argument("--stride", type=int, default=1)
    args = ap.parse_args(argv)
    with client.init(channel=args.to, sim_id=args.sim_id, params=args.params) as sim:
        for k, field in solve(sim.params, n=args.n, steps=args.steps, length=args.length,
                              dt=args.dt, stride=args.stride):
            sim.send(k, field.astype(np.float32), name="u")


if __name__ == "__main__":
    main()
