"""mpi:// channels with a real MPI (the mpich wheel): one MPMD job of 2 `ot simulate` ranks and 2
`ot train` ranks (DDP over gloo, rendezvous found through MPI)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onlinetrain import procs
from onlinetrain.channel import parse_url

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
    ENV.pop(_k, None)
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def _mpich_segments() -> set[str]:
    """mpich's own shared memory of a job: left behind when a rank dies, so the test removes it."""
    return {e for e in os.listdir("/dev/shm") if e.startswith("mpich_shm")}


def test_mpi_url():
    assert parse_url("mpi://train").scheme == "mpi" and str(parse_url("mpi://train")) == \
        "mpi://train"


@pytest.mark.timeout(240)
def test_mpmd_job_two_simulate_ranks_two_train_ranks(tmp_path):
    assert os.path.exists(MPIEXEC), "mpiexec missing: `make install` installs mpi4py and mpich"
    params = subprocess.run(OT + ["sample", "-n", "8", "--seed", "1"], capture_output=True,
                            text=True, check=True, env=ENV).stdout
    (tmp_path / "p.jsonl").write_text(params)
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "examples" / "heat2d-tiny.toml").read_text()
                   .replace("val_every = 100", "val_every = 20"))
    out = tmp_path / "study"
    sim = ["simulate", "--to", "mpi://train", "--params", str(tmp_path / "p.jsonl"), "--n", "12",
           "--steps", "20"]
    train = ["train", "--from", "mpi://train", "--config", str(cfg), "--out", str(out),
             "--max-batches", "40", "--quiet"]
    before = _mpich_segments()
    job = procs.spawn([MPIEXEC, "-n", "2"] + OT + sim + [":", "-n", "2"] + OT + train,
                      env={**ENV, "MASTER_ADDR": "127.0.0.1", "OT_DIST_TIMEOUT": "120"},
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = job.communicate(timeout=200)
    finally:  # on a timeout or failure too: no rank and no mpich segment outlives the test
        procs.terminate(job)
        for seg in _mpich_segments() - before:
            try:
                os.unlink(f"/dev/shm/{seg}")
            except FileNotFoundError:
                pass
    r = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stderr.count("simulations done, 0 failed") == 2  # each simulate rank ran its share
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == 2 and s["batches"] == 40 and s["sims_done"] == 8
    assert s["samples_received"] == 8 * 20 and s["validation_samples"] == 2 * 20
    assert s["duplicates_dropped"] == 0 and s["frames_rejected"] == 0
    assert s["val_mse"] is not None and s["val_mse"] < s["mean_field_mse"]
    assert 0 < s["rank_samples"] < 8 * 20  # rank 0 got only its share of the simulations
    assert torch.load(out / "checkpoint.pt", weights_only=True)["ranks"] == 2
    assert r.stdout.count("trained 40 batches on 160 samples from 8 simulations") == 2
