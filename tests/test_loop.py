"""The training loop's contracts on one rank, with real rings, real threads and real processes:
signals stop it between steps (bug 3), error paths release the channel (5), resume gaps (6), one
clear line for a bad device or adapter (8), collectives on the model's device (1), the v2
checkpoint format, the prefetcher, and the amp / compile / threads options."""
import inspect
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from onlinetrain import checkpoint, config, ddp, trainer
from onlinetrain import frame as fr
from onlinetrain.prefetch import Prefetcher
from onlinetrain.reservoir import make_buffer
from onlinetrain.shm_channel import RingConsumer, RingProducer, segment_path

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
    ENV.pop(_k, None)
OT = [sys.executable, "-m", "onlinetrain"]


def _cfg(out, **train):
    t = {"batch_size": 4, "max_batches": 1000, "val_every": 1000, "threads": 1, **train}
    return config.from_dict({"buffer": {"kind": "fifo", "capacity": 500}, "model": {"hidden": 8},
                             "train": t, "output": {"dir": str(out)}})


def _fill(ring, n, end=True, first=0):
    with RingProducer.attach(ring) as p:
        for i in range(first, first + n):
            p.put(fr.Frame(i, 1, np.full(5, 300.0 + i), "T", np.full(4, i % 7, np.float32)))
        if end:
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))


SIGNAL_IN_STEP = r"""
import os, signal, sys, threading
from torch.optim.optimizer import register_optimizer_step_post_hook
import test_loop
from onlinetrain.cli_common import Guard
from onlinetrain.shm_channel import RingConsumer
from onlinetrain.trainer import train
ring, out = sys.argv[1], sys.argv[2]
n = [0]
def hook(opt, args, kwargs):  # after the 5th update, before step() returns to the loop
    n[0] += 1
    if n[0] == 5:
        os.kill(os.getpid(), signal.SIGTERM)
register_optimizer_step_post_hook(hook)
cons = RingConsumer.create(ring, 1 << 20)
try:
    test_loop._fill(ring, 200, end=False)
    stop = threading.Event()
    with Guard(stop_event=stop):
        try:
            train(test_loop._cfg(out), consumer=cons, stop_event=stop)
        finally:
            cons.close()
finally:
    cons.close()
"""


@pytest.mark.timeout(120)
def test_signal_inside_optimizer_step_gives_a_consistent_exit_checkpoint(tmp_path, ring_name):
    r = subprocess.run([sys.executable, "-c", SIGNAL_IN_STEP, ring_name, str(tmp_path)],
                       env=ENV, capture_output=True, text=True, timeout=100)
    assert r.returncode == 130, r.stderr[-3000:]
    ck = checkpoint.load_latest(tmp_path)
    t = ck["sections"]["train"]
    # the step that was signalled completed: batches, Adam's step count and the LR scheduler agree
    assert ck["batches"] == t["batches"] == 5
    assert all(int(s["step"]) == 5 for s in t["optimizer"]["state"].values())
    assert t["scheduler"]["last_epoch"] == 5
    assert ck["sections"]["buffer"]["served"] == 4 * 5 + 4 * len(ck["sections"]["prefetch"]
                                                                  ["batches"])
    assert not os.path.exists(segment_path(ring_name))


@pytest.mark.timeout(120)
def test_checkpoint_error_while_resuming_releases_the_channel(tmp_path, ring_name):
    cfg = _cfg(tmp_path, checkpoint_every=2, max_batches=4)
    cfg.channel.url = f"shm://{ring_name}"
    cons = RingConsumer.create(ring_name, 1 << 20)
    try:
        _fill(ring_name, 40)
        trainer.train(cfg, consumer=cons)
    finally:
        cons.close()
    cfg.buffer.kind = "reservoir"  # another buffer than the checkpoint's: refused after the
    with pytest.raises(checkpoint.CheckpointError, match=r"resume with the same \[buffer\]"):
        trainer.train(cfg, resume=True)  # channel was created by train() itself
    assert not os.path.exists(segment_path(ring_name))  # (and the no_leaks fixture agrees)


@pytest.mark.timeout(180)
def test_model_without_linear_layers_resumes(tmp_path, ring_name):
    cfg = _cfg(tmp_path, checkpoint_every=3, max_batches=6)
    cfg.model.builder = "builders:build_affine"
    sys.path.insert(0, str(ROOT / "tests"))
    cons = RingConsumer.create(ring_name, 1 << 20)
    try:
        _fill(ring_name, 24, end=False)
        s1 = trainer.train(cfg, consumer=cons, stop_event=None, expected_sims=24)
        assert s1["batches"] == 6
        ck = checkpoint.load_latest(tmp_path)
        assert ck["sections"]["train"]["dims"] == [6, 4]
        cfg.train.max_batches = 9
        _fill(ring_name, 12, end=False, first=24)
        s2 = trainer.train(cfg, consumer=cons, resume=True, expected_sims=36)
    finally:
        cons.close()
    assert s2["batches"] == 9 and s2["samples_received"] == 36


def test_checkpoints_load_onto_the_cpu(tmp_path, monkeypatch):
    """A GPU checkpoint must resume on a CPU (or another GPU): torch.load maps to the CPU.
    (No GPU here to write one: the spy checks the argument.)"""
    cfg = _cfg(tmp_path)
    buf = make_buffer("fifo", 10)
    from onlinetrain.receiver import Receiver
    rx = Receiver(None, buf, cfg, None)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [5])
    checkpoint.save(tmp_path, checkpoint.capture(model, opt, sched, 1, rx, buf, cfg))
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    assert checkpoint.load_latest(tmp_path)["batches"] == 1
    assert seen and all(k.get("map_location") == "cpu" and k.get("weights_only") for k in seen)
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))


