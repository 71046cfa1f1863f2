"""The launch engine: attaching to the trainer's channel, restarts, CPU shares, per-user rings."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from onlinetrain import launch, procs

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A trainer on a loaded machine: its ring file exists (all zeros, no magic yet) for 2.5 s before
# the header is written; then it holds the ring until its stdin closes.
SLOW_CREATOR = """
import os, sys, time
from onlinetrain.shm_channel import RingConsumer
path = "/dev/shm/ot_" + sys.argv[1]
with open(path, "wb") as fh:
    fh.write(bytes(4096 + 4096))
time.sleep(2.5)
os.unlink(path)
ring = RingConsumer.create(sys.argv[1], capacity=1 << 16)
print("ready", flush=True)
sys.stdin.read()
ring.close()
"""


@pytest.mark.timeout(60)
def test_attach_waits_for_a_ring_still_being_created(ring_name):
    p = procs.spawn([sys.executable, "-c", SLOW_CREATOR, ring_name], env=ENV,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/dev/shm/ot_{ring_name}"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        prod = launch.attach_trainer(f"shm://{ring_name}", p, timeout=30)
        assert prod is not None and p.poll() is None
        prod.close()
    finally:
        p.stdin.close()
        assert p.wait(20) == 0
        procs.terminate(p)
