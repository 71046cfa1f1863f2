"""The launch engine: attaching to the trainer's channel, restarts, CPU shares, per-user rings."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onlinetrain import launch, mpi_channel, procs
from onlinetrain.ledger import Ledger

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A trainer on a loaded machine: its ring file exists (all zeros, no magic yet) for 2.5 s before
# the header is written; then it holds the ring until its stdin closes.
SLOW_CREATOR = """
import os, sys, time
from onlinetrain.shm_channel import RingConsumer
path = "/dev/shm/ot_" + sys.argv[1]
with open(path, "wb") as fh:
    fh.write(bytes(4096 + 4096))
time.sleep(2.5)
os.unlink(path)
ring = RingConsumer.create(sys.argv[1], capacity=1 << 16)
print("ready", flush=True)
sys.stdin.read()
ring.close()
"""


@pytest.mark.timeout(60)
def test_attach_waits_for_a_ring_still_being_created(ring_name):
    p = procs.spawn([sys.executable, "-c", SLOW_CREATOR, ring_name], env=ENV,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/dev/shm/ot_{ring_name}"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        prod = launch.attach_trainer(f"shm://{ring_name}", p, timeout=30)
        assert prod is not None and p.poll() is None
        prod.close()
    finally:
        p.stdin.close()
        assert p.wait(20) == 0
        procs.terminate(p)


# A simulation that records the thread variables it was started with, then streams 5 steps.
RECORDER = """
import json, os, sys
from onlinetrain import client
from solvers import heat2d
sim = client.init()
with open(os.path.join(sys.argv[1], f"env-{sim.sim_id}.json"), "w") as fh:
    json.dump({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS", "OT_TOKEN_FILE")}, fh)
with sim:
    for k, u in heat2d.solve(list(sim.params), n=8, steps=5):
        sim.send(k, u)
"""


def recorder_study(tmp_path, ring_name, n_train=4, n_val=2, concurrency=2, max_batches=20,
                   extra=""):
    prog = tmp_path / "rec.py"
    prog.write_text(RECORDER)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    cfg = tmp_path / "study.toml"
    cfg.write_text(f"""
[solver]
kind = "program"
argv = ["{sys.executable}", "{prog}", "{marks}"]
steps = 5
[sampling]
n_train = {n_train}
n_validation = {n_val}
[simulate]
concurrency = {concurrency}
[buffer]
capacity = 100
watermark = 10
[model]
hidden = 8
[train]
batch_size = 8
max_batches = {max_batches}
val_every = 10
threads = 1
[output]
dir = "{tmp_path / 'study'}"
name = "{ring_name}"
{extra}""")
    return cfg, marks


@pytest.mark.timeout(120)
def test_simulations_get_their_cpu_share_of_threads(tmp_path, ring_name):
    cfg, marks = recorder_study(tmp_path, ring_name)
    env = {k: v for k, v in ENV.items() if k not in launch.THREAD_VARS}
    env["MKL_NUM_THREADS"] = "3"  # the user's own choice is kept
    r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    share = str(max(1, (len(os.sched_getaffinity(0)) - 1) // 2))
    seen = [json.loads(p.read_text()) for p in sorted(marks.glob("env-*.json"))]
    assert len(seen) == 6
    assert all(s == {"OMP_NUM_THREADS": share, "OPENBLAS_NUM_THREADS": share,
                     "MKL_NUM_THREADS": "3", "OT_TOKEN_FILE": None} for s in seen), seen
    assert launch.cpu_share(2, 1, cores=16) == 7 and launch.cpu_share(4, None, cores=2) == 1
    assert launch.cpu_share(3, 0, cores=12) == 4


MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
MPI_ENV = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                       "MASTER_PORT", "SLURM_PROCID",
                                                       "SLURM_NTASKS")}


def _mpich_segments() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("mpich_shm")}


def run_mpi(argv, stdin, timeout=150):
    """An MPI job; on a timeout or failure too, no rank and no mpich segment outlives it."""
    before = _mpich_segments()
    job = procs.spawn([MPIEXEC] + argv, env={**MPI_ENV, "MASTER_ADDR": "127.0.0.1"},
                      stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = job.communicate(timeout=timeout)
    finally:
        procs.terminate(job)
        for seg in _mpich_segments() - before:
            try:
                os.unlink(f"/dev/shm/{seg}")
            except FileNotFoundError:
                pass
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


@pytest.mark.timeout(200)
def test_mpi_simulate_ranks_share_the_sets_read_from_stdin(tmp_path):
    ot = [sys.executable, "-m", "onlinetrain"]
    params = subprocess.run(ot + ["sample", "-n", "6", "--seed", "2"], capture_output=True,
                            text=True, check=True, env=ENV).stdout
    (tmp_path / "p.jsonl").write_text(params)
    out = tmp_path / "o"
    sim = ["simulate", "--to", "mpi://train", "--n", "8", "--steps", "5"]  # sets on stdin
    train = ["train", "--from", "mpi://train", "--out", str(out), "--max-batches", "5",
             "--quiet"]
    with open(tmp_path / "p.jsonl") as fh:
        r = run_mpi(["-n", "2"] + ot + sim + [":", "-n", "1"] + ot + train, fh)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("3 simulations done, 0 failed") == 2, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["sims_done"] == 6 and s["samples_received"] == 6 * 5
    # rank 0 trains, so the simulate ranks get no stdin: refused, nothing silently lost
    with open(tmp_path / "p.jsonl") as fh:
        r = run_mpi(["-n", "1"] + ot + train + [":", "-n", "2"] + ot + sim, fh, timeout=100)
    assert r.returncode != 0 and "which mpiexec gives to rank 0 only" in r.stderr


RDV = """
import json, socket
import torch, torch.distributed as dist
from onlinetrain import ddp
from onlinetrain.mpi_channel import MpiConsumer
d = MpiConsumer.listen("mpi://t").dist_env()
socket.create_connection((d.master_addr, d.master_port), 5).close()  # listening already
ddp.init_group(d, "gloo", 60)
t = torch.tensor([d.rank + 1.0])
dist.all_reduce(t)
print(json.dumps({"rank": d.rank, "local": d.local_rank, "addr": d.master_addr, "sum": t.item()}))
dist.destroy_process_group()
"""


@pytest.mark.timeout(120)
def test_mpi_rendezvous_local_ranks_loopback_and_a_held_port():
    r = run_mpi(["-n", "3", sys.executable, "-c", RDV], subprocess.DEVNULL, timeout=100)
    assert r.returncode == 0, r.stderr[-3000:]
    # mpiexec forwards the ranks' stdout as it comes: lines may arrive glued together
    out = sorted((json.loads(o) for o in re.findall(r"\{[^{}]*\}", r.stdout)),
                 key=lambda x: x["rank"])
    assert len(out) == 3, r.stdout
    # one host: local ranks 0..2 (each its own cuda:N), the loopback address, one group
    assert [o["local"] for o in out] == [0, 1, 2]
    assert {o["addr"] for o in out} == {"127.0.0.1"} and {o["sum"] for o in out} == {6.0}
    addr = mpi_channel.rendezvous_address()
    assert not addr.startswith("127.")  # never the 127.0.1.1 of a Debian /etc/hosts


SLOW = """
import sys, time
from onlinetrain import client
from solvers import heat2d
sim = client.init()
with sim:
    for k, u in heat2d.solve(list(sim.params), n=8, steps=60):
        time.sleep(0.25)
        sim.send(k, u)
"""


@pytest.mark.timeout(150)
def test_nothing_runs_or_restarts_once_the_trainer_finished(tmp_path, ring_name):
    prog = tmp_path / "slow.py"
    prog.write_text(SLOW)
    # 14 simulations of 15 s, 2 at a time: the trainer reaches batch 3 long before the last ones
    cfg, _ = recorder_study(tmp_path, ring_name, n_train=12, max_batches=3)
    text = cfg.read_text().replace(f'argv = ["{sys.executable}", "{tmp_path / "rec.py"}", '
                                   f'"{tmp_path / "marks"}"]', f'argv = ["{sys.executable}", '
                                   f'"{prog}"]').replace("steps = 5", "steps = 60")
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    study = tmp_path / "study"
    events = [json.loads(ln) for ln in (study / "ledger.jsonl").read_text().splitlines()]
    end = [i for i, e in enumerate(events) if e["ev"] == "end"]
    assert len(end) == 1 and "trainer finished" in events[end[0]]["reason"]
    after = {e["ev"] for e in events[end[0] + 1:]}
    assert not after & {"claim", "start", "restart", "release"}, events[end[0]:]
    c = Ledger(study).counts()
    assert c["stopped"] >= 1 and c["pending"] == 0 and c["running"] == 0, c
    st = subprocess.run([sys.executable, "-m", "onlinetrain", "status", str(study)], env=ENV,
                        capture_output=True, text=True, timeout=60)
    assert f"{c['stopped']} stopped" in st.stdout and "0 running" in st.stdout, st.stdout
    assert "study ended: the trainer finished at batch 3" in st.stdout


def other_user():
    """A second Unix user (created when missing: the tests run as root)."""
    import pwd
    try:
        return pwd.getpwnam("otuser2")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "otuser2"], check=True)
        return pwd.getpwnam("otuser2")


def _as_user(pw, fn, conn):
    """In a forked child: become `pw` and send back what fn() returns or raises."""
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        conn.send(("ok", fn()))
    except Exception as e:  # noqa: BLE001 - reported to the test
        conn.send((type(e).__name__, str(e)))


def _hold(name, ready, done):
    from onlinetrain.shm_channel import RingConsumer
    ring = RingConsumer.create(name, capacity=1 << 16)
    ready.set()
    done.wait(120)
    ring.close()
    return os.getpid()


@pytest.mark.timeout(150)
def test_two_users_on_one_node_get_their_own_rings(tmp_path, ring_name):
    import multiprocessing as mp
    from onlinetrain.shm_channel import RingConsumer
    pw = other_user()
    launch.ring_holder(ring_name)  # imports done before forking: the other user cannot read them
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    parent, child = ctx.Pipe()
    # user otuser2 runs a study of the same output.name: it holds /dev/shm/ot_<name>-otuser2 and
    # the old shared name /dev/shm/ot_<name>
    holders = [ctx.Process(target=_as_user, args=(pw, lambda n=n: _hold(n, ready, done), child))
               for n in (ring_name,)]
    for h in holders:
        h.start()
    try:
        assert ready.wait(30)
        cfg, marks = recorder_study(tmp_path, ring_name)
        r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                           env=ENV, capture_output=True, text=True, timeout=100)
        assert r.returncode == 0, r.stderr  # root's study runs on shm://<name>-root
        assert len(list(marks.glob("env-*.json"))) == 6
        url = json.loads((tmp_path / "study" / "config.json").read_text())["channel"]["url"]
        assert url == f"shm://{ring_name}-root"
        # a name another user holds, given explicitly: an error naming the user and the pid
        cfg.write_text(cfg.read_text() + f'[channel]\nurl = "shm://{ring_name}"\n')
        r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                           env=ENV, capture_output=True, text=True, timeout=100)
        assert r.returncode == 1
        assert f"shm://{ring_name} belongs to user otuser2, pid {holders[0].pid}" in r.stderr
        # ... and the other way round: otuser2 is told at once that root's ring is not its own
        mine = RingConsumer.create(ring_name + "-x", capacity=1 << 16)
        try:
            p = ctx.Process(target=_as_user, args=(pw, lambda: launch.check_ring_free(
                f"shm://{ring_name}-x"), child))
            p.start()
            kind, msg = parent.recv()
            p.join(30)
        finally:
            mine.close()
        assert kind == "ChannelInUse" and "belongs to user root" in msg, (kind, msg)
    finally:
        done.set()
        for h in holders:
            h.join(30)


@pytest.mark.timeout(200)
def test_a_two_rank_mpi_simulation_runs_under_ot_run(tmp_path, ring_name):
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg, _ = recorder_study(tmp_path, ring_name, n_train=3, n_val=1, concurrency=1,
                            max_batches=100)
    text = cfg.read_text().replace(f'argv = ["{sys.executable}", "{tmp_path / "rec.py"}", '
                                   f'"{tmp_path / "marks"}"]', f'argv = ["{sys.executable}", '
                                   f'"{ROOT / "tests" / "mpi_sim.py"}"]')
    cfg.write_text(text.replace("steps = 5", "steps = 6").replace(
        "concurrency = 1", "concurrency = 1\nntasks = 2\nsimulation_timeout = 60"))
    before = _mpich_segments()
    try:
        r = subprocess.run([sys.executable, "-m", "onlinetrain", "run", str(cfg), "--quiet"],
                           env={**MPI_ENV, "OT_TEST_MARKS": str(marks)}, capture_output=True,
                           text=True, timeout=180)
    finally:
        for seg in _mpich_segments() - before:
            os.unlink(f"/dev/shm/{seg}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name: p.read_text() for p in marks.iterdir()} == {f"size-{i}": "2" for i in range(4)}
    s = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert s["sims_done"] == 4 and s["samples_received"] == 4 * 6 and s["duplicates_dropped"] == 0


@pytest.mark.timeout(150)
def test_tcp_producers_of_a_study_worker_get_the_study_token(tmp_path, ring_name):
    import socket
    from onlinetrain import config
    from onlinetrain.runner import new_study
    with socket.socket() as s:  # a free port for the study's listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    cfg_path, marks = recorder_study(tmp_path, ring_name, extra=f'[channel]\nurl = "{url}"\n')
    study = tmp_path / "study"
    cfg = config.load(cfg_path)
    cfg.validation.first_id, cfg.validation.end_id = 4, 6
    new_study(cfg, study)
    env = {k: v for k, v in ENV.items() if k != "OT_TOKEN_FILE"}
    ot = [sys.executable, "-m", "onlinetrain"]
    trainer = procs.spawn(ot + ["train", "--from", url, "--config", str(cfg_path), "--out",
                                str(study), "--quiet"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        w = subprocess.run(ot + ["simulate", "--study", str(study)], env=env,
                           capture_output=True, text=True, timeout=100)
        out, err = trainer.communicate(timeout=60)
    finally:
        procs.terminate(trainer)
    assert w.returncode == 0 and "6 simulations done, 0 failed" in w.stderr, w.stderr
    assert trainer.returncode == 0, err
    seen = [json.loads(p.read_text()) for p in sorted(marks.glob("env-*.json"))]
    assert len(seen) == 6 and {s["OT_TOKEN_FILE"] for s in seen} == {str(study / "secret.token")}
    assert json.loads((study / "summary.json").read_text())["samples_received"] == 6 * 5
