"""Sobol' indices (Martinez) in process: 95% intervals cover the analytic values, groups and roles."""
import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.config import StatsConfig
from onlinetrain.sampler import pick_freeze
from onlinetrain.stats import Statistics
from onlinetrain.stats_sobol import StepSobol

from stats_models import G_A, gfun, gfun_indices, ishigami, ishigami_indices

REPS = 300  # replications, one per cell: every cell of a frame is an independent study


def feed_groups(st, f, p, lo, hi, groups, rng, order=None):
    """Feed `groups` pick-freeze groups; cell c of every frame is replication c."""
    r = p + 2
    frames = []
    for g in range(groups):
        a = lo + (hi - lo) * rng.random((REPS, p))
        b = lo + (hi - lo) * rng.random((REPS, p))
        rows = [a, b]
        for k in range(p):
            e = a.copy()
            e[:, k] = b[:, k]
            rows.append(e)
        for role, x in enumerate(rows):
            frames.append(fr.Frame(g * r + role, 1, x[0].copy(), "y", f(x)))
    for i in (order(len(frames)) if order else range(len(frames))):
        st.update(frames[i])


def coverage(st, first, total):
    r = st.results()
    lo1, hi1 = r["y/first_lo"][0], r["y/first_hi"][0]
    lot, hit = r["y/total_lo"][0], r["y/total_hi"][0]
    c1 = ((lo1 <= first[:, None]) & (first[:, None] <= hi1)).mean(1)
    ct = ((lot <= total[:, None]) & (total[:, None] <= hit)).mean(1)
    return c1, ct


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["ishigami", "g-function"])
def test_intervals_cover_the_analytic_indices(model):
    rng = np.random.default_rng(11 if model == "ishigami" else 12)
    if model == "ishigami":
        f, p, lo, hi, (s1, st_) = ishigami, 3, -np.pi, np.pi, ishigami_indices()
    else:
        f, p, lo, hi, (s1, st_) = gfun, len(G_A), 0.0, 1.0, gfun_indices()
    st = Statistics(StatsConfig(sobol=True))
    feed_groups(st, f, p, lo, hi, 1000, rng, order=lambda n: rng.permutation(n))
    assert st.results()["y/sobol_n"].tolist() == [1000]
    c1, ct = coverage(st, s1, st_)
    assert np.all(c1 >= 0.9) and np.all(ct >= 0.9), (c1, ct)
    # and the intervals are not vacuous: the mean estimate is near the truth, the width small
    r = st.results()
    assert np.allclose(r["y/first"][0].mean(1), s1, atol=0.02)
    assert np.allclose(r["y/total"][0].mean(1), st_, atol=0.02)
    assert (r["y/first_hi"] - r["y/first_lo"]).mean() < 0.25


def test_group_counts_only_when_complete_and_failed_group_is_counted():
    rng = np.random.default_rng(1)
    st = Statistics(StatsConfig(sobol=True))
    rows = list(pick_freeze(3, seed=1, bounds=[(-np.pi, np.pi)] * 3))
    for row in rows[:-1]:  # the last member of group 2 never arrives ...
        x = np.asarray(row["params"])
        st.update(fr.Frame(row["id"], 1, x, "y", ishigami(x[None, :]) + rng.random(2) * 0))
    assert st.results()["y/sobol_n"].tolist() == [2]
    st.update(fr.Frame(rows[-1]["id"], 0, np.zeros(0), "simulation crashed", np.zeros(0),
                       fr.SIM_FAILED))  # ... it failed for good
    g = st.group_counts()
    assert g == {"complete": 2, "failed": 1, "rejected": 0, "incomplete": 0, "expected": 0}
    assert st.results()["y/n"].tolist() == [14]  # its members still count in the moments


def test_member_with_the_wrong_role_rejects_the_group_and_keeps_the_rest():
    st = Statistics(StatsConfig(sobol=True))
    rows = list(pick_freeze(2, seed=2, bounds=[(0, 1)] * 2))  # R = 4
    rows[6]["params"][1] = 0.123456  # group 1's E_1 is not A with column 1 from B
    for row in rows:
        x = np.asarray(row["params"])
        st.update(fr.Frame(row["id"], 1, x, "y", np.array([x.sum(), x[0]])))
    g = st.group_counts()
    assert g["complete"] == 1 and g["rejected"] == 1
    assert "role E1" in st.groups_rejected[1] and "expected A with column 1" in st.groups_rejected[1]
    assert st.results()["y/n"].tolist() == [8]  # no frame lost from the moments


def test_second_order_layout_uses_2p_plus_2_rows():
    st = Statistics(StatsConfig(sobol=True, second_order=True))
    rows = list(pick_freeze(5, seed=3, bounds=[(-np.pi, np.pi)] * 3, second_order=True))
    assert len(rows) == 5 * 8 and [r["role"] for r in rows[:8]] == list(range(8))
    for row in rows:
        x = np.asarray(row["params"])
        st.update(fr.Frame(row["id"], 1, x, "y", np.array([ishigami(x)])))
    assert st.group_counts()["complete"] == 5 and not st.groups_rejected


def test_update_in_blocks_of_cells_equals_one_block(monkeypatch):
    """StepSobol.update walks the cells in blocks of CHUNK: bit-identical to one block."""
    from onlinetrain import stats_sobol
    cells, p = 2 * stats_sobol.CHUNK + 5, 3
    ys = np.random.default_rng(5).normal(0, 1, (12, p + 2, cells)) ** 3
    blocks = StepSobol(cells, p)
    for y in ys:
        blocks.update(y.copy())
    monkeypatch.setattr(stats_sobol, "CHUNK", 10 ** 9)
    one = StepSobol(cells, p)
    for y in ys:
        one.update(y.copy())
    a, b = blocks.state_dict(), one.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.isfinite(a["qb"]).all() and (a["qb"] > 0).any()
