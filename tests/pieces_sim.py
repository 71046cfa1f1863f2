"""An MPI simulation that sends its field in pieces, one per rank (frame format v2): rank r sends
rows [r n / size, (r + 1) n / size) of heat2d's n x n field at every step through the Python
client, and rank 0 announces the totals (steps, `size` pieces per step) after a barrier.

    mpiexec -n 2 python tests/pieces_sim.py N STEPS     # OT_* variables from ot simulate
"""
import sys

import numpy as np
from mpi4py import MPI

from onlinetrain import client
from solvers import heat2d

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n, steps = int(sys.argv[1]), int(sys.argv[2])
rows = n // size
lo, hi = rank * rows, n if rank == size - 1 else (rank + 1) * rows
sim = client.init()
for k, u in heat2d.solve(sim.params, n=n, steps=steps):
    sim.send(k, np.ascontiguousarray(u[lo:hi]), name="T", global_shape=(n, n), offset=(lo, 0))
comm.Barrier()  # every rank's pieces are out before rank 0 announces them
if rank == 0:
    sim.finalize(counts={"T": (steps, size)})
else:
    sim.close()
