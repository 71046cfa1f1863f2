"""The Python client's fields, pieces, metadata, heartbeat and SIM_END counts, through a real ring;
and the launcher's rule that a program exiting 0 without SIM_END is not done."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from onlinetrain import client
from onlinetrain import frame as fr
from onlinetrain.shm_channel import Empty, RingConsumer


def _all(ring):
    out = []
    while True:
        try:
            out += ring.get_many(256, timeout=0.3)
        except Empty:
            return out


@pytest.mark.timeout(60)
def test_pieces_fields_metadata_and_counts(ring_name, tmp_path, monkeypatch):
    prog = tmp_path / "progress"
    monkeypatch.setenv(client.ENV_PROGRESS, str(prog))
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        with client.init(f"shm://{ring_name}", 4, [1.0, 2.0]) as sim:
            for k in (1, 2):
                sim.send(k, np.full((4, 3), k, np.float32), name="T")
                for r in (0, 1):
                    sim.send(k, np.full((2, 3), 10 * k + r), name="P", global_shape=(4, 3),
                             offset=[2 * r, 0], meta={"rank": r, "t": 0.5 * k})
            before = prog.read_bytes()[:20]
            sim._pt = 0.0  # the 50 ms rate limit is not what this checks
            sim.heartbeat()
            assert prog.read_bytes()[:20] != before  # the launcher sees it alive
            assert sim.counts() == {"T": (2, 1), "P": (2, 2)}
        fs = _all(ring)
    assert [f.kind for f in fs] == [fr.DATA] * 6 + [fr.SIM_END]
    p = [f for f in fs if f.name == "P"]
    assert [f.offset for f in p] == [(0, 0), (2, 0)] * 2 and all(f.global_shape == (4, 3) for f in p)
    assert p[3].meta == b'{"rank":1,"t":1.0}' and p[3].array.tolist() == [[21.0] * 3] * 2
    assert fs[0].global_shape is None and fs[0].meta == b""
    assert fr.sim_end_counts(fs[-1]) == {"T": (2, 1), "P": (2, 2)} and fs[-1].time_step == 6
    assert prog.read_bytes()[20:21] == b"E" and client.sim_end_sent(str(prog))


@pytest.mark.timeout(60)
def test_one_rank_announces_totals_the_others_close(ring_name):
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        sims = [client.init(f"shm://{ring_name}", 8, [0.0]) for _ in range(2)]
        for r, sim in enumerate(sims):
            sim.send(1, np.zeros((1, 2)), name="T", global_shape=(2, 2), offset=(r, 0))
        sims[1].close()  # no SIM_END from this rank
        sims[0].finalize(counts={"T": (1, 2)})
        fs = _all(ring)
    assert [f.kind for f in fs] == [fr.DATA, fr.DATA, fr.SIM_END]
    assert fr.sim_end_counts(fs[-1]) == {"T": (1, 2)}


def test_bad_metadata_and_counts_are_clear_errors(ring_name):
    with RingConsumer.create(ring_name, 1 << 16):
        sim = client.init(f"shm://{ring_name}", 0, [])
        with pytest.raises(client.ClientError, match="metadata .* is not JSON-serialisable"):
            sim.send(0, np.zeros(2), meta={"x": object()})
        with pytest.raises(fr.FrameError, match="pieces >= 1"):
            sim.finalize(counts={"T": (3, 0)})
        assert sim.closed  # closed even though SIM_END could not be built


@pytest.mark.timeout(120)
def test_program_exiting_0_without_sim_end_is_not_done(ring_name, tmp_path):
    """The launcher used to send a count-less SIM_END for any clean exit; now a program that never
    announced its counts is treated as crashed (its data cannot be checked complete)."""
    from onlinetrain.config import SolverConfig
    from onlinetrain.simulate import run_simulations
    prog = tmp_path / "forgetful.py"
    prog.write_text("import numpy as np\nfrom onlinetrain import client\n"
                    "sim = client.init()\nsim.send(1, np.zeros(2, np.float32))\nsim.close()\n")
    solver = SolverConfig(kind="program", argv=[sys.executable, str(prog)])
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        res = run_simulations([{"id": 0, "params": [1.0]}], solver, f"shm://{ring_name}",
                              max_restarts=1, send_stream_end=False)
        fs = _all(ring)
    assert res.done == [] and "sent no SIM_END" in res.failed[0] and res.restarts == 1
    assert [f.kind for f in fs] == [fr.DATA, fr.DATA, fr.SIM_FAILED]  # two attempts, no SIM_END
