"""Statistics: pick-freeze sampling, bad input, memory refusal, exact resume, stats.npz and show."""
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onlinetrain import frame as fr
from onlinetrain.cli import main
from onlinetrain.config import StatsConfig
from onlinetrain.sampler import SamplerError, pick_freeze, read_jsonl
from onlinetrain.stats import Statistics, StatsMemoryError, to_tensors
from onlinetrain.stats_io import show

CFG = dict(thresholds=[0.5], quantiles=[0.1, 0.9], sobol=True)


@pytest.mark.parametrize("base", ["uniform", "lhs", "halton", "sobol"])
def test_pick_freeze_rows_layout_and_byte_identical(base):
    args = ["sample", "--method", "pick-freeze", "-n", "6", "--base", base, "--seed", "4",
            "--bounds", "0:1", "--bounds", "10:20", "--bounds", "-5:5"]
    a, b = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    c = CliRunner().invoke(main, args[:-8] + ["--seed", "5"] + args[-6:])
    assert a.exit_code == 0, a.output
    assert a.output == b.output and a.output != c.output
    rows = [json.loads(x) for x in a.output.splitlines()]
    assert len(rows) == 6 * 5 and len(read_jsonl(io.StringIO(a.output))) == 30
    for row in rows:
        assert row["group"] == row["id"] // 5 and row["role"] == row["id"] % 5
    for g in range(6):
        A, B, *E = (np.array(r["params"]) for r in rows[5 * g:5 * g + 5])
        for k, e in enumerate(E):
            want = A.copy()
            want[k] = B[k]
            assert np.array_equal(e, want)
        assert 0 <= A[0] <= 1 and 10 <= A[1] <= 20 and -5 <= B[2] <= 5


def test_pick_freeze_start_id_must_align_with_groups():
    with pytest.raises(SamplerError, match="--start-id 3 is not a multiple of the 4 rows"):
        list(pick_freeze(2, bounds=[(0, 1)] * 2, start_id=3))
    rows = list(pick_freeze(1, bounds=[(0, 1)] * 2, start_id=8))
    assert [r["group"] for r in rows] == [2] * 4


