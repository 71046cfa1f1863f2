"""Breed's algorithm (onlinetrain/breed.py): distributions, out-of-bounds handling, R schedule,
which sets change, resume, bad settings, per-simulation scores."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy import stats

from onlinetrain.breed import BreedConfig, BreedError, Breeder, ScoreBoard, probabilities, r_schedule

B5 = [(100.0, 500.0)] * 5


def _many(br, scores, params, n):
    """n children from repeated one-generation calls that do not move the R step."""
    out = []
    while len(out) < n:
        step = br.step
        out += br.resample(scores, params, pending=list(range(1000, 1000 + br.cfg.window)))
        br.step = step
    return out[:n]


def test_bred_children_are_normal_around_the_parent_with_sigma_times_range():
    cfg = BreedConfig(sigma=0.01, start=1.0, end=1.0, window=50)
    br = Breeder(cfg, B5, seed=3)
    parent = [300.0, 250.0, 350.0, 200.0, 400.0]
    kids = _many(br, {7: 1.0}, {7: parent}, 4000)
    assert all(k.parent == 7 for k in kids)
    x = np.array([k.params for k in kids])
    sd = 0.01 * 400.0
    for d in range(5):  # KS test of each coordinate against N(parent, sd^2)
        p = stats.kstest((x[:, d] - parent[d]) / sd, "norm").pvalue
        assert p > 1e-3, (d, p)
    assert np.allclose(x.mean(0), parent, atol=5 * sd / np.sqrt(len(x)))


def test_per_dimension_sigma():
    cfg = BreedConfig(sigma=[0.001, 0.01, 0.02, 0.04, 0.05], start=1.0, end=1.0, window=50)
    br = Breeder(cfg, B5, seed=4)
    kids = _many(br, {1: 0.0}, {1: [300.0] * 5}, 3000)
    sd = np.array([k.params for k in kids]).std(0)
    assert np.allclose(sd, np.array(cfg.sigma) * 400.0, rtol=0.08), sd


def test_parents_are_chosen_in_proportion_to_shifted_scores():
    cfg = BreedConfig(start=1.0, end=1.0, window=50)
    br = Breeder(cfg, B5, seed=5)
    scores = {1: 1.0, 2: 2.0, 3: 4.0}  # shifted: 0, 1, 3 -> p = 0, 0.25, 0.75
    params = {i: [300.0] * 5 for i in scores}
    kids = _many(br, scores, params, 4000)
    counts = np.array([sum(k.parent == i for k in kids) for i in (1, 2, 3)])
    assert counts[0] == 0
    chi = stats.chisquare(counts[1:], np.array([0.25, 0.75]) * counts.sum())
    assert chi.pvalue > 1e-3, counts


def test_equal_scores_choose_parents_uniformly_and_unserved_get_the_mean():
    assert np.allclose(probabilities([2.0, 2.0, 2.0, 2.0]), 0.25)
    br = Breeder(BreedConfig(start=1.0, end=1.0, window=40), B5, seed=6)
    scores = {1: 5.0, 2: 5.0, 3: None}   # 3 never served: the mean score (5), so all equal
    kids = _many(br, scores, {i: [300.0] * 5 for i in scores}, 3000)
    counts = np.array([sum(k.parent == i for k in kids) for i in (1, 2, 3)])
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_exploration_uses_the_non_breed_sampler_in_bounds():
    for method in ("uniform", "halton", "lhs"):
        br = Breeder(BreedConfig(start=0.0, end=0.0, window=100, non_breed=method), B5, seed=7)
        kids = _many(br, {1: 1.0}, {1: [300.0] * 5}, 1000)
        assert all(k.parent is None for k in kids)
        u = (np.array([k.params for k in kids]) - 100.0) / 400.0
        assert u.min() >= 0 and u.max() <= 1
        for d in range(5):
            assert stats.kstest(u[:, d], "uniform").pvalue > 1e-3, (method, d)
        assert len({tuple(k.params) for k in kids}) == 1000  # the sequence continues


def test_bred_fraction_follows_R():
    br = Breeder(BreedConfig(start=0.4, end=0.4, window=100), B5, seed=8)
    kids = _many(br, {1: 1.0}, {1: [300.0] * 5}, 3000)
    n_bred = sum(k.parent is not None for k in kids)
    assert stats.binomtest(n_bred, len(kids), 0.4).pvalue > 1e-3, n_bred


def test_out_of_bounds_children_are_redrawn_then_the_parent_is_used():
    br = Breeder(BreedConfig(sigma=0.2, start=1.0, end=1.0, window=50, max_oob=10), B5, seed=9)
    corner = [100.0, 500.0, 100.0, 500.0, 100.0]
    kids = _many(br, {1: 1.0}, {1: corner}, 500)
    x = np.array([k.params for k in kids])
    assert x.min() >= 100.0 and x.max() <= 500.0
    assert max(k.oob_redraws for k in kids) > 0  # the corner forces redraws
    # redraws shrink the covariance by 0.3 each: children that needed many lie closer
    far = [np.abs(np.array(k.params) - corner).max() for k in kids if k.oob_redraws == 0]
    near = [np.abs(np.array(k.params) - corner).max() for k in kids
            if 3 <= k.oob_redraws <= br.cfg.max_oob]
    assert len(near) > 10 and len(far) > 3
    assert np.median(near) < np.median(far)
    # a sigma so large that no redraw lands inside: the parent's parameters after max_oob tries
    br = Breeder(BreedConfig(sigma=1e4, start=1.0, end=1.0, window=5, max_oob=3), B5, seed=10)
    kids = br.resample({1: 1.0}, {1: corner}, pending=[20, 21, 22])
    assert all(k.params == corner and k.oob_redraws == 4 for k in kids)


def test_r_schedule_is_a_linspace_then_stays_at_end():
    cfg = BreedConfig(start=0.15, end=0.75, breakpoint=10)
    want = np.linspace(0.15, 0.75, 10)
    assert [r_schedule(cfg, s) for s in range(10)] == pytest.approx(list(want))
    assert r_schedule(cfg, 10) == r_schedule(cfg, 50) == 0.75
    br = Breeder(cfg, B5, seed=1)
    for g in range(1, 4):
        assert br.generation == g
        kids = br.resample({1: 1.0}, {1: [300.0] * 5}, pending=list(range(100)))
        assert {k.generation for k in kids} == {g}
    assert br.step == 3


def test_only_the_first_window_pending_sets_change():
    br = Breeder(BreedConfig(window=4), B5, seed=2)
    kids = br.resample({1: 1.0, 2: 3.0}, {1: [200.0] * 5, 2: [400.0] * 5},
                       pending=[17, 9, 30, 31, 32, 33])
    assert [k.id for k in kids] == [17, 9, 30, 31]
    kids = br.resample({1: 1.0}, {1: [200.0] * 5}, pending=[50, 51])
    assert [k.id for k in kids] == [50, 51]  # min(window, pending)
    assert br.resample({1: 1.0}, {1: [200.0] * 5}, pending=[]) == []


def test_due_every_window_after_skip_batches():
    br = Breeder(BreedConfig(window=5, skip_batches=100), B5, seed=0)
    assert not br.due(finished=4, batches=500)
    assert not br.due(finished=5, batches=99)
    assert br.due(finished=5, batches=100)
    br.resample({1: 1.0}, {1: [200.0] * 5}, pending=[3])
    assert not br.due(finished=9, batches=1000) and br.due(finished=10, batches=1000)


@pytest.mark.parametrize("method", ["uniform", "halton", "lhs"])
def test_resume_reproduces_the_sequence(method):
    cfg = BreedConfig(window=6, start=0.5, end=0.9, breakpoint=3, non_breed=method)
    scores = {1: 0.5, 2: 1.5, 3: None}
    params = {1: [150.0] * 5, 2: [450.0] * 5, 3: [300.0] * 5}
    a = Breeder(cfg, B5, seed=11)
    a.resample(scores, params, pending=list(range(10, 20)))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    rest_a = [a.resample(scores, params, pending=list(range(20 + 6 * g, 40))) for g in range(3)]
    b = Breeder(cfg, B5, seed=11)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    rest_b = [b.resample(scores, params, pending=list(range(20 + 6 * g, 40))) for g in range(3)]
    assert rest_a == rest_b
    c = Breeder(cfg, B5, seed=12)  # another seed: another sequence (the test can tell)
    c.resample(scores, params, pending=list(range(10, 20)))
    assert [c.resample(scores, params, pending=list(range(20 + 6 * g, 40)))
            for g in range(3)] != rest_a


@pytest.mark.parametrize("kw, key", [({"sigma": 0.0}, "sigma"), ({"sigma": -1}, "sigma"),
                                     ({"sigma": [0.01, 0]}, "sigma"), ({"start": 1.2}, "start"),
                                     ({"end": -0.1}, "end"), ({"window": 0}, "window"),
                                     ({"non_breed": "sobol"}, "non_breed"),
                                     ({"max_oob": -1}, "max_oob")])
def test_bad_settings_name_the_key_and_value(kw, key):
    with pytest.raises(BreedError) as e:
        BreedConfig(**kw)
    assert e.value.key == key and f"breed.{key}" in str(e.value)


def test_window_larger_than_the_study_is_refused_before_anything_runs():
    with pytest.raises(BreedError, match="larger than the study"):
        BreedConfig(window=50).check_study(n_train=20, dim=5)
    with pytest.raises(BreedError, match="one per parameter"):
        BreedConfig(sigma=[0.1, 0.1]).check_study(n_train=20, dim=5)
    BreedConfig(window=20).check_study(n_train=20, dim=5)


def test_scoreboard_is_a_per_simulation_running_mean():
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 30, 5000)
    loss = rng.random(5000)
    board = ScoreBoard()
    for i in range(0, 5000, 32):
        board.update(sims[i:i + 32], loss[i:i + 32])
    got = board.scores()
    for s in np.unique(sims):
        assert got[int(s)] == pytest.approx(loss[sims == s].mean(), rel=1e-12)
    again = ScoreBoard()
    again.load_state_dict(board.state_dict())
    assert again.scores() == got
    # two ranks' boards added up equal one board that saw everything
    r0, r1 = ScoreBoard(), ScoreBoard()
    r0.update(sims[:2500], loss[:2500])
    r1.update(sims[2500:], loss[2500:])
    r0.merge(r1.sum, r1.count)
    assert r0.scores() == pytest.approx(got, rel=1e-12)
