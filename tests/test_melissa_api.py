"""Melissa's client API on our C client (issue 18, part A), and the Melissa message (part C).

Builds libmelissa_api with `onlinetrain.clientflags --melissa` (as a user would, with the MPI
compiler wrapper) and checks: the documented prototypes, declared first, agree with our header
(a wrong one fails the build); solvers written against Melissa's API only (tests/c/melissa_sim.c
and .f90: two fields, uneven rank sizes, metadata) run under `ot run` unchanged on 1 and 2 ranks,
and every field of every step reaches the adapter (the talk's process_simulation_data, ported by
its signature line: tests/melissa_server.py) equal, bit for bit, to what the solver wrote itself;
misuse ends the program with one clear line; and the whole drop-in path (a Melissa configuration
through `ot import-melissa`, the solver, the ported server function) trains under `ot run`.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onlinetrain import clientflags
from onlinetrain import frame as fr
from onlinetrain.shm_channel import Empty, RingConsumer

from cbuild import mpi_tools, private_client_cache

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "tests" / "c"
STEPS = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("melissa")
    with private_client_cache(d / "cache"):
        mpi = mpi_tools()
        cflags, libs = clientflags.flags(melissa=True, mpicc=mpi["cc"])
        strict = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
        out = {"mpi": mpi, "cflags": cflags, "libs": libs}
        for name in ("melissa_sim", "melissa_misuse"):
            subprocess.run([mpi["cc"], *strict, *cflags, str(C / f"{name}.c"), "-o",
                            str(d / name), *libs, "-lm"], check=True)
            out[name] = str(d / name)
        subprocess.run([mpi["fc"], "-O2", "-Wall", *cflags, str(C / "melissa_sim.f90"), "-o",
                        str(d / "melissa_sim_f"), *libs], check=True, cwd=d)
        out["melissa_sim_f"] = str(d / "melissa_sim_f")
        yield out


def test_documented_prototypes_agree_with_our_header(built, tmp_path):
    mpicc = built["mpi"]["cc"]
    src = str(C / "melissa_prototypes.c")
    r = subprocess.run([mpicc, "-std=c11", "-Wall", "-Wextra", "-Werror", *built["cflags"], src,
                        "-o", str(tmp_path / "proto"), *built["libs"]], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([str(tmp_path / "proto")], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "1"
    # the control: one wrong parameter type among the documented prototypes fails the build
    r = subprocess.run([mpicc, "-std=c11", "-DOT_MISMATCH", *built["cflags"], src, "-fsyntax-only"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "conflicting types for 'melissa_send'" in r.stderr.replace(
        "\u2018", "'").replace("\u2019", "'")


def test_clientflags_melissa_flags_and_headers(built):
    cflags, libs = built["cflags"], built["libs"]
    inc = Path(cflags[0][2:])
    assert (inc / "melissa_api.h").read_text() == (ROOT / "clients/melissa/melissa_api.h").read_text()
    assert (inc / "melissa_api.f90").exists()
    assert libs[1:] == ["-lmelissa_api", "-lotclient", "-lpthread"]
    assert (Path(libs[0][2:]) / "libmelissa_api.a").exists()


def test_clientflags_names_a_missing_mpi_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("OT_CLIENT_CACHE", str(tmp_path))
    with pytest.raises(clientflags.ClientBuildError, match="MPI C compiler 'no-such-mpicc' not "
                                                           "found: .*--mpicc") as e:
        clientflags.flags(melissa=True, mpicc="no-such-mpicc")
    assert e.value.value == "no-such-mpicc"


def _env(ring_name, **extra):
    return {**os.environ, "OT_CHANNEL": f"shm://{ring_name}", "OT_SIM_ID": "4",
            "OT_PARAMS": "[1.5, 0.5]", "OT_CONNECT_TIMEOUT": "10", **extra}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case, ranks, message", [
    ("unregistered", 1, "melissa_send: field 'velocity' was not registered: call "
                        "melissa_init(\"velocity\", local_vect_size, comm) first"),
    ("twice", 1, "melissa_init: field 'u' is already registered: call melissa_init once per field"),
    ("negative", 1, "melissa_init: field 'u': local_vect_size = -3: give the number of doubles"),
    ("uneven", 2, "melissa_finalize: field 'u' was sent between 1 and 2 times by the ranks"),
])
def test_misuse_ends_the_program_with_one_clear_line(built, ring_name, case, ranks, message):
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        r = subprocess.run([built["mpi"]["run"], "-n", str(ranks), built["melissa_misuse"], case],
                           env=_env(ring_name), capture_output=True, text=True, timeout=100)
        try:
            fs = ring.get_many(64, timeout=0.5)
        except Empty:
            fs = []
    assert r.returncode != 0 and message in r.stderr, (r.returncode, r.stderr)
    assert not any(f.kind == fr.SIM_END for f in fs)  # never announced as complete


@pytest.mark.timeout(60)
def test_no_launcher_environment_is_a_clear_error(built):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OT_")}
    r = subprocess.run([built["melissa_sim"], "/nonexistent", "1", "1.0", "2.0"], env=env,
                       capture_output=True, text=True, timeout=50)
    assert r.returncode != 0
    assert "OT_CHANNEL is not set: run under `ot simulate` / `ot run`" in r.stderr
    assert "melissa_init: field 'temperature': cannot connect to the trainer" in r.stderr


def _study(tmp_path, ring_name, argv) -> Path:
    cfg = tmp_path / "melissa.toml"
    cfg.write_text(f"""
