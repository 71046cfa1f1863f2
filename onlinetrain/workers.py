"""Who is working on a study, and are they alive: worker ids (HOST:PID), their heartbeat files
(`<study>/workers/<host>-<pid>.json`, written by study.Heartbeat) and the liveness test the ledger
uses to release the sets of dead workers.

    worker_id()                                   # "node12:4711"
    worker_alive(study_dir, "node12:4711", pstart, worker_timeout=30.0, claimed_at=t)
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import psutil

WORKERS = "workers"  # the heartbeat files' folder in a study directory


def _pstart(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


HOST = socket.gethostname()


def worker_id(pid: int | None = None) -> str:
    return f"{HOST}:{pid or os.getpid()}"


def _alive_local(pid: int, start: float) -> bool:
    try:
        p = psutil.Process(pid)
        same = not start or abs(p.create_time() - start) < 1  # not a reused pid
        return p.status() != psutil.STATUS_ZOMBIE and same
    except psutil.Error:
        return False


def heartbeat_path(study_dir, worker: str) -> Path:
    return Path(study_dir) / WORKERS / (worker.replace(":", "-") + ".json")


def read_heartbeat(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def worker_alive(study_dir, worker: str, pstart: float, worker_timeout: float,
                 claimed_at: float) -> bool:
    host, _, pid = worker.rpartition(":")
    if host == HOST:
        return _alive_local(int(pid), pstart)
    hb = read_heartbeat(heartbeat_path(study_dir, worker))
    last = hb["t"] if hb and isinstance(hb.get("t"), (int, float)) else claimed_at
    return time.time() - last <= worker_timeout
