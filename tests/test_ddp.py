"""Multi-rank training: env parsing (pure), and 2 real gloo ranks as processes (equivalence with one
rank, a full online run fed over TCP through `ot relay`)."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from onlinetrain import ddp

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
    ENV.pop(_k, None)


def test_env_from_torchrun_and_slurm():
    assert ddp.env_from({}) == ddp.DistEnv()
    d = ddp.env_from({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                      "MASTER_PORT": "1234"})
    assert (d.rank, d.world, d.local_rank, d.master_addr, d.master_port, d.source) == \
        (3, 4, 1, "n1", 1234, "torchrun")
    d = ddp.env_from({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                      "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1", "SLURM_JOB_ID": "4242"})
    assert (d.rank, d.world, d.local_rank, d.master_addr, d.master_port) == \
        (5, 8, 1, "gpu07", 29500 + 242)
    assert ddp.env_from({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "a,b",
                         "MASTER_PORT": "7000"}).master_port == 7000


@pytest.mark.parametrize("nodelist,first", [("node1", "node1"), ("n[1-4]", "n1"),
                                            ("x[003,007]-ib,y", "x003-ib"), ("a,b[1-2]", "a")])
def test_first_host(nodelist, first):
    assert ddp.first_host(nodelist) == first


@pytest.mark.parametrize("env,match", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 is not in 0..1"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "0"}, "WORLD_SIZE is not set"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "run under srun"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "master port 70000")])
def test_env_errors_name_the_value(env, match):
    with pytest.raises(ddp.DistError, match=match):
        ddp.env_from(env)


def test_rank_url():
    d = ddp.DistEnv(rank=3, world=4, local_rank=1)
    assert ddp.rank_url("tcp://10.0.0.5:5555", d, {}) == "tcp://10.0.0.5:5556"
    assert ddp.rank_url("tcp://10.0.0.5:5555", d, {"OT_LISTEN_HOST": "n7"}) == "tcp://n7:5556"
    assert ddp.rank_url("tcp://10.0.0.5:0", d, {}) == "tcp://10.0.0.5:0"
    assert ddp.rank_url("shm://s", d, {}) == "shm://s-r3"
    assert ddp.rank_url("shm://s", ddp.DistEnv(), {}) == "shm://s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out, batch):
    from onlinetrain import config
    return config.from_dict({"buffer": {"kind": "fifo", "capacity": 1000},
                             "model": {"hidden": 16},
                             "train": {"batch_size": batch, "max_batches": 1000, "val_every": 1000,
                                       "lr": 1e-2},
                             "output": {"dir": str(out)}})


def _samples(world, batch, steps):
    """Global sample s of step k: sim id s, 5 parameters, a 16-cell field, all deterministic."""
    rng = np.random.default_rng(0)
    n = world * batch * steps
    return [(s, rng.uniform(100, 500, 5), rng.uniform(100, 500, 16).astype(np.float32))
            for s in range(n)]


def _feed_and_train(ring_name, samples, cfg, distributed):
    from onlinetrain import frame as fr
    from onlinetrain import trainer
    from onlinetrain.shm_channel import RingConsumer, RingProducer
    ring = RingConsumer.create(ring_name, 4 << 20)
    try:
        with RingProducer.attach(ring_name) as p:
            for sid, params, field in samples:
                p.put(fr.Frame(sid, 1, params, "T", field))
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        return trainer.train(cfg, consumer=ring)  # one loop for 1..N ranks
    finally:
        ring.close()


def rank_main(rank, world, port, out, batch, steps, ring_name):
    """One rank of the equivalence test: global batch k = rank 0's B samples + rank 1's B."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OT_DIST_TIMEOUT="60")
    allsamp = _samples(world, batch, steps)
    mine = [s for i, s in enumerate(allsamp) if (i // batch) % world == rank]
    s = _feed_and_train(f"{ring_name}-r{rank}", mine, _cfg(out, batch), True)
    print(json.dumps(s))


def single_main(world, out, batch, steps, ring_name):
    """The reference: one process, the plain trainer, batch world x B on the same samples."""
    s = _feed_and_train(ring_name, _samples(world, batch, steps), _cfg(out, world * batch), False)
    print(json.dumps(s))


def _python(code: str, n: int = 1) -> list:
    """Run `code` in n fresh interpreters (tests/ importable) at once; their stdout's last JSON."""
    procs = [subprocess.Popen([sys.executable, "-c", "import test_ddp; " + code.format(r=r)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(n)]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


@pytest.mark.timeout(180)
def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, ring_name):
    world, batch, steps = 2, 8, 6
    port = _free_port()
    s0, s1 = _python(f"test_ddp.rank_main({{r}}, {world}, {port}, {str(tmp_path / 'dist')!r}, "
                     f"{batch}, {steps}, {ring_name!r})", world)
    assert s0["batches"] == s1["batches"] == steps and s0["ranks"] == 2
    assert s0["samples_received"] == world * batch * steps
    assert s0["rank_samples"] == s1["rank_samples"] == batch * steps
    assert not (tmp_path / "dist" / "endpoint-rank0").exists()  # shm: no endpoint to publish
    # the reference runs in its own process too: training in the test process would warm torch up
    # and change the timing of later tests that race simulations against max_batches
    (single,) = _python(f"test_ddp.single_main({world}, {str(tmp_path / 'one')!r}, {batch}, "
                        f"{steps}, {ring_name!r})")
    assert single["batches"] == steps and single["ranks"] == 1
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["sections"]["train"]
            ["model"] for d in ("dist", "one"))
    init = _cfg(tmp_path, 1)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    torch.manual_seed(init.train.seed)  # and training did move the weights
    assert not torch.allclose(a["0.weight"], torch.nn.Linear(6, 16).weight)


def _wait_for(paths, timeout, procs):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if all(p.exists() for p in paths):
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.1)
    return False


@pytest.mark.timeout(240)
def test_online_run_with_two_ranks_fed_over_tcp_by_a_relay(tmp_path, ring_name):
    out = tmp_path / "study"
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "examples" / "heat2d-tiny.toml").read_text()
                   .replace("val_every = 100", "val_every = 20"))
    port = _free_port()
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OT_DIST_TIMEOUT": "120"}
    ranks = [subprocess.Popen(OT + ["train", "--from", "tcp://127.0.0.1:0", "--config", str(cfg),
                                    "--out", str(out), "--max-batches", "60", "--quiet"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for r in range(2)]
    others = []
    try:
        eps = [out / f"endpoint-rank{r}" for r in range(2)]
        assert _wait_for(eps, 60, ranks), [p.communicate() for p in ranks]
        urls = [e.read_text().strip() for e in eps]
        assert urls[0] != urls[1] and all(u.startswith("tcp://127.0.0.1:") for u in urls)
        penv = {**ENV, "OT_TOKEN_FILE": str(out / "secret.token")}
        relay = subprocess.Popen(OT + ["relay", f"shm://{ring_name}"] + urls, env=penv,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        others.append(relay)
        params = subprocess.run(OT + ["sample", "-n", "8", "--seed", "1"], capture_output=True,
                                text=True, check=True, env=ENV).stdout
        sim = subprocess.run(OT + ["simulate", "--to", f"shm://{ring_name}", "--n", "12",
                                   "--steps", "20"], input=params, capture_output=True, text=True,
                             env=penv, timeout=120)
        assert sim.returncode == 0, sim.stderr
        r_out, r_err = relay.communicate(timeout=60)
        assert relay.returncode == 0, r_err
        # 20 steps + the simulation's SIM_END, per simulation
        assert json.loads(r_out.strip().splitlines()[-1])["per_rank"] == [4 * 21] * 2
        results = [p.communicate(timeout=120) for p in ranks]
    finally:
        for p in ranks + others:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (o, e) in reversed(list(zip(ranks, results))):
        assert p.returncode == 0, e[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == 2 and s["batches"] == 60 and s["sims_done"] == 8
    assert s["samples_received"] == 8 * 20 and s["validation_samples"] == 2 * 20  # sims 3 and 7
    assert s["val_mse"] is not None and s["val_mse"] < s["mean_field_mse"]
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [m["batch"] for m in lines] == [20, 40, 60] and lines[-1]["ranks"] == 2
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["batches"] == 60 and ck["ranks"] == 2
    assert "trained 60 batches on 160 samples" in results[1][0]  # rank 1 reports the same totals
