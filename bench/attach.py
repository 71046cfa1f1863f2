"""Cost of a short simulation's attach to the ring: does it depend on the ring's size?

    flock /tmp/ot-bench.lock env PYTHONPATH=$PWD python bench/attach.py --quick

A study of many short simulations (the feed benchmark's 200 simulations/s of 100 steps) attaches
to the node's ring once per simulation. Each arm runs SIMS simulations one after the other in one
producer process, each: attach (C `ot_init`, Python `onlinetrain.client.init`), 100 sends of a
4x4 float32 field, finalize (SIM_END); a consumer thread in this process drains the ring. The
figure is the wall time per simulation, on the default 64 MB ring against a 1 MB ring (the
baseline, same run): a producer that maps or faults the whole ring at attach pays per megabyte.

Last line JSON: sim_ms (per client and ring), c_64m_over_1m, python_64m_over_1m (1.0: the ring's
size costs nothing; each is the best of the repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from onlinetrain import clientflags  # noqa: E402
from onlinetrain.errors import Empty  # noqa: E402
from onlinetrain.shm_channel import RingConsumer  # noqa: E402

PY_PRODUCER = """
import sys, time, numpy as np
from onlinetrain import client
url, sims, steps, cells = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a = np.zeros(cells, np.float32)
t0 = time.monotonic()
for s in range(sims):
    sim = client.init(url, s, [1.0, 2.0], timeout=30.0)
    for k in range(steps):
        sim.send(k, a, "T")
    sim.finalize()
    sim.close()
print((time.monotonic() - t0) / sims * 1e3)
"""


def build(d: Path) -> str:
    cflags, libs = clientflags.flags()
    exe = str(d / "sim_cost")
    subprocess.run(["cc", "-std=c11", "-O2", *cflags, str(HERE / "c" / "sim_cost.c"), "-o", exe,
                    *libs], check=True)
    return exe


def arm(argv_head: list, ring_mb: int, sims: int) -> float:
    """ms per simulation of one producer run into a fresh ring of ring_mb MB."""
    name = "att" + uuid.uuid4().hex[:8]
    ring = RingConsumer.create(name, capacity=ring_mb << 20)
    stop = threading.Event()

    def drain():
        while not stop.is_set():
            try:
                ring.get_many(256, timeout=0.05)  # copies: the slots go back at once
            except Empty:
                pass
    th = threading.Thread(target=drain, daemon=True)
    th.start()
    try:
        out = subprocess.run([*argv_head, f"shm://{name}", str(sims), "100", "16"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        if out.returncode:
            raise RuntimeError(f"producer failed ({out.returncode}): {out.stderr[-500:]}")
        return float(out.stdout.split()[-1])
    finally:
        stop.set()
        th.join(5)
        ring.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer simulations (~10 s)")
    a = ap.parse_args()
    sims, reps = (400, 3) if a.quick else (1000, 5)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ot-bench-attach-") as d:
        producers = {"c": [build(Path(d))], "python": [sys.executable, "-c", PY_PRODUCER]}
        ms: dict[str, float] = {}
        for _ in range(reps):  # interleaved: a burst of load elsewhere hits every arm alike
            for kind, head in producers.items():
                for mb in (1, 64):
                    key = f"{kind}_{mb}m"
                    ms[key] = min(ms.get(key, float("inf")), arm(head, mb, sims))
    print(f"{'client':8} {'1 MB ring':>10} {'64 MB ring':>11}   ms per simulation (attach, "
          f"100 sends of 4x4 float32, finalize)")
    for kind in producers:
        print(f"{kind:8} {ms[kind + '_1m']:10.3f} {ms[kind + '_64m']:11.3f}")
    print(json.dumps({"elapsed_s": round(time.time() - t0, 1), "sims": sims, "reps": reps,
                      "sim_ms": {k: round(v, 4) for k, v in ms.items()},
                      "c_64m_over_1m": round(ms["c_64m"] / ms["c_1m"], 3),
                      "python_64m_over_1m": round(ms["python_64m"] / ms["python_1m"], 3)}))


if __name__ == "__main__":
    main()
