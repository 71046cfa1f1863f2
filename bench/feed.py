"""Feed benchmark: does the receiving path keep the training loop fed, and the loop the receiver?

    flock /tmp/ot-bench.lock nice -n 0 env PYTHONPATH=$PWD python bench/feed.py --quick

All arms use the real training loop (`onlinetrain.trainer.train` on a shm ring; its receiver a
process, or with `--receiver thread` a thread given the ring), the heat2d adapter and
`build_mlp`; producers are separate processes: with `--producer c` (the default) bench/c/feed_producer.c on the C client (ot_init / ot_send / ot_finalize per
simulation, as an instrumented solver), with `--producer python` the Python producer API
(RingProducer.put_many, frames with SIM_END counts).

  memory     the same loop (trainer.fit) over a Reservoir preloaded in memory (random samples of
             the same sizes), no channel, no receiver: the rate the loop reaches when data is free
  reservoir  train() fed from a filled Reservoir (capacity 2000, watermark 2000), the receiver
             running (polling the ring), no further ingest
  ingest     the same while a producer sends 4x4 float32 frames paced at 20,000 frames/s
  big-idle   a producer paced at 500 frames/s of 64 KB (128x128 float32) into a 4 MB ring (less
             than rate x duration), a receiver alone (the trainer idle)
  big-train  the same producer while train() trains a small model flat out on what arrives
  drain      a Receiver thread alone draining 100,000 4x4 frames from a filled ring: its CPU time
             per frame (thread CPU clock), decode + assembly + adapter + buffer

Rates are taken from the trainer's own metrics (on_progress: time, batch, samples) between the
first report after the buffer filled and the end of the window. The last line is JSON:
feed_over_memory (reservoir / memory samples/s), train_under_ingest (ingest / reservoir
batches/s), ingest_under_training (big-train / big-idle frames adapted per second),
ingest_frames_per_s (frames adapted per second in the ingest arm), receive_us_per_frame (drain).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from onlinetrain import config, frame as fr  # noqa: E402
from onlinetrain.shm_channel import RingConsumer, RingProducer  # noqa: E402

CTX = mp.get_context("spawn")
STEPS = 100  # per simulation
PARAMS = np.array([300.0, 350.0, 250.0, 400.0, 200.0])


# ---- producer (a spawned process) ----

def produce(name, side, rate, fill, seconds, go, stop, counter):
    """`fill` frames at once, then `rate` frames/s (paced) for `seconds` or until `stop`; frames of
    `side` x `side` float32, 100 steps per simulation, each simulation ends with its SIM_END."""
    p = RingProducer.attach(name, timeout=30)
    a = np.random.default_rng(0).random((side, side)).astype(np.float32) * 100 + 250
    sent = [0]

    def send(n):
        frames = []
        for _ in range(n):
            i = sent[0]
            sid, k = divmod(i, STEPS)
            frames.append(fr.Frame(sid, k, PARAMS, "T", a))
            if k == STEPS - 1:
                frames.append(fr.sim_end(sid, {"T": (STEPS, 1)}, PARAMS))
            sent[0] += 1
        p.put_many(frames, timeout=60)
    chunk = 512
    while sent[0] < fill:
        send(min(chunk, fill - sent[0]))
    go.wait()
    if rate:
        t0, base = time.monotonic(), sent[0]
        per = max(1, int(rate / 200))  # 200 sends a second
        while not stop.is_set() and time.monotonic() - t0 < seconds:
            due = base + int((time.monotonic() - t0) * rate)
            if sent[0] < due:
                send(min(due - sent[0], 4 * per))
            else:
                time.sleep(per / rate)
    counter.value = sent[0]
    stop.wait(seconds + 60)
    p.close()


class _CProducer:
    """bench/c/feed_producer.c (the C client) behind the (process, go, stop, counter) interface
    of the Python producer: go.set() starts the paced phase, stop.set() ends it."""

    def __init__(self, exe, name, side, rate, fill, seconds):
        self.p = subprocess.Popen([str(exe), name, str(side), str(rate), str(fill), str(seconds),
                                   str(STEPS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        self.value, self._go = 0, False
        self.go, self.stop, self.counter = self, _Stop(self), self

    def set(self):  # go
        if not self._go:
            self._go = True
            threading.Thread(target=self._start, daemon=True).start()

    def _start(self):
        self.p.stdout.readline()  # "filled"
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def join(self, timeout):
        try:
            out, _ = self.p.communicate(timeout=timeout)
            self.value = int(out.split()[-1]) if out.split() else 0
        except (subprocess.TimeoutExpired, ValueError):
            pass

    def is_alive(self):
        return self.p.poll() is None

    def kill(self):
        self.p.kill()
        self.p.wait()


class _Stop:
    def __init__(self, prod):
        self.prod = prod

    def set(self):
        if self.prod.p.poll() is None:
            self.prod.p.terminate()


PRODUCER = {"exe": None}  # --producer c: the built bench/c/feed_producer.c


def use_c_producer() -> None:
    """Build bench/c/feed_producer.c with the C client's flags; the paced producers use it."""
    from onlinetrain import clientflags  # noqa: PLC0415
    cflags, libs = clientflags.flags()
    exe = os.path.join(tempfile.mkdtemp(prefix="ot-feed-"), "feed_producer")
    subprocess.run(["cc", "-std=c11", "-O2", *cflags, os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "c", "feed_producer.c"), "-o", exe, *libs],
        check=True)
    PRODUCER["exe"] = exe


