"""The pure part of the Slurm wrapper, with literal strings: no Slurm needed."""
from __future__ import annotations

import tomllib

import pytest

from onlinetrain.ledger import Ledger
from click.testing import CliRunner

from onlinetrain import config as C
from onlinetrain import slurm as S
from onlinetrain.cli import main


@pytest.mark.parametrize("text, hosts", [
    ("node-[001-004,010]", ["node-001", "node-002", "node-003", "node-004", "node-010"]),
    ("n[1-2]", ["n1", "n2"]),
    ("n1", ["n1"]),
    ("a[1-2]-ib,b3", ["a1-ib", "a2-ib", "b3"]),
    ("r[1-2]n[7,9]", ["r1n7", "r1n9", "r2n7", "r2n9"]),
    ("gpu[08-10],cpu5", ["gpu08", "gpu09", "gpu10", "cpu5"]),
    ("", []),
])
def test_parse_nodelist(text, hosts):
    assert S.parse_nodelist(text) == hosts


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[5-3]", "n1,,n2"])
def test_parse_nodelist_rejects_bad_lists_naming_them(bad):
    with pytest.raises(S.SlurmError) as e:
        S.parse_nodelist(bad)
    assert e.value.value == bad and bad in str(e.value)


def test_parse_squeue_and_steps():
    jobs = S.parse_squeue("12|12|RUNNING|None|ot-x\n13+1|14|PENDING|Resources|ot-x\n\n"
                          "15|15|CANCELLED by 0|None|ot-x-sim3\n")
    assert [(j.id, j.base, j.job_id, j.state, j.reason) for j in jobs] == [
        ("12", "12", "12", "RUNNING", "None"), ("13+1", "13", "14", "PENDING", "Resources"),
        ("15", "15", "15", "CANCELLED by 0", "None")]
    assert [S.job_outcome(j.state) for j in jobs] == ["active", "active", "failed"]
    assert S.job_outcome("COMPLETED") == "done" and S.job_outcome("TIMEOUT") == "failed"
    assert S.job_outcome("NODE_FAIL") == "failed" and S.job_outcome("COMPLETING") == "active"
    steps = S.parse_steps("5.0|trainer|n1\n5.batch|batch|n1\n6.1|sim3|n2\n")
    assert [(s.id, s.job, s.name, s.nodes) for s in steps] == [
        ("5.0", "5", "trainer", "n1"), ("5.batch", "5", "batch", "n1"), ("6.1", "6", "sim3", "n2")]
    with pytest.raises(S.SlurmError, match="expected 5"):
        S.parse_squeue("garbage line\n")


def test_parse_sbatch_id():
    assert S.parse_sbatch_id("123\n") == "123"
    assert S.parse_sbatch_id("77;cluster\n") == "77"
    with pytest.raises(S.SlurmError) as e:
        S.parse_sbatch_id("sbatch: error: oops")
    assert "oops" in e.value.value


def test_srun_and_sbatch_argv_are_lists():
    argv = S.srun_argv(["py", "-m", "onlinetrain.simrun"], "sim3", het_group=1)
    assert argv[0] == "srun" and "--het-group=1" in argv and "--job-name=sim3" in argv
    assert "--exact" in argv and argv[argv.index("--") + 1:] == ["py", "-m", "onlinetrain.simrun"]
    assert not any(a.startswith("--het-group") for a in S.srun_argv(["x"], "t"))
    sb = S.sim_sbatch_argv("/s/ot-sim.sbatch", "ot-a-sim1", "/s/l-%j.log", ["--time=5"], ["py", "x"])
    assert sb[:2] == ["sbatch", "--parsable"] and sb[-3:] == ["/s/ot-sim.sbatch", "py", "x"]
    assert "--time=5" in sb and "--job-name=ot-a-sim1" in sb
    t = S.trainer_command("py", "/s", "shm://x")
    assert t[:4] == ["py", "-m", "onlinetrain", "train"] and "--resume" not in t
    assert S.trainer_command("py", "/s", "shm://x", resume=True) == t + ["--resume"]


def _cfg(mode, **slurm):
    return C.from_dict({"output": {"name": "st", "dir": "/s"},
                        "slurm": {"mode": mode, "job_limit": 3, **slurm}})


def test_driver_script_global_is_a_hetjob_with_args_of_each_side():
    txt = S.driver_script(_cfg("global", trainer_args=["--gres=gpu:1", "--time=60"],
                               simulation_args=["--partition=cpu"]), "/s", "/py", "/proj")
    lines = txt.splitlines()
    assert lines[0] == "#!/bin/bash"
    i = lines.index("#SBATCH hetjob")
    assert "#SBATCH --gres=gpu:1" in lines[:i] and "#SBATCH --time=60" in lines[:i]
    assert lines[i + 1:i + 4] == ["#SBATCH --ntasks=3", "#SBATCH --cpus-per-task=1",
                               "#SBATCH --partition=cpu"]
    assert "#SBATCH --job-name=ot-st" in lines
    assert lines[-1] == "exec /py -m onlinetrain slurm drive /s"


