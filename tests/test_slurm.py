"""`ot slurm` end to end on a REAL Slurm cluster (slurmctld + 2 slurmd, brought up here).

Needs the Debian packages (`make deps`); without them these tests fail, they do not skip.
Every study is a tiny heat2d (n=8, steps=10, 8 simulations) so the whole file stays short.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from onlinetrain.assembly import steps_received
from onlinetrain import checkpoint
from onlinetrain import slurm as S
from tests.slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[1]
ALL_IDS = list(range(8))  # 6 training + 2 validation simulations

TOML = """
[solver]
kind = "python"
function = "tests.slurm_solvers:heat2d_faulty"
n = 8
steps = 10
[sampling]
n_train = 6
n_validation = 2
seed = 1
{sampling_extra}
[channel]
connect_timeout = 60.0
[buffer]
kind = "{buffer}"
capacity = 200
watermark = 60
[model]
hidden = 16
[train]
batch_size = 16
lr_milestones = [100]
max_batches = 30
val_every = {val_every}
{train_extra}
[output]
dir = "{dir}"
name = "{name}"
[slurm]
mode = "{mode}"
job_limit = 2
max_restarts = {max_restarts}
poll = 0.3
"""


@pytest.fixture(scope="session")
def cluster():
    d = Path(tempfile.mkdtemp(prefix="ot-slurm-"))
    c = SlurmCluster.start(d)  # raises (test error, not skip) when Slurm is not installed
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = c.conf
    try:
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def study(tmp_path, ring_name, cluster):
    """Write the study config; returns (config path, study dir, env for `ot`)."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def make(mode="global", max_restarts=2, buffer="reservoir", val_every=10, train_extra="",
             sampling_extra="", **faults):
        d = tmp_path / "study"
        cfg = tmp_path / "study.toml"
        cfg.write_text(TOML.format(dir=d, name=ring_name, mode=mode, max_restarts=max_restarts,
                                   buffer=buffer, val_every=val_every, train_extra=train_extra,
                                   sampling_extra=sampling_extra))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OT_TEST_MARKS": str(marks),
               **{f"OT_TEST_{k.upper()}": str(v) for k, v in faults.items()}}
        return cfg, d, env, marks
    return make


