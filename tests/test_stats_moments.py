"""Moments, extrema and exceedance equal numpy's on the same data, whatever the arrival order."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from onlinetrain import frame as fr
from onlinetrain.config import StatsConfig
from onlinetrain.stats import Statistics
from onlinetrain.stats_moments import CHUNK, StepMoments

THR = [-1.0, 0.0, 2.5]


def reference(x):
    """Two-pass float64 moments of each column of x (n, cells)."""
    n = len(x)
    m = x.mean(0)
    c = x - m
    m2, m3, m4 = (c ** 2).sum(0), (c ** 3).sum(0), (c ** 4).sum(0)
    return m, m2, m3, m4


def close(a, b, rel, absol):
    return np.all(np.abs(a - b) <= rel * np.abs(b) + absol)


def check(st_or_m, x):
    m = st_or_m
    n = len(x)
    mean, m2, m3, m4 = reference(x)
    scale = np.abs(x).max(0) + 1e-300
    assert m.n == n
    assert close(m.mean, mean, 1e-10, 1e-12 * scale)
    # a central moment of order k is checked to 1e-10 relative, or 1e-12 x scale^k absolute (the
    # rounding of a one-pass update on data of that scale); skewness and kurtosis follow from them
    assert close(m.m2, m2, 1e-10, 1e-12 * n * scale ** 2)
    assert close(m.m3, m3, 1e-10, 1e-12 * n * scale ** 3)
    assert close(m.m4, m4, 1e-10, 1e-12 * n * scale ** 4)
    if n >= 2:
        assert close(m.variance(), x.var(0, ddof=1), 1e-10, 1e-12 * scale ** 2)
    sd = np.sqrt(m2 / n)
    ok = sd > 1e-6 * scale  # not a near-constant cell: the ratios are well conditioned
    with np.errstate(all="ignore"):
        skew = np.sqrt(n) * m3 / m2 ** 1.5
        kurt = n * m4 / m2 ** 2 - 3
    assert close(m.skewness()[ok], skew[ok], 1e-8, 1e-10)
    assert close(m.kurtosis()[ok], kurt[ok], 1e-8, 1e-10)
    assert np.array_equal(m.min, x.min(0)) and np.array_equal(m.max, x.max(0))
    want = np.stack([(x > t).mean(0) for t in THR])
    assert np.array_equal(m.exceedance(), want)


cols = st.integers(1, 4)
# magnitudes from 1e-20 to 1e6 (and 0): smaller ones underflow in x^4 (M4) in any float64 method
values = st.one_of(st.just(0.0), st.floats(1e-20, 1e6), st.floats(-1e6, -1e-20))


@st.composite
def data(draw):
    n, c = draw(st.integers(1, 25)), draw(cols)
    x = draw(arrays(np.float64, (n, c), elements=values))
    if draw(st.booleans()):  # near-constant cells: a large offset plus tiny noise
        x = draw(st.floats(-1e6, 1e6)) + x * 1e-9
    order = draw(st.permutations(range(n)))
    return x, np.array(order, int)


@settings(max_examples=150, deadline=None)
@given(data())
def test_moments_equal_numpy_in_any_arrival_order(d):
    x, order = d
    st_ = Statistics(StatsConfig(thresholds=THR))
    for i in order:
        st_.update(fr.Frame(int(i), 1, np.zeros(0), "u", x[i]))
    check(st_.fields["u"].steps[1].mom, x)


@settings(max_examples=80, deadline=None)
@given(data(), st.integers(0, 25))
def test_merge_of_two_partial_states_equals_numpy(d, cut):
    x, order = d
    cut = min(cut, len(x))
    a, b = StepMoments(x.shape[1], THR), StepMoments(x.shape[1], THR)
    for i in order[:cut]:
        a.update(x[i])
    for i in order[cut:]:
        b.update(x[i])
    a.merge(b)
    check(a, x)


def test_chunked_update_over_many_cells_and_float32_frames():
    rng = np.random.default_rng(0)
    x = (rng.normal(300, 40, (40, 2 * CHUNK + 123)) ** 2).astype(np.float32)
    m = StepMoments(x.shape[1], THR)
    for row in x:
        m.update(row)
    check(m, x.astype(np.float64))


def test_per_time_step_and_per_field_are_separate():
    st_ = Statistics(StatsConfig())
    for sid in range(4):
        for t in (1, 2):
            st_.update(fr.Frame(sid, t, np.zeros(0), "a", np.full(3, sid * t, np.float32)))
            st_.update(fr.Frame(sid, t, np.zeros(0), "b", np.full((2, 2), -sid, np.float64)))
    r = st_.results()
    assert r["a/steps"].tolist() == [1, 2] and r["a/n"].tolist() == [4, 4]
    assert np.allclose(r["a/mean"], [[1.5] * 3, [3.0] * 3])
    assert r["b/mean"].shape == (2, 2, 2) and np.allclose(r["b/mean"], -1.5)


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")]])
def test_threshold_out_of_range_is_a_clear_error(bad):
    from onlinetrain.config import ConfigError
    with pytest.raises(ConfigError, match="stats.thresholds"):
        StatsConfig(thresholds=bad)


@settings(max_examples=60, deadline=None)
@given(data(), st.integers(1, 70))
def test_frames_in_batches_equal_numpy(d, batch):
    """update_many (the consumer's path: the frames of a step in one get_many update together)."""
    x, order = d
    st_ = Statistics(StatsConfig(thresholds=THR, quantiles=[0.5]))
    fs = [fr.Frame(int(i), 1, np.zeros(0), "u", x[i]) for i in order]
    for i in range(0, len(fs), batch):
        st_.update_many(fs[i:i + batch])
    check(st_.fields["u"].steps[1].mom, x)


def test_long_blocks_over_many_cells():
    rng = np.random.default_rng(2)
    x = rng.normal(1e4, 3.0, (300, CHUNK + 7)) ** 3
    m = StepMoments(x.shape[1], THR)
    m.update_block(list(x[:150]))
    m.update_block(list(x[150:]))
    check(m, x)


@pytest.mark.parametrize("budget", [1 << 30, 5000, 0])
def test_staged_updates_equal_frame_by_frame_bit_for_bit(budget, monkeypatch):
    """Without quantiles, frames of fields over stats_rows.ROWS_CELLS cells (here: every field)
    are staged (stats_stage) and the moments updated in blocks: the results equal a frame-by-frame
    update exactly, whatever the budget and however steps and fields interleave, and the staged
    frames are copies (the caller's buffer is overwritten after each call, as a channel reuses its
    slots)."""
    from onlinetrain import stats_rows
    from onlinetrain.stats_stage import Stage
    monkeypatch.setattr(stats_rows, "ROWS_CELLS", 0)
    rng = np.random.default_rng(4)
    x = (rng.normal(300, 40, (2, 3, 70, 37)) ** 1.5).astype(np.float32)  # field, step, sim, cells
    order = rng.permutation([(f, t, s) for f in range(2) for t in range(3) for s in range(70)])
    st_ = Statistics(StatsConfig(thresholds=THR))
    st_.stage = Stage(nbytes=budget)
    slot = np.empty(37, np.float32)
    ref = {(f, t): StepMoments(37, THR) for f in range(2) for t in range(3)}
    for i, (f, t, s) in enumerate(order):
        slot[:] = x[f, t, s]
        if i % 3:
            st_.update(fr.Frame(int(s), int(t), np.zeros(0), "ab"[f], slot))
        else:
            st_.update_many([fr.Frame(int(s), int(t), np.zeros(0), "ab"[f], slot)])
        slot[:] = np.nan  # the slot goes back to the channel
        ref[f, t].update(x[f, t, s])
        if i == 200:
            assert (budget == 0) == (st_.stage.bytes == 0)
            mid = st_.state_dict()  # applies what is staged
            assert not st_.stage.held
    for (f, t), m in ref.items():
        got = st_.fields["ab"[f]].steps[t].mom.state_dict()
        want = m.state_dict()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    resumed = Statistics(StatsConfig(thresholds=THR))
    resumed.load_state_dict(mid)
    for f, t, s in order[201:]:
        resumed.update(fr.Frame(int(s), int(t), np.zeros(0), "ab"[f], x[f, t, s]))
    a, b = resumed.results(), st_.results()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a if k != "meta")
