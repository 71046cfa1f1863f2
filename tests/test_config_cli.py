"""Config ergonomics through the real CLI (CliRunner): --set, `ot config show`, internal keys, the
summary's MSE ratio."""
import json
import tomllib

import pytest
from click.testing import CliRunner

from onlinetrain import config as C
from onlinetrain.cli import _report, main

from conftest import ROOT

TINY = str(ROOT / "examples" / "heat2d-tiny.toml")


def _show(*args):
    r = CliRunner().invoke(main, ["config", "show", *args])
    assert r.exit_code == 0, r.output
    return r.output


def _source(text, section, key):
    sec = None
    for line in text.splitlines():
        if line.startswith("["):
            sec = line.strip("[]")
        elif sec == section and line.startswith(f"{key} ="):
            return line.rsplit("# ", 1)[1]
    raise AssertionError(f"{section}.{key} not shown:\n{text}")


def test_config_show_names_the_source_of_every_value():
    out = _show(TINY, "--set", "train.lr=3e-4", "--set", "buffer.kind=fifo",
                "--set", 'output.name="other"', "--set", "train.lr_milestones=[10, 20]")
    assert _source(out, "train", "lr") == "flag"
    assert _source(out, "buffer", "kind") == "flag"
    assert _source(out, "solver", "n") == "file"  # heat2d-tiny.toml sets n = 12
    assert _source(out, "train", "seed") == "default"
    assert _source(out, "output", "name") == "flag"  # a flag beats the file's "tiny"
    resolved = tomllib.loads(out)  # valid TOML that reproduces the configuration
    assert resolved["train"]["lr"] == 3e-4 and resolved["buffer"]["kind"] == "fifo"
    assert resolved["train"]["lr_milestones"] == [10, 20] and resolved["solver"]["n"] == 12
    assert resolved["output"]["name"] == "other"
    back = C.from_dict(resolved)
    want = C.load(TINY, sets=["train.lr=3e-4", "buffer.kind=fifo", 'output.name="other"',
                              "train.lr_milestones=[10, 20]"])
    assert back.to_dict() == want.to_dict()


def test_internal_keys_are_not_user_facing():
    out = _show()
    assert "first_id" not in out and "end_id" not in out and "every = 0" in out
    r = CliRunner().invoke(main, ["config", "show", "--set", "validation.first_id=3"])
    assert r.exit_code == 1
    assert "validation.first_id is derived by ot run / ot slurm from sampling.n_train" in r.output
    with pytest.raises(C.ConfigError, match=r"valid keys in \[validation\]: every$"):
        C.from_dict({"validation": {"firstid": 1}})
    # the study's own files still carry them (config.json, study.toml)
    assert C.from_dict({"validation": {"first_id": 5, "end_id": 7}}).validation.is_validation(6)


@pytest.mark.parametrize("item, message", [
    ("train.lr=1e-3x", "'1e-3x' is not a TOML value; quote a string"),
    ("train.lrr=1", "unknown key train.lrr; valid keys in [train]: batch_size, lr,"),
    ("trainlr=1", "give section.key=value"),
    ("nosuch.x=1", "unknown section [nosuch]"),
    ("buffer.kind=lifo", "buffer.kind = 'lifo': use reservoir, fifo, firo or offline"),
])
def test_bad_set_is_a_one_line_error(item, message):
    for cmd in (["config", "show", TINY], ["run", TINY], ["train", "--from", "shm://never"]):
        r = CliRunner().invoke(main, [*cmd, "--set", item])
        assert r.exit_code == 1 and message in r.output, (cmd, r.output)
        assert "Traceback" not in r.output


def test_set_values_are_toml_literals_or_bare_words():
    got = C.parse_sets(["train.lr=1e-3", "buffer.kind=fifo", "buffer.record_arrivals=true",
                        'model.adapter="pkg.mod:fn"', "model.builder=pkg.mod:build",
                        "sampling.bounds=[[0, 1], [2, 3.5]]", "train.max_batches = 7"])
    assert got == {"train.lr": 0.001, "buffer.kind": "fifo", "buffer.record_arrivals": True,
                   "model.adapter": "pkg.mod:fn", "model.builder": "pkg.mod:build",
                   "sampling.bounds": [[0, 1], [2, 3.5]], "train.max_batches": 7}
    # a named option beats --set; both beat the file
    cfg = C.load(TINY, {"train.max_batches": 9}, sets=["train.max_batches=7", "train.lr=0.5"])
    assert cfg.train.max_batches == 9 and cfg.train.lr == 0.5 and cfg.sources["train.lr"] == "flag"


def test_set_on_slurm_submit_reaches_the_study(tmp_path):
    r = CliRunner().invoke(main, ["slurm", "submit", TINY, "--out", str(tmp_path / "st"),
                                  "--dry-run", "--set", "train.lr=0.25", "--set", "slurm.job_limit=3"])
    assert r.exit_code == 0, r.output
    study = C.load(tmp_path / "st" / "study.toml")
    assert study.train.lr == 0.25 and study.slurm.job_limit == 3


def test_summary_prints_the_ratio_with_significant_digits(capsys):
    _report({"batches": 10, "samples_received": 5, "sims_done": 1, "sims_failed": 0, "wall_s": 1.0,
             "val_mse": 0.00058, "mean_field_mse": 1.2, "duplicates_dropped": 0})
    out = capsys.readouterr().out
    assert "(ratio 0.000483)" in out
    assert json.loads(out.splitlines()[-1])["val_mse"] == 0.00058