def frames(n_groups=12, p=2, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for row in pick_freeze(n_groups, seed=seed, bounds=[(0, 1)] * p):
        x = np.asarray(row["params"])
        for t in range(1, steps + 1):
            field = (x[0] + 2 * x[1] * t + 0.1 * rng.random((3, 4))).astype(np.float32)
            out.append(fr.Frame(row["id"], t, x, "T", field))
        out.append(fr.Frame(row["id"], steps, np.zeros(0), "end", np.zeros(0), fr.SIM_END))
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_from_the_checkpoint_section_is_exact(tmp_path):
    fs = frames()
    order = np.random.default_rng(1).permutation(len(fs))
    whole = Statistics(StatsConfig(**CFG))
    for i in order:
        whole.update(fs[i])
    first = Statistics(StatsConfig(**CFG))
    half = len(fs) // 2
    for i in order[:half]:
        first.update(fs[i])
    assert first.fields["T"].pending  # groups in flight travel with the checkpoint
    torch.save({"stats": to_tensors(first.state_dict())}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed = Statistics(StatsConfig(**CFG))
    resumed.load_state_dict(ck["stats"])
    for i in order[half:]:
        resumed.update(fs[i])
    assert_same(resumed.results(), whole.results())
    assert resumed.counts == whole.counts and resumed.group_counts() == whole.group_counts()


def test_resume_with_other_thresholds_is_refused():
    st = Statistics(StatsConfig(**CFG))
    for f in frames()[:10]:
        st.update(f)
    other = Statistics(StatsConfig(thresholds=[0.7], quantiles=[0.1, 0.9], sobol=True))
    with pytest.raises(Exception, match=r"stats.thresholds = \[0.7\] differs"):
        other.load_state_dict(st.state_dict())


def test_shape_change_and_duplicates_are_counted_not_fatal():
    st = Statistics(StatsConfig(**CFG))
    fs = frames()
    for f in fs[:20]:
        st.update(f)
    before = st.results()
    assert not st.update(fr.Frame(999, 1, fs[0].params, "T", np.zeros((4, 3), np.float32)))
    assert not st.update(fs[0])  # a duplicate (sim, step)
    assert st.counts["rejected"] == 1 and st.reasons == {"shape": 1}
    assert st.counts["duplicates"] == 1
    assert_same(st.results(), before)  # nothing accumulated was lost or changed


def test_memory_refused_with_the_figure_before_accumulating():
    msgs = []
    st = Statistics(StatsConfig(**CFG, steps=100), report=msgs.append, free=lambda: 10_000)
    with pytest.raises(StatsMemoryError) as e:
        st.update(frames()[0])
    per_cell = 7 + 1 + 1 + 2 * 2 + 2 * (2 + 2) + 4 * 2  # + 1: the uint8 exceedance counters
    assert e.value.need == 12 * 100 * per_cell * 8 and e.value.free == 10_000
    assert f"{12 * 100 * per_cell * 8}" in str(e.value) and "only" in str(e.value)
    assert "12 cells x 100 steps" in msgs[0]
    assert st.counts["accepted"] == 0 and not st.fields


def test_npz_is_documented_and_show_fits_one_screen(tmp_path):
    st = Statistics(StatsConfig(**CFG))
    for f in frames():
        st.update(f)
    st.save(tmp_path / "stats.npz")
    with np.load(tmp_path / "stats.npz") as z:
        assert z["T/mean"].shape == (3, 3, 4) and z["T/steps"].tolist() == [1, 2, 3]
        assert z["T/exceedance"].shape == (3, 1, 3, 4) and z["T/quantiles"].shape == (3, 2, 3, 4)
        assert z["T/first"].shape == (3, 2, 3, 4) and z["T/sobol_n"].tolist() == [12, 12, 12]
        assert json.loads(str(z["meta"]))["counts"]["accepted"] == 12 * 4 * 3
    text = show(tmp_path)
    assert len(text.splitlines()) <= 24 and "12 complete" in text and "X2: first" in text
    r = CliRunner().invoke(main, ["stats", "show", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "stats.npz not found" in r.output


def test_pieces_of_a_field_enter_the_statistics_once_assembled():
    st = Statistics(StatsConfig(thresholds=[7.5]))
    whole = np.arange(16, dtype=np.float32).reshape(4, 4)

    def piece(sid, rank, a=whole, rows=2):
        return fr.Frame(sid, 1, np.zeros(0), "T", a[rows * rank:rows * (rank + 1)] + sid,
                        global_shape=(4, 4), offset=(rows * rank, 0))
    assert not st.update(piece(0, 1)) and not st.fields  # rows 2..3: waiting for rows 0..1
    assert not st.update(piece(0, 1)) and st.counts["duplicates"] == 1  # the same piece again
    assert st.update(piece(0, 0)) and st.fields["T"].shape == (4, 4)  # complete: it enters
    assert not st.update(piece(0, 0)) and st.counts["duplicates"] == 2  # (sim 0, step 1) is in
    st.update(piece(1, 0))
    overlap = fr.Frame(1, 1, np.zeros(0), "T", np.ones((3, 4), np.float32), global_shape=(4, 4),
                       offset=(1, 0))
    assert not st.update(overlap) and st.reasons == {"piece": 1}  # counted, nothing lost
    assert st.update(piece(1, 1))
    st.update(piece(2, 0))  # sim 2 fails: its unfinished field is dropped, the restart resends it
    st.update(fr.Frame(2, 0, np.zeros(0), "boom", np.zeros(0, np.float32), fr.SIM_FAILED))
    assert not st.pieces
    mom = st.fields["T"].steps[1].mom
    assert mom.n == 2 and np.array_equal(mom.mean.reshape(4, 4), whole + 0.5)
    want = ((whole > 7.5) * 1 + (whole + 1 > 7.5)) / 2
    assert np.array_equal(mom.exceedance().reshape(4, 4), want)
    assert st.counts["accepted"] == 2 and st.counts["pieces"] == 5 and st.counts["rejected"] == 1


def test_ot_stats_bad_level_is_a_one_line_error(ring_name):
    r = CliRunner().invoke(main, ["stats", "--from", f"shm://{ring_name}", "--quantile", "1.5"])
    assert r.exit_code != 0
    assert "stats.quantiles = [1.5]" in r.output and "strictly between 0 and 1" in r.output
    assert "Traceback" not in r.output