def _start_producer(name, side, rate, fill, seconds, python=False):
    if PRODUCER["exe"] is not None and not python:
        pr = _CProducer(PRODUCER["exe"], name, side, rate, fill, seconds)
        return pr, pr.go, pr.stop, pr.counter
    go, stop, counter = CTX.Event(), CTX.Event(), CTX.Value("q", 0)
    pr = CTX.Process(target=produce, args=(name, side, rate, fill, seconds, go, stop, counter),
                     daemon=True)
    pr.start()
    return pr, go, stop, counter


def _stop_producer(stop, pr, ring):
    """End a paced producer process (10 s grace, then kill) and close the arm's ring."""
    stop.set()
    pr.join(10)
    if pr.is_alive():
        pr.kill()
    if ring is not None:
        ring.close()


DEVICE = {"train.device": "cpu", "train.threads": 1, "train.receiver": "process"}  # --device / --threads set these for every arm


def _cfg(out, **kw):
    ov = {"simulate.producers": 1, "solver.steps": STEPS, "buffer.kind": "reservoir",
          "buffer.capacity": 2000, "buffer.watermark": 2000, "model.hidden": 64,
          "model.layers": 2, "train.batch_size": 32,
          "train.max_batches": 10 ** 9, "train.val_every": 50, "train.lr_milestones": [],
          "output.dir": str(out), "channel.idle_timeout": 600}
    ov.update(DEVICE)
    ov.update(kw)
    return config.load(None, ov)


# ---- arms ----

def memory_arm(cfg, seconds):
    """The same loop (trainer.fit: model, optimizer, batch, threads, prefetch) fed from a buffer
    preloaded in memory with random samples of the same sizes: no channel, no receiver."""
    from onlinetrain import trainer  # noqa: PLC0415
    from onlinetrain.reservoir import make_buffer  # noqa: PLC0415
    os.makedirs(cfg.output.dir, exist_ok=True)  # fit() writes metrics there (train() makes it)
    n = cfg.buffer.capacity
    rng = np.random.default_rng(0)
    buf = make_buffer("reservoir", n, n, seed=0)
    buf.put_many(rng.random((n, 6), np.float32), rng.random((n, 16), np.float32),
                 np.stack([np.arange(n), np.zeros(n, np.int64)], 1))
    buf.end_stream()  # the Reservoir keeps serving (post_stream_batches -1)
    reports, stop = [], threading.Event()
    t = {"t0": None}

    def progress(m):
        now = time.monotonic()
        reports.append((now, m["batch"]))
        if t["t0"] is None:
            t["t0"] = now
        elif now - t["t0"] > seconds:
            stop.set()
    try:
        trainer.fit(buf, cfg, on_progress=progress, stop_event=stop)
    except KeyboardInterrupt:
        pass
    (t0, b0), (t1, b1) = reports[0], reports[-1]
    return {"batches_per_s": (b1 - b0) / (t1 - t0),
            "samples_per_s": (b1 - b0) * cfg.train.batch_size / (t1 - t0)}


