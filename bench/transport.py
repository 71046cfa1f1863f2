"""Transport benchmark: our shm ring vs ZeroMQ PUSH/PULL (ipc), multiprocessing.Queue and memcpy.

    flock /tmp/ot-bench.lock env PYTHONPATH=$PWD python bench/transport.py --quick

1 producer -> 1 consumer and 4 producers -> 1 consumer, frames of 4 KB, 1 MB and 8 MB, all in one
run on one machine. Producers are forked processes sending the same float32 array again and again
(frame header + payload, like a simulation); the consumer receives every frame and reads its header.
Rates are payload GB/s (1e9 B/s) from a common start (barrier) to the last frame, best of R repeats
(interleaved across transports).

  ring      RingProducer.put per frame; consumer get_many(copy=False) + release (zero-copy view)
  ring-cp   same, consumer get_many(copy=True) (one more copy, what the trainer does by default)
  ring-pm   RingProducer.put_many in batches of 32 frames; zero-copy consumer
  zmq       pyzmq PUSH/PULL over ipc://, [header, payload] multipart, copy=False above 64 KiB
  mpq       multiprocessing.Queue of (header, payload bytes)
  memcpy    np.copyto of one frame's bytes on one core round a 64 MiB buffer: the one-copy limit
  memcpy-hot  the same into one frame-sized destination (cache-resident up to a few MB)
  memcpy-shm  the same as memcpy into a /dev/shm mapping made like the ring's (shm_segment._map):
            the one-copy limit of any shared-memory transport (memcpy's destination is private
            memory allocated by numpy, which may get transparent huge pages; tmpfs usually not).

The last line is JSON with the named ratios (each against a baseline measured in this run).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from onlinetrain import frame as fr  # noqa: E402
from onlinetrain.shm_channel import RingConsumer, RingProducer  # noqa: E402
from onlinetrain.shm_segment import _map  # noqa: E402

SIZES = {"4k": 4 << 10, "1m": 1 << 20, "8m": 8 << 20}
CTX = mp.get_context("fork")


def _frame(size: int, sim: int) -> fr.Frame:
    return fr.Frame(sim, 0, np.arange(5, dtype=np.float64), "T", np.ones(size // 4, np.float32))


# ---- producers (run in forked children) ----

def _ring_prod(name, size, n, sim, barrier, batch):
    p = RingProducer.attach(name, timeout=10)
    f = _frame(size, sim)
    barrier.wait()
    if batch > 1:
        frames = [fr.Frame(sim, i, f.params, f.name, f.array) for i in range(batch)]
        for _ in range(n // batch):
            p.put_many(frames)
        for i in range(n % batch):
            p.put(f)
    else:
        for i in range(n):
            f.time_step = i
            p.put(f)
    p.close()


def _zmq_prod(addr, size, n, sim, barrier):
    import zmq  # noqa: PLC0415
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    f = _frame(size, sim)
    copy = size <= 64 << 10
    tmpl, arr = fr.Encoder().prepare(f)  # the same cached header encoder the ring uses
    barrier.wait()
    for i in range(n):
        f.time_step = i
        hdr = bytearray(tmpl)
        fr.Encoder.fill_ids(hdr, 0, f)
        s.send_multipart([hdr, arr], copy=copy)
    s.close(linger=-1)
    ctx.term()


def _mpq_prod(q, size, n, sim, barrier):
    f = _frame(size, sim)
    tmpl, arr = fr.Encoder().prepare(f)
    barrier.wait()
    for i in range(n):
        f.time_step = i
        hdr = bytearray(tmpl)
        fr.Encoder.fill_ids(hdr, 0, f)
        q.put((hdr, arr.tobytes()))


# ---- consumers (this process) ----

def _run(kind, size, n, nprod):
    """Payload GB/s of `n` frames of `size` bytes from `nprod` producers."""
    per = [n // nprod + (i < n % nprod) for i in range(nprod)]
    barrier = CTX.Barrier(nprod + 1)
    got = 0
    if kind.startswith("ring"):
        name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        ring = RingConsumer.create(name, 64 << 20)
        batch = 32 if kind == "ring-pm" else 1
        procs = [CTX.Process(target=_ring_prod, args=(name, size, per[i], i, barrier, batch))
                 for i in range(nprod)]
        for p in procs:
            p.start()
        copy = kind == "ring-cp"
        barrier.wait()
        t0 = time.perf_counter()
        while got < n:
            fs = ring.get_many(256, timeout=30, copy=copy)
            for f in fs:
                if not copy:
                    f.release()
            got += len(fs)
        dt = time.perf_counter() - t0
        ring.close()
    elif kind == "zmq":
        import zmq  # noqa: PLC0415
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        addr = f"ipc://{tempfile.gettempdir()}/ot-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        s.bind(addr)
        procs = [CTX.Process(target=_zmq_prod, args=(addr, size, per[i], i, barrier))
                 for i in range(nprod)]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        while got < n:
            hdr, data = s.recv_multipart(copy=False)
            np.frombuffer(data.buffer, np.float32)
            got += 1
        dt = time.perf_counter() - t0
        s.close()
        ctx.term()
        os.unlink(addr[len("ipc://"):])
    elif kind == "mpq":
        q = CTX.Queue(maxsize=256)
        procs = [CTX.Process(target=_mpq_prod, args=(q, size, per[i], i, barrier))
                 for i in range(nprod)]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        while got < n:
            hdr, data = q.get(timeout=30)
            np.frombuffer(data, np.float32)
            got += 1
        dt = time.perf_counter() - t0
    else:
        raise ValueError(kind)
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            raise RuntimeError(f"{kind} producer exited with {p.exitcode}")
    return n * size / dt / 1e9


def _memcpy(size, n, where):
    """One core copying one frame's bytes: into the same destination ("hot", cache-resident for
    small frames) or round a 64 MiB buffer like the ring's (every destination line cold), that
    buffer being numpy's ("anon") or a populated /dev/shm mapping ("shm")."""
    src = np.ones(size, np.uint8)
    span = size if where == "hot" else max(64 << 20, size)
    mm = None
    if where == "shm":
        fd, path = tempfile.mkstemp(prefix="ot-bench-memcpy-", dir="/dev/shm")
        try:
            os.ftruncate(fd, span)
            mm = _map(fd, span, create=True)  # mapped exactly as the ring's segment is
        finally:
            os.close(fd)
            os.unlink(path)
        dst = np.frombuffer(mm, np.uint8)
        dst[:] = 1
    else:
        dst = np.ones(span, np.uint8)
    slots = span // size
    t0 = time.perf_counter()
    for i in range(n):
        o = (i % slots) * size
        np.copyto(dst[o:o + size], src)
    rate = n * size / (time.perf_counter() - t0) / 1e9
    if mm is not None:
        del dst
        mm.close()
    return rate