def test_driver_script_semiglobal_is_the_trainer_job_only():
    txt = S.driver_script(_cfg("semiglobal", trainer_args=["--gres=gpu:2"]), "/s", "/py", "/p")
    assert "hetjob" not in txt and "#SBATCH --gres=gpu:2" in txt and "--ntasks=3" not in txt


@pytest.mark.parametrize("key, value", [("mode", "local"), ("job_limit", 0), ("max_restarts", -1),
                                        ("trainer_args", ["--comment=a b"]),
                                        ("simulation_args", "--time=5")])
def test_slurm_config_rejects_bad_values_by_name(key, value):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"slurm": {key: value}})
    assert e.value.key == f"slurm.{key}" and e.value.value == value


def test_to_toml_round_trips_the_whole_config():
    cfg = _cfg("semiglobal", trainer_args=['--comment="q"'])
    text = S.to_toml(cfg.to_dict())
    back = C.from_dict(tomllib.loads(text))
    assert back.to_dict() == cfg.to_dict()


def test_allocation_from_env():
    assert S.Allocation.from_env({}) is None
    a = S.Allocation.from_env({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "c[1-3]",
                               "SLURM_HET_SIZE": "2"})
    assert a == S.Allocation("9", ("c1", "c2", "c3"), 2)
    assert S.Allocation.from_env({"SLURM_JOB_ID": "9", "SLURM_NODELIST": "x"}).het_size == 0


def test_resources_reach_the_script_and_the_steps():
    cfg = C.from_dict({"output": {"name": "st", "dir": "/s"}, "simulate": {"ntasks": 2},
                       "slurm": {"mode": "global", "job_limit": 3, "cpus_per_task": 4,
                                 "gpus": 1, "cpus": 8}})
    lines = S.driver_script(cfg, "/s", "/py", "/p").splitlines()
    i = lines.index("#SBATCH hetjob")
    assert {"#SBATCH --cpus-per-task=8", "#SBATCH --gpus=1"} <= set(lines[:i])
    assert lines[i + 1:i + 3] == ["#SBATCH --ntasks=6", "#SBATCH --cpus-per-task=4"]
    argv = S.srun_argv(["x"], "sim1", 1, ntasks=2, nodes=2, cpus_per_task=4)
    assert {"--ntasks=2", "--nodes=2", "--cpus-per-task=4", "--mpi=pmi2"} <= set(argv)
    assert "--gpus=1" in S.srun_argv(["x"], "trainer", gpus=1)
    for key, bad in (("nodes", 0), ("cpus_per_task", 0), ("gpus", -1), ("cpus", 1.5)):
        with pytest.raises(C.ConfigError) as e:
            C.from_dict({"slurm": {key: bad}})
        assert e.value.key == f"slurm.{key}"
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"simulate": {"ntasks": 0}})
    assert e.value.key == "simulate.ntasks"


def test_submit_dry_run_writes_the_study_and_prints_the_script(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[output]\nname = "dry"\n[sampling]\nn_train = 3\nn_validation = 1\n'
                   '[slurm]\nmode = "global"\ntrainer_args = ["--gres=gpu:1"]\n')
    r = CliRunner().invoke(main, ["slurm", "submit", str(cfg), "--out", str(tmp_path / "st"),
                                  "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH hetjob" in r.output and "#SBATCH --gres=gpu:1" in r.output
    d = tmp_path / "st"
    assert (d / S.DRIVER_SCRIPT).read_text() == r.output
    assert len((d / "params.jsonl").read_text().splitlines()) == 4
    led = Ledger(d)  # the study state: every set pending, no job yet
    assert led.counts()["pending"] == 4 and led.snapshot() and led.jobs == []
    study = C.load(d / "study.toml")
    assert study.output.dir == str(d) and study.validation.first_id == 3
    assert study.train.checkpoint_every == 3000 // 20  # Slurm default: a restart can resume


@pytest.mark.parametrize("train, want", [({}, 150), ({"max_batches": 10}, 1),
                                         ({"checkpoint_every": 0}, 0),
                                         ({"checkpoint_every": 7}, 7)])
def test_slurm_checkpoint_every_defaults_unless_the_config_sets_it(train, want):
    from onlinetrain.slurm_study import checkpoint_every
    assert checkpoint_every(C.from_dict({"train": train})) == want


def test_status_of_a_directory_that_is_no_study_says_so(tmp_path):
    r = CliRunner().invoke(main, ["slurm", "status", str(tmp_path)])
    assert r.exit_code == 1 and "not a Slurm study directory" in r.output
