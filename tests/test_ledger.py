"""The study ledger: claims, restarts, redraws, corrupt lines, real workers in real processes."""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from onlinetrain import frame as fr
from onlinetrain.ledger import Ledger, LedgerError, worker_id
from onlinetrain.study import StudyDone, prepare_resume
from onlinetrain.shm_channel import Empty, RingConsumer

from conftest import ROOT, wait_until

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _sets(n):
    return [{"id": i, "params": [100.0 + i] * 5} for i in range(n)]


def test_claim_done_crash_restart_fail_redraw(tmp_path):
    led = Ledger.create(tmp_path, _sets(3))
    w = worker_id()
    got = led.claim(w, 2)
    assert [s["id"] for s in got] == [0, 1]
    assert led.counts() == {"pending": 1, "running": 2, "done": 0, "failed": 0, "stopped": 0}
    led.done(0, w)
    # max_restarts=1: first crash restarts, second fails; crashes_before_redraw draws id 3
    assert led.crashed(1, w, "exit code 1", max_restarts=1) == "restart"
    assert led.crashed(1, w, "exit code 1", 1, crashes_before_redraw=2,
                       redraw=lambda i: [float(i)] * 5) == "failed"
    snap = Ledger(tmp_path).snapshot()  # a second reader sees the same state
    assert snap[1]["state"] == "failed" and snap[1]["attempts"] == 2
    assert snap[3]["state"] == "pending" and snap[3]["params"] == [3.0] * 5
    assert [s["id"] for s in led.claim(w, 5)] == [2, 3]
    assert led.crashed(0, w, "late", 1) == "lost"  # done already: not ours to restart
    assert not led.finished()


def test_dead_local_worker_is_reclaimed(tmp_path):
    led = Ledger.create(tmp_path, _sets(2))
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a worker pid that is gone
    led.claim(worker_id(p.pid), 2)
    assert led.counts()["running"] == 2
    got = led.claim(worker_id(), 1)  # the next claim releases the dead worker's sets first
    assert [s["id"] for s in got] == [0]
    snap = led.snapshot()
    assert snap[1]["state"] == "pending" and "disappeared" in snap[1]["reason"]


def test_resume_requeues_only_sets_the_trainer_lost(tmp_path):
    led = Ledger.create(tmp_path, _sets(3))
    w = worker_id()
    led.claim(w, 3)
    for i in range(3):
        led.done(i, w)
    assert prepare_resume(led, {0, 2}, 30.0) == [1]
    assert led.counts() == {"pending": 1, "running": 0, "done": 2, "failed": 0, "stopped": 0}

    class Rx:
        sims_done = {0, 2}
    assert not StudyDone(led)(Rx())


def test_corrupt_line_names_file_and_line(tmp_path):
    Ledger.create(tmp_path, _sets(3))
    path = tmp_path / "ledger.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = '{"ev": "add", "id": 1, "par'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path).snapshot()
    assert str(path) in str(e.value) and "line 2" in str(e.value) and e.value.value == 2


