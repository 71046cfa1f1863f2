"""Test solvers for the Slurm tests: heat2d (n=8, steps=10) with faults chosen by environment.

    [solver]
    kind = "python"
    function = "tests.slurm_solvers:heat2d_faulty"

OT_TEST_FAIL=2,5   these simulation ids always raise (every attempt)
OT_TEST_HANG=3     this id writes its pid to $OT_TEST_MARKS/hang-3-a<attempt> after 3 steps and
                   sleeps, on its first attempt only (OT_TEST_HANG_ALWAYS=1: on every attempt)
"""
from __future__ import annotations

import os
import time

import numpy as np


def _ids(var: str) -> set[int]:
    return {int(v) for v in os.environ.get(var, "").split(",") if v.strip()}


def heat2d_faulty(params):
    from solvers import heat2d  # noqa: PLC0415
    sid, attempt = int(os.environ["OT_SIM_ID"]), int(os.environ.get("OT_ATTEMPT", "0"))
    if sid in _ids("OT_TEST_FAIL"):
        raise RuntimeError(f"simulation {sid} always fails (test)")
    hang = sid in _ids("OT_TEST_HANG") and (attempt == 0 or os.environ.get("OT_TEST_HANG_ALWAYS"))
    for k, u in heat2d.solve(params, n=8, steps=10):
        if hang and k == 3:
            mark = os.path.join(os.environ["OT_TEST_MARKS"], f"hang-{sid}-a{attempt}")
            with open(mark + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(mark + ".tmp", mark)
            time.sleep(600)
        yield k, u.astype(np.float32)