def train_arm(cfg, name, side, rate, fill, seconds):
    """train() on the ring while a producer sends; rates from its on_progress reports."""
    from onlinetrain.trainer import train  # noqa: PLC0415
    ring = None  # a receiving process creates it (train.receiver)
    if cfg.train.receiver == "thread":
        ring = RingConsumer.create(name, capacity=cfg.channel.ring_mb << 20)
    cfg.channel.url = f"shm://{name}"
    pr, go, stop, counter = _start_producer(name, side, rate, fill, seconds + 30)
    if not fill:
        go.set()  # nothing to fill: the paced phase starts at once
    reports, stop_train = [], threading.Event()
    state = {"t0": None}

    def progress(m):
        now = time.monotonic()
        reports.append((now, m["batch"], m["samples"]))
        if state["t0"] is None:
            state["t0"] = now
            go.set()  # the buffer is full and the loop runs: start the paced phase
        elif now - state["t0"] > seconds:
            stop_train.set()
    try:
        train(cfg, consumer=ring, on_progress=progress, stop_event=stop_train)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_producer(stop, pr, ring)
    (t0, b0, s0), (t1, b1, s1) = reports[0], reports[-1]
    dt = t1 - t0
    return {"batches_per_s": (b1 - b0) / dt, "samples_per_s": (b1 - b0) * cfg.train.batch_size / dt,
            "frames_per_s": (s1 - s0) / dt, "sent": counter.value}


def idle_receiver_arm(cfg, name, side, rate, seconds):
    """The paced producer into a receiver alone (no training): frames adapted per second; the
    receiver is the same kind (process or thread) as the training arms'."""
    from onlinetrain.receiver import Receiver  # noqa: PLC0415
    from onlinetrain.reservoir import make_buffer  # noqa: PLC0415
    from onlinetrain.rxremote import RemoteReceiver  # noqa: PLC0415
    from onlinetrain.surrogate import heat2d_xy  # noqa: PLC0415
    buf = make_buffer("reservoir", cfg.buffer.capacity, cfg.buffer.watermark)
    if cfg.train.receiver == "thread":
        ring = RingConsumer.create(name, capacity=cfg.channel.ring_mb << 20)
        rx = Receiver(ring, buf, cfg, heat2d_xy)
    else:
        ring = None
        rx = RemoteReceiver(cfg, f"shm://{name}", buf)
    rx.start()
    pr, go, stop, counter = _start_producer(name, side, rate, 0, seconds + 30)
    try:
        go.set()
        deadline = time.monotonic() + 60
        while rx.samples < 50 and time.monotonic() < deadline:  # the producer is up and sending
            time.sleep(0.01)
        t0, s0 = time.monotonic(), rx.samples
        time.sleep(seconds)
        t1, s1 = time.monotonic(), rx.samples
    finally:
        rx.stop_event.set()
        rx.join(5)
        _stop_producer(stop, pr, ring)
        if ring is None:
            rx.close()
    return {"frames_per_s": (s1 - s0) / (t1 - t0)}


def big_train_arm(cfg, name, side, rate, seconds):
    """The paced producer while train() trains flat out (watermark 1: it starts at once)."""
    return train_arm(cfg, name, side, rate, 0, seconds)


def drain_arm(cfg, name, n):
    """A receiver draining n 4x4 frames already in the ring: CPU seconds per frame."""
    from onlinetrain.receiver import Receiver  # noqa: PLC0415
    from onlinetrain.reservoir import make_buffer  # noqa: PLC0415
    from onlinetrain.surrogate import heat2d_xy  # noqa: PLC0415
    ring = RingConsumer.create(name, capacity=64 << 20)
    pr, go, stop, counter = _start_producer(name, 4, 0, n, 1, python=True)  # counts as it fills
    try:
        go.set()
        deadline = time.monotonic() + 120
        while counter.value < n and time.monotonic() < deadline:
            time.sleep(0.05)
        with RingProducer.attach(name) as p:
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        rx = Receiver(ring, make_buffer("reservoir", 2000, 500), cfg, heat2d_xy)
        c0, t0 = time.thread_time(), time.monotonic()
        rx.run()  # in this thread, so that its CPU clock is this thread's
        c1, t1 = time.thread_time(), time.monotonic()
        assert rx.error is None and rx.samples == n, (rx.error, rx.samples)
    finally:
        _stop_producer(stop, pr, ring)
    return {"cpu_us_per_frame": (c1 - c0) / n * 1e6, "wall_us_per_frame": (t1 - t0) / n * 1e6}


def _duty(stop, on_s, off_s):
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < on_s:  # pure Python: holds the GIL
            pass
        time.sleep(off_s)