def test_half_written_last_line_is_dropped(tmp_path, caplog):
    led = Ledger.create(tmp_path, _sets(2))
    with open(tmp_path / "ledger.jsonl", "a") as fh:
        fh.write('{"ev": "claim", "id": 0, "wor')  # a writer killed mid-write
    caplog.set_level(logging.WARNING)
    assert Ledger(tmp_path).counts()["pending"] == 2
    led.claim(worker_id(), 1)
    assert "half-written" in caplog.text and "ledger.jsonl" in caplog.text
    text = (tmp_path / "ledger.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())
    assert Ledger(tmp_path).counts()["running"] == 1


GATED = """
import os, sys, time
import numpy as np
from onlinetrain import client
gate = sys.argv[1]
with client.init() as sim:
    while not os.path.exists(gate):
        time.sleep(0.02)
    for k in range(1, 4):
        sim.send(k, np.full((2, 2), sim.sim_id, np.float32))
"""


def _study(tmp_path, ring_name, n, concurrency=1):
    """A study directory for `ot simulate --study` with a gated program solver."""
    from onlinetrain import config
    from onlinetrain.runner import new_study
    prog = tmp_path / "gated.py"
    prog.write_text(GATED)
    gate = tmp_path / "go"
    cfg = config.load(None, {"solver.kind": "program",
                             "solver.argv": [sys.executable, str(prog), str(gate)],
                             "sampling.n_train": n, "sampling.n_validation": 0,
                             "simulate.concurrency": concurrency, "simulate.worker_timeout": 5.0,
                             "output.dir": str(tmp_path / "study"), "output.name": ring_name})
    new_study(cfg, tmp_path / "study")
    return tmp_path / "study", gate


class Drain(threading.Thread):
    """Counts every DATA frame per (sim, step) from the ring, as a trainer would see them."""

    def __init__(self, ring):
        super().__init__(daemon=True)
        self.ring, self.count, self.stop = ring, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                for f in self.ring.get_many(64, timeout=0.1):
                    if f.kind == fr.DATA:
                        self.count[f.key] = self.count.get(f.key, 0) + 1
            except Empty:
                pass


def _claims(study):
    ev = [json.loads(x) for x in (study / "ledger.jsonl").read_text().splitlines()]
    return [e for e in ev if e["ev"] == "claim"]


@pytest.mark.timeout(120)
def test_two_worker_processes_never_run_a_set_twice(tmp_path, ring_name):
    study, gate = _study(tmp_path, ring_name, 8)
    ring = RingConsumer.create(ring_name, capacity=1 << 20)
    drain = Drain(ring)
    drain.start()
    workers = []
    try:
        workers = [subprocess.Popen(OT + ["simulate", "--study", str(study)], env=ENV,
                                    stderr=subprocess.PIPE, text=True) for _ in range(2)]
        # both workers hold a set before the gate opens, so both take part
        assert wait_until(lambda: len({c["worker"] for c in _claims(study)}) == 2, 60)
        gate.touch()
        for w in workers:
            assert w.wait(90) == 0, w.stderr.read()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        time.sleep(0.3)
        drain.stop.set()
        drain.join()
        ring.close()
    claims = _claims(study)
    assert sorted(c["id"] for c in claims) == list(range(8))  # each set claimed exactly once
    assert len({c["worker"] for c in claims}) == 2
    assert Ledger(study).counts() == {"pending": 0, "running": 0, "done": 8, "failed": 0, "stopped": 0}
    assert drain.count == {(i, k): 1 for i in range(8) for k in range(1, 4)}


@pytest.mark.timeout(120)
def test_killed_worker_sets_are_reclaimed_by_another(tmp_path, ring_name):
    study, gate = _study(tmp_path, ring_name, 4, concurrency=2)
    ring = RingConsumer.create(ring_name, capacity=1 << 20)
    drain = Drain(ring)
    drain.start()
    a = subprocess.Popen(OT + ["simulate", "--study", str(study)], env=ENV)
    b = None
    try:
        assert wait_until(lambda: len(_claims(study)) == 2, 60)
        sims = psutil.Process(a.pid).children()
        assert wait_until(lambda: len(psutil.Process(a.pid).children()) == 2, 30)
        sims = psutil.Process(a.pid).children()
        a.send_signal(signal.SIGKILL)  # the worker (its node) disappears: no cleanup at all
        a.wait()
        for s in sims:
            os.killpg(s.pid, signal.SIGKILL)
        gate.touch()
        b = subprocess.Popen(OT + ["simulate", "--study", str(study)], env=ENV,
                             stderr=subprocess.PIPE, text=True)
        assert b.wait(90) == 0, b.stderr.read()
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        time.sleep(0.3)
        drain.stop.set()
        drain.join()
        ring.close()
    snap = Ledger(study).snapshot()
    assert all(s["state"] == "done" for s in snap.values())
    released = [json.loads(x) for x in (study / "ledger.jsonl").read_text().splitlines()
                if '"release"' in x]
    assert sorted(e["id"] for e in released) == [0, 1]
    assert all(f"{a.pid} disappeared" in e["reason"] for e in released)
    assert set(drain.count) == {(i, k) for i in range(4) for k in range(1, 4)}


def test_remote_worker_is_judged_by_its_heartbeat(tmp_path):
    from onlinetrain.ledger import heartbeat_path
    led = Ledger.create(tmp_path, _sets(2))
    led.claim("otherhost:123", 2)
    hb = heartbeat_path(tmp_path, "otherhost:123")
    time.sleep(0.3)
    hb.write_text(json.dumps({"worker": "otherhost:123", "t": time.time()}))
    led.reclaim(worker_timeout=0.25)
    assert led.counts()["running"] == 2  # its heartbeat is fresh: still alive
    hb.write_text(json.dumps({"worker": "otherhost:123", "t": time.time() - 1}))
    led.reclaim(worker_timeout=0.25)
    assert led.counts() == {"pending": 2, "running": 0, "done": 0, "failed": 0, "stopped": 0}


def test_bad_fault_tolerance_settings_and_resume_without_study(tmp_path):
    from click.testing import CliRunner
    from onlinetrain import config
    from onlinetrain.cli import main
    for key, value in (("simulate.max_restarts", -1), ("simulate.simulation_timeout", -2.0),
                       ("train.checkpoint_every", -5), ("simulate.crashes_before_redraw", 1.5)):
        with pytest.raises(config.ConfigError) as e:
            config.load(None, {key: value})
        assert e.value.key == key and key in str(e.value)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[output]\ndir = "{tmp_path / "nothing"}"\n')
    r = CliRunner().invoke(main, ["run", str(cfg), "--resume"])
    assert r.exit_code != 0 and "nothing to resume" in r.output and "without --resume" in r.output
    r = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert r.exit_code != 0 and "ledger.jsonl not found" in r.output


@pytest.mark.timeout(180)
def test_worker_joins_a_running_ot_run(tmp_path, ring_name):
    """Elasticity: `ot simulate --study DIR` started next to a running `ot run` takes work."""
    prog = tmp_path / "gated.py"
    prog.write_text(GATED)
    gate = tmp_path / "go"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""[solver]\nkind = "program"\nargv = ["{sys.executable}", "{prog}", "{gate}"]
steps = 3\n[sampling]\nn_train = 6\nn_validation = 0\n[simulate]\nconcurrency = 1
[buffer]\nkind = "fifo"\ncapacity = 100\n[model]\nadapter = "test_ledger:adapter"\nhidden = 8
[train]\nbatch_size = 2\nmax_batches = 100000\n
[output]\ndir = "{tmp_path / 'study'}"\nname = "{ring_name}"\n""")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    study = tmp_path / "study"
    run = subprocess.Popen(OT + ["run", str(cfg), "--quiet"], env=env, stderr=subprocess.PIPE,
                           text=True)
    extra = None
    try:
        assert wait_until(lambda: (study / "ledger.jsonl").exists() and _claims(study), 90)
        extra = subprocess.Popen(OT + ["simulate", "--study", str(study)], env=env,
                                 stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda: len({c["worker"] for c in _claims(study)}) == 2, 60)
        gate.touch()
        assert extra.wait(90) == 0, extra.stderr.read()
        assert run.wait(90) == 0, run.stderr.read()
    finally:
        for p in (run, extra):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    claims = _claims(study)
    assert sorted(c["id"] for c in claims) == list(range(6))
    assert {c["worker"].rpartition(":")[2] for c in claims} == {str(run.pid), str(extra.pid)}
    s = json.loads((study / "summary.json").read_text())
    assert s["samples_received"] == 6 * 3 and s["duplicates_dropped"] == 0
    assert s["ledger"] == {"pending": 0, "running": 0, "done": 6, "failed": 0, "stopped": 0}


def adapter(frame, cfg):
    """x: the simulation id and step; y: the 2x2 field (the gated solver's frames)."""
    import numpy as np
    return (np.array([frame.sim_id, frame.time_step], np.float32),
            np.asarray(frame.array, np.float32).reshape(-1))