[solver]
kind = "program"
argv = {json.dumps(argv)}
steps = {STEPS}

[sampling]
n_train = 3
n_validation = 1
seed = 3
bounds = [[1.0, 2.0], [0.5, 1.5]]

[simulate]
concurrency = 1
simulation_timeout = 60
max_restarts = 0

[buffer]
kind = "offline"
capacity = 64

[model]
adapter = "melissa_server:process_simulation_data"
adapter_message = "melissa"
fields = ["temperature", "pressure"]
hidden = 8

[train]
batch_size = 4
max_batches = 40
val_every = 5

[output]
dir = "{tmp_path / 'o'}"
name = "{ring_name}"
""")
    return cfg


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("prog", ["melissa_sim", "melissa_sim_f"], ids=["C", "Fortran"])
def test_melissa_solver_runs_under_ot_run_unchanged(built, ring_name, tmp_path, monkeypatch,
                                                    prog, ranks):
    from click.testing import CliRunner
    from onlinetrain.cli import main
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    solver_out = tmp_path / "solver"
    solver_out.mkdir()
    argv = [built["mpi"]["run"], "-n", str(ranks), built[prog], str(solver_out), str(STEPS),
            "{p0}", "{p1}"]  # the parameters as command-line arguments, as Melissa passes them
    r = CliRunner().invoke(main, ["run", str(_study(tmp_path, ring_name, argv)), "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "o"
    s = json.loads((out / "summary.json").read_text())
    assert s["sims_done"] == 4 and s["sims_failed"] == 0 and s["duplicates_dropped"] == 0
    assert s["samples_received"] == 4 * STEPS and s["batches"] > 0
    sets = {d["id"]: d["params"] for d in map(json.loads, (out / "params.jsonl").read_text()
                                                                 .splitlines())}
    assert len(sets) == 4
    seen = out / "seen"
    assert len(list(seen.glob("*.json"))) == 4 * STEPS  # one message per (simulation, step)
    sizes = {"temperature": [5 + 3 * r for r in range(ranks)], "pressure": [4 + r for r in range(ranks)]}
    for sid, params in sets.items():
        p0 = repr(float(params[0]))  # what {p0} wrote on the command line
        for field, per_rank in sizes.items():
            own = [np.fromfile(solver_out / f"{field}-{p0}-r{r}.bin", np.float64).reshape(STEPS, n)
                   for r, n in enumerate(per_rank)]
            for k in range(STEPS):
                got = np.load(seen / f"{sid}-{k}-{field}.npy")
                want = np.concatenate([o[k] for o in own])  # joined in rank order
                assert got.dtype == np.float64 and got.tobytes() == want.tobytes(), (sid, k, field)
        for k in range(STEPS):
            m = json.loads((seen / f"{sid}-{k}.json").read_text())
            assert m == {"parameters": params, "fields": ["pressure", "temperature"],
                         "metadata": {"pressure": json.dumps({"step": k})}}


@pytest.mark.timeout(300)
def test_imported_melissa_study_runs_the_melissa_solver(built, ring_name, tmp_path, monkeypatch):
    """The whole drop-in path: a Melissa configuration (openmpi scheduler, FIRO buffer) through
    `ot import-melissa`, the solver built against our melissa_api.h, the talk's ported server
    function (server_filename -> model.adapter), all under `ot run`."""
    from click.testing import CliRunner
    from onlinetrain.cli import main
    from onlinetrain.melissa_import import convert, render
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    solver_out = tmp_path / "solver"
    solver_out.mkdir()
    doc = {"server_filename": "melissa_server.py", "server_class": "HeatPDEServerDL",
           "output_dir": str(tmp_path / "o"),
           "study_options": {"field_names": ["temperature", "pressure"],
                             "parameters_sweep_size": 3, "nb_parameters": 2,
                             "nb_time_steps": STEPS, "parameter_range": [0.5, 1.5], "seed": 5,
                             "simulation_timeout": 60},
           "dl_config": {"batch_size": 4, "per_server_watermark": 4, "buffer_size": 32,
                         "buffer": "FIRO", "nb_batches_update": 2},
           "launcher_config": {"scheduler": "openmpi", "job_limit": 2,
                               "scheduler_arg_client": ["-n", "2"]},
           "client_config": {"executable_command": built["melissa_sim"],
                             "command_default_args": [str(solver_out), str(STEPS)]}}
    data, notes, warnings = convert(doc, ring_name)
    assert data["solver"]["argv"][:3] == ["mpirun", "-n", "2"]
    data["solver"]["argv"][0] = built["mpi"]["run"]  # the MPI the solver was built with
    study = tmp_path / "study.toml"
    study.write_text(render(data, notes, "test.json"))
    r = CliRunner().invoke(main, ["run", str(study), "--quiet"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sims_done"] == 3 and s["sims_failed"] == 0 and s["duplicates_dropped"] == 0
    assert s["samples_received"] == 3 * STEPS and s["batches"] == 3 * STEPS // 4
    assert len(list((tmp_path / "o" / "seen").glob("*-temperature.npy"))) == 3 * STEPS
