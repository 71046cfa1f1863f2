"""output.tensorboard: a real tiny study writes the scalars of metrics.jsonl as TensorBoard events."""
import json
import sys

import pytest

from onlinetrain import config
from onlinetrain.runner import run_study
from onlinetrain.tb import DIRNAME, TensorBoardMissing, tensorboard_sink


@pytest.mark.timeout(180)
def test_tensorboard_gets_the_same_scalars_as_metrics_jsonl(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = tiny_config
    cfg.output.tensorboard = True
    cfg.train.max_batches = 200
    run_study(cfg)
    out = cfg.output.dir
    lines = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl")]
    assert [m["batch"] for m in lines] == [100, 200]
    acc = EventAccumulator(f"{out}/{DIRNAME}")
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"ot/train_loss", "ot/val_mse", "ot/lr", "ot/samples", "ot/sims_done"} <= tags
    assert "ot/batch" not in tags
    for key in ("train_loss", "val_mse", "lr", "samples", "time"):
        events = acc.Scalars(f"ot/{key}")
        assert [e.step for e in events] == [100, 200]
        assert [e.value for e in events] == pytest.approx([m[key] for m in lines], rel=1e-6)


def test_tensorboard_off_by_default_and_checked(tmp_path):
    cfg = config.load(None, {"output.dir": str(tmp_path)})
    assert cfg.output.tensorboard is False
    tensorboard_sink(cfg, tmp_path).add({"batch": 1, "train_loss": 0.5})
    assert not (tmp_path / DIRNAME).exists()
    with pytest.raises(config.ConfigError, match="output.tensorboard = 'yes': expected true or false"):
        config.load(None, {"output.tensorboard": "yes"})


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    cfg = config.load(None, {"output.dir": str(tmp_path), "output.tensorboard": True})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(TensorBoardMissing, match=r"pip install 'onlinetrain\[tensorboard\]'"):
        tensorboard_sink(cfg, tmp_path)
