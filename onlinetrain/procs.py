"""Child processes done right: argv lists, one process group per child, TERM, grace, KILL.

    p = spawn([sys.executable, "-m", "onlinetrain.simrun"], env=env)
    ...
    terminate(p, grace=3.0)        # SIGTERM to the whole group, then SIGKILL after `grace`

Never through a shell (argv lists only). A child runs in its own session (start_new_session) so
that a signal to its group reaches everything it started (e.g. an MPI launcher and its ranks) and
nothing else.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)


def spawn(argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    return subprocess.Popen(argv, env=env, start_new_session=True, **kw)


def _killpg(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate(proc: subprocess.Popen, grace: float = 3.0) -> int | None:
    """Stop `proc` and its process group: SIGTERM, wait `grace` s, SIGKILL. Returns its exit code."""
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.1f s; sending SIGKILL", proc.pid, grace)
    # the leader may be gone while others of its group live on: KILL the group regardless
    _killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
        log.error("pid %d survived SIGKILL", proc.pid)
        return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def wait_any(procs: dict, timeout: float) -> list:
    """Keys of `procs` (key -> Popen) that have exited, polling for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done = [k for k, p in procs.items() if p.poll() is not None]
        if done or time.monotonic() >= deadline:
            return done
        time.sleep(0.01)
