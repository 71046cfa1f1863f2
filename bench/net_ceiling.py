"""How close tcp:// gets to a bare localhost socket, with CPU per MB on each side.

    flock /tmp/ot-bench.lock python bench/net_ceiling.py [--quick]

Cases, each with the sender in a spawned process and the receiver in this one:
  bare        sendall of the payload / recv_into one reused buffer (MSG_WAITALL)
  bare-lowat  the same with SO_RCVLOWAT = frame size (the best a receiver can do here)
  tcp         TcpProducer.put / TcpConsumer.get_many(copy=False) + release (the trainer's way)
  zmq         ZeroMQ PUSH/PULL, zero-copy on both sides (bench/net.py's baseline)
CPU µs per MB comes from getrusage; the sender's includes its interpreter start (~0.2 s).
Cases are interleaved across repeats; medians are reported. The last line is JSON: ratios against
bare-lowat measured in the same run, and its GB/s.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import net  # noqa: E402  (bench/net.py: the zmq and onlinetrain cases)


def _bare_send(port, size, n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a = memoryview(np.random.rand(size // 4).astype(np.float32)).cast("B")
    for _ in range(n):
        s.sendall(a)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def bench_bare(size, n, lowat: bool):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    p = mp.get_context("spawn").Process(target=_bare_send, args=(ls.getsockname()[1], size, n))
    p.start()
    c, _ = ls.accept()
    if lowat:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    buf = np.empty(size, np.uint8)
    mv = memoryview(buf)
    t0 = 0.0
    for k in range(n):
        if k == 1:
            t0 = time.perf_counter()
        got = 0
        while got < size:  # MSG_WAITALL with a watermark is safe here: frames come back to back
            got += c.recv_into(mv[got:], size - got, socket.MSG_WAITALL)
        buf[0]
    dt = time.perf_counter() - t0
    c.close()
    p.join()
    ls.close()
    return (n - 1) * size / dt / 1e9


def _cpu():
    c, s = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime, s.ru_utime + s.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    mb = 1 << 20
    n = 1200 if args.quick else 4000
    cases = {"bare": lambda: bench_bare(mb, n, False),
             "bare-lowat": lambda: bench_bare(mb, n, True),
             "tcp": lambda: net.bench_ot(mb, n, False), "zmq": lambda: net.bench_zmq(mb, n)}
    runs: dict = {c: [] for c in cases}
    for _ in range(args.repeat):
        for case, fn in cases.items():
            c0, s0 = _cpu()
            gbps = fn()
            c1, s1 = _cpu()
            runs[case].append((gbps, (c1 - c0) / n * 1e6, (s1 - s0) / n * 1e6))
    print(f"1 MB frames, {n} per run\n{'case':<12}{'GB/s':>7}{'send us/MB':>12}{'recv us/MB':>12}"
          "   GB/s of each run")
    med = {}
    for case, rs in runs.items():
        med[case] = [statistics.median(r[i] for r in rs) for i in range(3)]
        print(f"{case:<12}{med[case][0]:>7.2f}{med[case][1]:>12.0f}{med[case][2]:>12.0f}   "
              + " ".join(f"{r[0]:.2f}" for r in rs), flush=True)
    ceil = med["bare-lowat"][0]
    print(json.dumps({"tcp_vs_bare_lowat_1MB": round(med["tcp"][0] / ceil, 3),
                      "zmq_vs_bare_lowat_1MB": round(med["zmq"][0] / ceil, 3),
                      "bare_vs_bare_lowat_1MB": round(med["bare"][0] / ceil, 3),
                      "bare_lowat_gbps_1MB": round(ceil, 3)}))


if __name__ == "__main__":
    main()
