"""The receiving process (onlinetrain/rxproc.py, rxremote.py; docs/receiver.md), with real
processes and rings: it fills the buffer exactly as the receiving thread does, a crash of either
side is reported and cleaned up, and its private messages refuse a bad layout."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from onlinetrain import config
from onlinetrain import frame as fr
from onlinetrain.rxproc import pack_rows, rows_frame, unpack_rows
from onlinetrain.shm_channel import ConsumerGone, RingProducer, segment_path
from onlinetrain.trainer import TrainError, remote_receiver, train

from conftest import ROOT, wait_until

STEPS = 10
OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cfg(out, name, receiver, **kw):
    c = {"buffer": {"kind": "reservoir", "capacity": 300, "watermark": 50, "seed": 3,
                    "record_arrivals": True, "post_stream_batches": 5},
         "model": {"hidden": 8}, "solver": {"steps": STEPS},
         "train": {"batch_size": 8, "max_batches": 100000, "val_every": 20, "threads": 1,
                   "receiver": receiver},
         "validation": {"every": 4}, "channel": {"url": f"shm://{name}", "ring_mb": 4},
         "output": {"dir": str(out), "name": name}}
    for k, v in kw.items():
        sec, key = k.split(".")
        c.setdefault(sec, {})[key] = v
    return config.from_dict(c)


def _produce(name, sims, stop=None):
    """sims simulations of STEPS 3x3 steps each, their SIM_END, then STREAM_END (a thread); it
    ends quietly when the consumer goes away (the crash tests kill it)."""
    try:
        _send(name, sims, stop)
    except ConsumerGone:
        pass


def _send(name, sims, stop):
    with RingProducer.attach(name, timeout=180) as p:  # a loaded machine starts slowly
        for s in range(sims):
            params = np.array([300.0 + s, 310.0, 290.0, 305.0, 295.0])
            for t in range(STEPS):
                p.put(fr.Frame(s, t, params, "T", np.full((3, 3), s + t / 10, np.float32)))
            p.put(fr.sim_end(s, {"T": (STEPS, 1)}, params))
            if stop is not None and stop.is_set():
                return
        p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))


def _run(tmp_path, name, receiver, sims=40):
    cfg = _cfg(tmp_path / receiver, name, receiver)
    th = threading.Thread(target=_produce, args=(name, sims), daemon=True)
    th.start()
    summary = train(cfg)
    th.join(30)
    return summary, np.load(tmp_path / receiver / "arrivals.npy")


def _is_rx(p) -> bool:
    try:
        return any("onlinetrain.rxproc" in a for a in p.cmdline())
    except psutil.Error:  # gone, or a zombie
        return False


def _rx_children():
    return [p for p in psutil.Process().children(recursive=True) if _is_rx(p)]


@pytest.mark.timeout(240)
def test_process_and_thread_receivers_fill_the_buffer_identically(tmp_path, ring_name):
    seen = []
    watcher_stop = threading.Event()

    def watch():  # the process receiver really is a child process of the trainer
        while not watcher_stop.is_set():
            seen.extend(p.pid for p in _rx_children())
            time.sleep(0.05)
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    s_proc, a_proc = _run(tmp_path, ring_name + "p", "process")
    watcher_stop.set()
    w.join()
    assert seen, "no onlinetrain.rxproc child process ran"
    s_thr, a_thr = _run(tmp_path, ring_name + "t", "thread")
    assert s_proc["receiver"] == "process" and s_thr["receiver"] == "thread"
    # the same samples in the same arrival order (so the same Reservoir draws)
    assert a_proc.shape == (30 * STEPS, 2)  # 40 sims, every 4th held out
    np.testing.assert_array_equal(a_proc, a_thr)
    for k in ("samples_received", "validation_samples", "sims_done", "duplicates_dropped",
              "frames_rejected", "sims_failed"):
        assert s_proc[k] == s_thr[k], k
    assert s_proc["sims_done"] == 40 and s_proc["validation_samples"] == 10 * STEPS
    assert s_proc["mean_field_mse"] == pytest.approx(s_thr["mean_field_mse"], rel=1e-6)


@pytest.mark.timeout(240)
def test_a_killed_receiving_process_is_one_clear_error(tmp_path, ring_name):
    cfg = _cfg(tmp_path, ring_name, "process", **{"channel.idle_timeout": 600})
    stop = threading.Event()
    th = threading.Thread(target=_produce, args=(ring_name, 10 ** 6, stop), daemon=True)
    th.start()
    box = {}

    def run():
        try:
            box["summary"] = train(cfg)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert wait_until(lambda: _rx_children(), 60)
    assert wait_until(lambda: (tmp_path / "metrics.jsonl").exists(), 60)  # it trains
    assert wait_until(lambda: os.path.exists(segment_path(ring_name)), 60)  # and data flows
    time.sleep(1)
    _rx_children()[0].send_signal(signal.SIGKILL)
    t.join(120)
    stop.set()
    th.join(30)
    assert not t.is_alive()
    e = box.get("error")
    assert isinstance(e, TrainError), box
    assert "receiving process" in str(e) and "SIGKILL" in str(e), str(e)
    assert not os.path.exists(segment_path(ring_name))  # the channel is gone with its owner


@pytest.mark.timeout(240)
def test_a_killed_trainer_takes_its_receiving_process_and_rings_with_it(tmp_path, ring_name):
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(f'[model]\nhidden = 8\n[solver]\nsteps = {STEPS}\n'
                        f'[train]\nthreads = 1\nmax_batches = 100000\n'
                        f'[output]\nname = "{ring_name}"\n')
    tr = subprocess.Popen(OT + ["train", "--from", f"shm://{ring_name}", "--config",
                                str(cfg_path), "--out", str(tmp_path / "o"), "--quiet"],
                          env=ENV, stdout=subprocess.DEVNULL,
                          stderr=open(tmp_path / "err", "w"))
    stop = threading.Event()
    th = threading.Thread(target=_produce, args=(ring_name, 10 ** 6, stop), daemon=True)
    th.start()
    try:
        assert wait_until(lambda: any(_is_rx(c) for c in psutil.Process(tr.pid).children()), 60)
        child = [c for c in psutil.Process(tr.pid).children() if _is_rx(c)][0]
        assert wait_until(lambda: (tmp_path / "o" / "metrics.jsonl").exists(), 90)
        assert wait_until(lambda: os.path.exists(segment_path(ring_name)), 60)  # data flows
        tr.send_signal(signal.SIGKILL)  # the trainer alone, not its receiver's process group
        tr.wait(30)
        assert wait_until(lambda: not child.is_running() or
                          child.status() == psutil.STATUS_ZOMBIE, 30), "receiver outlived trainer"
    finally:
        stop.set()
        th.join(30)
        if tr.poll() is None:
            tr.kill()
    left = [e for e in os.listdir("/dev/shm") if e.startswith(f"ot_{ring_name}")]
    assert left == [], (tmp_path / "err").read_text()  # the channel and the private ring


def test_rows_round_trip_and_a_bad_layout_is_refused():
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 3), np.float32), rng.random((5, 2), np.float32)
    keys = np.array([[i, -i - (1 << 40)] for i in range(5)], np.int64)
    f = fr.decode(fr.encode(rows_frame("b", x, y, keys)))
    x2, y2, k2 = unpack_rows(f)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(k2, keys)
    with pytest.raises(fr.FrameError, match="rows of shape"):
        unpack_rows(fr.Frame(2, 4, name="b", array=pack_rows(x, y, keys)))


def test_where_the_receiver_runs(tmp_path):
    c = _cfg(tmp_path, "x", "auto")
    assert remote_receiver(c, own=True)
    assert not remote_receiver(c, own=False)  # handed an open channel: a thread
    c.channel.url = "mpi://x"
    assert not remote_receiver(c, own=True)
    p = _cfg(tmp_path, "x", "process")
    with pytest.raises(TrainError, match="handed an open channel"):
        remote_receiver(p, own=False)
    with pytest.raises(config.ConfigError, match="train.receiver"):
        _cfg(tmp_path, "x", "fork")
