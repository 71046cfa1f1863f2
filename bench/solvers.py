"""How close the reference solvers run to their own kernels: ks1d vs its FFTs, heat2d vs a stencil.

    PYTHONPATH=$PWD flock /tmp/ot-bench.lock python bench/solvers.py [--quick]

ks1d: one ETDRK4 step costs 4 forward + 4 inverse real FFTs of n points plus ~30 elementwise
complex operations; `ks1d_over_fft` = time per step / time of those 8 FFTs alone (same n, same
numpy), so 1.0 would mean the step is all FFT and the rest is free.
heat2d: cell-updates/s = n^2 * steps / wall time of `heat2d.solve`; the baseline is one numpy
5-point stencil pass (heat2d.laplacian) over the same n x n grid, in cells/s;
`heat2d_over_stencil` = the ratio (implicit Euler does one CG solve, ~10-40 stencil passes, per
step; the explicit scheme's ratio is reported too).
Each timing is paired with its baseline's, back to back, and the ratio is the median of the\nper-repeat ratios (robust on a loaded machine). A table for people, then the LAST line is JSON:
ks1d_over_fft and heat2d_over_stencil at the default sizes (ks1d n=128, heat2d n=32, implicit).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from solvers import heat2d, ks1d  # noqa: E402


def _paired(fa, fb, reps: int, inner_a: int, inner_b: int) -> tuple[float, float, float]:
    """Median time of fa, of fb, and median of the per-repeat ratio a/b: each repeat times fa
    then fb back to back, so a loaded machine slows both alike."""
    fa(), fb()  # warm up
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner_a):
            fa()
        t1 = time.perf_counter()
        for _ in range(inner_b):
            fb()
        t2 = time.perf_counter()
        ta.append((t1 - t0) / inner_a)
        tb.append((t2 - t1) / inner_b)
    return (statistics.median(ta), statistics.median(tb),
            statistics.median(a / b for a, b in zip(ta, tb)))


def bench_ks1d(n: int, reps: int, inner: int) -> dict:
    cfg = ks1d.KS1DConfig(n=n)
    st = ks1d.Stepper(cfg)
    state = {"v": np.fft.rfft(ks1d.initial_field([1, .5, .3, 0, 1, 2], cfg.x, cfg.length))}

    def step():
        state["v"] = st.advance(state["v"])

    u = np.random.default_rng(0).standard_normal(n)
    v = np.fft.rfft(u)

    def ffts():
        for _ in range(4):
            np.fft.rfft(u)
            np.fft.irfft(v, n)

    t_step, t_fft, ratio = _paired(step, ffts, reps, inner, inner)
    return {"n": n, "step_us": t_step * 1e6, "fft_us": t_fft * 1e6, "ratio": ratio}


def bench_heat2d(n: int, scheme: str, steps: int, reps: int) -> dict:
    params = [100, 200, 300, 400, 500]
    kw = {"scheme": scheme}
    if scheme == "explicit":  # keep it stable: alpha dt / h^2 = 0.2
        h = 10.0 / (n + 1)
        kw["t_end"] = 0.2 * h * h * steps

    def solve():
        for _ in heat2d.solve(params, n=n, steps=steps, **kw):
            pass

    u = np.random.default_rng(0).standard_normal((n, n))
    t_solve, t_sten, r = _paired(solve, lambda: heat2d.laplacian(u, 0.1, (1, 2, 3, 4)), reps,
                                 1, steps)
    # updates/s over stencil cells/s = (n^2 steps / t_solve) / (n^2 / t_sten)
    return {"n": n, "scheme": scheme, "cell_updates_per_s": n * n * steps / t_solve,
            "stencil_cells_per_s": n * n / t_sten, "ratio": steps / r}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (~20 s)")
    args = ap.parse_args(argv)
    reps = 5 if args.quick else 11
    ks_sizes = (128, 1024) if args.quick else (64, 128, 512, 1024, 4096)
    ht_sizes = (32, 128) if args.quick else (32, 64, 128, 256)
    ks = [bench_ks1d(n, reps, 100 if n <= 1024 else 20) for n in ks_sizes]
    ht = [bench_heat2d(n, s, 20, reps) for n in ht_sizes for s in ("implicit", "explicit")]
    print("ks1d: one ETDRK4 step vs its 8 real FFTs alone")
    print(f"{'n':>6} {'step us':>10} {'8 FFTs us':>10} {'step/FFT':>9}")
    for r in ks:
        print(f"{r['n']:>6} {r['step_us']:>10.1f} {r['fft_us']:>10.1f} {r['ratio']:>9.2f}")
    print("heat2d: cell-updates/s vs one numpy stencil pass over the same grid (cells/s)")
    print(f"{'n':>6} {'scheme':>9} {'updates/s':>12} {'stencil/s':>12} {'ratio':>7}")
    for r in ht:
        print(f"{r['n']:>6} {r['scheme']:>9} {r['cell_updates_per_s']:>12.3g} "
              f"{r['stencil_cells_per_s']:>12.3g} {r['ratio']:>7.3f}")
    fig = {"ks1d_over_fft": round(ks[0]["ratio"], 3),
           "heat2d_over_stencil": round(next(r["ratio"] for r in ht if r["n"] == 32
                                             and r["scheme"] == "implicit"), 4),
           "heat2d_explicit_over_stencil": round(next(r["ratio"] for r in ht if r["n"] == 32
                                                      and r["scheme"] == "explicit"), 3),
           "ks1d_n": ks[0]["n"], "heat2d_n": 32,
           "ks1d_over_fft_by_n": {str(r["n"]): round(r["ratio"], 3) for r in ks}}
    print(json.dumps(fig))
    return fig


if __name__ == "__main__":
    main()
