"""`ot run` / `ot train` with [stats]: the receiver feeds the statistics from the training frames."""
import os

import numpy as np
import pytest
import torch

from onlinetrain import config
from onlinetrain.runner import run_study
from onlinetrain.stats import stats_wanted

from conftest import ROOT


@pytest.mark.timeout(300)
def test_ot_run_with_stats_writes_stats_npz_and_checkpoint_section(tmp_path, ring_name):
    cfg = config.load(ROOT / "examples" / "heat2d-tiny.toml",
                      {"output.dir": str(tmp_path / "study"), "output.name": ring_name,
                       "stats.thresholds": [300.0], "stats.quantiles": [0.5],
                       "buffer.post_stream_batches": 20, "train.max_batches": 100_000})
    assert stats_wanted(cfg)
    s = run_study(cfg)
    assert s["sims_done"] == 15
    # every frame of every simulation (held-out ones too) entered the statistics once
    assert s["stats"]["accepted"] == 15 * 20 and s["stats"]["duplicates"] == 0
    out = cfg.output.dir
    with np.load(os.path.join(out, "stats.npz")) as z:
        assert z["T/steps"].tolist() == list(range(1, 21)) and set(z["T/n"].tolist()) == {15}
        assert z["T/mean"].shape == (20, 12, 12) and z["T/quantiles"].shape == (20, 1, 12, 12)
        assert np.all((z["T/min"] >= 100) & (z["T/max"] <= 500))
        assert np.all(z["T/min"] <= z["T/mean"]) and np.all(z["T/mean"] <= z["T/max"])
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["sections"]["stats"]["counts"]["accepted"] == 15 * 20


def test_without_a_stats_key_no_statistics():
    cfg = config.load(ROOT / "examples" / "heat2d-tiny.toml")
    assert not stats_wanted(cfg)