def gil_probe(tmp, seconds):
    """The memory arm alone, then beside a Python thread that holds the GIL 10% of the time
    (2 ms bursts every 20 ms, like a receiver thread): what the GIL alone costs the loop."""
    alone = memory_arm(_cfg(os.path.join(tmp, "gil-a")), seconds)
    stop = threading.Event()
    th = threading.Thread(target=_duty, args=(stop, 0.002, 0.018), daemon=True)
    th.start()
    try:
        busy = memory_arm(_cfg(os.path.join(tmp, "gil-b")), seconds)
    finally:
        stop.set()
        th.join()
    return {"alone": alone["batches_per_s"], "beside_10pct_thread": busy["batches_per_s"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (under a minute)")
    ap.add_argument("--seconds", type=float, default=None, help="window of each arm")
    ap.add_argument("--gil-probe", action="store_true",
                    help="only: the loop alone vs beside a Python thread busy 10%% of the time")
    ap.add_argument("--device", default="cpu", help="train.device of every arm (cpu, cuda)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads of every arm")
    ap.add_argument("--receiver", default="process", choices=("process", "thread"),
                    help="train.receiver of every arm (docs/receiver.md)")
    ap.add_argument("--producer", default="c", choices=("c", "python"),
                    help="the paced producers: the C client (as a solver) or Python put_many")
    a = ap.parse_args(argv)
    if a.producer == "c":
        use_c_producer()
    DEVICE.update({"train.device": a.device, "train.threads": a.threads,
                   "train.receiver": a.receiver})
    if a.gil_probe:
        with tempfile.TemporaryDirectory() as tmp:
            g = gil_probe(tmp, a.seconds or 4.0)
        print(json.dumps({k: round(v, 1) for k, v in g.items()} |
                         {"ratio": round(g["beside_10pct_thread"] / g["alone"], 3)}))
        return
    sec = a.seconds or (4.0 if a.quick else 15.0)
    tag = uuid.uuid4().hex[:8]
    res = {}

    def log(arm):
        print(f"# {arm}: {res[arm]}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # a 1 MB ring, chosen when the C client faulted the whole ring in at each ot_init (once
        # per simulation of 100 steps, 200 times a second here: ~11 ms each for 64 MB); it no
        # longer does (bench/attach.py), the size is kept so that the figures stay comparable
        small = _cfg(os.path.join(tmp, "small"), **{"channel.ring_mb": 1})
        res["memory"] = memory_arm(_cfg(os.path.join(tmp, "memory")), sec)
        log("memory")
        res["reservoir"] = train_arm(small, f"feed_{tag}_r", 4, 0, 2000, sec)
        log("reservoir")
        res["ingest"] = train_arm(_cfg(os.path.join(tmp, "ingest"), **{"channel.ring_mb": 1}),
                                  f"feed_{tag}_i", 4, 20_000, 2000, sec)
        log("ingest")
        big = _cfg(os.path.join(tmp, "big"), **{"buffer.capacity": 300, "buffer.watermark": 1,
                                                 "model.hidden": 16, "model.layers": 1,
                                                 "channel.ring_mb": 4})
        res["big-idle"] = idle_receiver_arm(big, f"feed_{tag}_bi", 128, 500, sec)
        log("big-idle")
        res["big-train"] = big_train_arm(big, f"feed_{tag}_bt", 128, 500, sec)
        log("big-train")
        res["drain"] = drain_arm(small, f"feed_{tag}_d", 20_000 if a.quick else 100_000)
        log("drain")
    print(f"{'arm':<10} {'samples/s':>10} {'batches/s':>10} {'frames/s':>10}")
    for k, v in res.items():
        if k == "drain":
            continue
        print(f"{k:<10} {v.get('samples_per_s', float('nan')):>10.0f} "
              f"{v.get('batches_per_s', float('nan')):>10.1f} {v.get('frames_per_s', float('nan')):>10.0f}")
    d = res["drain"]
    print(f"drain: {d['cpu_us_per_frame']:.2f} us CPU / frame, {d['wall_us_per_frame']:.2f} us wall")
    def ratio(a, b):
        return round(a / b, 3) if b else None
    out = {"feed_over_memory": ratio(res["reservoir"]["samples_per_s"],
                                     res["memory"]["samples_per_s"]),
           "train_under_ingest": ratio(res["ingest"]["batches_per_s"],
                                       res["reservoir"]["batches_per_s"]),
           "ingest_under_training": ratio(res["big-train"]["frames_per_s"],
                                          res["big-idle"]["frames_per_s"]),
           "ingest_frames_per_s": round(res["ingest"]["frames_per_s"]),
           "receive_us_per_frame": round(d["cpu_us_per_frame"], 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
