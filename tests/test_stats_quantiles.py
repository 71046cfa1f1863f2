"""Robbins-Monro quantiles within the documented tolerance of numpy.quantile on >= 1000 simulations."""
import numpy as np
import pytest

from onlinetrain import frame as fr
from onlinetrain.config import ConfigError, StatsConfig
from onlinetrain.stats import Statistics
from onlinetrain.stats_quantiles import StepQuantiles, tolerance

LEVELS = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def _normal_mix(rng, size):
    return rng.normal(size=size) + 10.0 * (rng.random(size) < 0.3)


@pytest.mark.parametrize("dist", ["normal", "uniform", "exponential", "mixture"])
def test_quantiles_within_tolerance_of_numpy(dist):
    rng = np.random.default_rng(7)
    n, cells = 1000, 200
    gen = {"normal": lambda s: rng.normal(50.0, 3.0, s), "uniform": lambda s: rng.random(s),
           "exponential": lambda s: rng.exponential(2.0, s), "mixture": lambda s: _normal_mix(rng, s)}
    x = gen[dist]((n, cells))
    st = Statistics(StatsConfig(quantiles=LEVELS))
    for i in rng.permutation(n):
        st.update(fr.Frame(int(i), 0, np.zeros(0), "u", x[i]))
    q = st.results()["u/quantiles"][0]  # (levels, cells)
    tol = tolerance(n)
    assert tol == pytest.approx(1.5 / np.sqrt(1000))
    for j, a in enumerate(LEVELS):
        # as a rank: the fraction of values <= q is within tol of the level ...
        rank = (x <= q[j]).mean(0)
        assert np.all(np.abs(rank - a) <= tol), (dist, a, np.abs(rank - a).max())
        # ... i.e. q lies between numpy's quantiles of levels a - tol and a + tol
        lo = np.quantile(x, max(a - tol, 0), axis=0, method="inverted_cdf")
        hi = np.quantile(x, min(a + tol, 1), axis=0, method="inverted_cdf")
        assert np.all((lo <= q[j] + 1e-12) & (q[j] <= hi + 1e-12))


def test_tolerance_shrinks_with_n():
    rng = np.random.default_rng(3)
    errs = []
    for n in (1000, 4000):
        x = rng.normal(size=(n, 200))
        st = Statistics(StatsConfig(quantiles=[0.1, 0.5, 0.9]))
        for i in range(n):
            st.update(fr.Frame(i, 0, np.zeros(0), "u", x[i]))
        q = st.results()["u/quantiles"][0]
        err = max(np.abs((x <= q[j]).mean(0) - a).max() for j, a in enumerate([0.1, 0.5, 0.9]))
        assert err <= tolerance(n)
        errs.append(err)
    assert errs[1] < errs[0]


@pytest.mark.parametrize("bad", [[0.0], [1.0], [1.5], [-0.1]])
def test_level_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"stats.quantiles.*strictly between 0 and 1"):
        StatsConfig(quantiles=bad)


def test_update_in_blocks_of_cells_equals_one_block(monkeypatch):
    """StepQuantiles.update walks the cells in blocks of CHUNK: bit-identical to one block."""
    from onlinetrain import stats_quantiles
    from onlinetrain.stats_moments import StepMoments
    cells = 2 * stats_quantiles.CHUNK + 5
    xs = np.random.default_rng(6).lognormal(0, 1, (40, cells)).astype(np.float32)

    def run():
        m, q = StepMoments(cells), StepQuantiles(cells, [0.1, 0.5, 0.9])
        for x in xs:
            m.update(x)
            q.update(x, m)
        return q
    blocks = run()
    monkeypatch.setattr(stats_quantiles, "CHUNK", 10 ** 9)
    one = run()
    assert np.array_equal(blocks.q, one.q) and np.array_equal(blocks.avg, one.avg)
    assert np.all(blocks.avg[0] < blocks.avg[2])  # the 0.1 level below the 0.9 one, every cell
