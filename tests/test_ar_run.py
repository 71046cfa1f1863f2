"""`ot run` in autoregressive mode, end to end: ks1d simulations stream, windows train a periodic
conv net online, the held-out simulations are rolled out and the report says how far it holds."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.timeout(300)
def test_ot_run_ks1d_autoregressive(tmp_path, ring_name):
    toml = (ROOT / "examples" / "ks1d.toml").read_text()
    toml = toml.replace("steps = 80", "steps = 12")
    toml = toml.replace("n_train = 40", "n_train = 6").replace("n_validation = 4",
                                                               "n_validation = 2")
    toml = toml.replace("watermark = 300", "watermark = 20").replace("unroll = 1", "unroll = 2")
    toml = toml.replace("val_every = 500", "val_every = 20")
    cfg = tmp_path / "ks.toml"
    cfg.write_text(toml + f'\n[channel]\nurl = "shm://{ring_name}"\n')
    out = tmp_path / "study"
    r = subprocess.run(OT + ["run", str(cfg), "--max-batches", "60", "--out", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rollout of 2 held-out simulations over 11 steps: mean nRMSE" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["rollout_sims"] == 2 and s["rollout_steps"] == 11 and s["mean_nRMSE"] > 0
    assert s["val_mse"] == s["one_step_mse"] > 0
    assert s["buffer"]["kind"] == "reservoir+windows3" and s["buffer"]["pair_gaps"] == 0
    assert s["buffer"]["windows"] == 6 * (12 - 2)  # every window of 3 consecutive steps, once
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["batch"] for m in lines] == [20, 40, 60]
    assert all("mean_nRMSE" in m and "rollout_horizon" in m for m in lines)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["sections"]["buffer"]["window"] == 3
