"""The C client and its Fortran module against real rings, real processes and a real MPI.

Builds the library with `onlinetrain.clientflags` (as a user would), compiles tests/c/writer.c and
the examples/c MPI heat2d programs, and checks: every frame kind and field of format v2 as the
Python reader decodes it; both lock kinds (robust mutex, flock) shared with Python writers in a
small wrapping ring; a writer SIGKILLed holding the lock or mid-copy never wedges the ring; the
start time in the slot header is psutil's; attach waits for the magic; the heartbeat keeps a long
program alive under simulate.simulation_timeout; and the C and Fortran MPI heat2d on 2 ranks,
assembled from their pieces, equal solvers.heat2d.solve to 1e-9 relative.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from onlinetrain import clientflags
from onlinetrain import frame as fr
from onlinetrain.shm_channel import Empty, RingConsumer, RingProducer
from onlinetrain.shm_segment import C_LOCK_KIND, S_PID, S_PTIME, S_STATE, WRITING, u2f

from cbuild import mpi_tools, private_client_cache

ROOT = Path(__file__).resolve().parents[1]
PARAMS = [100.0, 200.0, 300.0, 400.0, 500.0]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The client library (in a private cache) and the test programs, built once per session."""
    d = tmp_path_factory.mktemp("otclient")
    with private_client_cache(d / "cache"):
        mpi = mpi_tools()
        cflags, libs = clientflags.flags()
        out = {"writer": d / "writer", "heat_c": d / "heat2d_mpi", "heat_f": d / "heat2d_mpi_f"}
        strict = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
        subprocess.run(["cc", *strict, *cflags, str(ROOT / "tests/c/writer.c"), "-o",
                        str(out["writer"]), *libs], check=True)
        subprocess.run([mpi["cc"], *strict, "-ffp-contract=off", *cflags,
                        str(ROOT / "examples/c/heat2d_mpi.c"), "-o", str(out["heat_c"]), *libs],
                       check=True)
        fflags, flibs = clientflags.flags(fortran=True, fc=mpi["fc"])
        subprocess.run([mpi["fc"], "-O2", "-ffp-contract=off", "-Wall", *fflags,
                        str(ROOT / "examples/c/heat2d_mpi.f90"), "-o", str(out["heat_f"]), *flibs],
                       check=True, cwd=d)
        subprocess.run([mpi["fc"], "-O2", "-Wall", *fflags, str(ROOT / "tests/c/fwriter.f90"), "-o",
                        str(d / "fwriter"), *flibs], check=True, cwd=d)
        out["fwriter"] = d / "fwriter"
        out["mpiexec"] = mpi["run"]
        yield out


def env_for(ring_name, sim_id=5, params=PARAMS, **extra) -> dict:
    env = {**os.environ, "OT_CHANNEL": f"shm://{ring_name}", "OT_SIM_ID": str(sim_id),
           "OT_PARAMS": "[" + ", ".join(repr(p) for p in params) + "]", "OT_CONNECT_TIMEOUT": "10"}
    env.update(extra)
    return env


def drain(ring, until_sim_ends: int = 1, timeout: float = 30.0) -> list:
    out, ends, deadline = [], 0, time.monotonic() + timeout
    while ends < until_sim_ends:
        assert time.monotonic() < deadline, f"only {ends} SIM_END after {len(out)} frames"
        try:
            fs = ring.get_many(256, timeout=0.5)
        except Empty:
            continue
        out += fs
        ends += sum(f.kind == fr.SIM_END for f in fs)
    return out


