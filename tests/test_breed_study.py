"""Breed in a study (docs/breed.md): the breeder re-parameterises only pending sets that never
started, a restarted poller (another process) continues the same sequence, `ot run` with
adaptive = "breed" runs end to end, the trainer's published scores are summed over ranks and
leave the gradient unchanged, and bad settings are refused before anything runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from onlinetrain import config as C
from onlinetrain.breed_study import StudyBreeder
from onlinetrain.ledger import Ledger, worker_id
from onlinetrain.scores import SCORES

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
    ENV.pop(_k, None)
OT = [sys.executable, "-m", "onlinetrain"]
BOUNDS = [[0.0, 1.0], [10.0, 20.0]]


def _cfg(d, **breed):
    b = {"window": 3, "sigma": 0.05, **breed}
    return C.from_dict({"sampling": {"n_train": 10, "n_validation": 2, "bounds": BOUNDS,
                                     "adaptive": "breed", "seed": 5},
                        "breed": b, "output": {"dir": str(d)}})


def _study(d, cfg) -> Ledger:
    """Validation sets first (ids 10, 11), then training 0..9, as `ot run` writes them."""
    rng = np.random.default_rng(0)
    sets = [{"id": i, "params": [float(rng.uniform(0, 1)), float(rng.uniform(10, 20))]}
            for i in (10, 11, *range(10))]
    led = Ledger.create(d, sets)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    return led


def _scores(d, batches, sims):
    (d / SCORES).write_text(json.dumps({"version": 1, "batches": batches, "ranks": 1,
                                        "sims": {str(k): [v, 10] for k, v in sims.items()}}))


def _run(led, ids, w):
    for i in ids:
        led.started(i, w, 0, "pid 1")
        led.done(i, w)


def test_only_pending_sets_that_never_started_change(tmp_path):
    cfg = _cfg(tmp_path, start=1.0, end=1.0, skip_batches=50)  # R = 1: every child is bred
    led, w = _study(tmp_path, cfg), worker_id()
    assert [s["id"] for s in led.claim(w, 5)] == [10, 11, 0, 1, 2]
    for i in (10, 11, 0, 1, 2):
        led.started(i, w, 0, "pid 1")
    for i in (10, 0, 1, 2):
        led.done(i, w)                       # 11 (held out) keeps running
    assert [s["id"] for s in led.claim(w, 3)] == [3, 4, 5]
    led.started(3, w, 0, "pid 1")            # 3 runs
    led.started(5, w, 0, "pid 1")
    led.release([4, 5], "worker gone", w)    # 4: claimed, never started; 5: started once
    before = led.snapshot()
    sb = StudyBreeder(Ledger(tmp_path), cfg)
    _scores(tmp_path, 40, {0: 1.0, 1: 5.0, 2: 0.1})
    assert sb.poll() == []                   # skip_batches = 50 not reached
    _scores(tmp_path, 60, {0: 1.0, 1: 5.0, 2: 0.1})
    kids = sb.poll()
    assert [k["id"] for k in kids] == [4, 6, 7]  # min(window, pending), in claim order
    after = Ledger(tmp_path).snapshot()
    for i, s in after.items():
        if i in (4, 6, 7):
            assert s["params"] != before[i]["params"] and s["generation"] == 1
            # scores 1.0, 5.0, 0.1 shifted by the minimum: simulation 2 is never a parent
            assert s["parent"] in (0, 1)
            assert all(lo <= p <= hi for p, (lo, hi) in zip(s["params"], BOUNDS))
            assert s["state"] == "pending" and s["starts"] == 0
        else:
            assert s["params"] == before[i]["params"] and s["generation"] == 0, i
            assert s["parent"] is None
    led.snapshot()
    [gen] = led.generations
    assert gen["generation"] == 1 and gen["finished"] == 3 and gen["batches"] == 60
    assert gen["r"] == 1.0 and gen["bred"] == 3 and gen["scored"] == 3
    assert sb.poll() == []                   # the next one is due at 6 finished
    r = subprocess.run(OT + ["status", str(tmp_path)], env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Breed: 1 resamplings" in r.stdout, r.stdout + r.stderr
    assert "gen 1: 3" in r.stdout


def _drive(d, cfg, restart_every=None):
    """Finish training sets 3 at a time, publishing scores, polling the breeder; with
    restart_every, a fresh breeder (a restarted driver) every k polls, and every third poll is
    done by another process (`ot breed --once`)."""
    led, w = Ledger(d), worker_id()
    sb, polls = StudyBreeder(Ledger(d), cfg), 0
    rng = np.random.default_rng(1)
    while True:
        got = [s["id"] for s in led.claim(w, 3)]
        if not got:
            break
        _run(led, got, w)
        done = [i for i, s in led.snapshot().items() if s["state"] == "done" and i < 10]
        _scores(d, 10 * len(done), {i: float(rng.uniform(0, 1)) for i in done})
        polls += 1
        if restart_every and polls % 3 == 0:
            r = subprocess.run(OT + ["breed", str(d), "--once"], env=ENV, capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        else:
            if restart_every and polls % restart_every == 0:
                sb = StudyBreeder(Ledger(d), cfg)
            sb.poll()
    return [(e["id"], e["params"], e["generation"], e["parent"])
            for e in map(json.loads, (d / "ledger.jsonl").read_text().splitlines())
            if e["ev"] == "breed"]


@pytest.mark.timeout(120)
def test_a_restarted_breeder_continues_the_same_sequence(tmp_path):
    cfg = _cfg(tmp_path, window=2, start=0.5, end=0.9, breakpoint=3, non_breed="halton")
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        _study(d, cfg)
    one = _drive(a, cfg)
    two = _drive(b, cfg, restart_every=2)
    assert len({g for _, _, g, _ in one}) >= 2  # several generations
    assert any(p is not None for *_, p in one) and any(p is None for *_, p in one)
    assert one == two


@pytest.mark.timeout(300)
def test_ot_run_with_breed_end_to_end(tmp_path, ring_name):
    out = tmp_path / "study"
    out.mkdir()  # an older study's scores are not this one's
    (out / SCORES).write_text(json.dumps({"version": 1, "batches": 10**9, "ranks": 1,
                                          "sims": {"0": [1e9, 1]}}))
    r = subprocess.run(OT + ["run", str(ROOT / "examples" / "heat2d-tiny.toml"), "--quiet",
                             "--out", str(out), "--set", f"output.name={ring_name}",
                             "--set", "sampling.adaptive=breed", "--set", "breed.window=3",
                             "--set", "breed.sigma=0.05", "--set", "breed.start=0.6"],
                       env=ENV, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    lo, hi = np.array(cfg["sampling"]["bounds"]).T
    held = range(12, 15)  # n_train 12, n_validation 3
    events = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    done_before, bred = set(), []
    for e in events:
        if e["ev"] == "done":
            done_before.add(e["id"])
        elif e["ev"] == "breed":
            bred.append(e)
            assert e["id"] not in held and e["id"] not in done_before
            assert e["generation"] >= 1
            assert np.all(np.array(e["params"]) >= lo) and np.all(np.array(e["params"]) <= hi)
            if e["parent"] is not None:  # a real training simulation, finished by then
                assert e["parent"] in done_before and e["parent"] not in held
    assert bred and any(e["parent"] is not None for e in bred)
    assert all(e["batches"] <= 400 for e in events if e["ev"] == "generation")
    snap = Ledger(out).snapshot()
    assert all(s["state"] == "done" for s in snap.values())
    assert max(s["generation"] for s in snap.values()) >= 1
    # the trainer's scores: every trained sample counted once, training simulations only
    summ = json.loads((out / "summary.json").read_text())
    sc = json.loads((out / SCORES).read_text())
    assert sc["batches"] == summ["batches"] == 400
    assert sum(n for _, n in sc["sims"].values()) == 400 * 32
    assert {int(k) for k in sc["sims"]} <= set(range(12))
    ck = torch.load(out / "checkpoint.pt", weights_only=True)["sections"]["scores"]
    assert dict(zip(ck["ids"], ck["count"])) == {int(k): v[1] for k, v in sc["sims"].items()}
    st = subprocess.run(OT + ["status", str(out)], env=ENV, capture_output=True, text=True,
                        timeout=60)
    assert "Breed:" in st.stdout and "gen 1:" in st.stdout, st.stdout
    rep = subprocess.run(OT + ["report", str(out)], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert '<section id="breed">' in (out / "report" / "report.html").read_text()


@pytest.mark.parametrize("sets, key", [
    (["breed.sigma=0"], "breed.sigma"), (["breed.sigma=-0.1"], "breed.sigma"),
    (["breed.window=13"], "breed.window"), (["breed.start=1.5"], "breed.start"),
    (["breed.end=-0.2"], "breed.end"), (["breed.non_breed=sobol"], "breed.non_breed"),
    (["breed.sigma=[0.1, 0.2]"], "breed.sigma"), (["sampling.adaptive=bred"], "sampling.adaptive")])
def test_bad_breed_settings_are_refused_before_anything_runs(tmp_path, sets, key):
    out = tmp_path / "study"
    argv = OT + ["run", str(ROOT / "examples" / "heat2d-tiny.toml"), "--out", str(out),
                 "--set", "sampling.adaptive=breed"]
    for s in sets:
        argv += ["--set", s]
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"Error: {key}") or f"{key} " in lines[0], lines
    assert not out.exists()  # nothing ran
    with pytest.raises(C.ConfigError) as e:
        C.load(ROOT / "examples" / "heat2d-tiny.toml", sets=["sampling.adaptive=breed", *sets])
    assert e.value.key == key


# -- the trainer's scores with N ranks: the same as one rank, and the gradient is unchanged ------
def _feed_and_train(ring_name, samples, cfg):
    from onlinetrain import frame as fr
    from onlinetrain import trainer
    from onlinetrain.shm_channel import RingConsumer, RingProducer
    ring = RingConsumer.create(ring_name, 4 << 20)
    try:
        with RingProducer.attach(ring_name) as p:
            for sid, step, params, field in samples:
                p.put(fr.Frame(sid, step, params, "T", field))
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        return trainer.train(cfg, consumer=ring)
    finally:
        ring.close()


def rank_main(rank, world, port, out, batch, steps, ring_name, adaptive):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OT_DIST_TIMEOUT="60")
    allsamp = _samples(world, batch, steps)
    mine = [s for i, s in enumerate(allsamp) if (i // batch) % world == rank]
    print(json.dumps(_feed_and_train(f"{ring_name}-r{rank}", mine,
                                     _train_cfg(out, batch, adaptive))))


def single_main(world, out, batch, steps, ring_name, adaptive):
    print(json.dumps(_feed_and_train(ring_name, _samples(world, batch, steps),
                                     _train_cfg(out, world * batch, adaptive))))


def _samples(world, batch, steps):
    """Four samples (steps 1..4) per simulation, spread over batches and ranks: a simulation's
    score is a mean over both ranks' samples."""
    import test_ddp
    n = world * batch * steps // 4
    return [(s % n, s // n + 1, p, f) for s, p, f in test_ddp._samples(world, batch, steps)]


def _train_cfg(out, batch, adaptive):
    return C.from_dict({"buffer": {"kind": "fifo", "capacity": 1000}, "model": {"hidden": 16},
                        "sampling": {"adaptive": adaptive},
                        "train": {"batch_size": batch, "max_batches": 1000, "val_every": 1000,
                                  "lr": 1e-2}, "output": {"dir": str(out)}})


def _python(code: str, n: int = 1) -> list:
    procs = [subprocess.Popen([sys.executable, "-c", "import test_breed_study as t; " +
                               code.format(r=r)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(n)]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


@pytest.mark.timeout(300)
def test_scores_are_reduced_over_ranks_and_leave_the_gradient_unchanged(tmp_path, ring_name):
    import test_ddp
    world, batch, steps = 2, 8, 45  # 45 batches: published at 20, 40 and at the end
    port = test_ddp._free_port()
    _python(f"t.rank_main({{r}}, {world}, {port}, {str(tmp_path / 'dist')!r}, {batch}, {steps}, "
            f"{ring_name!r}, 'breed')", world)
    _python(f"t.single_main({world}, {str(tmp_path / 'one')!r}, {batch}, {steps}, "
            f"{ring_name!r}, 'breed')")
    _python(f"t.single_main({world}, {str(tmp_path / 'off')!r}, {batch}, {steps}, "
            f"{ring_name!r}, 'none')")
    models = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["sections"]["train"]
              ["model"] for d in ("dist", "one", "off")]
    for k in models[0]:  # breed on or off, 1 or 2 ranks: the same training
        assert torch.equal(models[1][k], models[2][k]), k
        assert torch.allclose(models[0][k], models[1][k], rtol=1e-4, atol=1e-5), k
    assert not (tmp_path / "off" / SCORES).exists()
    dist, one = (json.loads((tmp_path / d / SCORES).read_text()) for d in ("dist", "one"))
    assert dist["ranks"] == 2 and dist["batches"] == one["batches"] == steps
    assert dist["sims"].keys() == one["sims"].keys() and len(one["sims"]) == world * batch * steps // 4
    for k, (m, n) in one["sims"].items():
        assert dist["sims"][k][1] == n == 4
        assert dist["sims"][k][0] == pytest.approx(m, rel=1e-3, abs=1e-4)
    # each rank's checkpoint holds its own board: together, every sample once
    main = torch.load(tmp_path / "dist" / "checkpoint.pt", weights_only=True)
    assert sum(main["sections"]["scores"]["count"]) == batch * steps


@pytest.mark.timeout(200)
def test_a_resumed_trainer_continues_its_scores(tmp_path, ring_name):
    """`ot train --resume`: the checkpoint's scores section carries the board, so the published
    counts cover the samples served before and after the restart, each once (FIFO)."""
    from test_resume import _pipe
    breed = ["--set", "sampling.adaptive=breed", "--buffer", "fifo"]
    s1, _ = _pipe(tmp_path, ring_name, 6, breed)
    sc1 = json.loads((tmp_path / SCORES).read_text())
    assert sum(n for _, n in sc1["sims"].values()) == s1["buffer"]["served"] == 5 * 20
    s2, err = _pipe(tmp_path, ring_name, 12, breed + ["--resume"])
    assert "resumed from" in err
    sc2 = json.loads((tmp_path / SCORES).read_text())
    assert sc2["batches"] == s2["batches"] > s1["batches"]
    assert sum(n for _, n in sc2["sims"].values()) == s2["buffer"]["served"] == 9 * 20
    assert all(n == 20 for _, n in sc2["sims"].values()) and len(sc2["sims"]) == 9
    for k, (m, _) in sc1["sims"].items():  # the pre-restart simulations keep their scores
        assert sc2["sims"][k][0] == pytest.approx(m)


@pytest.mark.timeout(300)
def test_autoregressive_ks1d_study_breeds_from_window_losses(tmp_path, ring_name):
    """model.mode = "autoregressive": each window's loss is scored for its simulation."""
    out = tmp_path / "ks"
    r = subprocess.run(OT + ["run", str(ROOT / "examples" / "ks1d.toml"), "--quiet", "--out",
                             str(out), "--set", f"output.name={ring_name}",
                             "--set", "sampling.adaptive=breed", "--set", "breed.window=5",
                             "--set", "sampling.n_train=15", "--set", "train.max_batches=300",
                             "--set", "train.val_every=100"],
                       env=ENV, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    sc = json.loads((out / SCORES).read_text())
    assert sc["batches"] == 300 and sum(n for _, n in sc["sims"].values()) == 300 * 32
    assert {int(k) for k in sc["sims"]} <= set(range(15))
    assert all(np.isfinite(m) and m > 0 for m, _ in sc["sims"].values())
    led = Ledger(out)
    snap = led.snapshot()
    assert led.generations and max(s["generation"] for s in snap.values()) >= 1
    assert all(s["generation"] == 0 for i, s in snap.items() if i >= 15)  # held out


@pytest.mark.timeout(120)
def test_ot_breed_runs_the_breeder_beside_another_launcher(tmp_path):
    """A study whose sets are claimed by a program of its own: `ot breed DIR` breeds the pending
    sets when due and exits once the study ends."""
    from conftest import wait_until
    cfg = _cfg(tmp_path)
    led, w = _study(tmp_path, cfg), worker_id()
    p = subprocess.Popen(OT + ["breed", str(tmp_path), "--interval", "0.1"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _run(led, [s["id"] for s in led.claim(w, 5)], w)   # 10, 11 (held out), 0, 1, 2
        _scores(tmp_path, 30, {0: 0.3, 1: 0.2, 2: 0.9})
        assert wait_until(lambda: led.snapshot() and led.generations, 30)
        snap = led.snapshot()
        assert [i for i, s in snap.items() if s["generation"] == 1] == [3, 4, 5]
        assert p.poll() is None  # still watching
        led.end("the launcher is done")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert out.strip() == "1 generations bred"
