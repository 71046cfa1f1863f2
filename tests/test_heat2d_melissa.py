"""heat2d for Melissa users: the parameter order (solver.param_order) and CG that does not converge."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from onlinetrain import config
from solvers import heat2d as H

from conftest import ROOT

OURS = [100.0, 200.0, 300.0, 400.0, 500.0]  # Tx1 Tx2 Ty1 Ty2 T_IC
MELISSA = [500.0, 100.0, 200.0, 300.0, 400.0]  # the same study in Melissa's order: T_IC first


def test_melissa_order_is_the_same_physics():
    ours = list(H.solve(OURS, n=9, steps=4))
    theirs = list(H.solve(MELISSA, n=9, steps=4, param_order="melissa"))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ours, theirs))
    # and it differs from reading Melissa's order as ours (the silent mistake it prevents)
    _, wrong = list(H.solve(MELISSA, n=9, steps=4))[0]
    assert np.abs(wrong - ours[0][1]).max() > 50


def test_melissa_order_first_value_is_the_initial_temperature():
    # after one short step the centre, far from the walls, still holds T_IC
    _, u = next(H.solve([123.0, 400, 400, 400, 400], n=21, steps=100, param_order="melissa"))
    assert u[10, 10] == pytest.approx(123.0, abs=0.5)
    assert H.split_params([1, 2, 3, 4, 5], "melissa") == ([2.0, 3.0, 4.0, 5.0], 1.0)
    assert H.split_params([1, 2, 3, 4, 5]) == ([1.0, 2.0, 3.0, 4.0], 5.0)


def test_unknown_param_order_is_a_clear_error():
    with pytest.raises(ValueError, match="param_order='fortran'.*melissa"):
        list(H.solve(OURS, n=4, steps=1, param_order="fortran"))
    with pytest.raises(config.ConfigError, match='solver.param_order.*"melissa"') as e:
        config.load(None, {"solver.param_order": "fortran"})
    assert e.value.key == "solver.param_order" and e.value.value == "fortran"


def test_cg_that_stops_at_maxiter_raises():
    d = np.linspace(1.0, 1000.0, 50)  # 50 distinct eigenvalues: 3 iterations cannot converge
    with pytest.raises(H.CGNotConverged, match=r"maxiter=3 with relative residual .* > cg_tol=1e-10"
                       ) as e:
        H._cg(lambda v: d * v, np.ones(50), np.zeros(50), 1e-10, 3)
    assert e.value.maxiter == 3 and e.value.residual > 1e-10 and e.value.tol == 1e-10
    x = H._cg(lambda v: d * v, np.ones(50), np.zeros(50), 1e-10, 200)  # converges: no error
    assert np.allclose(x, 1.0 / d)
    with pytest.raises(H.CGNotConverged, match=r"heat2d step 1: .*maxiter=2 ") as e:
        list(H.solve(OURS, n=16, steps=2, cg_maxiter=2))
    assert e.value.step == 1
    from onlinetrain.errors import OTError
    assert issubclass(H.CGNotConverged, OTError)


def test_default_cg_cap_is_enough_for_large_time_steps():
    # alpha*dt/h^2 ~ 1000: the stiffest case the tests use converges within n*n iterations
    *_, (k, u) = H.solve([350.0] * 4 + [120.0], n=31, steps=10, t_end=1000.0)
    assert k == 10 and np.allclose(u, 350.0, atol=1e-4)


@pytest.mark.timeout(60)
def test_param_order_reaches_the_simulations(tmp_path, ring_name):
    """`solver.param_order = "melissa"` in a study's TOML: `ot simulate` children solve in that order."""
    from onlinetrain import frame as fr
    from onlinetrain.shm_channel import RingConsumer
    cfg = tmp_path / "m.toml"
    cfg.write_text('[solver]\nn = 8\nsteps = 3\nparam_order = "melissa"\n')
    params = tmp_path / "p.jsonl"
    params.write_text(json.dumps({"id": 0, "params": MELISSA}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring:
        p = subprocess.run([sys.executable, "-m", "onlinetrain", "simulate", "--to",
                            f"shm://{ring_name}", "--config", str(cfg), "--params", str(params)],
                           env=env, capture_output=True, text=True, timeout=50)
        assert p.returncode == 0, p.stderr
        frames = [ring.get(timeout=5) for _ in range(3)]
    ref = list(H.solve(OURS, n=8, steps=3))
    assert [f.kind for f in frames] == [fr.DATA] * 3
    assert all(abs(f.array - u).max() < 1e-3 for f, (_, u) in zip(frames, ref))