@pytest.mark.timeout(120)
def test_c_frames_decode_field_by_field(built, ring_name, tmp_path):
    prog = tmp_path / "progress"
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        r = subprocess.run([str(built["writer"]), "3", "pieces"], capture_output=True, text=True,
                           env=env_for(ring_name, OT_PROGRESS=str(prog)), timeout=60)
        assert r.returncode == 0, r.stderr
        fs = drain(ring)
    data = [f for f in fs if f.kind == fr.DATA]
    assert len(data) == 3 * 4 and all(f.sim_id == 5 and list(f.params) == PARAMS for f in fs)
    for f in data:
        if f.name == "x":
            n = (f.time_step * 7919) % 5000 + 1
            assert f.array.dtype == np.float32 and f.global_shape is None and f.meta == b""
            assert np.array_equal(f.array, np.arange(n, dtype=np.float32) + f.time_step)
        elif f.name == "P":
            r0 = f.offset[0] // 2
            assert (f.global_shape, f.offset, f.array.shape) == ((4, 3), (2 * r0, 0), (2, 3))
            assert f.meta == b'{"rank": %d}' % r0
            want = 100.0 * f.time_step + 6 * r0 + np.arange(6.0)
            assert f.array.dtype == np.float64 and np.array_equal(f.array.ravel(), want)
        else:
            assert f.name == "I" and f.array.dtype == np.int32
            assert f.array.tolist() == [f.time_step, -f.time_step, 7]
    end = fs[-1]
    assert end.kind == fr.SIM_END and end.time_step == 3 + 6 + 3
    assert fr.sim_end_counts(end) == {"x": (3, 1), "P": (3, 2), "I": (3, 1)}
    raw = prog.read_bytes()
    assert raw[20:21] == b"E" and int(raw[:20]) >= 12  # the launcher's mark and counter