def ot(*args, env, timeout=150):
    return subprocess.run([sys.executable, "-m", "onlinetrain", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(path: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.1)
    return path


def squeue_steps(env) -> list[S.Step]:
    r = subprocess.run(["squeue", "--steps", "--noheader", f"--format={S.STEPS_FORMAT}"],
                       env=env, capture_output=True, text=True, check=True)
    return S.parse_steps(r.stdout)


OUTCOME = {"start": "started", "restart": "failed", "done": "done", "fail": "gave_up",
           "release": "released", "stop": "stopped"}


def events(d: Path) -> list[dict]:
    return [json.loads(ln) for ln in (d / "ledger.jsonl").read_text().splitlines()]


def attempts(d: Path) -> list[dict]:
    """Each simulation's history from the ledger: started, failed (restarted), done, gave_up,
    released (back to pending), stopped."""
    return [{**e, "sim": e["id"], "outcome": OUTCOME[e["ev"]]} for e in events(d)
            if e["ev"] in OUTCOME]


def trainer_events(d: Path) -> list[dict]:
    return [e for e in events(d) if e["ev"] == "trainer"]


def study_procs(url: str) -> list[psutil.Process]:
    """Processes of the study whose ring is url + '-USER-jJOB' (launch.study_channel)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("OT_CHANNEL", "").startswith(url) or \
                    url in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def submit_bg(cfg, env):
    return subprocess.Popen([sys.executable, "-m", "onlinetrain", "slurm", "submit", str(cfg),
                             "--wait", "150"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(180)
def test_global_hetjob_study_restarts_a_cancelled_step(study, ring_name):
    cfg, d, env, marks = study("global", hang=3)
    p = submit_bg(cfg, env)
    try:
        wait_for(marks / "hang-3-a0")
        step = [s for s in squeue_steps(env) if s.name == "sim3"]
        assert len(step) == 1, squeue_steps(env)
        subprocess.run(["scancel", step[0].id], env=env, check=True)
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    script = (d / S.DRIVER_SCRIPT).read_text()
    assert "#SBATCH hetjob" in script and "#SBATCH --ntasks=2" in script
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["done"] == ALL_IDS and res["failed"] == {}
    three = [a for a in attempts(d) if a["sim"] == 3]
    assert [a["outcome"] for a in three] == ["started", "failed", "started", "done"]
    assert three[1]["reason"]  # why the first attempt failed is recorded
    assert (d / "checkpoint.pt").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["sims_done"] == 8 and summary["batches"] == 30
    st = ot("slurm", "status", d, "--json", env=env)
    s = json.loads(st.stdout)
    assert s["simulations"]["done"] == ALL_IDS and s["simulations"]["attempts"]["3"] == 2
    assert s["result"]["status"] == "completed" and s["training"]["batch"] == 30
    assert not study_procs(f"shm://{ring_name}")


@pytest.mark.timeout(180)
def test_killed_trainer_resumes_from_its_checkpoint_and_reruns_only_what_it_lost(study, ring_name):
    # FIFO: each training sample is served once, so the batch count is fixed by the data: while
    # sim 3 hangs after 2 steps the trainer holds 5 * 10 + 2 = 52 samples = 3 batches of 16 and
    # waits; it checkpoints every batch (all kept, to read the one it resumes from afterwards).
    cfg, d, env, marks = study("global", max_restarts=1, hang=3, buffer="fifo", val_every=1,
                               train_extra="checkpoint_every = 1\nkeep_checkpoints = 100")
    p = submit_bg(cfg, env)
    try:
        wait_for(marks / "hang-3-a0")
        deadline = time.monotonic() + 60  # every other simulation done, batch 3 checkpointed
        while not ({a["sim"] for a in attempts(d) if a["outcome"] == "done"} == set(ALL_IDS) - {3}
                   and (d / "checkpoints" / "ckpt-000000003.sha256").exists()):
            assert time.monotonic() < deadline, attempts(d)
            time.sleep(0.1)
        trainer = [q for q in study_procs(f"shm://{ring_name}")
                   if "train" in q.cmdline() and "srun" not in q.cmdline()[0]]
        assert len(trainer) == 1, [q.cmdline() for q in trainer]
        trainer[0].kill()
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["trainer_restarts"] == 1
    assert res["done"] == ALL_IDS  # each once
    trainer_rec = trainer_events(d)
    assert [t["outcome"] for t in trainer_rec] == ["started", "failed", "started", "done"]
    assert "SIGKILL" in trainer_rec[1]["reason"] or "137" in trainer_rec[1]["reason"]
    # the restarted trainer got --resume and continued from the checkpointed batch, not from 0
    resumed = trainer_rec[2]
    assert resumed["resume_batch"] == 3, resumed
    assert "resumed from" in (d / "logs" / "trainer-a1.log").read_text() and \
        "at batch 3 " in (d / "logs" / "trainer-a1.log").read_text()
    ck = checkpoint.load(d / "checkpoints" / "ckpt-000000003.pt")
    fully = checkpoint.fully_received(ck)
    assert resumed["fully_received"] == sorted(fully)
    assert {0, 1, 2, 4} <= fully and 3 not in fully  # done before batch 3's samples arrived
    metrics = [json.loads(ln)["batch"] for ln in (d / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["batches"] == 4 and metrics == [1, 2, 3, 4]  # 60 samples; no batch repeated
    # the trainer's accounting: every (simulation, step) taken exactly once across the crash
    assert summary["sims_done"] == 8 and summary["sims_failed"] == 0
    assert summary["samples_received"] == 8 * 10 and summary["buffer"]["served"] == 6 * 10
    final = checkpoint.load_latest(d)
    assert checkpoint.fully_received(final) == set(ALL_IDS)
    seen = steps_received(final["sections"]["receiver"])
    assert seen == [(s, k) for s in ALL_IDS for k in range(1, 11)]
    lost = [k for k in steps_received(ck["sections"]["receiver"]) if k[0] not in fully]
    assert lost  # sim 3's two steps at least: re-sent by its rerun, dropped as duplicates
    assert summary["duplicates_dropped"] == ck["sections"]["receiver"]["duplicates"] + len(lost)
    # simulations fully received before the crash ran once; the others ran again
    for sid in ALL_IDS:
        outcomes = [a["outcome"] for a in attempts(d) if a["sim"] == sid]
        if sid in fully:
            assert outcomes == ["started", "done"], (sid, outcomes)
        else:
            assert outcomes.count("started") == 2 and outcomes[-1] == "done", (sid, outcomes)
    three = [a["outcome"] for a in attempts(d) if a["sim"] == 3]
    assert three == ["started", "released", "started", "done"]  # its data went with the trainer
    assert "the trainer" in [a for a in attempts(d) if a["sim"] == 3][1]["reason"]
    st = json.loads(ot("slurm", "status", d, "--json", env=env).stdout)
    assert st["simulations"]["done"] == ALL_IDS and st["simulations"]["trainer"][2]["resume_batch"] == 3
    assert (d / "checkpoint.pt").exists()
    assert not study_procs(f"shm://{ring_name}")


@pytest.mark.timeout(180)
def test_semiglobal_study_restarts_killed_and_gives_up_on_failing(study, ring_name):
    cfg, d, env, marks = study("semiglobal", max_restarts=1, fail=2, hang=4)
    p = submit_bg(cfg, env)
    try:
        pid = int(wait_for(marks / "hang-4-a0").read_text())
        os.kill(pid, signal.SIGKILL)  # the simulation dies inside its job
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    assert "hetjob" not in (d / S.DRIVER_SCRIPT).read_text()
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed"
    assert res["done"] == [i for i in ALL_IDS if i != 2]
    assert list(res["failed"]) == ["2"]
    assert "gave up after 2 attempts" in res["failed"]["2"]
    assert "always fails" in res["failed"]["2"]  # the simulation's own words reach the record
    two = [a["outcome"] for a in attempts(d) if a["sim"] == 2]
    assert two == ["started", "failed", "started", "gave_up"]
    four = [a["outcome"] for a in attempts(d) if a["sim"] == 4]
    assert four == ["started", "failed", "started", "done"]
    roles = [e["role"] for e in events(d) if e["ev"] == "job"]
    assert roles.count("driver") == 1 and roles.count("simulation") == 8 + 2  # 2 restarts
    assert (d / "checkpoint.pt").exists()
    assert not study_procs(f"shm://{ring_name}")


@pytest.mark.timeout(150)
def test_cancel_leaves_no_job_step_process_or_segment(study, ring_name):
    cfg, d, env, marks = study("global", hang=1, hang_always=1)
    r = ot("slurm", "submit", cfg, env=env)
    assert r.returncode == 0, r.stderr
    wait_for(marks / "hang-1-a0")
    assert any(s.name == "sim1" for s in squeue_steps(env))
    st = json.loads(ot("slurm", "status", d, "--json", env=env).stdout)
    assert {"trainer", "sim1"} <= {s["name"] for s in st["steps"]}
    assert 1 in st["simulations"]["running"] and st["result"] is None
    assert [e for e in os.listdir("/dev/shm") if ring_name in e]  # the trainer's ring exists
    r = ot("slurm", "cancel", d, env=env)
    assert r.returncode == 0, r.stderr
    assert "cancelled 1 job" in r.stdout
    q = subprocess.run(["squeue", "--noheader", f"--format={S.SQUEUE_FORMAT}", f"--name=ot-{ring_name}"],
                       env=env, capture_output=True, text=True, check=True)
    assert S.parse_squeue(q.stdout) == []
    assert not [s for s in squeue_steps(env) if s.name.startswith("sim") or s.name == "trainer"]
    deadline = time.monotonic() + 15  # processes of a cancelled job may take a moment to go
    while study_procs(f"shm://{ring_name}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not study_procs(f"shm://{ring_name}")
    assert not [e for e in os.listdir("/dev/shm") if ring_name in e]
    assert json.loads((d / "result.json").read_text())["status"] == "cancelled"


# two studies of up to 140 s each, and the session's cluster is stopped in this test's teardown
@pytest.mark.timeout(330)
def test_submit_inside_an_existing_allocation_runs_there(study, tmp_path):
    cfg, d, env, _ = study("global")
    user_script = tmp_path / "mine.sbatch"
    user_script.write_text(f"#!/bin/bash\n{sys.executable} -m onlinetrain slurm submit {cfg}\n")
    r = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks=3",
                        f"--output={tmp_path / 'mine.out'}", str(user_script)], env=env,
                       capture_output=True, text=True, timeout=140)
    assert r.returncode == 0, (tmp_path / "mine.out").read_text()
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["done"] == ALL_IDS
    assert not [e for e in events(d) if e["ev"] == "job"]  # nothing submitted: it ran here
    assert (d / "checkpoint.pt").exists()
    # the driver's script run again by hand continues the study from its checkpoint: the trainer
    # resumes at its last batch and no simulation runs again (all were fully received)
    r = subprocess.run(["sbatch", "--parsable", "--wait", str(d / S.DRIVER_SCRIPT)], env=env,
                       capture_output=True, text=True, timeout=140)
    assert r.returncode == 0, r.stderr + "".join(p.read_text() for p in (d / "logs").glob("*"))
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["done"] == ALL_IDS
    assert len([a for a in attempts(d) if a["outcome"] == "started"]) == len(ALL_IDS)
    trainer = trainer_events(d)
    assert trainer[-2]["resume_batch"] == 30 and trainer[-1]["outcome"] == "done"


@pytest.mark.timeout(240)
def test_two_rank_mpi_simulations_run_as_srun_steps(study, ring_name):
    cfg, d, env, marks = study("global", buffer="fifo")
    text = cfg.read_text().replace(
        'kind = "python"\nfunction = "tests.slurm_solvers:heat2d_faulty"\nn = 8\nsteps = 10',
        f'kind = "program"\nargv = ["{sys.executable}", "{ROOT / "tests" / "mpi_sim.py"}"]\n'
        f'steps = 6')
    cfg.write_text(text + "[simulate]\nntasks = 2\n")
    p = submit_bg(cfg, env)
    try:
        out, err = p.communicate(timeout=200)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err + "".join(f.read_text() for f in (d / "logs").glob("*"))
    assert "#SBATCH --ntasks=4" in (d / S.DRIVER_SCRIPT).read_text()  # job_limit x ntasks
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["done"] == ALL_IDS
    assert {f.name: f.read_text() for f in marks.glob("size-*")} == \
        {f"size-{i}": "2" for i in ALL_IDS}  # every simulation was a 2-rank MPI world
    starts = [e for e in events(d) if e["ev"] == "start"]
    assert len(starts) == 8 and all(e["where"].startswith("srun pid") for e in starts)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["samples_received"] == 8 * 6 and summary["duplicates_dropped"] == 0
    assert not study_procs(f"shm://{ring_name}")


@pytest.mark.timeout(180)
def test_slurm_study_with_breed_re_parameterises_pending_sets(study, ring_name):
    """[sampling] adaptive = "breed" in an `ot slurm` study: the driver runs the breeder before
    each claim; bred sets run (as srun steps) with their new parameters, held-out sets never
    change, and `ot slurm status` shows the generations."""
    cfg, d, env, _ = study("global", sampling_extra='adaptive = "breed"\n[breed]\nwindow = 2\n'
                           'sigma = 0.05\nstart = 0.7\nend = 0.9')
    p = submit_bg(cfg, env)
    try:
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "completed" and res["done"] == ALL_IDS
    ev = events(d)
    bred = [e for e in ev if e["ev"] == "breed"]
    gens = [e for e in ev if e["ev"] == "generation"]
    assert gens and bred and {e["generation"] for e in bred} == {g["generation"] for g in gens}
    for e in bred:
        assert e["id"] < 6  # training sets only (6, 7 are held out)
        first_start = next(i for i, x in enumerate(ev) if x["ev"] == "start" and x["id"] == e["id"])
        assert ev.index(e) < first_start  # re-parameterised before it ever started
        assert all(100.0 <= v <= 500.0 for v in e["params"])
        if e["parent"] is not None:
            done_at = next(i for i, x in enumerate(ev) if x["ev"] == "done" and x["id"] == e["parent"])
            assert done_at < ev.index(e) and e["parent"] < 6
    st = ot("slurm", "status", d, "--json", env=env)
    b = json.loads(st.stdout)["simulations"]["breed"]
    last = {e["id"]: e for e in bred}  # a set still pending may be re-parameterised again
    assert b["resamplings"] == len(gens)
    assert b["bred"] == sum(e["parent"] is not None for e in last.values())
    assert (d / "scores.json").exists()

