"""Run ONE simulation in this process and stream it (the child that `ot simulate` starts).

    OT_CHANNEL=shm://demo OT_SIM_ID=3 OT_PARAMS='[100,200,300,400,500]' \
    OT_SOLVER='{"kind": "heat2d", "n": 32, "steps": 100}' python -m onlinetrain.simrun

`kind = "heat2d"` runs solvers.heat2d, `kind = "ks1d"` solvers.ks1d; `kind = "python"` imports `function` ("pkg.mod:fn"), a
generator fn(params) yielding (time_step, array). Every step is sent through the client API; a
failure inside the solver is reported to the trainer (SIM_FAILED) and exits with status 1.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from . import client


def generator(solver: dict, params):
    if solver.get("kind", "heat2d") == "heat2d":
        from solvers import heat2d  # noqa: PLC0415
        for k, u in heat2d.solve(params, n=solver.get("n", 32), steps=solver.get("steps", 100),
                                 scheme=solver.get("scheme", "implicit"),
                                 param_order=solver.get("param_order", "onlinetrain")):
            yield k, u.astype(np.float32)
        return
    if solver.get("kind") == "ks1d":
        from solvers import ks1d  # noqa: PLC0415
        kw = {k: solver[k] for k in ("length", "dt", "stride") if solver.get(k)}
        for k, u in ks1d.solve(params, n=solver.get("n", 128), steps=solver.get("steps", 100), **kw):
            yield k, u.astype(np.float32)
        return
    from .imports import import_function  # noqa: PLC0415
    yield from import_function(solver["function"])(params)


def main() -> int:
    solver = json.loads(os.environ.get("OT_SOLVER", "{}"))
    try:
        sim = client.init()
    except Exception as e:
        print(f"onlinetrain.simrun: {e}", file=sys.stderr)
        return 2
    try:
        with sim:
            for k, arr in generator(solver, list(sim.params)):
                sim.send(k, arr, name=solver.get("field", "u" if solver.get("kind") == "ks1d" else "T"))
    except Exception as e:
        print(f"onlinetrain.simrun: simulation {sim.sim_id} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
