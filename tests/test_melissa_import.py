"""`ot import-melissa` (issue 18, part B): the talk's Melissa configuration (slurm-semiglobal,
server arguments with --gres=gpu:2), completed with the keys of Melissa's documented example
configuration (tests/data/melissa_heatpde_slurm.json), becomes a study `ot slurm submit --dry-run`
accepts; every key is mapped or reported on stderr with the reason; bad input is one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from onlinetrain import config
from onlinetrain.melissa_import import MelissaImportError, convert, import_file

ROOT = Path(__file__).resolve().parents[1]
TALK = ROOT / "tests" / "data" / "melissa_heatpde_slurm.json"


def ot(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onlinetrain", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _leaves(doc: dict):
    """Every key of the configuration: top-level scalars and the keys of each section; the items
    of the scheduler argument lists one by one."""
    for k, v in doc.items():
        if not isinstance(v, dict):
            yield k, k
            continue
        for kk, vv in v.items():
            if k == "launcher_config" and kk.startswith("scheduler_arg"):
                for a in vv:
                    yield f"{k}.{kk}", a
            else:
                yield f"{k}.{kk}", f"{k}.{kk}"


def test_the_talks_configuration_imports_and_every_key_is_accounted_for(tmp_path):
    r = ot("import-melissa", str(TALK))
    assert r.returncode == 0, r.stderr
    study = tmp_path / "study.toml"
    study.write_text(r.stdout)
    cfg = config.load(study)  # valid TOML, valid config
    assert cfg.slurm.mode == "semiglobal" and cfg.slurm.gpus == 2 and cfg.train.device == "cuda"
    assert cfg.slurm.trainer_args == ["--qos=qos_gpu-dev", "--account=igf@v100",
                                      "--threads-per-core=1", "--time=01:00:00"]
    assert cfg.slurm.cpus == 5 and cfg.slurm.job_limit == 4 and cfg.slurm.poll == 2.0
    assert cfg.simulate.ntasks == 1 and cfg.simulate.simulation_timeout == 60.0
    assert cfg.simulate.crashes_before_redraw == 1000
    assert (cfg.sampling.n_train, cfg.sampling.seed, cfg.sampling.bounds) == (20, 123,
                                                                              [[100.0, 500.0]] * 5)
    assert cfg.solver.kind == "program" and cfg.solver.steps == 100
    assert cfg.solver.argv == ["./heatc", "100", "100", "100", "{p0}", "{p1}", "{p2}", "{p3}",
                               "{p4}"]
    assert (cfg.buffer.kind, cfg.buffer.capacity, cfg.buffer.watermark,
            cfg.buffer.pseudo_epochs) == ("firo", 1000, 100, 2)
    assert (cfg.train.batch_size, cfg.train.val_every, cfg.train.checkpoint_every,
            cfg.train.max_batches) == (10, 50, 100, 3000)  # a cap: FIRO ends when drained
    assert "about 400 batches" in r.stdout  # 20 sims * 100 steps * 2 pseudo-epochs / 10
    assert cfg.model.adapter == "heatpde_dl_server:process_simulation_data"
    assert cfg.model.adapter_message == "melissa" and cfg.model.fields == ["temperature"]
    assert cfg.output.name == "melissa_heatpde_slurm"
    # the unsupported keys, each on its own line with a reason
    unsupported = ["study_options.mesh_size", "study_options.verbosity",
                   "launcher_config.scheduler_arg_server --ntasks=2", "launcher_config.fault_tolerance",
                   "launcher_config.verbosity", "dl_config.convert_log_to_df",
                   "client_config.preprocessing_commands", "server_config.preprocessing_commands"]
    lines = r.stderr.splitlines()
    for key in unsupported:
        hits = [ln for ln in lines if ln.startswith(f"ot import-melissa: {key}: not supported: ")]
        assert len(hits) == 1 and len(hits[0]) > len(f"ot import-melissa: {key}: not supported: ") + 10, key
    assert sum("not supported" in ln for ln in lines) == len(unsupported)
    # never dropped silently: each key (each scheduler option) is in a note of the TOML or on stderr
    doc = json.loads(TALK.read_text())
    for where, key in _leaves(doc):
        assert key in r.stdout or key in r.stderr, (where, key)
    assert "# launcher_config.scheduler_arg_server --nodes=1: one trainer task on one node" in r.stdout


@pytest.mark.timeout(60)
def test_slurm_submit_dry_run_accepts_the_imported_study(tmp_path):
    r = ot("import-melissa", str(TALK))
    study = tmp_path / "study.toml"
    study.write_text(r.stdout)
    d = ot("slurm", "submit", str(study), "--dry-run", "--out", str(tmp_path / "dir"))
    assert d.returncode == 0, d.stderr
    for line in ("#SBATCH --gpus=2", "#SBATCH --cpus-per-task=5", "#SBATCH --qos=qos_gpu-dev",
                 "#SBATCH --account=igf@v100", "#SBATCH --time=01:00:00",
                 "exec ", "slurm drive"):
        assert line in d.stdout, line
    written = tomllib.loads((tmp_path / "dir" / "study.toml").read_text())
    assert written["slurm"]["mode"] == "semiglobal" and written["model"]["fields"] == ["temperature"]
    sets = (tmp_path / "dir" / "params.jsonl").read_text().splitlines()
    assert len(sets) == 20 and all(100 <= p <= 500 for s in sets for p in json.loads(s)["params"])


def test_openmpi_scheduler_is_a_local_study():
    doc = json.loads(TALK.read_text())
    doc["launcher_config"] = {"scheduler": "openmpi", "job_limit": 3,
                              "scheduler_arg_client": ["-n", "2"],
                              "scheduler_arg_server": ["-n", "1"]}
    data, notes, warnings = convert(doc, "local")
    assert "slurm" not in data and data["simulate"]["concurrency"] == 2
    assert data["solver"]["argv"][:4] == ["mpirun", "-n", "2", "./heatc"]
    assert any(w.startswith("launcher_config.scheduler = 'openmpi': run the study on one machine "
                            "with `ot run study.toml`") for w in warnings)
    assert any(w.startswith("launcher_config.scheduler_arg_server: not supported") for w in warnings)
    config.from_dict(data)


@pytest.mark.parametrize("change, message, key", [
    (lambda d: d["dl_config"].update(batch_size="ten"), "dl_config.batch_size = 'ten': expected "
                                                        "an integer >= 1", "dl_config.batch_size"),
    (lambda d: d.update(studyoptions={}), "unknown top-level key 'studyoptions': is this a Melissa "
                                          "configuration?", "studyoptions"),
    (lambda d: d.pop("study_options"), "no study_options: is this a Melissa configuration?",
     "study_options"),
    (lambda d: d["client_config"].pop("executable_command"), "client_config.executable_command is "
                                                             "missing", "client_config.executable_command"),
    (lambda d: d["study_options"].update(parameter_range=[[0, 1]] * 3), "nb_parameters = 5 but "
                                                                         "study_options.parameter_range "
                                                                         "gives 3 ranges",
     "study_options.nb_parameters"),
    (lambda d: d["launcher_config"].update(job_limit=1), "launcher_config.job_limit = 1: expected "
                                                         "an integer >= 2", "launcher_config.job_limit"),
])
def test_bad_configurations_are_one_clear_error(change, message, key):
    doc = json.loads(TALK.read_text())
    change(doc)
    with pytest.raises(MelissaImportError, match=None) as e:
        convert(doc)
    assert message in str(e.value) and e.value.key == key


def test_not_json_or_not_an_object_is_one_clear_line(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{\n  "study_options": {\n    // a comment\n  }\n}\n')
    r = ot("import-melissa", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"Error: {bad} is not JSON: Expecting property name enclosed in double quotes at line 3 "
        f"column 5 (Melissa configurations are plain JSON, no comments)"]
    bad.write_text("[1, 2]")
    with pytest.raises(MelissaImportError, match="a Melissa configuration is a JSON object, not list"):
        import_file(bad)
    r = ot("import-melissa", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "cannot read" in r.stderr and "missing.json" in r.stderr
