"""Small fields: moments and quantiles updated over time steps (stats_rows) equal the frame-by-frame
update of each step bit for bit, whatever the batches, repeats of a step, folds and resumes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from onlinetrain import frame as fr
from onlinetrain import stats_rows
from onlinetrain.config import StatsConfig
from onlinetrain.stats import Statistics
from onlinetrain.stats_moments import StepMoments
from onlinetrain.stats_quantiles import StepQuantiles
from onlinetrain.stats_rows import FieldRows

THR = [250.0, 300.0]
LEVELS = [0.1, 0.5, 0.9]


def same_state(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@st.composite
def batches(draw):
    """Frames of a few rows in batches; a row may repeat within a batch; enough frames for the
    folds at n = 8, 64 and 128 in some rows."""
    nrows, cells = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=6))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rows = [rng.integers(0, nrows, n) for n in sizes]
    if draw(st.booleans()):  # a near-constant field: large offset, tiny noise
        xs = [(1e5 + 1e-6 * rng.standard_normal((n, cells))).astype(dtype) for n in sizes]
    else:
        xs = [(rng.normal(280, 30, (n, cells)) ** draw(st.sampled_from([1.0, 1.3]))).astype(dtype)
              for n in sizes]
    return nrows, cells, rows, xs


@settings(max_examples=120, deadline=None)
@given(batches(), st.sampled_from([1 << 16, 8, 1]))
def test_field_rows_equal_each_step_frame_by_frame(b, round_values):
    nrows, cells, rows, xs = b
    old = stats_rows.ROUND_VALUES
    stats_rows.ROUND_VALUES = round_values  # 8 or 1: rounds are cut into pieces
    try:
        store = FieldRows(nrows, cells, THR, LEVELS)
        for r, x in zip(rows, xs):
            store.add(r.tolist(), list(x))
    finally:
        stats_rows.ROUND_VALUES = old
    for row in range(nrows):
        ref_m, ref_q = StepMoments(cells, THR), StepQuantiles(cells, LEVELS)
        for r, x in zip(rows, xs):
            for i in np.flatnonzero(r == row):
                ref_m.update(x[i])
                ref_q.update(x[i], ref_m)
        same_state(StepMoments(cells, THR, store.mom, row).state_dict(), ref_m.state_dict())
        same_state(StepQuantiles(cells, LEVELS, store.q, row).state_dict(), ref_q.state_dict())


def frames_of(layout: str, sims=40, steps=30, cells=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(290, 25, (sims, steps, cells)).astype(np.float32)
    order = [(s, t) for s in range(sims) for t in range(steps)] if layout == "sims" else \
        [(s, t) for t in range(steps) for s in range(sims)]  # lockstep: every sim at step t
    if layout == "shuffled":
        order = [order[i] for i in rng.permutation(len(order))]
    return [fr.Frame(s, t, np.zeros(0), "T", x[s, t]) for s, t in order], x


@pytest.mark.parametrize("quantiles", [[], [0.5]])
@pytest.mark.parametrize("layout,small_frames,path", [
    ("sims", 4096, "rounds"), ("shuffled", 4096, "rounds"), ("lockstep", 4096, "rounds"),
    ("sims", 64, "rounds"), ("lockstep", 64, "steps")])
def test_update_many_on_a_small_field_equals_frame_by_frame(layout, small_frames, path, quantiles,
                                                            monkeypatch):
    """Batches of a channel's size, staged (stats_stage.SMALL_FRAMES) then updated over time steps
    in rounds, or by each step's own update when the staged frames hold few steps (40 simulations
    in lockstep, 64 frames staged: rounds of one or two frames); both equal the frame-by-frame
    reference, and the frames are read during the call only (the channel reuses its slots).
    (In lockstep, a batch that holds 32 frames of each of two steps still goes in rounds.)"""
    from onlinetrain import stats_stage
    from onlinetrain.stats_state import Step
    monkeypatch.setattr(stats_stage, "SMALL_FRAMES", small_frames)
    used = {"rounds": 0, "steps": 0}
    rows_add, step_apply = FieldRows.add, Step.apply

    def spy_rows(self, *a):
        used["rounds"] += 1
        return rows_add(self, *a)

    def spy_step(self, *a):
        used["steps"] += 1
        return step_apply(self, *a)
    monkeypatch.setattr(FieldRows, "add", spy_rows)
    monkeypatch.setattr(Step, "apply", spy_step)
    cfg = StatsConfig(thresholds=THR, quantiles=quantiles)
    fs, x = frames_of(layout)
    st_ = Statistics(cfg, steps_hint=8)  # fewer than the 30 steps: several FieldRows
    slots = [np.empty(16, np.float32) for _ in range(64)]
    for i in range(0, len(fs), 64):
        batch = []
        for slot, f in zip(slots, fs[i:i + 64]):
            slot[:] = f.array
            batch.append(fr.Frame(f.sim_id, f.time_step, f.params, f.name, slot))
        assert st_.update_many(batch) == len(batch)
        for slot in slots:
            slot[:] = np.nan
    fld = st_.fields["T"]
    assert [r.nrows for r in fld.rows] == [8, 16, 16]  # steps_hint, then ROWS_MORE at a time
    assert all(s.rows is not None for s in fld.steps.values())
    for t, step in fld.steps.items():
        ref_m, ref_q = StepMoments(16, THR), StepQuantiles(16, quantiles or [0.5])
        for f in fs:
            if f.time_step == t:
                ref_m.update(x[f.sim_id, t])
                ref_q.update(x[f.sim_id, t], ref_m)
        same_state(step.mom.state_dict(), ref_m.state_dict())
        if quantiles:
            same_state(step.q.state_dict(), ref_q.state_dict())
    assert used[path] > 0, used
    if path == "rounds":
        assert used["steps"] == 0, used


def test_resume_of_a_small_field_is_exact():
    cfg = StatsConfig(thresholds=THR, quantiles=[0.25, 0.75])
    fs, _ = frames_of("shuffled", sims=50, steps=12, seed=3)
    whole = Statistics(cfg, steps_hint=5)
    for i in range(0, len(fs), 32):
        whole.update_many(fs[i:i + 32])
    first = Statistics(cfg, steps_hint=5)
    half = 320
    for i in range(0, half, 32):
        first.update_many(fs[i:i + 32])
    mid = first.state_dict()
    resumed = Statistics(cfg, steps_hint=5)
    resumed.load_state_dict(mid)
    for i in range(half, len(fs), 32):
        resumed.update_many(fs[i:i + 32])
    a, b = resumed.results(), whole.results()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_large_fields_keep_their_own_arrays():
    cfg = StatsConfig(thresholds=THR)
    st_ = Statistics(cfg)
    st_.update(fr.Frame(0, 0, np.zeros(0), "big", np.zeros(stats_rows.ROWS_CELLS + 1)))
    st_.update(fr.Frame(0, 0, np.zeros(0), "small", np.zeros(stats_rows.ROWS_CELLS)))
    assert st_.fields["big"].steps[0].rows is None and not st_.fields["big"].rows
    assert st_.fields["small"].steps[0].rows is not None


def test_small_fields_of_other_sizes_in_one_batch():
    """Frames of two small fields (16 and 9 cells) and a large one, interleaved in every batch,
    over more steps than steps_hint (several FieldRows per field): each step equals its frame-by-
    frame reference."""
    rng = np.random.default_rng(7)
    shapes = {"a": (4, 4), "b": (3, 3), "big": (stats_rows.ROWS_CELLS + 5,)}
    x = {k: rng.normal(290, 20, (12, 6) + s).astype(np.float32) for k, s in shapes.items()}
    fs = [fr.Frame(s, t, np.zeros(0), k, x[k][s, t]) for s in range(12) for t in range(6)
          for k in shapes]
    st_ = Statistics(StatsConfig(thresholds=THR, quantiles=[0.5]), steps_hint=4)
    for i in range(0, len(fs), 50):
        st_.update_many(fs[i:i + 50])
    assert len(st_.fields["a"].rows) == 2 and not st_.fields["big"].rows
    for k, shape in shapes.items():
        cells = int(np.prod(shape))
        for t in range(6):
            m, q = StepMoments(cells, THR), StepQuantiles(cells, [0.5])
            for s in range(12):
                m.update(x[k][s, t].reshape(-1))
                q.update(x[k][s, t].reshape(-1), m)
            step = st_.fields[k].steps[t]
            same_state(step.mom.state_dict(), m.state_dict())
            same_state(step.q.state_dict(), q.state_dict())


def test_an_empty_field_is_counted_not_fatal():
    """A frame of 0 cells (not a small field: nothing to update over steps) enters as before."""
    st_ = Statistics(StatsConfig(thresholds=[1.0], quantiles=[0.5]))
    for s in range(2):
        assert st_.update_many([fr.Frame(s, 0, np.zeros(0), "T", np.zeros(0, np.float32))]) == 1
    assert st_.fields["T"].steps[0].rows is None and st_.fields["T"].steps[0].mom.n == 2


@pytest.mark.parametrize("hint", [0, 3])
def test_small_field_steps_are_allocated_as_the_memory_figure_counts(hint):
    """The first FieldRows holds the steps_hint steps the memory figure counted; without a hint,
    and past it, ROWS_MORE steps at a time; none over ROWS_BYTES."""
    from onlinetrain import stats_state
    cfg = StatsConfig(thresholds=THR, quantiles=LEVELS)
    st_ = Statistics(cfg, steps_hint=hint)
    for t in range(40):
        st_.update(fr.Frame(0, t, np.zeros(0), "T", np.ones(16, np.float32)))
    st_.update(fr.Frame(0, 0, np.zeros(0), "W", np.ones(1000, np.float32)))
    sizes = [r.nrows for r in st_.fields["T"].rows]
    more = stats_state.ROWS_MORE
    assert sizes == ([hint] if hint else []) + [more] * (len(sizes) - (1 if hint else 0))
    assert sum(sizes) >= 40 > sum(sizes) - more
    per_step = 1000 * 8 * (7 + len(THR) + 1 + 2 * len(LEVELS))
    wide = st_.fields["W"].rows[0]
    assert wide.nrows == min(hint or more, stats_state.ROWS_BYTES // per_step)
