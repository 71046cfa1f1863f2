"""Trainer checkpoints: exact resume, corrupt / half-written files, and a SIGKILLed `ot run`
resumed with `ot run --resume` (nothing missing, nothing counted twice, the curve continues)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from onlinetrain import checkpoint, config, frame as fr
from onlinetrain.assembly import steps_received
from onlinetrain.checkpoint import CheckpointError
from onlinetrain.reservoir import make_buffer
from onlinetrain.surrogate import build_mlp
from onlinetrain.receiver import Receiver

from conftest import ROOT
from test_fault import all_pairs, received, write_study

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _xy(frame, cfg):
    """A one-field adapter: x = the first 6 values, y = the rest."""
    return frame.array[:6], frame.array[6:]


def _setup(cfg, fill=True):
    """A receiver (not started) that took 100 steps of 10 simulations through its real path (a
    filled reservoir), two SIM_ENDs and one held-out step; a model, optimizer and scheduler."""
    torch.manual_seed(0)
    buf = make_buffer("reservoir", 64, 16, seed=1)
    rx = Receiver(None, buf, cfg, _xy)
    if fill:
        rng = np.random.default_rng(0)
        frames = [fr.Frame(i // 10, i % 10, np.zeros(1), "T", rng.random(16, np.float32))
                  for i in range(100)]  # evictions too
        frames += [fr.sim_end(s, {"T": (10, 1)}) for s in (0, 1)]
        frames.append(fr.Frame(99, 1, np.zeros(1), "T", np.ones(16, np.float32)))
        rx.handle_batch(frames[:50])
        rx.handle_batch(frames[50:])
    model = build_mlp(6, 10, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 7], 0.5)
    return rx, buf, model, opt, sched


def _steps(buf, model, opt, sched, n):
    for _ in range(n):
        b = buf.get_batch(8)
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(b.x)), torch.from_numpy(b.y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()]


def test_resume_is_exact(tmp_path):
    cfg = config.load(None, {"model.hidden": 16, "validation.first_id": 99})
    rx, buf, model, opt, sched = _setup(cfg)
    _steps(buf, model, opt, sched, 5)
    checkpoint.save(tmp_path, checkpoint.capture(model, opt, sched, 5, rx, buf, cfg))
    straight = _steps(buf, model, opt, sched, 5)  # the uninterrupted run
    rx2, buf2, model2, opt2, sched2 = _setup(cfg, fill=False)
    ck = checkpoint.load_latest(tmp_path)
    checkpoint.restore_stream(ck, rx2, buf2)
    assert checkpoint.restore_training(ck, model2, opt2, sched2) == 5
    assert steps_received(rx2.state_dict()) == steps_received(rx.state_dict())
    assert len(steps_received(rx.state_dict())) == 101
    assert rx2.sims_done == {0, 1} and list(rx2.val) == [(99, 1)] and rx2.samples == 101
    assert buf2.size == 64 and buf2.evicted == buf.evicted
    resumed = _steps(buf2, model2, opt2, sched2, 5)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_corrupt_or_half_written_checkpoint_falls_back(tmp_path, caplog):
    cfg = config.load(None, {"model.hidden": 8})
    rx, buf, model, opt, sched = _setup(cfg)
    for b in (5, 10, 15):
        checkpoint.save(tmp_path, checkpoint.capture(model, opt, sched, b, rx, buf, cfg), keep=3)
    paths = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["ckpt-000000005.pt", "ckpt-000000010.pt",
                                       "ckpt-000000015.pt"]
    data = bytearray(paths[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the newest
    paths[2].write_bytes(bytes(data))
    paths[1].with_suffix(".sha256").unlink()  # the middle one was being written
    caplog.set_level(logging.WARNING)
    assert checkpoint.load_latest(tmp_path)["batches"] == 5
    assert f"checkpoint {paths[2]} is corrupt" in caplog.text
    assert f"checkpoint {paths[1]} is incomplete" in caplog.text
    paths[0].write_bytes(paths[0].read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_latest(tmp_path)
    assert str(paths[2]) in str(e.value) and "remove them" in str(e.value)


def test_keeps_newest_checkpoints_only(tmp_path):
    cfg = config.load(None, {"model.hidden": 8})
    rx, buf, model, opt, sched = _setup(cfg)
    for b in range(1, 6):
        checkpoint.save(tmp_path, checkpoint.capture(model, opt, sched, b, rx, buf, cfg), keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["ckpt-000000004.pt", "ckpt-000000005.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["ckpt-000000004.pt", "ckpt-000000004.sha256", "ckpt-000000005.pt",
         "ckpt-000000005.sha256"]


def _newest_batch(study):
    done = [p for p in checkpoint.list_checkpoints(study) if p.with_suffix(".sha256").exists()]
    return int(done[-1].stem.split("-")[1]) if done else 0


@pytest.mark.timeout(300)
def test_sigkill_trainer_then_resume(tmp_path, ring_name):
    n_train, n_val = 16, 2
    cfg = write_study(tmp_path, ring_name, n_train, n_val, delay=0.04)
    text = cfg.read_text().replace("concurrency = 4", "concurrency = 2") \
        .replace("batch_size = 16", "batch_size = 8\ncheckpoint_every = 4") \
        .replace("val_every = 10", "val_every = 4\nlr_milestones = [8]")
    cfg.write_text(text)
    study = tmp_path / "study"
    p = subprocess.Popen(OT + ["run", str(cfg), "--quiet"], env=ENV, stderr=subprocess.PIPE,
                         text=True)
    orphans = []
    try:
        t = time.monotonic() + 120
        while _newest_batch(study) < 12 and p.poll() is None and time.monotonic() < t:
            time.sleep(0.05)
        assert p.poll() is None, "the study finished before the trainer could be killed"
        orphans = psutil.Process(p.pid).children()
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for c in orphans:  # they would end on their own (into the dead ring); do not wait
            try:
                os.killpg(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    ck_batch = _newest_batch(study)
    assert 12 <= ck_batch < n_train * 20 // 8
    before = [json.loads(x) for x in (study / "metrics.jsonl").read_text().splitlines()]
    r = subprocess.run(OT + ["run", str(cfg), "--resume", "--quiet"], env=ENV,
                       capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at batch {ck_batch}" in r.stderr
    seen, ck = received(study)
    assert seen == all_pairs(range(n_train + n_val))  # nothing missing, nothing twice
    s = json.loads((study / "summary.json").read_text())
    assert s["samples_received"] == (n_train + n_val) * 20
    # FIFO: each training sample served exactly once across the crash, 8 per batch
    assert s["buffer"]["served"] == n_train * 20 and s["batches"] == n_train * 20 // 8
    m = [json.loads(x) for x in (study / "metrics.jsonl").read_text().splitlines()]
    batches = [x["batch"] for x in m]
    assert batches == list(range(4, s["batches"] + 1, 4))  # the curve continues, no repeats
    assert [x for x in m if x["batch"] <= ck_batch] == \
        [x for x in before if x["batch"] <= ck_batch]
    # the optimizer / scheduler continued: LR halved at batch 8, before the crash, stays halved
    assert all(x["lr"] == pytest.approx(5e-4) for x in m if x["batch"] > ck_batch)
    assert all(np.isfinite(x["train_loss"]) for x in m)


def _pipe(tmp_path, ring_name, n, extra):
    url = f"shm://{ring_name}"
    sample = subprocess.run(OT + ["sample", "-n", str(n), "--seed", "1"], capture_output=True,
                            text=True, check=True, env=ENV)
    sim = subprocess.Popen(OT + ["simulate", "--to", url, "--n", "8", "--steps", "20",
                                 "--connect-timeout", "60"], stdin=subprocess.PIPE, text=True,
                           stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    sim.stdin.write(sample.stdout)
    sim.stdin.close()
    r = subprocess.run(OT + ["train", "--from", url, "--config",
                             str(ROOT / "examples" / "heat2d-tiny.toml"), "--out", str(tmp_path),
                             "--quiet"] + extra, capture_output=True, text=True, timeout=100,
                       env=ENV)
    assert sim.wait(30) == 0, sim.stderr.read()
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "summary.json").read_text()), r.stderr


@pytest.mark.timeout(200)
def test_ot_train_resume_in_a_pipe(tmp_path, ring_name):
    s1, _ = _pipe(tmp_path, ring_name, 6, ["--buffer", "fifo"])
    assert s1["samples_received"] == 6 * 20 and s1["buffer"]["served"] == 5 * 20  # 1 held out
    # resume: the same 6 simulations again (all duplicates) and 6 new ones (2 held out)
    s2, err = _pipe(tmp_path, ring_name, 12, ["--buffer", "fifo", "--resume"])
    assert "resumed from" in err and f"at batch {s1['batches']}" in err
    assert s2["batches"] > s1["batches"] and s2["buffer"]["served"] == 9 * 20
    assert s2["samples_received"] == 12 * 20 and s2["duplicates_dropped"] == 6 * 20
    seen, _ = received(tmp_path)
    assert seen == {(i, k) for i in range(12) for k in range(1, 21)}


@pytest.mark.timeout(120)
def test_second_trainer_on_a_live_study_is_refused(tmp_path, ring_name):
    from onlinetrain.runner import new_study
    cfg = write_study(tmp_path, ring_name, 2, 0)
    new_study(config.load(cfg), tmp_path / "study")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from filelock import FileLock\n"
                               "lock = FileLock(sys.argv[1]); lock.acquire()\n"
                               "print('held', flush=True)\n"
                               "time.sleep(60)", str(tmp_path / "study" / "trainer.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (tmp_path / "study" / "ledger.jsonl").read_text()
        r = subprocess.run(OT + ["run", str(cfg), "--resume"], env=ENV, capture_output=True,
                           text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode != 0 and "another trainer is running" in r.stderr
    assert "trainer.lock" in r.stderr
    assert (tmp_path / "study" / "ledger.jsonl").read_text() == before  # nothing touched
