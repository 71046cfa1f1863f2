"""Transport between nodes: onlinetrain tcp:// (direct and via the on-node relay) vs ZeroMQ tcp
PUSH/PULL (Melissa's transport), 1 MB and 8 MB frames, over localhost.

    flock /tmp/ot-bench.lock python bench/net.py [--quick]

Every case runs the producer in its own process (spawned) and the consumer in this one; the
consumer touches each received array (np.frombuffer view); onlinetrain frames are taken with
copy=False and released, as the trainer's Receiver does (receive buffers are reused). Relay:
producer -> shm ring -> relay process -> tcp -> consumer. Each case runs `--repeat` times, the
cases interleaved; the median GB/s is reported. The last line is JSON: each figure is a ratio
against ZeroMQ measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onlinetrain import frame as fr  # noqa: E402


def _zmq_push(port, size, n):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 16)
    s.connect(f"tcp://127.0.0.1:{port}")
    a = np.random.rand(size // 4).astype(np.float32)
    for _ in range(n):
        s.send(a, copy=False)
    s.close(linger=-1)
    ctx.term()


def bench_zmq(size, n):
    import zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 16)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    p = mp.get_context("spawn").Process(target=_zmq_push, args=(port, size, n))
    p.start()
    pull.recv(copy=False)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        m = pull.recv(copy=False)
        np.frombuffer(m.buffer, np.float32)[0]
    dt = time.perf_counter() - t0
    p.join()
    pull.close()
    ctx.term()
    return (n - 1) * size / dt / 1e9


def _ot_push(port, size, n, study):
    from onlinetrain.tcp_channel import TcpProducer
    a = np.random.rand(size // 4).astype(np.float32)
    with TcpProducer.connect("127.0.0.1", port, timeout=30, study_dir=study) as prod:
        for k in range(n):
            prod.put(fr.Frame(0, k, np.zeros(5), "T", a))


def _ring_push(name, size, n):
    from onlinetrain.shm_channel import RingProducer
    a = np.random.rand(size // 4).astype(np.float32)
    with RingProducer.attach(name, timeout=30) as prod:
        for k in range(n):
            prod.put(fr.Frame(k % 8, k, np.zeros(5), "T", a))
        prod.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))


def _relay(name, url, study):
    from onlinetrain.relay import run_relay
    run_relay(f"shm://{name}", [url], study_dir=study, ring_mb=64)


def bench_ot(size, n, relay: bool):
    from onlinetrain.tcp_channel import TcpConsumer
    study = tempfile.mkdtemp(prefix="ot-bench-")
    cons = TcpConsumer.listen("127.0.0.1", 0, study_dir=study)
    ctx = mp.get_context("spawn")
    procs = []
    try:
        if relay:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            procs.append(ctx.Process(target=_relay, args=(name, f"tcp://127.0.0.1:{cons.port}",
                                                          study)))
            procs.append(ctx.Process(target=_ring_push, args=(name, size, n)))
        else:
            procs.append(ctx.Process(target=_ot_push, args=(cons.port, size, n, study)))
        for p in procs:
            p.start()
        cons.get(timeout=60)
        t0 = time.perf_counter()
        got = 1
        while got < n:
            for f in cons.get_many(64, timeout=60, copy=False):  # as the trainer's Receiver
                if f.kind == fr.DATA:
                    f.array[0]
                    got += 1
                f.release()
        dt = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        return (n - 1) * size / dt / 1e9
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        cons.close()


def main():
    import faulthandler  # a stuck case prints where it is stuck instead of hanging silently
    faulthandler.dump_traceback_later(240, repeat=True)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    mb = 1 << 20
    # --quick: ~0.3 s per case at 4 GB/s (shorter cases were dominated by the neighbours' noise)
    sizes = {"1MB": (mb, 1200 if args.quick else 4000), "8MB": (8 * mb, 150 if args.quick else 500)}
    cases = {"zmq": lambda s, n: bench_zmq(s, n),
             "tcp": lambda s, n: bench_ot(s, n, False),
             "relay": lambda s, n: bench_ot(s, n, True)}
    res = {}
    print(f"{'case':<8}{'frame':>6}{'GB/s (median)':>16}   runs")
    for label, (size, n) in sizes.items():
        runs: dict = {case: [] for case in cases}
        for _ in range(args.repeat):  # interleaved, so a change of background load hits all cases
            for case, fn in cases.items():
                runs[case].append(fn(size, n))
        for case in cases:
            res[(case, label)] = statistics.median(runs[case])
            print(f"{case:<8}{label:>6}{res[(case, label)]:>16.2f}   "
                  + " ".join(f"{r:.2f}" for r in runs[case]), flush=True)
    figures = {}
    for label in sizes:
        z = res[("zmq", label)]
        figures[f"tcp_vs_zmq_{label}"] = round(res[("tcp", label)] / z, 3)
        figures[f"relay_vs_zmq_{label}"] = round(res[("relay", label)] / z, 3)
        figures[f"zmq_gbps_{label}"] = round(z, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
