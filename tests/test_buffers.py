"""Training buffers: Hypothesis properties (capacity, order, served-once, uniform eviction, nothing
lost), end-of-stream semantics, determinism, waiting without spinning, pair mode, bad input."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sst

from onlinetrain.config import ConfigError, load
from onlinetrain.pairs import PairBuffer
from onlinetrain.reservoir import BufferError_, make_buffer

FAST = settings(max_examples=40, deadline=None)


def sample(sim, step):
    """A sample whose content encodes its key, so a served sample can be checked against it."""
    return np.array([sim, step], np.float32), np.array([sim * 1000 + step, -step], np.float32)


def check_content(b):
    assert np.array_equal(b.x, b.keys.astype(np.float32))
    assert np.array_equal(b.y[:, 0], (b.keys[:, 0] * 1000 + b.keys[:, 1]).astype(np.float32))


def interleave(n_sims, steps, k, seed):
    """Arrival order of k concurrent simulations, each in time order (as a live run)."""
    rng = np.random.default_rng(seed)
    pending, running, order = list(range(n_sims)), {}, []
    while pending or running:
        while pending and len(running) < k:
            running[pending.pop(0)] = 0
        sim = list(running)[rng.integers(len(running))]
        order.append((sim, running[sim]))
        running[sim] += 1
        if running[sim] == steps:
            del running[sim]
    return order


ops = st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 5)),
                         st.tuples(st.just("get"), st.integers(1, 7))), max_size=120)


@FAST
@given(kind=st.sampled_from(["fifo", "firo", "reservoir"]), cap=st.integers(1, 20),
       seq=ops, seed=st.integers(0, 2**16))
def test_size_never_exceeds_capacity_and_served_content_matches_key(kind, cap, seq, seed):
    buf = make_buffer(kind, cap, watermark=max(1, cap // 2), seed=seed)
    step = 0
    for op, n in seq:
        if op == "put":
            step += 1
            buf.put(*sample(n, step), key=(n, step), timeout=0)
        else:
            b = buf.get_batch(n, timeout=0)
            if b is not None:
                check_content(b)
        assert 0 <= len(buf) <= cap
    s = buf.stats()
    assert s["received"] == len(buf) + s["evicted"] + (s["served"] if kind != "reservoir" else 0)


@FAST
@given(n=st.integers(0, 60), cap=st.integers(1, 16), bs=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_fifo_serves_in_arrival_order_each_once(n, cap, bs, seed):
    buf = make_buffer("fifo", cap, seed=seed)
    got = []
    for i in range(n):
        while not buf.put(*sample(0, i), key=(0, i), timeout=0):
            got += list(buf.get_batch(bs, timeout=0).keys[:, 1])
    buf.end_stream()
    while (b := buf.get_batch(bs, timeout=0)) is not None:
        check_content(b)
        got += list(b.keys[:, 1])
    assert got == list(range(n)) and buf.exhausted


@FAST
@given(kind=st.sampled_from(["fifo", "firo"]), sims=st.integers(1, 6), steps=st.integers(1, 12),
       k=st.integers(1, 4), cap=st.integers(1, 30), bs=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_fifo_firo_serve_every_sample_exactly_once(kind, sims, steps, k, cap, bs, seed):
    buf = make_buffer(kind, cap, seed=seed)
    order = interleave(sims, steps, k, seed)
    served = []
    for key in order:
        while not buf.put(*sample(*key), key=key, timeout=0):
            served += [tuple(r) for r in buf.get_batch(bs, timeout=0).keys]
    buf.end_stream()
    while (b := buf.get_batch(bs, timeout=0)) is not None:
        check_content(b)
        served += [tuple(r) for r in b.keys]
    assert sorted(served) == sorted(order)  # each exactly once: nothing lost, nothing repeated
    assert buf.stats()["served"] == len(order) and len(buf) == 0


@FAST
@given(cap=st.integers(2, 20), extra=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_reservoir_nothing_lost_between_receive_and_first_serve(cap, extra, seed):
    """Every received sample is in the buffer or was evicted; a sample leaves only by eviction,
    and only a full buffer evicts."""
    buf = make_buffer("reservoir", cap, watermark=1, seed=seed)
    keys = [(i % 3, i) for i in range(cap + extra)]
    for key in keys:
        assert buf.put(*sample(*key), key=key, timeout=0)  # never blocks
    present = {tuple(r) for r in buf.keys[:len(buf)]}
    assert len(present) == len(buf) == min(cap, len(keys))
    assert buf.stats()["evicted"] == len(keys) - len(present)
    assert present <= set(keys)
    b = buf.get_batch(len(buf) * 3, timeout=0)
    check_content(b)
    assert {tuple(r) for r in b.keys} <= present


def test_reservoir_eviction_is_uniform():
    """Which of N slots the (N+1)-th sample evicts, over many seeds: chi-square against uniform;
    and the survivors of a longer stream are uniform over arrival positions."""
    n, runs = 8, 4000
    hits = np.zeros(n, int)
    for seed in range(runs):
        buf = make_buffer("reservoir", n, watermark=1, seed=seed)
        for i in range(n + 1):
            buf.put(*sample(0, i), key=(0, i))
        missing = set(range(n)) - set(buf.keys[:n, 1].tolist())
        hits[missing.pop()] += 1
    assert sst.chisquare(hits).pvalue > 1e-3
    # survivors: positions 0..M-1 after M = 3N insertions; the last one is always present
    m, counts = 3 * n, np.zeros(3 * n, int)
    for seed in range(1500):
        buf = make_buffer("reservoir", n, watermark=1, seed=seed)
        for i in range(m):
            buf.put(*sample(0, i), key=(0, i))
        counts[buf.keys[:n, 1]] += 1
    assert counts[-1] == 1500
    # P(position i survives) = prod over later insertions of (1 - 1/N): increasing in i
    p = np.array([(1 - 1 / n) ** (m - max(i, n - 1) - 1) for i in range(m)])
    expected = 1500 * p * n / p.sum()
    assert sst.chisquare(counts, expected).pvalue > 1e-3


def test_reservoir_watermark_wait_without_spinning_then_post_stream_batches():
    buf = make_buffer("reservoir", 10, watermark=4, seed=1, post_stream_batches=3)
    got = {}

    def trainer():
        got["b"] = buf.get_batch(5, timeout=10)

    th = threading.Thread(target=trainer)
    th.start()
    th.join(0.3)
    assert th.is_alive() and buf.stats()["wakeups"] <= 2  # blocked on the condition, not spinning
    for i in range(3):
        buf.put(*sample(0, i), key=(0, i))
    th.join(0.1)
    assert th.is_alive()  # 3 < watermark
    buf.put(*sample(0, 3), key=(0, 3))
    th.join(10)
    assert got["b"].x.shape == (5, 2)  # batch larger than the fill: drawn with repetition
    assert buf.stats()["wakeups"] <= 10
    buf.end_stream()
    assert [buf.get_batch(2, timeout=0) is not None for _ in range(4)] == [True] * 3 + [False]
    assert buf.exhausted


def test_reservoir_without_limit_serves_until_the_trainer_stops():
    buf = make_buffer("reservoir", 5, watermark=5, seed=0)
    for i in range(5):
        buf.put(*sample(1, i), key=(1, i))
    buf.end_stream()
    for _ in range(50):
        assert buf.get_batch(4, timeout=0) is not None
    assert not buf.exhausted and buf.stats()["mean_seen_present"] == 40.0


def test_offline_serves_nothing_before_the_end_then_shuffled_epochs():
    buf = make_buffer("offline", 100, seed=3, epochs=2)
    keys = interleave(4, 10, 2, 0)
    for key in keys:
        buf.put(*sample(*key), key=key)
    assert buf.get_batch(8, timeout=0.05) is None and not buf.exhausted
    buf.end_stream()
    epochs, cur = [], []
    while (b := buf.get_batch(8, timeout=0)) is not None:
        check_content(b)
        cur += [tuple(r) for r in b.keys]
        if len(cur) == len(keys):
            epochs.append(cur)
            cur = []
    assert len(epochs) == 2 and not cur
    assert sorted(epochs[0]) == sorted(keys) == sorted(epochs[1])
    assert epochs[0] != keys and epochs[0] != epochs[1]  # shuffled, afresh each epoch
    with pytest.raises(BufferError_, match="raise buffer.capacity") as e:
        small = make_buffer("offline", 2)
        for i in range(3):
            small.put(*sample(0, i), key=(0, i))
    assert e.value.value == 2


@pytest.mark.parametrize("kind", ["fifo", "firo", "reservoir", "offline"])
def test_same_seed_and_arrival_order_replays_identically(kind):
    def run(seed):
        buf = make_buffer(kind, 200 if kind == "offline" else 64, watermark=16, seed=seed,
                          post_stream_batches=5, record=True)
        out = []
        for i, key in enumerate(interleave(6, 20, 3, 7)):
            while not buf.put(*sample(*key), key=key, timeout=0):
                out.append(buf.get_batch(8, timeout=0).keys)
            if i % 3 == 2 and (b := buf.get_batch(8, timeout=0)) is not None:
                out.append(b.keys)
        buf.end_stream()
        while (b := buf.get_batch(8, timeout=0)) is not None:
            out.append(b.keys)
        return np.concatenate(out), buf.arrivals()

    a, arr = run(5)
    b, arr2 = run(5)
    assert np.array_equal(a, b) and np.array_equal(arr, arr2)
    assert [tuple(r) for r in arr] == interleave(6, 20, 3, 7)
    if kind != "fifo":
        assert not np.array_equal(a, run(6)[0])


@pytest.mark.timeout(30)
def test_concurrent_receiver_and_trainer_lose_nothing():
    buf = make_buffer("firo", 16, seed=0)
    keys = interleave(20, 25, 4, 1)
    served = []

    def receiver():
        for key in keys:
            assert buf.put(*sample(*key), key=key, timeout=10)
        buf.end_stream()

    th = threading.Thread(target=receiver)
    th.start()
    while (b := buf.get_batch(7, timeout=10)) is not None:
        check_content(b)
        served += [tuple(r) for r in b.keys]
    th.join(10)
    assert sorted(served) == sorted(keys)


def test_pair_mode_keeps_consecutive_steps_together():
    buf = PairBuffer(make_buffer("firo", 100, seed=0))
    order = interleave(3, 6, 3, 2) + [(9, 0), (9, 2), (9, 3)]  # sim 9 has a gap
    for sim, step in order:
        buf.put(np.array([sim, step], np.float32), np.full(3, 10 * sim + step, np.float32),
                key=(sim, step))
    buf.end_stream()
    b = buf.get_batch(100, timeout=0)
    assert len(b.keys) == 3 * 5 + 1 and buf.stats()["pair_gaps"] == 1
    x_t, u_t = buf.split_input(b.x)
    assert np.array_equal(x_t, b.keys.astype(np.float32))
    assert np.array_equal(u_t[:, 0], b.y[:, 0] - 1)  # target is the very next step
    assert np.array_equal(u_t[:, 0], (10 * b.keys[:, 0] + b.keys[:, 1]).astype(np.float32))


def test_bad_values_are_named():
    with pytest.raises(BufferError_, match="unknown buffer kind 'lifo'") as e:
        make_buffer("lifo", 10)
    assert e.value.value == "lifo"
    with pytest.raises(BufferError_, match="watermark 11") as e:
        make_buffer("reservoir", 10, watermark=11)
    assert e.value.value == 11
    with pytest.raises(BufferError_, match="post_stream_batches -2"):
        make_buffer("reservoir", 10, watermark=1, post_stream_batches=-2)
    with pytest.raises(BufferError_, match="needs .* GiB but only"):
        make_buffer("fifo", 10**12).put(np.zeros(4), np.zeros(4))
    with pytest.raises(ConfigError, match="buffer.post_stream_batches") as e:
        load(overrides={"buffer.post_stream_batches": -3})
    assert e.value.value == -3
    with pytest.raises(ConfigError, match="buffer.epochs"):
        load(overrides={"buffer.epochs": 0})
    assert load(overrides={"buffer.kind": "offline"}).buffer.kind == "offline"


# --- FIRO as Melissa's: watermark and pseudo_epochs ---

firo_ops = st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 4)),
                              st.tuples(st.just("get"), st.integers(1, 9)),
                              st.tuples(st.just("end"), st.just(0))), max_size=150)


@FAST
@given(cap=st.integers(1, 24), wm_frac=st.floats(0, 1), pe=st.integers(1, 4), seq=firo_ops,
       seed=st.integers(0, 2**16))
def test_firo_watermark_and_pseudo_epochs(cap, wm_frac, pe, seq, seed):
    """Nothing lost, nothing served more than pseudo_epochs times (exactly that many after a full
    drain), at most once per batch, size <= capacity, and no batch while fewer than `watermark`
    samples are present unless the stream has ended."""
    wm = max(1, round(wm_frac * cap))
    buf = make_buffer("firo", cap, watermark=wm, seed=seed, pseudo_epochs=pe)
    counts, received, step = {}, [], 0

    def get(n):
        before, ended = len(buf), buf.ended
        b = buf.get_batch(n, timeout=0)
        if b is not None:
            assert ended or before >= wm  # the watermark holds while the stream runs
            assert ended or len(b.keys) == min(n, cap)  # full batches while streaming
            check_content(b)
            keys = [tuple(r) for r in b.keys]
            assert len(set(keys)) == len(keys)  # a sample at most once per batch
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
                assert counts[k] <= pe
        return b

    for op, n in seq:
        if op == "put" and not buf.ended:
            step += 1
            key = (n, step)
            while not buf.put(*sample(*key), key=key, timeout=0):
                assert len(buf) == cap and get(1) is not None  # a full buffer is always ready
            received.append(key)
        elif op == "get":
            get(n)
        elif op == "end":
            buf.end_stream()
        assert 0 <= len(buf) <= cap
        # each received sample is present or has been served pseudo_epochs times
        present = [tuple(r) for r in buf.keys[:len(buf)]]
        assert len(set(present)) == len(present)
        assert set(present) | {k for k, c in counts.items() if c == pe} == set(received)
        assert all(counts.get(k, 0) < pe for k in present)
    buf.end_stream()
    while get(5) is not None:
        pass
    assert buf.exhausted and len(buf) == 0
    assert counts == {k: pe for k in received}  # exactly pseudo_epochs servings each
    assert buf.stats()["served"] == pe * len(received)


@pytest.mark.timeout(30)
def test_firo_below_watermark_waits_without_spinning_then_drains_at_the_end():
    buf = make_buffer("firo", 50, watermark=20, seed=2, pseudo_epochs=2)
    got = {}

    def trainer():
        got["b"] = buf.get_batch(8, timeout=10)

    th = threading.Thread(target=trainer)
    th.start()
    for i in range(19):
        buf.put(*sample(0, i), key=(0, i))
    th.join(0.3)
    assert th.is_alive() and buf.stats()["wakeups"] <= 25  # 19 < watermark: waits on the cond
    buf.put(*sample(0, 19), key=(0, 19))
    th.join(10)
    assert len(got["b"].keys) == 8 and len(buf) == 20  # first serving: nothing leaves yet
    assert buf.get_batch(8, timeout=0) is not None  # still 20 present
    buf.end_stream()  # below the watermark, but the stream has ended: drain
    n = 16
    while (b := buf.get_batch(8, timeout=0)) is not None:
        n += len(b.keys)
    assert n == 40 and buf.exhausted


@pytest.mark.timeout(30)
def test_concurrent_firo_with_watermark_and_pseudo_epochs_serves_each_twice():
    buf = make_buffer("firo", 16, watermark=10, seed=0, pseudo_epochs=2)
    keys = interleave(20, 25, 4, 1)
    served = []

    def receiver():
        for key in keys:
            assert buf.put(*sample(*key), key=key, timeout=10)
        buf.end_stream()

    th = threading.Thread(target=receiver)
    th.start()
    while (b := buf.get_batch(7, timeout=10)) is not None:
        check_content(b)
        served += [tuple(r) for r in b.keys]
    th.join(10)
    assert sorted(served) == sorted(keys * 2)


# --- state for resumable checkpoints ---

def _roundtrip(state):
    import io

    import torch
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def _script(n_ops, seed):
    """A fixed interleaving of puts, gets and the end of the stream (from `seed`)."""
    rng = np.random.default_rng(seed)
    order = interleave(5, 16, 3, seed)
    ops, i = [], 0
    while i < len(order):
        if rng.random() < 0.6:
            ops.append(("put", order[i]))
            i += 1
        else:
            ops.append(("get", int(rng.integers(1, 9))))
    ops.append(("end", None))
    ops += [("get", int(rng.integers(1, 9))) for _ in range(n_ops)]
    return ops


def _apply(buf, op, arg, out):
    if op == "put":
        while not buf.put(*sample(*arg), key=arg, timeout=0):
            out.append(buf.get_batch(4, timeout=0))
    elif op == "get":
        out.append(buf.get_batch(arg, timeout=0))
    else:
        buf.end_stream()


KIND_ARGS = {"fifo": {}, "firo": {"watermark": 12}, "firo-pe3": {"watermark": 6, "pseudo_epochs": 3},
             "reservoir": {"watermark": 10, "post_stream_batches": 12},
             "offline": {"epochs": 3}}


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(sorted(KIND_ARGS)), split=st.floats(0, 1), seed=st.integers(0, 999))
def test_state_dict_roundtrip_continues_with_the_same_batches(kind, split, seed):
    """Interrupt anywhere (before/after the end of the stream, mid-epoch), save through
    torch.save / torch.load(weights_only=True), load into a fresh buffer built with another
    seed: it serves exactly the batches the uninterrupted buffer serves."""
    def new(s):
        return make_buffer(kind.split("-")[0], 100 if kind == "offline" else 24, seed=s,
                           record=True, **KIND_ARGS[kind])

    ops = _script(40, seed)
    ref, ref_out = new(seed), []
    for op in ops:
        _apply(ref, *op, ref_out)
    k = int(split * len(ops))
    a, out = new(seed), []
    for op in ops[:k]:
        _apply(a, *op, out)
    b = new(seed + 1)  # the RNG state must come from the state, not the constructor
    b.load_state_dict(_roundtrip(a.state_dict()))
    for op in ops[k:]:
        _apply(b, *op, out)
    assert len(out) == len(ref_out)
    for x, y in zip(out, ref_out):
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x.keys, y.keys) and np.array_equal(x.x, y.x)
            assert np.array_equal(x.y, y.y)
    assert b.stats() == {**ref.stats(), "wakeups": b.stats()["wakeups"]}
    assert np.array_equal(b.arrivals(), ref.arrivals()) and b.exhausted == ref.exhausted
    assert sum(x is not None for x in ref_out) > 0


def test_state_of_another_kind_or_capacity_is_refused():
    buf = make_buffer("firo", 10, watermark=2)
    buf.put(*sample(0, 0), key=(0, 0))
    st_ = buf.state_dict()
    with pytest.raises(BufferError_, match="firo buffer of 10 samples cannot be loaded into a "
                                           "fifo buffer of 10") as e:
        make_buffer("fifo", 10).load_state_dict(st_)
    assert e.value.value == ("firo", 10)
    with pytest.raises(BufferError_, match="same buffer.kind and buffer.capacity"):
        make_buffer("firo", 11, watermark=2).load_state_dict(st_)
    empty = make_buffer("reservoir", 10, watermark=2)
    other = make_buffer("reservoir", 10, watermark=2)
    other.load_state_dict(_roundtrip(empty.state_dict()))  # nothing received yet: no arrays
    assert other.x is None and len(other) == 0
    other.put(*sample(1, 1), key=(1, 1))
    assert len(other) == 1


def test_firo_and_config_bad_values_are_named():
    with pytest.raises(BufferError_, match="pseudo_epochs 0 must be an integer >= 1") as e:
        make_buffer("firo", 10, pseudo_epochs=0)
    assert e.value.value == 0
    with pytest.raises(BufferError_, match="watermark 11 must be an integer in 1..capacity"):
        make_buffer("firo", 10, watermark=11)
    with pytest.raises(ConfigError, match="buffer.pseudo_epochs") as e:
        load(overrides={"buffer.pseudo_epochs": 0})
    assert e.value.key == "buffer.pseudo_epochs" and e.value.value == 0
    with pytest.raises(ConfigError, match="buffer.pseudo_epochs"):
        load(overrides={"buffer.pseudo_epochs": "2"})
    cfg = load(overrides={"buffer.kind": "firo", "buffer.pseudo_epochs": 3,
                          "buffer.capacity": 40})
    from onlinetrain.reservoir import from_config
    buf = from_config(cfg.buffer, seed_offset=1)
    assert (buf.kind, buf.pseudo_epochs, buf.watermark, buf.capacity) == ("firo", 3, 10, 40)
