"""Shared fixtures: unique channel names, a check that no test leaks shm segments or children."""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wait_until(cond, timeout: float) -> bool:
    """Poll `cond()` every 50 ms for up to `timeout` seconds; True as soon as it holds."""
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _segments() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("ot_")}


def _is_leak(p: psutil.Process) -> bool:
    """A live child that is not multiprocessing's own long-lived helper (resource tracker)."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return not any("resource_tracker" in a or "forkserver" in a for a in p.cmdline())
    except psutil.Error:
        return False


@pytest.fixture
def ring_name():
    """A channel name no other test (or concurrent test run) uses."""
    return f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves one of its shm segments or a child process behind."""
    before = _segments()
    yield
    left = {s for s in _segments() - before if f"t{os.getpid()}-" in s}
    kids = [p for p in psutil.Process().children(recursive=True) if _is_leak(p)]
    for s in left:
        os.unlink(f"/dev/shm/{s}")
    for p in kids:
        p.kill()
    assert not left, f"test left shm segments behind: {sorted(left)}"
    assert not kids, f"test left child processes behind: {[p.pid for p in kids]}"


@pytest.fixture
def tiny_config(tmp_path, ring_name):
    """examples/heat2d-tiny.toml with its own output directory and ring."""
    from onlinetrain import config
    cfg = config.load(ROOT / "examples" / "heat2d-tiny.toml",
                      {"output.dir": str(tmp_path / "study"), "output.name": ring_name})
    return cfg
