"""Building the C and Fortran test programs: one MPI installation's tools, a private client cache.

    from cbuild import mpi_tools, private_client_cache
    with private_client_cache(tmp / "cache"):   # onlinetrain.clientflags builds in there
        cflags, libs = clientflags.flags()
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def mpi_tools() -> dict:
    """mpicc, mpif90 and mpiexec of one MPI installation (`make deps` installs Debian's MPICH)."""
    fc = shutil.which("mpif90") or shutil.which("mpifort")
    assert fc, "no mpif90 on PATH: run `make deps` (Debian: apt-get install libmpich-dev mpich gfortran)"
    d = Path(fc).parent
    tools = {"fc": fc, "cc": str(d / "mpicc"), "run": str(d / "mpiexec")}
    for k, v in tools.items():
        assert os.access(v, os.X_OK), f"{v} missing next to {fc}: run `make deps`"
    return tools


@contextlib.contextmanager
def private_client_cache(path):
    """OT_CLIENT_CACHE set to `path` for the block (the client library is built there, not in the
    user's cache), restored after; for session- and module-scoped fixtures (no monkeypatch)."""
    old = os.environ.get("OT_CLIENT_CACHE")
    os.environ["OT_CLIENT_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OT_CLIENT_CACHE", None)
        else:
            os.environ["OT_CLIENT_CACHE"] = old
