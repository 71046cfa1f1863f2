"""Client benchmark: the C client, the Python client and ZeroMQ into the same consumer process.

    flock /tmp/ot-bench.lock env PYTHONPATH=$PWD python bench/clients.py --quick

One producer process -> this process, frames of 4 KB, 1 MB and 8 MB (float32 field "T", 5
params), all in one run on one machine. The consumer does the same in every case: take each frame
as a view, read its header, let it go. Rates are payload GB/s (1e9 B/s) from a common start (the
producer is attached and waiting) to the last frame received, best of R repeats interleaved across
producers; "us/frame" is the producer's own send loop time per frame (its cost to the solver).

  c           bench/c/bench_writer.c: ot_send of the C client (built by onlinetrain.clientflags),
              straight into the shm ring; consumer RingConsumer.get_many(copy=False) + release
  python      onlinetrain.client Simulation.send (the Python client API) into the same ring
  python-put  RingProducer.put of one reused Frame (the ring's Python fast path, no client layer)
  zmq         pyzmq PUSH/PULL over ipc://, [header, payload] multipart (copy=False above 64 KiB),
              header from the same cached encoder; consumer recv_multipart(copy=False)
  memcpy-shm  np.copyto of one frame into a /dev/shm mapping made like the ring's (bench/transport.py):
              the one-copy limit of any shared-memory transport

The last line is JSON: c_over_zmq_4k, c_over_python_4k, c_over_memcpy_shm_8m (each against a
baseline measured in this run), the producers' us/frame at 4 KB, and every rate.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from onlinetrain import client, clientflags  # noqa: E402
from onlinetrain import frame as fr  # noqa: E402
from onlinetrain.shm_channel import RingConsumer, RingProducer  # noqa: E402
from transport import _memcpy, _zmq_prod  # noqa: E402  (the same ZeroMQ producer and baseline)

SIZES = {"4k": 4 << 10, "1m": 1 << 20, "8m": 8 << 20}
CTX = mp.get_context("fork")
RING = 64 << 20


def build_c_writer(out_dir: Path) -> Path:
    cflags, libs = clientflags.flags()
    exe = out_dir / "bench_writer"
    subprocess.run(["cc", "-std=c11", "-O2", *cflags, str(HERE / "c" / "bench_writer.c"), "-o",
                    str(exe), *libs], check=True)
    return exe


def _py_prod(name, size, n, barrier, conn, api):
    arr = np.ones(size // 4, np.float32)
    if api:
        sim = client.init(f"shm://{name}", 0, [0.0, 1.0, 2.0, 3.0, 4.0], timeout=10)
        barrier.wait()
        t0 = time.perf_counter()
        for k in range(n):
            sim.send(k, arr, name="T")
        dt = time.perf_counter() - t0
        sim.close()
    else:
        p = RingProducer.attach(name, timeout=10)
        f = fr.Frame(0, 0, np.arange(5, dtype=np.float64), "T", arr)
        barrier.wait()
        t0 = time.perf_counter()
        for k in range(n):
            f.time_step = k
            p.put(f)
        dt = time.perf_counter() - t0
        p.close()
    conn.send(dt)


def _drain_ring(ring, n):
    got = 0
    while got < n:
        fs = ring.get_many(256, timeout=30, copy=False)
        for f in fs:
            f.release()
        got += len(fs)


def _run(kind, size, n, exe):
    """(payload GB/s into this process, producer seconds per frame)."""
    if kind == "zmq":
        import zmq  # noqa: PLC0415
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        addr = f"ipc://{tempfile.gettempdir()}/ot-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        s.bind(addr)
        barrier = CTX.Barrier(2)
        p = CTX.Process(target=_zmq_prod, args=(addr, size, n, 0, barrier))
        p.start()
        barrier.wait()
        t0 = time.perf_counter()
        for _ in range(n):
            hdr, data = s.recv_multipart(copy=False)
            np.frombuffer(data.buffer, np.float32)
        dt = time.perf_counter() - t0
        p.join(30)
        s.close()
        ctx.term()
        os.unlink(addr[len("ipc://"):])
        return n * size / dt / 1e9, dt / n  # the producer's time is not separable here
    name = f"bench-cl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ring = RingConsumer.create(name, RING)
    try:
        if kind == "c":
            p = subprocess.Popen([str(exe), f"shm://{name}", str(size), str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            t0 = time.perf_counter()
            p.stdin.write("go\n")
            p.stdin.flush()
            _drain_ring(ring, n)
            dt = time.perf_counter() - t0
            prod = float(p.stdout.readline())
            assert p.wait(30) == 0
            p.stdin.close()
            p.stdout.close()
        else:
            barrier = CTX.Barrier(2)
            a, b = CTX.Pipe()
            p = CTX.Process(target=_py_prod, args=(name, size, n, barrier, b, kind == "python"))
            p.start()
            barrier.wait()
            t0 = time.perf_counter()
            _drain_ring(ring, n)
            dt = time.perf_counter() - t0
            prod = a.recv()
            p.join(30)
            assert p.exitcode == 0
    finally:
        ring.close()
    return n * size / dt / 1e9, prod / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer bytes and repeats (< 60 s)")
    args = ap.parse_args(argv)
    volume = {"4k": 32 << 20, "1m": 384 << 20, "8m": 768 << 20}
    reps = 3 if args.quick else 7
    if not args.quick:
        volume = {k: 4 * v for k, v in volume.items()}
    kinds = ["c", "python", "python-put", "zmq"]
    t_start, load0 = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ot-bench-clients-") as d:
        exe = build_c_writer(Path(d))
        rate: dict[tuple, float] = {}
        us: dict[tuple, float] = {}
        for _ in range(reps):  # interleaved, so a burst of load elsewhere hits all alike
            for kind in kinds:
                for label, size in SIZES.items():
                    r, per = _run(kind, size, max(volume[label] // size, 16), exe)
                    rate[kind, label] = max(rate.get((kind, label), 0.0), r)
                    us[kind, label] = min(us.get((kind, label), 1e9), per * 1e6)
            for label, size in SIZES.items():
                r = _memcpy(size, max(volume[label] // size // 2, 16), "shm")
                rate["memcpy-shm", label] = max(rate.get(("memcpy-shm", label), 0.0), r)
    print(f"{'producer':11} " + " ".join(f"{k:>9}" for k in SIZES) + "   (GB/s into one consumer)"
          + "   us/frame at 4k (producer loop)")
    for kind in kinds + ["memcpy-shm"]:
        tail = f"   {us[kind, '4k']:.2f}" if kind in ("c", "python", "python-put") else ""
        print(f"{kind:11} " + " ".join(f"{rate[kind, k]:9.2f}" for k in SIZES) + tail)
    out = {"elapsed_s": round(time.time() - t_start, 1), "quick": args.quick, "reps": reps,
           "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
           "c_over_zmq_4k": round(rate["c", "4k"] / rate["zmq", "4k"], 2),
           "c_over_python_4k": round(rate["c", "4k"] / rate["python", "4k"], 2),
           "c_over_memcpy_shm_8m": round(rate["c", "8m"] / rate["memcpy-shm", "8m"], 2),
           "c_over_python_put_4k": round(rate["c", "4k"] / rate["python-put", "4k"], 2),
           "producer_us_per_frame_4k": {k: round(us[k, "4k"], 3) for k in ("c", "python", "python-put")},
           "gbps": {f"{k}_{s}": round(v, 3) for (k, s), v in rate.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
