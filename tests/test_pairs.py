"""Window mode: windows only from consecutive steps of one simulation; with in-order arrival every
run of consecutive steps is formed exactly once, whatever the interleaving (Hypothesis)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onlinetrain.pairs import PairBuffer
from onlinetrain.reservoir import KINDS, BufferError_, make_buffer


def step_arrays(sim, step):
    # x: the parameters (constant per simulation), y: a state that encodes (sim, step)
    return np.array([sim, -sim], np.float32), np.array([sim, step, 1000 * sim + step], np.float32)


@st.composite
def arrivals(draw):
    """Per simulation its steps in order; then any interleaving of the simulations."""
    n_sims = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, 12), min_size=n_sims, max_size=n_sims))
    first = draw(st.lists(st.integers(0, 3), min_size=n_sims, max_size=n_sims))
    queues = [[(s, first[s] + t) for t in range(n)] for s, n in enumerate(lengths)]
    order = []
    while any(queues):
        i = draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        order.append(queues[i].pop(0))
    return order, lengths, first


def check_windows(buf, b):
    x_t, states = buf.window_states(b)
    w = buf.window
    assert states.shape == (len(b.keys), w, 3)
    for (sim, t), x, s in zip(b.keys, x_t, states):
        assert np.array_equal(x, [sim, -sim])
        # every state of the window is the same simulation's, steps t, t+1, .., t+w-1
        assert np.array_equal(s[:, 0], np.full(w, sim))
        assert np.array_equal(s[:, 1], t + np.arange(w))
        assert np.array_equal(s[:, 2], 1000 * sim + t + np.arange(w))


@settings(max_examples=60, deadline=None)
@given(arrivals(), st.sampled_from(KINDS), st.integers(2, 4))
def test_in_order_arrival_forms_every_window_exactly_once(arr, kind, window):
    order, lengths, first = arr
    inner = make_buffer(kind, 500, watermark=1, seed=0, post_stream_batches=0)
    buf = PairBuffer(inner, window=window)
    for sim, step in order:
        assert buf.put(*step_arrays(sim, step), key=(sim, step))
    expected = sorted((s, first[s] + t) for s, n in enumerate(lengths)
                      for t in range(n - window + 1))
    assert buf.gaps == 0 and buf.windows == len(expected)
    # the inner buffer holds exactly these windows, each once
    assert len(buf) == len(expected)
    keys = sorted(map(tuple, inner.keys[:inner.size].tolist())) if inner.size else []
    if kind == "fifo":
        keys = sorted(map(tuple, inner.keys[[(inner.head + i) % inner.capacity
                                              for i in range(inner.size)]].tolist()))
    assert keys == expected
    if expected:
        buf.end_stream() if kind == "offline" else None
        b = buf.get_batch(len(expected), timeout=0)
        check_windows(buf, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10)), max_size=60),
       st.integers(2, 3))
def test_any_arrival_order_never_forms_a_torn_window(order, window):
    # duplicates, gaps, restarts (steps going back): windows are still consecutive steps of one sim
    buf = PairBuffer(make_buffer("firo", 1000, seed=0), window=window)
    for sim, step in order:
        buf.put(*step_arrays(sim, step), key=(sim, step))
    buf.end_stream()
    if len(buf):
        check_windows(buf, buf.get_batch(1000, timeout=0))
    # the count matches a direct scan of each simulation's arrival sequence
    expect = 0
    for sim in {s for s, _ in order}:
        run, last = 0, None
        for s, t in order:
            if s != sim:
                continue
            run = run + 1 if last is not None and t == last + 1 else 1
            last = t
            expect += run >= window
    assert buf.windows == expect


def test_window_state_round_trips_through_a_checkpoint(tmp_path):
    buf = PairBuffer(make_buffer("firo", 100, seed=0), window=3)
    for sim, step in [(1, 0), (2, 5), (1, 1), (2, 6), (1, 2), (3, 9)]:
        buf.put(*step_arrays(sim, step), key=(sim, step))
    torch.save(buf.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    again = PairBuffer(make_buffer("firo", 100, seed=0), window=3)
    again.load_state_dict(state)
    assert again.windows == buf.windows == 1 and again.x_size == 2
    # both continue with the same windows: sim 2's (5, 6, 7) and sim 1's (1, 2, 3)
    for b in (buf, again):
        for sim, step in [(2, 7), (1, 3)]:
            b.put(*step_arrays(sim, step), key=(sim, step))
    assert again.windows == buf.windows == 3
    # the inner buffer came back too: both hold (1, 0), then (2, 5) and (1, 1) formed after
    want = [[1, 0], [2, 5], [1, 1]]
    assert again.inner.keys[:again.inner.size].tolist() == buf.inner.keys[:3].tolist() == want
    assert np.array_equal(again.inner.x[:3], buf.inner.x[:3])
    with pytest.raises(BufferError_, match="train.unroll") as e:
        PairBuffer(make_buffer("firo", 100), window=2).load_state_dict(state)
    assert e.value.value == 3


def test_bad_window_and_sizes_are_named():
    with pytest.raises(BufferError_, match="window 1") as e:
        PairBuffer(make_buffer("fifo", 10), window=1)
    assert e.value.value == 1
    buf = PairBuffer(make_buffer("fifo", 10))
    buf.put(np.zeros(2), np.zeros(3), key=(0, 0))
    with pytest.raises(BufferError_, match=r"sizes \(2, 4\)"):
        buf.put(np.zeros(2), np.zeros(4), key=(0, 1))


def test_a_put_that_times_out_changes_nothing():
    buf = PairBuffer(make_buffer("fifo", 1))
    for step in (0, 1):
        assert buf.put(*step_arrays(0, step), key=(0, step))
    assert not buf.put(*step_arrays(0, 2), key=(0, 2), timeout=0.05)  # full: (0,1)-(0,2) waits
    assert buf.windows == 1
    buf.get_batch(1, timeout=0)
    assert buf.put(*step_arrays(0, 2), key=(0, 2), timeout=0.05)  # the retry forms it
    check_windows(buf, buf.get_batch(1, timeout=0))


def test_put_many_is_put_row_by_row():
    order = [(0, 0), (1, 4), (0, 1), (1, 5), (0, 2), (0, 4)]
    xs = np.stack([step_arrays(s, t)[0] for s, t in order])
    ys = np.stack([step_arrays(s, t)[1] for s, t in order])
    a = PairBuffer(make_buffer("fifo", 2))
    assert a.put_many(xs, ys, np.array(order), timeout=0.05) == 4  # full: (0,2) waits
    assert a.windows == 2 and a.gaps == 0
    a.get_batch(2, timeout=0)
    assert a.put_many(xs[4:], ys[4:], np.array(order[4:]), timeout=0.05) == 2
    assert a.windows == 3 and a.gaps == 1  # (0,4) does not follow (0,2)
    check_windows(a, a.get_batch(1, timeout=0))
