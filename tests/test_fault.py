"""Failures handled for real: SIGKILLed simulations (chaos), silent ones (simulation_timeout),
crashing ones (max_restarts, crashes_before_redraw); exactly-once from the trainer's accounting."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from onlinetrain.assembly import steps_received
from onlinetrain.ledger import Ledger

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A heat2d simulation (n=8, 20 steps) that sends slowly, so that kills land mid-run. With
# OT_TEST_HANG set, the first attempt of simulation 1 stops sending after 3 steps (a hang); with
# OT_TEST_CRASH, simulation 2 always exits 1 after 2 steps.
SLOW = """
import os, sys, time
from onlinetrain import client
from solvers import heat2d
sim = client.init()
hang = os.environ.get("OT_TEST_HANG")
if hang and sim.sim_id == 1 and not os.path.exists(hang):
    open(hang, "w").close()
    for k, u in heat2d.solve(list(sim.params), n=8, steps=20):
        sim.send(k, u)
        if k == 3:
            time.sleep(600)
with sim:
    for k, u in heat2d.solve(list(sim.params), n=8, steps=20):
        time.sleep(float(sys.argv[1]))
        sim.send(k, u)
        if k == 2 and sim.sim_id == 2 and os.environ.get("OT_TEST_CRASH"):
            sys.exit(1)
"""


def write_study(tmp_path, ring_name, n_train, n_val=4, delay=0.03, extra="", max_restarts=4):
    prog = tmp_path / "slow.py"
    prog.write_text(SLOW)
    cfg = tmp_path / "study.toml"
    cfg.write_text(f"""
[solver]
kind = "program"
argv = ["{sys.executable}", "{prog}", "{delay}"]
steps = 20
[sampling]
n_train = {n_train}
n_validation = {n_val}
seed = 3
[simulate]
concurrency = 4
max_restarts = {max_restarts}
{extra}
[buffer]
kind = "fifo"
capacity = 400
[model]
hidden = 32
[train]
batch_size = 16
max_batches = 100000
val_every = 10
[output]
dir = "{tmp_path / 'study'}"
name = "{ring_name}"
""")
    return cfg


def all_pairs(ids):
    return {(i, k) for i in ids for k in range(1, 21)}


def received(study):
    """The trainer's own accounting, from its final checkpoint."""
    ck = torch.load(study / "checkpoint.pt", weights_only=True)
    seen = steps_received(ck["sections"]["receiver"])
    assert len(seen) == len(set(seen))
    return set(seen), ck


@pytest.mark.timeout(300)
def test_chaos_sigkill_20_percent_of_simulations(tmp_path, ring_name):
    n_train, n_val = 40, 4
    cfg = write_study(tmp_path, ring_name, n_train, n_val)
    p = subprocess.Popen(OT + ["run", str(cfg), "--quiet"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    rng = random.Random(7)
    target = (n_train + n_val) // 5
    killed = set()
    try:
        while len(killed) < target and p.poll() is None:
            time.sleep(rng.uniform(0.05, 0.4))
            sims = []
            for c in psutil.Process(p.pid).children():
                try:
                    sid = int(c.environ().get("OT_SIM_ID", -1))
                except psutil.Error:
                    continue
                if sid >= 0 and sid not in killed:
                    sims.append((sid, c))
            if sims:
                sid, c = rng.choice(sims)
                try:
                    c.send_signal(signal.SIGKILL)
                    killed.add(sid)
                except psutil.NoSuchProcess:
                    pass
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-3000:]
    assert len(killed) == target, "the study ended before the kills landed"
    study = tmp_path / "study"
    snap = Ledger(study).snapshot()
    assert len(snap) == n_train + n_val
    assert all(s["state"] == "done" for s in snap.values()), snap
    restarted = {i for i, s in snap.items() if s["attempts"] > 0}
    assert restarted and restarted <= killed
    ids = range(n_train + n_val)
    seen, ck = received(study)
    assert seen == all_pairs(ids)  # every (simulation, step) taken exactly once
    s = json.loads((study / "summary.json").read_text())
    assert s["samples_received"] == len(seen) == (n_train + n_val) * 20
    assert s["validation_samples"] == n_val * 20
    assert s["buffer"]["served"] == n_train * 20  # FIFO: each training sample served once
    assert s["restarts"] == sum(s_["attempts"] for s_ in snap.values())
    assert "duplicates_dropped" in s


@pytest.mark.timeout(180)
def test_silent_and_crashing_simulations_are_restarted_failed_and_redrawn(tmp_path, ring_name):
    cfg = write_study(tmp_path, ring_name, 6, 0, delay=0.0,
                      extra="simulation_timeout = 5.0\ncrashes_before_redraw = 2\n",
                      max_restarts=3)
    env = {**ENV, "OT_TEST_HANG": str(tmp_path / "hung-once"), "OT_TEST_CRASH": "1"}
    r = subprocess.run(OT + ["run", str(cfg), "--quiet"], env=env, capture_output=True,
                       text=True, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    study = tmp_path / "study"
    snap = Ledger(study).snapshot()
    # sim 1 hung after 3 steps: killed after simulation_timeout, restarted once, then done
    assert snap[1]["state"] == "done" and snap[1]["attempts"] == 1
    assert "no frame for 5 s" in snap[1]["reason"]
    # sim 2 always crashes: failed after crashes_before_redraw crashes, replaced by sim 6
    assert snap[2]["state"] == "failed" and snap[2]["attempts"] == 2
    assert snap[6]["state"] == "done" and snap[6]["params"] != snap[2]["params"]
    seen, _ = received(study)
    assert seen >= all_pairs([0, 1, 3, 4, 5, 6])
    assert {k for k in seen if k[0] == 2} == {(2, 1), (2, 2)}  # what it sent before crashing
    s = json.loads((study / "summary.json").read_text())
    assert s["duplicates_dropped"] >= 3 + 2  # sim 1's first 3 steps, sim 2's second attempt
    st = subprocess.run(OT + ["status", str(study)], env=ENV, capture_output=True, text=True)
    assert "7 parameter sets: 0 pending, 0 running, 6 done, 1 failed" in st.stdout
    assert "failed 2 after 2 attempts: exit code 1" in st.stdout
