"""One loop for 1..N ranks, for real: a 2-rank gloo `ot train` job loses a rank to SIGKILL in the
middle of training; the other rank stops with a one-line error, and `--resume` on 2 ranks
continues from the newest checkpoint with exact accounting (every sample received once, served
once by the FIFO buffers, every simulation done). Resuming with another number of ranks is refused.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from onlinetrain import checkpoint
from onlinetrain import frame as fr
from onlinetrain.shm_channel import RingProducer

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OT_DIST_TIMEOUT": "120"}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
    ENV.pop(_k, None)
SIMS, STEPS = 12, 10  # simulation s goes to rank s % 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _feed(ring: str, rank: int, delay: float, stop: threading.Event, end: bool):
    """Every simulation of `rank` (all of them again after a crash: the trainer drops what it
    already has), paced; STREAM_END if `end`."""
    try:
        p = RingProducer.attach(ring, timeout=120)
    except Exception:
        return
    rng = np.random.default_rng(0)
    try:
        for sid in range(rank, SIMS, 2):
            params = rng.uniform(100, 500, 5)
            for k in range(1, STEPS + 1):
                if stop.is_set():
                    return
                p.put(fr.Frame(sid, k, params, "T", np.full(16, sid + k, np.float32)), timeout=30)
                time.sleep(delay)
            p.put(fr.Frame(sid, STEPS, params, "T", np.zeros(0, np.float32), fr.SIM_END))
        if end:
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
    except Exception:  # the trainer died: this feeder is done
        return
    finally:
        p.close()


def _config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[buffer]
kind = "fifo"
capacity = 200
[model]
hidden = 16
[train]
batch_size = 4
max_batches = 100000
val_every = 4
checkpoint_every = 4
threads = 1
""")
    return cfg


def _ranks(tmp_path, ring, port, extra=(), world=2):
    out = tmp_path / "study"
    env = {**ENV, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [subprocess.Popen(OT + ["train", "--from", f"shm://{ring}", "--config",
                                   str(_config(tmp_path)), "--out", str(out), "--quiet", *extra],
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True) for r in range(world)]


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def _newest(out) -> int:
    cks = checkpoint.list_checkpoints(out)
    good = [p for p in cks if p.with_suffix(".sha256").exists()]
    return int(good[-1].stem.split("-")[1]) if good else 0


@pytest.mark.timeout(420)
def test_sigkill_one_of_two_ranks_then_resume_exactly(tmp_path, ring_name):
    out = tmp_path / "study"
    stop = threading.Event()
    ranks = _ranks(tmp_path, ring_name, _free_port())
    feeders = [threading.Thread(target=_feed, args=(f"{ring_name}-r{r}", r, 0.03, stop, False))
               for r in range(2)]
    for f in feeders:
        f.start()
    try:
        t = time.monotonic() + 200
        while _newest(out) < 8 and all(p.poll() is None for p in ranks) and time.monotonic() < t:
            time.sleep(0.05)
        assert all(p.poll() is None for p in ranks), [p.communicate() for p in ranks]
        assert _newest(out) >= 8, "no checkpoint before the deadline"
        ranks[1].send_signal(signal.SIGKILL)
        o0, e0 = ranks[0].communicate(timeout=150)  # the survivor stops on its own
    finally:
        stop.set()
        _kill_all(ranks)
        for f in feeders:
            f.join(60)
    assert ranks[0].returncode == 1, e0[-3000:]
    assert "Traceback" not in e0
    err = [x for x in e0.splitlines() if x.startswith("Error:")]
    assert len(err) == 1 and "another rank has probably died" in err[0] and "--resume" in err[0]
    ck = checkpoint.load_latest(out)
    ck_batch = ck["batches"]
    assert ck["ranks"] == 2 and ck_batch >= 8
    before = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    # resuming with one rank is refused, naming both counts; nothing is touched
    r = subprocess.run(OT + ["train", "--from", f"shm://{ring_name}", "--config",
                             str(_config(tmp_path)), "--out", str(out), "--resume", "--quiet"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "was written by 2 rank(s), this run has 1" in r.stderr
    assert checkpoint.load_latest(out)["batches"] == ck_batch

    # 2 ranks, --resume, every simulation sent again (the trainer keeps the first copy)
    stop = threading.Event()
    ranks = _ranks(tmp_path, ring_name, _free_port(), ["--resume"])
    feeders = [threading.Thread(target=_feed, args=(f"{ring_name}-r{r}", r, 0.0, stop, True))
               for r in range(2)]
    for f in feeders:
        f.start()
    try:
        results = [p.communicate(timeout=200) for p in ranks]
    finally:
        stop.set()
        _kill_all(ranks)
        for f in feeders:
            f.join(60)
    for p, (o, e) in zip(ranks, results):
        assert p.returncode == 0, e[-3000:]
        assert f"at batch {ck_batch}" in e
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == 2 and s["sims_done"] == SIMS and s["samples_received"] == SIMS * STEPS
    assert s["duplicates_dropped"] > 0 and s["batches"] > ck_batch
    final = checkpoint.load_latest(out)
    assert final["batches"] == s["batches"]
    seen, served = set(), 0
    for r in range(2):
        rk = checkpoint.for_rank(final, r, 2)["sections"]
        pairs = [tuple(x) for x in rk["receiver"]["seen"].tolist()]
        assert len(pairs) == len(set(pairs)) and not seen & set(pairs)
        assert {p[0] % 2 for p in pairs} == {r}  # each rank kept its own simulations
        seen |= set(pairs)
        served += rk["buffer"]["served"]
        assert rk["prefetch"]["batches"] == []
    assert seen == {(i, k) for i in range(SIMS) for k in range(1, STEPS + 1)}
    assert served == SIMS * STEPS  # FIFO: every sample trained exactly once across the crash
    assert checkpoint.fully_received(final) == set(range(SIMS))
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["batch"] for x in m] == list(range(4, s["batches"] + 1, 4))  # no gap, no repeat
    assert [x for x in m if x["batch"] <= ck_batch] == [x for x in before if x["batch"] <= ck_batch]
    assert all(0 <= x["data_wait_frac"] <= 1 and x["ranks"] == 2 for x in m)
    model = torch.load(out / "checkpoint.pt", weights_only=True)
    assert model["format"] == "onlinetrain-checkpoint" and model["version"] == 2