def _micro(n=4000, reps=5):
    """Microseconds per 4 KB frame of each ring operation, one process (no contention)."""
    name = f"bench-micro-{os.getpid()}"
    ring = RingConsumer.create(name, 64 << 20)
    prod = RingProducer.attach(name)
    f = _frame(4096, 0)
    batch = [f] * 32
    best = {}

    def drain(copy):
        got = 0
        while got < n:
            fs = ring.get_many(256, timeout=1, copy=copy)
            if not copy:
                for g in fs:
                    g.release()
            got += len(fs)

    ops = {"put": lambda: [prod.put(f) for _ in range(n)],
           "get_many_zero_copy": lambda: drain(False),
           "put_many_32": lambda: [prod.put_many(batch) for _ in range(n // 32)],
           "get_many_copy": lambda: drain(True)}
    for _ in range(reps):
        for op, fn in ops.items():
            t0 = time.perf_counter()
            fn()
            best[op] = min(best.get(op, 1e9), (time.perf_counter() - t0) / n * 1e6)
    prod.close()
    ring.close()
    return {k: round(v, 2) for k, v in best.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer bytes and repeats (< 60 s)")
    ap.add_argument("--kinds", default="ring,ring-cp,ring-pm,zmq,mpq")
    args = ap.parse_args(argv)
    volume = {"4k": 24 << 20, "1m": 384 << 20, "8m": 768 << 20}
    reps = 5 if args.quick else 9
    if not args.quick:
        volume = {k: 4 * v for k, v in volume.items()}
    kinds = args.kinds.split(",")
    res: dict[tuple, float] = {}
    t_start = time.time()
    load0 = os.getloadavg()[0]
    # repeats interleave all transports, so a burst of load elsewhere hits them alike; best of reps
    for _ in range(reps):
        for kind in kinds:
            for nprod in (1, 4):
                for label, size in SIZES.items():
                    n = max(volume[label] // size // (4 if kind == "mpq" else 1), 16)
                    r = _run(kind, size, n, nprod)
                    res[kind, nprod, label] = max(res.get((kind, nprod, label), 0.0), r)
        for kind, where in (("memcpy", "anon"), ("memcpy-hot", "hot"), ("memcpy-shm", "shm")):
            for label, size in SIZES.items():
                r = _memcpy(size, max(volume[label] // size // 2, 16), where)
                res[kind, 1, label] = max(res.get((kind, 1, label), 0.0), r)
    print(f"{'transport':10} {'producers':>9} " + " ".join(f"{k:>9}" for k in SIZES) + "   (GB/s)")
    for kind, nprod in [(k, p) for k in kinds for p in (1, 4)] + [("memcpy", 1), ("memcpy-hot", 1),
                                                                     ("memcpy-shm", 1)]:
        print(f"{kind:10} {nprod:9d} " + " ".join(f"{res[kind, nprod, k]:9.2f}" for k in SIZES))
    micro = _micro()
    print("us per 4 KB frame, one process: " + ", ".join(f"{k} {v}" for k, v in micro.items()))
    out = {"elapsed_s": round(time.time() - t_start, 1), "quick": args.quick, "reps": reps,
           "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    if "ring" in kinds:
        for k in SIZES:
            if "zmq" in kinds:
                out[f"ring_over_zmq_{k}"] = round(res["ring", 1, k] / res["zmq", 1, k], 2)
                out[f"ring_4p_over_zmq_4p_{k}"] = round(res["ring", 4, k] / res["zmq", 4, k], 2)
        out["ring_over_memcpy_8m"] = round(res["ring", 1, "8m"] / res["memcpy", 1, "8m"], 2)
        out["ring_over_memcpy_shm_8m"] = round(res["ring", 1, "8m"] / res["memcpy-shm", 1, "8m"], 2)
        out["ring_over_memcpy_hot_8m"] = round(res["ring", 1, "8m"] / res["memcpy-hot", 1, "8m"], 2)
        out["ring_4p_over_1p_4k"] = round(res["ring", 4, "4k"] / res["ring", 1, "4k"], 2)
        out["ring_4p_over_1p_1m"] = round(res["ring", 4, "1m"] / res["ring", 1, "1m"], 2)
        if "ring-pm" in kinds and "zmq" in kinds:
            out["ring_put_many_over_zmq_4k"] = round(res["ring-pm", 1, "4k"] / res["zmq", 1, "4k"], 2)
        if "ring-cp" in kinds and "zmq" in kinds:
            out["ring_copy_over_zmq_4k"] = round(res["ring-cp", 1, "4k"] / res["zmq", 1, "4k"], 2)
    out["us_per_frame_4k"] = micro
    out["gbps"] = {f"{k}_{p}p_{s}": round(v, 3) for (k, p, s), v in res.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