@pytest.mark.timeout(60)
def test_c_init_errors_are_clear(built, ring_name):
    w = str(built["writer"])
    cases = [({"OT_CHANNEL": None}, 12, "OT_CHANNEL is not set"),
             ({"OT_PARAMS": "[1, 2,"}, 12, "OT_PARAMS=[1, 2, is not a JSON list"),
             ({"OT_SIM_ID": "x3"}, 12, "OT_SIM_ID=x3 is not an integer"),
             ({"OT_CHANNEL": "tcp://h:1"}, 13, "ot relay shm://NAME tcp://h:1"),
             ({"OT_CONNECT_TIMEOUT": "0.2"}, 13, f"channel shm://{ring_name} not found after 0.2 s")]
    for change, code, msg in cases:
        env = env_for(ring_name)
        for k, v in change.items():
            if v is None:
                env.pop(k)
            else:
                env[k] = v
        r = subprocess.run([w, "1"], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == code and msg in r.stderr, (change, r.returncode, r.stderr)


@pytest.mark.timeout(60)
def test_c_attach_retries_until_the_magic_appears(built, ring_name):
    path = Path(f"/dev/shm/ot_{ring_name}")
    path.write_bytes(bytes(8192))  # a ring being created: no magic yet
    p = subprocess.Popen([str(built["writer"]), "2"], env=env_for(ring_name),
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert p.poll() is None  # still waiting
        path.unlink()
        with RingConsumer.create(ring_name, 1 << 20) as ring:
            fs = drain(ring)
        assert p.wait(30) == 0, p.stderr.read()
        assert [f.time_step for f in fs if f.kind == fr.DATA] == [0, 1]
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stderr.close()


def _python_writer(name, n, sim):
    with RingProducer.attach(name, timeout=10) as p:
        for k in range(n):
            m = (k * 7919) % 5000 + 1
            p.put(fr.Frame(sim, k, np.zeros(1), "x", np.arange(m, dtype=np.float32) + k))
        p.put(fr.sim_end(sim, {"x": (n, 1)}))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("lock_kind", [1, 0], ids=["robust-mutex", "flock"])
def test_c_and_python_writers_share_a_small_wrapping_ring(built, ring_name, lock_kind):
    import multiprocessing as mp
    with RingConsumer.create(ring_name, 256 << 10) as ring:
        ring.seg.ctl[C_LOCK_KIND] = lock_kind  # before any producer attaches: all use this kind
        cs = [subprocess.Popen([str(built["writer"]), "300"], env=env_for(ring_name, sim_id=s),
                               stderr=subprocess.PIPE, text=True) for s in (1, 2)]
        py = [mp.get_context("spawn").Process(target=_python_writer, args=(ring_name, 300, s))
              for s in (3, 4)]
        for p in py:
            p.start()
        try:
            fs = drain(ring, until_sim_ends=4, timeout=150)
        finally:
            for p in cs:
                assert p.wait(30) == 0, p.stderr.read()
                p.stderr.close()
            for p in py:
                p.join(30)
                assert p.exitcode == 0
        assert ring.abandoned == 0 and ring.rejected == 0
    seen = {s: [] for s in (1, 2, 3, 4)}
    for f in fs:
        if f.kind == fr.DATA:
            m = (f.time_step * 7919) % 5000 + 1
            assert np.array_equal(f.array, np.arange(m, dtype=np.float32) + f.time_step)
            seen[f.sim_id].append(f.time_step)
    assert all(v == list(range(300)) for v in seen.values())  # per-writer order, nothing lost


def _paused_writer(built, ring_name, where):
    p = subprocess.Popen([str(built["writer"]), "10"], stderr=subprocess.PIPE, text=True,
                         env=env_for(ring_name, OT_CLIENT_TEST_PAUSE=f"{where}:2"))
    line = p.stderr.readline()
    assert f"paused {where}" in line, line
    return p


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lock_kind", [1, 0], ids=["robust-mutex", "flock"])
@pytest.mark.parametrize("where", ["locked", "reserved"])
def test_sigkilled_c_writer_never_wedges_the_ring(built, ring_name, lock_kind, where):
    """Killed holding the ring lock, or between publishing its slot and committing it."""
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        ring.seg.ctl[C_LOCK_KIND] = lock_kind
        p = _paused_writer(built, ring_name, where)
        try:
            first = ring.get_many(8, timeout=5)
            assert [f.time_step for f in first] == [0, 1]
            if where == "reserved":  # its third slot is published, WRITING, and names it
                q, i = ring.seg.q, (ring._pos % ring.seg.capacity) >> 3
                assert q[i + S_STATE] == WRITING and q[i + S_PID] == p.pid
                # the start time is psutil's (a wrong one would get a live writer declared dead)
                assert abs(u2f(q[i + S_PTIME]) - psutil.Process(p.pid).create_time()) < 1e-6
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stderr.close()
        with RingProducer.attach(ring_name, timeout=5) as prod:
            t = time.monotonic()
            prod.put(fr.Frame(9, 99, array=np.ones(3, np.float32)), timeout=10)
            assert time.monotonic() - t < 5  # the dead writer's lock did not hold it
        f = ring.get(timeout=5)
        assert (f.sim_id, f.time_step) == (9, 99)
        assert ring.abandoned == (1 if where == "reserved" else 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("beat", [1, 0], ids=["heartbeat", "silent"])
def test_heartbeat_keeps_a_long_c_program_alive(built, ring_name, beat):
    """Issue 12 item 5: simulation_timeout killed every non-Python program."""
    from onlinetrain.config import SolverConfig
    from onlinetrain.simulate import run_simulations
    solver = SolverConfig(kind="program", argv=[str(built["writer"]), "1", f"sleep:3:{beat}"])
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        t = time.monotonic()
        res = run_simulations([{"id": 0, "params": PARAMS}], solver, f"shm://{ring_name}",
                              simulation_timeout=1.0, max_restarts=0, send_stream_end=False)
        took = time.monotonic() - t
        fs = ring.get_many(16, timeout=1)
    if beat:
        assert res.done == [0] and not res.failed and took >= 3.0
        assert [f.kind for f in fs] == [fr.DATA, fr.SIM_END]
    else:
        assert res.done == [] and "no frame for 1 s" in res.failed[0] and took < 3.0
        assert [f.kind for f in fs] == [fr.SIM_FAILED]


def _assemble(frames) -> dict:
    steps: dict[int, np.ndarray] = {}
    for f in frames:
        if f.kind != fr.DATA:
            continue
        a = steps.setdefault(f.time_step, np.full(f.global_shape, np.nan))
        a[tuple(slice(o, o + s) for o, s in zip(f.offset, f.array.shape))] = f.array
    return steps


@pytest.mark.timeout(180)
@pytest.mark.parametrize("prog", ["heat_c", "heat_f"], ids=["C", "Fortran"])
def test_mpi_heat2d_on_two_ranks_equals_the_python_solver(built, ring_name, prog):
    n, steps = 16, 8
    with RingConsumer.create(ring_name, 8 << 20) as ring:
        r = subprocess.run([built["mpiexec"], "-n", "2", str(built[prog]), str(n), str(steps)],
                           env=env_for(ring_name, sim_id=3), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        fs = drain(ring)
    assert fr.sim_end_counts(fs[-1]) == {"T": (steps, 2)}
    pieces = [f for f in fs if f.kind == fr.DATA]
    assert len(pieces) == 2 * steps and {f.offset for f in pieces} == {(0, 0), (8, 0)}
    got = _assemble(pieces)
    want = dict(solve_ref(n, steps))
    assert sorted(got) == sorted(want)
    for k, u in want.items():
        assert not np.isnan(got[k]).any()
        assert np.abs(got[k] - u).max() <= 1e-9 * np.abs(u).max(), k


def solve_ref(n, steps):
    sys.path.insert(0, str(ROOT))
    from solvers import heat2d
    return heat2d.solve(PARAMS, n=n, steps=steps)


def test_clientflags_names_a_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("OT_CLIENT_CACHE", str(tmp_path))
    with pytest.raises(clientflags.ClientBuildError, match="C compiler 'no-such-cc' not found: "
                                                           "install one .*--cc") as e:
        clientflags.flags(cc="no-such-cc")
    assert e.value.value == "no-such-cc"
    r = subprocess.run([sys.executable, "-m", "onlinetrain.clientflags", "--fortran", "--fc",
                        "no-such-fc", "--libs"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "Fortran compiler 'no-such-fc' not found" in r.stderr


def test_clientflags_builds_once_and_prints_usable_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("OT_CLIENT_CACHE", str(tmp_path))
    d = clientflags.build()
    lib = d / "lib" / "libotclient.a"
    t = lib.stat().st_mtime_ns
    assert clientflags.build() == d and lib.stat().st_mtime_ns == t  # cached, not rebuilt
    r = subprocess.run([sys.executable, "-m", "onlinetrain.clientflags", "--cflags", "--libs"],
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.split() == [f"-I{d / 'include'}", f"-L{d / 'lib'}", "-lotclient", "-lpthread"]



@pytest.mark.timeout(60)
def test_c_writer_blocked_on_a_full_ring_learns_the_consumer_is_gone(built, ring_name):
    ring = RingConsumer.create(ring_name, 64 << 10)  # fills after a few frames: backpressure
    p = subprocess.Popen([str(built["writer"]), "300"], env=env_for(ring_name),
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert p.poll() is None  # waiting for room
        ring.close()
        assert p.wait(10) == 1
        err = p.stderr.read()
        assert f"the consumer (trainer) is gone: the consumer of shm://{ring_name}" in err
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stderr.close()


@pytest.mark.timeout(60)
def test_fortran_module_axis_order_metadata_and_messages(built, ring_name):
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        r = subprocess.run([str(built["fwriter"])], capture_output=True, text=True,
                           env=env_for(ring_name, params=[0.5]), timeout=30)
        assert r.returncode == 0, r.stderr
        fs = drain(ring)
    a = fs[0]
    # a(3, 2) in Fortran arrives as shape (2, 3): element [j, i] is a(i, j) = 10 i + j + p(1)
    assert a.name == "A" and a.array.dtype == np.float32 and a.array.shape == (2, 3)
    assert a.array.tolist() == [[10 * i + j + 0.5 for i in (1, 2, 3)] for j in (1, 2)]
    assert a.meta == b'{"k": 1}' and list(a.params) == [0.5]
    assert "field name '' has 0 bytes: use 1..255" in r.stdout
    assert fr.sim_end_counts(fs[-1]) == {"A": (1, 1)}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("prog", ["heat_c", "heat_f"], ids=["C", "Fortran"])
def test_ot_run_trains_from_the_mpi_example_on_two_ranks(built, ring_name, tmp_path, prog):
    """Issue 12 done-when: a C and a Fortran MPI solver train a surrogate through `ot run` with 2
    ranks per simulation ([solver] kind = "program", argv = mpiexec -n 2 ...)."""
    from onlinetrain.cli import main
    from click.testing import CliRunner
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "examples/c/heat2d-mpi.toml").read_text()
                   .replace('"mpiexec"', f'"{built["mpiexec"]}"')
                   .replace('"examples/c/heat2d_mpi"', f'"{built[prog]}"')
                   .replace("n_train = 12", "n_train = 4").replace("n_validation = 3",
                                                                    "n_validation = 1")
                   .replace('dir = "ot-study/heat2d-mpi"', f'dir = "{tmp_path / "o"}"')
                   .replace('name = "heat2d-mpi"', f'name = "{ring_name}"'))
    r = CliRunner().invoke(main, ["run", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    s = __import__("json").loads((tmp_path / "o" / "summary.json").read_text())
    assert s["sims_done"] == 5 and s["sims_failed"] == 0
    assert s["samples_received"] == 5 * 20 and s["duplicates_dropped"] == 0
    assert s["batches"] > 0
