"""ks1d streams like heat2d: standalone program, `ot simulate --solver ks1d`, solver.kind = "ks1d"."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from onlinetrain import config as C
from onlinetrain import frame as fr
from onlinetrain.shm_channel import RingConsumer
from solvers import ks1d

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
P = [1.0, 0.5, 0.3, 0.0, 1.0, 2.0]


@pytest.mark.timeout(60)
def test_standalone_program_streams_every_step(ring_name):
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring:
        p = subprocess.run([sys.executable, "-m", "solvers.ks1d", "--to", f"shm://{ring_name}",
                            "--sim-id", "4", "--params", *map(str, P), "--n", "32", "--steps", "5",
                            "--length", "22", "--dt", "0.1", "--stride", "3"],
                           env=ENV, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        frames = [ring.get(timeout=5) for _ in range(6)]
    ref = list(ks1d.solve(P, n=32, steps=5, length=22, dt=0.1, stride=3))
    assert [f.time_step for f in frames[:5]] == [1, 2, 3, 4, 5]
    assert all(f.sim_id == 4 and f.name == "u" and f.array.shape == (32,) for f in frames[:5])
    assert all(np.abs(f.array - u).max() < 1e-5 for f, (_, u) in zip(frames, ref))
    assert frames[5].kind == fr.SIM_END


@pytest.mark.timeout(90)
def test_ot_simulate_solver_ks1d_uses_the_config(ring_name, tmp_path):
    toml = tmp_path / "ks.toml"
    toml.write_text('[solver]\nkind = "ks1d"\nn = 16\nsteps = 4\nlength = 22.0\ndt = 0.2\n'
                    'stride = 2\n')
    sets = "".join(json.dumps({"id": i, "params": [0.5 * i, 1, 0, 0]}) + "\n" for i in (1, 2))
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring:
        p = subprocess.run(OT + ["simulate", "--to", f"shm://{ring_name}", "--solver", "ks1d",
                                 "--config", str(toml), "--n", "24"], input=sets, text=True,
                           env=ENV, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        frames = []
        while not frames or frames[-1].kind != fr.STREAM_END:
            frames.append(ring.get(timeout=5))
    data = sorted((f.sim_id, f.time_step, f.array.copy()) for f in frames if f.kind == fr.DATA)
    assert [(s, t) for s, t, _ in data] == [(s, t) for s in (1, 2) for t in range(1, 5)]
    for s, t, a in data:  # the CLI's --n overrides the file; the file's length, dt, stride hold
        ref = list(ks1d.solve([0.5 * s, 1, 0, 0], n=24, steps=4, length=22.0, dt=0.2, stride=2))
        assert a.shape == (24,) and np.abs(a - ref[t - 1][1]).max() < 1e-5


def test_config_checks_ks1d_values():
    cfg = C.from_dict({"solver": {"kind": "ks1d", "n": 64, "dt": 0.5, "length": 22.0}})
    assert cfg.solver.kind == "ks1d" and cfg.solver.stride == 1
    with pytest.raises(C.ConfigError, match="n=33"):
        C.from_dict({"solver": {"kind": "ks1d", "n": 33}})
    with pytest.raises(C.ConfigError, match="stride=0"):
        C.from_dict({"solver": {"kind": "ks1d", "stride": 0}})
    with pytest.raises(C.ConfigError, match="solver.length/dt"):
        C.from_dict({"solver": {"kind": "ks1d", "dt": -0.1}})