def test_format_1_and_unknown_versions_are_refused(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for version, want in ((None, "has format 1"), (3, "has version 3")):
        obj = {"format": 1, "batches": 5} if version is None else \
            {"format": "onlinetrain-checkpoint", "version": version, "batches": 5}
        p = d / "ckpt-000000005.pt"
        torch.save(obj, p)
        import hashlib
        p.with_suffix(".sha256").write_text(hashlib.sha256(p.read_bytes()).hexdigest() + "\n")
        with pytest.raises(checkpoint.CheckpointError, match=want) as e:
            checkpoint.load_latest(tmp_path)
        assert str(p) in str(e.value)


@pytest.mark.parametrize("key,value,want", [
    ("train.device", "cuda:7", "train.device = 'cuda:7': this torch"),
    ("model.adapter", "onlinetrain.surrogate:no_such_adapter",
     "model.adapter = 'onlinetrain.surrogate:no_such_adapter': cannot import it"),
    ("model.builder", "nosuchpkg.mod:build", "model.builder = 'nosuchpkg.mod:build'")])
def test_bad_device_or_function_is_one_line(tmp_path, key, value, want):
    sec, _, k = key.partition(".")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[{sec}]\n{k} = "{value}"\n')
    r = subprocess.run(OT + ["train", "--from", "shm://never", "--config", str(cfg), "--out",
                             str(tmp_path / "o")], env=ENV, capture_output=True, text=True,
                       timeout=60)
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("note:")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("Error: " + want)


def test_collectives_put_every_tensor_on_the_model_device(monkeypatch):
    """NCCL refuses CPU tensors. No GPU here: the spy records the device of every tensor given to
    all_reduce (a 'meta' device stands for cuda:0) and stops the call there."""
    import torch.distributed as dist

    class Seen(Exception):
        pass
    devices = []

    def spy(t, *a, **k):
        devices.append(t.device)
        raise Seen
    monkeypatch.setattr(dist, "all_reduce", spy)
    monkeypatch.setattr(ddp, "grouped", lambda: True)
    c = ddp.Collectives(torch.device("meta"), 2)
    for call in (lambda: c.sum([1.0, 2.0]), lambda: c.sum_ints([1, 0, 0, 0, 8]),
                 lambda: c.max_ints([6, 4]), lambda: c.min_ints([3])):
        with pytest.raises(Seen):
            call()
    assert devices == [torch.device("meta")] * 4
    # and the loop has no other way to the collectives than these (and DDP's own)
    for mod in (trainer, checkpoint):
        src = inspect.getsource(mod)
        assert "all_reduce" not in src and "torch.distributed" not in src, mod.__name__
    assert ddp.backend_for(torch.device("cuda", 0)) == "nccl"


def test_prefetcher_draws_ahead_within_its_limit_and_pauses():
    buf = make_buffer("fifo", 100)
    for i in range(40):
        buf.put(np.full(3, i, np.float32), np.zeros(2, np.float32), (i, 0))
    buf.end_stream()
    first = (np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32), np.array([[-1, 0]] * 2))
    pf = Prefetcher(buf, 4, limit=3, initial=[first], depth=2)
    try:
        got = [pf.get(timeout=5)]
        assert got[0].keys[0, 0] == -1  # restored batches first
        held = pf.pause()
        assert buf.served == 4 * len(held) + 4 * (pf.drawn - len(held)) and pf.drawn <= 3
        pf.resume()
        while (it := pf.get(timeout=5)) is not None:
            got.append(it)
        assert [int(g.keys[0, 0]) for g in got] == [-1, 0, 4, 8] and pf.exhausted
        assert buf.served == 12  # never beyond its limit: 3 batches of 4
    finally:
        pf.close()


@pytest.mark.timeout(300)
def test_fit_from_a_buffer_with_bf16_compile_and_default_threads(tmp_path):
    buf = make_buffer("fifo", 100)
    rng = np.random.default_rng(0)
    for i in range(48):
        buf.put(rng.random(5, np.float32), rng.random(3, np.float32), (i, 0))
    buf.end_stream()
    cfg = _cfg(tmp_path, threads=0, amp="bf16", max_batches=5)
    cfg.train.compile = True
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    s = trainer.fit(buf, cfg)
    assert s["batches"] == 5 and 0 <= s["data_wait_frac"] <= 1 and s["ranks"] == 1
    assert counters["stats"]["unique_graphs"] >= 1  # torch.compile did compile the model
    cores = len(os.sched_getaffinity(0))
    assert torch.get_num_threads() == (cores - 1 if cores >= 2 else 1)
    assert buf.stats()["served"] == 5 * 4


def test_a_study_end_condition_with_several_ranks_is_refused(tmp_path, ring_name):
    cfg = _cfg(tmp_path)
    cfg.channel.url = f"shm://{ring_name}"
    with pytest.raises(trainer.TrainError, match="this run has 2 ranks; train a study with one"):
        trainer.train(cfg, finished=lambda rx: False, env=ddp.DistEnv(0, 2))
    assert not os.path.exists(segment_path(ring_name))
