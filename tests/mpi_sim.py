"""A 2-rank (or N-rank) MPI simulation for the launch tests: every rank solves heat2d (n=8, 6 steps);
rank r owns the steps k with k % size == r and sends them to rank 0, which streams every step in
order through the Python client. Rank 0 writes the world size to $OT_TEST_MARKS/size-<sim id>.

    mpiexec -n 2 python tests/mpi_sim.py       (OT_CHANNEL, OT_SIM_ID, OT_PARAMS from the launcher)
"""
import json
import os

import numpy as np
from mpi4py import MPI

from solvers import heat2d

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
params = json.loads(os.environ["OT_PARAMS"])
steps = list(heat2d.solve(params, n=8, steps=6))
if rank == 0:
    from onlinetrain import client
    sim = client.init()
    with open(os.path.join(os.environ["OT_TEST_MARKS"], f"size-{sim.sim_id}"), "w") as fh:
        fh.write(str(size))
    with sim:
        for k, u in steps:
            owner = k % size
            if owner:
                u = np.empty_like(u)
                comm.Recv(u, source=owner, tag=k)
            sim.send(k, u)
else:
    for k, u in steps:
        if k % size == rank:
            comm.Send(np.ascontiguousarray(u), dest=0, tag=k)
