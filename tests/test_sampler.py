"""ot sample: reproducible, in bounds, clear errors."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from onlinetrain import sampler
from onlinetrain.cli import main


@pytest.mark.parametrize("method", sampler.METHODS)
def test_same_seed_byte_identical_and_different_seed_differs(method):
    r = CliRunner()
    a = r.invoke(main, ["sample", "-n", "20", "--seed", "3", "--method", method])
    b = r.invoke(main, ["sample", "-n", "20", "--seed", "3", "--method", method])
    c = r.invoke(main, ["sample", "-n", "20", "--seed", "4", "--method", method])
    assert a.exit_code == 0, a.output
    assert a.output == b.output
    assert a.output != c.output
    lines = [json.loads(x) for x in a.output.splitlines()]
    assert [d["id"] for d in lines] == list(range(20))
    assert all(len(d["params"]) == 5 for d in lines)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 50), seed=st.integers(0, 2**31), method=st.sampled_from(sampler.METHODS),
       lo=st.floats(-1e3, 1e3), width=st.floats(0, 1e3))
def test_points_stay_in_bounds(n, seed, method, lo, width):
    pts = sampler.sample(n, seed, method, [(lo, lo + width)] * 3)
    assert len(pts) == n
    for d in pts:
        assert all(lo <= v <= lo + width for v in d["params"])


def test_lhs_stratifies_each_dimension():
    pts = np.array([d["params"] for d in sampler.sample(10, 0, "lhs", [(0, 10)] * 2)])
    for j in range(2):
        assert sorted(np.floor(pts[:, j]).astype(int)) == list(range(10))


def test_bounds_low_above_high_is_a_clear_error():
    r = CliRunner().invoke(main, ["sample", "-n", "3", "--bounds", "500:100"])
    assert r.exit_code != 0
    assert "500:100" in r.output and "LOW must be <= HIGH" in r.output


def test_bounds_not_numbers():
    r = CliRunner().invoke(main, ["sample", "-n", "3", "--bounds", "a:b"])
    assert r.exit_code != 0 and "'a:b'" in r.output


def test_per_parameter_bounds():
    r = CliRunner().invoke(main, ["sample", "-n", "5", "--bounds", "0:1", "--bounds", "10:20"])
    pts = [json.loads(x)["params"] for x in r.output.splitlines()]
    assert all(len(p) == 2 and 0 <= p[0] <= 1 and 10 <= p[1] <= 20 for p in pts)


def test_read_jsonl_names_the_bad_line():
    with pytest.raises(sampler.SamplerError, match="f:2"):
        sampler.read_jsonl(['{"id": 0, "params": [1]}', '{"id": 1}'], "f")
    with pytest.raises(sampler.SamplerError, match="id 0 appears twice"):
        sampler.read_jsonl(['{"id": 0, "params": [1]}', '{"id": 0, "params": [1]}'], "f")
