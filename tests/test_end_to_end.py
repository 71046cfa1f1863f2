"""Whole studies with real processes and real shared memory: ot run, the pipe, cleanup, bad input."""
import json
import os
import pwd
import signal
import subprocess
import sys

import psutil
import pytest
import torch
from click.testing import CliRunner

from onlinetrain.cli import main
from onlinetrain.runner import run_study
from onlinetrain.shm_channel import segment_path

from conftest import ROOT, wait_until

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.timeout(120)
def test_tiny_ot_run_trains_and_cleans_up(tiny_config, ring_name):
    # train until every simulation has been received, then 100 more batches (no race with a
    # fast trainer reaching max_batches first)
    tiny_config.buffer.post_stream_batches = 100
    tiny_config.train.max_batches = 100_000
    s = run_study(tiny_config)
    assert s["sims_done"] == 15 and s["sims_failed"] == 0
    assert s["samples_received"] == 15 * 20 and s["duplicates_dropped"] == 0
    assert s["validation_samples"] == 3 * 20
    assert s["val_mse"] < 0.5 * s["mean_field_mse"]
    assert s["buffer"]["batches"] == s["batches"] >= 100
    out = tiny_config.output.dir
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["batches"] == s["batches"] and ck["config"]["solver"]["n"] == 12
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["batch"] for m in lines] == list(range(100, s["batches"] + 1, 100))
    assert all(m["val_mse"] is not None for m in lines)  # held-out data comes first
    claims = [json.loads(x)["id"] for x in open(os.path.join(out, "ledger.jsonl"))
              if json.loads(x)["ev"] == "claim"]
    assert sorted(claims[:3]) == [12, 13, 14]  # the validation sets are run first
    assert tiny_config.channel.url == f"shm://{ring_name}-{pwd.getpwuid(os.getuid()).pw_name}"
    assert not os.path.exists(segment_path(tiny_config.channel.url[len("shm://"):]))


