"""Statistics of fields sent in pieces by several MPI ranks: `ot simulate` runs a 2-rank program per
simulation (each rank sends its rows, frame format v2), `ot stats` assembles the pieces and its
statistics equal numpy's over the whole fields; none of the pieces is a rejection."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from onlinetrain.shm_channel import segment_path

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
MPIEXEC = str(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                         "MASTER_PORT", "SLURM_PROCID",
                                                         "SLURM_NTASKS")}
ENV["PYTHONPATH"] = str(ROOT)


@pytest.mark.timeout(600)
def test_ot_stats_assembles_the_pieces_of_two_mpi_ranks(tmp_path, ring_name):
    sys.path.insert(0, str(ROOT))
    from solvers import heat2d
    n, steps, sims = 8, 3, 4
    cfg = tmp_path / "p.toml"
    argv = [MPIEXEC, "-n", "2", sys.executable, str(ROOT / "tests" / "pieces_sim.py"), str(n),
            str(steps)]
    cfg.write_text(f"[solver]\nkind = \"program\"\nargv = {json.dumps(argv)}\nn = {n}\n"
                   f"steps = {steps}\n[simulate]\nconcurrency = 2\nsimulation_timeout = 120\n"
                   "[stats]\nfields = [\"T\"]\nthresholds = [300.0]\n")
    sample = subprocess.run(OT + ["sample", "-n", str(sims), "--seed", "5"], capture_output=True,
                            text=True, check=True, env=ENV).stdout
    url = f"shm://{ring_name}"
    out = tmp_path / "st"
    stats = subprocess.Popen(OT + ["stats", "--from", url, "--config", str(cfg), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                             start_new_session=True)
    try:
        sim = subprocess.run(OT + ["simulate", "--to", url, "--config", str(cfg),
                                   "--connect-timeout", "60"], input=sample, capture_output=True,
                             text=True, env=ENV, timeout=400)
        so, se = stats.communicate(timeout=60)
    finally:
        if stats.poll() is None:
            stats.kill()
            stats.wait()
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert stats.returncode == 0, se[-3000:]
    assert not os.path.exists(segment_path(ring_name))
    s = json.loads((out / "stats-summary.json").read_text())
    assert s["rejected"] == 0 and s["rejected_reasons"] == {}, s
    assert s["pieces"] == 2 * sims * steps and s["accepted"] == sims * steps, s
    assert s["fields"] == {"T": [n, n]} and s["sims_done"] == sims
    params = [json.loads(line)["params"] for line in sample.splitlines()]
    # (sims, steps, n, n): the whole fields the pieces came from
    u = np.array([[f for _, f in heat2d.solve(p, n=n, steps=steps)] for p in params])
    with np.load(out / "stats.npz") as z:
        assert z["T/steps"].tolist() == list(range(1, steps + 1))
        assert z["T/n"].tolist() == [sims] * steps
        assert z["T/mean"].shape == (steps, n, n)
        for key, want in (("mean", u.mean(0)), ("variance", u.var(0, ddof=1)),
                          ("min", u.min(0)), ("max", u.max(0))):
            assert np.allclose(z[f"T/{key}"], want, rtol=1e-10, atol=0), key
        assert np.array_equal(z["T/exceedance"][:, 0], (u > 300.0).mean(0))