@pytest.mark.timeout(120)
def test_pipe_sample_simulate_train(tmp_path, ring_name):
    url = f"shm://{ring_name}"
    sample = subprocess.run(OT + ["sample", "-n", "8", "--seed", "1"], capture_output=True,
                            text=True, check=True, env=ENV)
    sim = subprocess.Popen(OT + ["simulate", "--to", url, "--n", "12", "--steps", "20",
                                 "--concurrency", "2"], stdin=subprocess.PIPE, text=True,
                           stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    sim.stdin.write(sample.stdout)
    sim.stdin.close()
    r = subprocess.run(OT + ["train", "--from", url, "--config",
                             str(ROOT / "examples" / "heat2d-tiny.toml"), "--out",
                             str(tmp_path), "--quiet"], capture_output=True, text=True,
                       timeout=100, env=ENV)
    assert sim.wait(30) == 0, sim.stderr.read()
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples_received"] == 8 * 20
    assert "validation MSE" in r.stdout
    assert "8 simulations done, 0 failed" in sim.stderr.read()
    assert not os.path.exists(segment_path(ring_name))


def _small_study(tmp_path, ring_name, solver_lines: str) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""[solver]\n{solver_lines}\nsteps = 5\n
[sampling]\nn_train = 6\nn_validation = 2\n
[buffer]\nkind = "fifo"\ncapacity = 100\n
[train]\nbatch_size = 8\nmax_batches = 1000\nval_every = 2\n
[output]\ndir = "{tmp_path / 'o'}"\nname = "{ring_name}"\n""")
    return str(cfg)


def gen(params):
    """A user generator: 5 steps of a 4x4 field built from the parameters."""
    import numpy as np
    for k in range(1, 6):
        yield k, np.full((4, 4), params[0] * k, np.float32)


@pytest.mark.timeout(120)
def test_external_program_with_client_api(tmp_path, ring_name):
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import sys, numpy as np\n"
        "from onlinetrain import client\n"
        "with client.init() as sim:\n"
        "    assert int(sys.argv[2]) == sim.sim_id\n"
        "    for k in range(1, 6):\n"
        "        sim.send(k, np.full((4, 4), float(sys.argv[1]) * k, np.float32))\n")
    cfg = _small_study(tmp_path, ring_name, f'kind = "program"\nargv = ["{sys.executable}", '
                                            f'"{prog}", "{{p0}}", "{{sim_id}}"]')
    r = CliRunner().invoke(main, ["run", cfg, "--quiet"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sims_done"] == 8 and s["samples_received"] == 8 * 5
    assert s["batches"] == 4  # FIFO: 6 training sims x 5 steps served once, 8 per batch


@pytest.mark.timeout(120)
def test_user_python_generator(tmp_path, ring_name):
    cfg = _small_study(tmp_path, ring_name, 'kind = "python"\nfunction = "test_end_to_end:gen"')
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    try:
        r = CliRunner().invoke(main, ["run", cfg, "--quiet"])
    finally:
        os.environ["PYTHONPATH"] = ENV["PYTHONPATH"] if "PYTHONPATH" in os.environ else ""
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sims_done"] == 8 and s["samples_received"] == 8 * 5


@pytest.mark.timeout(120)
def test_failing_simulation_is_reported_not_awaited(tmp_path, ring_name):
    cfg = _small_study(tmp_path, ring_name, f'kind = "program"\nargv = ["{sys.executable}", '
                                            f'"-c", "import sys; sys.exit(3)"]')
    r = CliRunner().invoke(main, ["run", cfg, "--quiet"])
    assert r.exit_code != 0 and "no training sample arrived" in r.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ot_run_interrupted_leaves_nothing(tmp_path, ring_name, sig):
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "examples" / "heat2d-tiny.toml").read_text()
                   .replace("n_train = 12", "n_train = 400").replace("max_batches = 400",
                                                                     "max_batches = 100000")
                   .replace('name = "tiny"', f'name = "{ring_name}"'))
    p = subprocess.Popen(OT + ["run", str(cfg), "--out", str(tmp_path / "o")], env=ENV,
                         stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(p.pid)
    assert wait_until(lambda: len(proc.children()) >= 2, 60), "no simulation started"
    ring_name = f"{ring_name}-{pwd.getpwuid(os.getuid()).pw_name}"  # a ring per user
    assert os.path.exists(segment_path(ring_name))
    kids = proc.children(recursive=True)
    p.send_signal(sig)
    assert p.wait(30) == 130
    assert "interrupted" in p.stderr.read()
    assert not os.path.exists(segment_path(ring_name))
    assert wait_until(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE
                                     for k in kids), 10)


def test_unknown_config_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nbatchsize = 3\n")
    r = CliRunner().invoke(main, ["run", str(cfg)])
    assert r.exit_code != 0
    assert "unknown key train.batchsize" in r.output and "batch_size" in r.output


def test_unknown_section_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[trainer]\nx = 1\n")
    r = CliRunner().invoke(main, ["run", str(cfg)])
    assert r.exit_code != 0 and "unknown section [trainer]" in r.output


def test_unstable_explicit_step_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[solver]\nn = 64\nsteps = 100\nscheme = "explicit"\n')
    r = CliRunner().invoke(main, ["run", str(cfg)])
    assert r.exit_code != 0 and "unstable" in r.output and "steps >=" in r.output


def test_simulate_to_missing_channel_is_a_clear_error(ring_name):
    r = CliRunner().invoke(main, ["simulate", "--to", f"shm://{ring_name}", "--connect-timeout",
                                  "0.2"], input='{"id": 0, "params": [1,2,3,4,5]}\n')
    assert r.exit_code != 0
    assert f"shm://{ring_name} does not exist" in r.output


def test_bad_channel_url():
    r = CliRunner().invoke(main, ["simulate", "--to", "shm:/x"], input="")
    assert r.exit_code != 0 and "bad channel URL 'shm:/x'" in r.output


@pytest.mark.timeout(60)
def test_heat2d_standalone_program_streams_every_step(ring_name):
    from onlinetrain import frame as fr
    from onlinetrain.shm_channel import RingConsumer
    from solvers import heat2d
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring:
        p = subprocess.run([sys.executable, "-m", "solvers.heat2d", "--to", f"shm://{ring_name}",
                            "--sim-id", "3", "--params", "100", "200", "300", "400", "500",
                            "--n", "8", "--steps", "5"], env=ENV, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        frames = [ring.get(timeout=5) for _ in range(6)]
    ref = list(heat2d.solve([100, 200, 300, 400, 500], n=8, steps=5))
    assert [f.time_step for f in frames[:5]] == [1, 2, 3, 4, 5]
    assert all(f.sim_id == 3 and f.name == "T" and f.array.shape == (8, 8) for f in frames[:5])
    assert all(abs(f.array - u).max() < 1e-3 for f, (_, u) in zip(frames, ref))
    assert frames[5].kind == fr.SIM_END and frames[5].time_step == 5
