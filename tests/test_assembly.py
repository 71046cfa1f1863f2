"""Pieces and fields -> steps, complete-or-re-run accounting, the receiver's checkpoint section."""
import io
import threading
import time

import numpy as np
import pytest
import torch

from onlinetrain import config, frame as fr
from onlinetrain.assembly import Assembler, steps_received
from onlinetrain.receiver import Receiver, fully_received
from onlinetrain.reservoir import make_buffer
from onlinetrain.shm_channel import RingConsumer, RingProducer
from onlinetrain.step import step_adapter

N = 6  # global field: N x N, split in row blocks by "ranks"


def field(sid, step, name):
    base = {"T": 0.0, "U": 0.5}[name]
    return (np.arange(N * N, dtype=np.float64).reshape(N, N) + 1000 * sid + step + base)


def piece(sid, step, name, rank, nranks, params=(1.0, 2.0)):
    rows = N // nranks
    a = field(sid, step, name)[rank * rows:(rank + 1) * rows]
    return fr.Frame(sid, step, np.asarray(params, float), name, a, fr.DATA, (N, N),
                    (rank * rows, 0), b'{"rank": %d}' % rank)


@step_adapter(fields=("T", "U"))
def two_fields(step, cfg):
    """x = params + step, y = T then U, flattened: the test checks y against the sent fields."""
    return np.r_[step.params, step.time_step], np.r_[step.fields["T"].ravel(),
                                                     step.fields["U"].ravel()]


def expected_y(sid, step):
    return np.r_[field(sid, step, "T").ravel(), field(sid, step, "U").ravel()].astype(np.float32)


def end(sid, steps, pieces):
    return fr.sim_end(sid, {"T": (steps, pieces), "U": (steps, pieces)})


def stream_end():
    return fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END)


def run_receiver(ring_name, cfg, adapter, send, buf=None):
    """A real ring, the receiver thread, `send(producers)` from two attached producers ("ranks")."""
    buf = buf or make_buffer("fifo", capacity=10_000)
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring, \
            RingProducer.attach(ring_name) as p0, RingProducer.attach(ring_name) as p1:
        rx = Receiver(ring, buf, cfg, adapter)
        rx.start()
        send(p0, p1)
        p0.put(stream_end())
        rx.join(30)
        assert not rx.is_alive() and rx.error is None
    return rx, buf


@pytest.mark.timeout(120)
def test_second_rank_piece_and_second_field_are_kept_out_of_order(ring_name):
    """Issue 12 item 1: the dedup key was (sim, step), so rank 1's piece and field U were dropped."""
    cfg = config.load(None, {"simulate.producers": 1})
    steps = 5

    def send(p0, p1):
        rng = np.random.default_rng(3)
        frames = [(piece(s, k, n, r, 2), r) for s in (0, 1) for k in range(steps)
                  for n in ("T", "U") for r in (0, 1)]
        for i in rng.permutation(len(frames)):  # pieces, fields and steps out of order
            f, r = frames[i]
            (p0 if r == 0 else p1).put(f)
        p0.put(end(0, steps, 2))
        p1.put(end(1, steps, 2))

    rx, buf = run_receiver(ring_name, cfg, two_fields, send)
    assert rx.sims_done == {0, 1} and not rx.sims_incomplete
    assert rx.samples == 2 * steps and rx.duplicates == 0 and rx.rejected == 0
    b = buf.get_batch(100)
    assert len(b.keys) == 2 * steps
    for (sid, k), x, y in zip(b.keys.tolist(), b.x, b.y):
        assert np.array_equal(y, expected_y(sid, k))
        assert np.array_equal(x, [1.0, 2.0, k])


def test_step_carries_fields_params_and_metadata():
    got = []

    @step_adapter(fields=("T", "U"))
    def keep(step, cfg):
        got.append(step)
        return np.zeros(1), np.zeros(1)

    rx = Receiver(None, make_buffer("fifo", 100), config.load(None, {}), keep)
    rx.handle_batch([piece(4, 9, "U", 1, 2, (7.0,)), piece(4, 9, "T", 0, 2, (7.0,)),
                     piece(4, 9, "T", 1, 2, (7.0,))])
    assert got == []  # U is not complete yet
    rx.handle_batch([piece(4, 9, "U", 0, 2, (7.0,))])
    (st,) = got
    assert (st.sim_id, st.time_step, st.params.tolist()) == (4, 9, [7.0])
    assert sorted(st.fields) == ["T", "U"]
    assert np.array_equal(st.fields["T"], field(4, 9, "T"))
    assert np.array_equal(st.fields["U"], field(4, 9, "U"))
    assert st.meta == {"T": b'{"rank": 0}', "U": b'{"rank": 1}'}  # the first piece that had one


@pytest.mark.timeout(120)
def test_missing_piece_is_not_done_until_a_restarted_rank_sends_it(ring_name):
    """Issue 12 item 2: a simulation counted done on SIM_END whatever had arrived before it."""
    cfg = config.load(None, {"simulate.producers": 1})
    steps = 4

    def send(p0, p1):
        for k in range(steps):
            for n in ("T", "U"):
                p0.put(piece(0, k, n, 0, 2))
                if (k, n) != (2, "U"):  # rank 1 died before sending this piece
                    p1.put(piece(0, k, n, 1, 2))
        p0.put(end(0, steps, 2))

    rx, buf = run_receiver(ring_name, cfg, two_fields, send)
    assert rx.sims_done == set() and rx.sims_incomplete == {0}
    assert rx.samples == steps - 1
    state = rx.state_dict()
    assert fully_received(state) == set()  # the launcher re-runs it
    assert (0, 2) not in steps_received(state)
    # after a resume, the re-run sends everything again: what was there is dropped as duplicates,
    # the missing piece fills the hole, and the simulation is done with each step taken once
    rx2 = Receiver(None, buf, cfg, two_fields)
    rx2.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=True))
    assert rx2.sims_incomplete == {0}
    rx2.handle_batch([piece(0, k, n, r, 2) for k in range(steps) for n in ("T", "U")
                      for r in (1, 0)] + [end(0, steps, 2)])
    assert rx2.sims_done == {0} and not rx2.sims_incomplete
    # step 2's four pieces were not in the state (T waited for U, U was partial): all taken again
    assert rx2.samples == steps and rx2.duplicates == 2 * steps * 2 - 4
    b = buf.get_batch(100)
    assert sorted(map(tuple, b.keys.tolist())) == [(0, k) for k in range(steps)]
    assert np.array_equal(b.y[b.keys[:, 1] == 2][0], expected_y(0, 2))


def test_sim_end_before_the_last_pieces_completes_once_they_arrive():
    rx = Receiver(None, make_buffer("fifo", 100), config.load(None, {}), two_fields)
    rx.handle_batch([piece(3, 0, n, 0, 2) for n in ("T", "U")] + [end(3, 1, 2)])
    assert rx.sims_incomplete == {3} and rx.sims_done == set()
    rx.handle_batch([piece(3, 0, n, 1, 2) for n in ("T", "U")])  # rank 1's pieces were in flight
    assert rx.sims_done == {3} and not rx.sims_incomplete and rx.samples == 1


def test_overlapping_or_mismatched_pieces_are_rejected_not_fatal():
    rx = Receiver(None, make_buffer("fifo", 100), config.load(None, {}), two_fields)
    bad = piece(0, 0, "T", 0, 2)
    bad.offset = (1, 0)  # overlaps rank 0's rows
    other = piece(0, 0, "T", 1, 2)
    other.global_shape = (N + 1, N)
    rx.handle_batch([piece(0, 0, "T", 0, 2), bad, other, piece(0, 0, "U", 0, 3)])
    assert rx.rejected == 2 and rx.error is None
    rx.handle_batch([piece(0, 0, "T", 1, 2), piece(0, 0, "U", 1, 3), piece(0, 0, "U", 2, 3)])
    assert rx.samples == 1


def _saved(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


@pytest.mark.timeout(300)
def test_accounting_of_20000_simulations_of_100_steps_is_under_1_mb():
    """Issue 12 item 3: the set of (sim, step) keys took 32 MB after 2,000,000 samples."""
    asm = Assembler()
    f = fr.Frame(0, 0, np.zeros(5), "T", np.zeros(16, np.float32))
    e = fr.sim_end(0, {"T": (100, 1)})
    add = asm.add
    for sid in range(20_000):
        f.sim_id = e.sim_id = sid
        for k in range(100):
            f.time_step = k
            add(f)
        asm.sim_end(e)
    assert len(asm.done) == 20_000 and not asm.sims
    state = asm.state_dict()
    size = len(_saved(state))
    assert size < 1 << 20, size
    # it grows with simulations, not steps: the same simulations with 10x the steps, same size
    assert len(steps_received(state)) == 2_000_000
    back = Assembler()
    back.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=True))
    assert back.done == asm.done and steps_received(back.state_dict()) == steps_received(state)


def test_accounting_does_not_grow_with_steps():
    sizes = []
    for steps in (10, 1000):
        asm = Assembler()
        f = fr.Frame(0, 0, np.zeros(5), "T", np.zeros(4, np.float32))
        for sid in range(200):
            f.sim_id = sid
            for k in range(steps):
                f.time_step = k
                asm.add(f)
            asm.sim_end(fr.sim_end(sid, {"T": (steps, 1)}))
        sizes.append(len(_saved(asm.state_dict())))
    assert sizes[1] < sizes[0] * 1.2, sizes


def test_non_contiguous_steps_and_open_simulations_survive_the_state():
    asm = Assembler()
    for k in (0, 10, 20):  # output every 10 steps
        asm.add(fr.Frame(1, k, np.zeros(1), "T", np.zeros(2)))
    asm.sim_end(fr.sim_end(1, {"T": (3, 1)}))
    asm.add(fr.Frame(2, 5, np.zeros(1), "T", np.zeros(2)))  # still running
    state = torch.load(io.BytesIO(_saved(asm.state_dict())), weights_only=True)
    assert steps_received(state) == [(1, 0), (1, 10), (1, 20), (2, 5)]
    back = Assembler()
    back.load_state_dict(state)
    assert back.add(fr.Frame(2, 5, np.zeros(1), "T", np.zeros(2))) is None  # a duplicate
    assert back.add(fr.Frame(1, 10, np.zeros(1), "T", np.zeros(2))) is None
    assert back.duplicates == 2 and back.add(fr.Frame(2, 6, np.zeros(1), "T", np.zeros(2)))


def xy16(frame, cfg):
    return frame.array[:4], frame.array[4:]


def test_input_size_mismatch_is_counted_and_skipped():
    """Issue 11 item 7: a different input size raised inside the buffer and killed the receiver."""
    def adapter(frame, cfg):
        n = 5 if frame.sim_id == 1 else 4  # simulation 1 gives one more input value
        return frame.array[:n], frame.array[4:]

    buf = make_buffer("fifo", 100)
    rx = Receiver(None, buf, config.load(None, {}), adapter)
    frames = [fr.Frame(s, k, np.zeros(1), "T", np.arange(16, dtype=np.float32))
              for s in range(3) for k in range(2)]
    rx.handle_batch(frames[:2])
    rx.handle_batch(frames[2:3])  # alone: the adapter's one-step path
    rx.handle_batch(frames[3:])
    assert rx.rejected == 2 and rx.samples == 4 and len(buf) == 4
    assert sorted(map(tuple, buf.get_batch(4).keys.tolist())) == [(0, 0), (0, 1), (2, 0), (2, 1)]


@pytest.mark.timeout(120)
def test_validation_snapshot_is_consistent_while_the_receiver_inserts(ring_name):
    """Issue 11 item 2: the loop walked rx.val (twice, unlocked) while the receiver inserted."""
    from onlinetrain.trainer import _val_items, _validate
    cfg = config.load(None, {"simulate.producers": 1, "validation.every": 1})  # all held out
    model = torch.nn.Linear(4, 12)
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring, \
            RingProducer.attach(ring_name) as prod:
        rx = Receiver(ring, make_buffer("fifo", 10), cfg, xy16)
        rx.start()
        stop = threading.Event()

        def feed():
            k = 0
            while not stop.is_set():
                prod.put_many([fr.Frame(k // 1000, k % 1000 + i, np.zeros(1), "T",
                                        np.full(16, k + i, np.float32)) for i in range(50)])
                k += 1000
        t = threading.Thread(target=feed)
        t.start()
        checks, deadline = 0, time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                x, y, keys = rx.val_arrays()
                assert len(x) == len(y) == len(keys)
                if len(x):
                    assert np.array_equal(x[:, 0], y[:, 0])
                _validate(model, _val_items(rx), "cpu")  # the training loop's path
                checks += 1
        finally:
            stop.set()
            t.join()
            prod.put(stream_end())
            rx.join(20)
    assert rx.error is None and checks > 0 and len(rx.val_arrays()[0]) > 0


@pytest.mark.timeout(60)
def test_full_buffer_backlog_goes_into_the_state_and_back():
    """A checkpoint taken while the receiver waits on a full FIFO holds the samples it waits with:
    none lost, none counted twice."""
    cfg = config.load(None, {})
    buf = make_buffer("fifo", 3)
    rx = Receiver(None, buf, cfg, xy16)
    frames = [fr.Frame(0, k, np.zeros(1), "T", np.full(16, k, np.float32)) for k in range(5)]
    def go():
        with rx.lock:  # as run() does
            rx.handle_batch(frames)
    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 20
    while rx._backlog is None and time.monotonic() < deadline:
        time.sleep(0.01)
    state = torch.load(io.BytesIO(_saved(rx.state_dict())), weights_only=True)
    assert [len(a) for a in state["backlog"]] == [2, 2, 2] and state["samples"] == 5
    rx.stop_event.set()
    t.join(5)
    buf2 = make_buffer("fifo", 3)
    rx2 = Receiver(None, buf2, cfg, xy16)
    rx2.load_state_dict(state)
    rx2.stop_event.set()  # run() puts the backlog first, then stops
    rx2.consumer = None
    got = []
    th = threading.Thread(target=rx2.run)
    th.start()
    while len(got) < 2 and time.monotonic() < deadline:
        b = buf2.get_batch(3, timeout=0.1)
        if b is not None:
            got += b.keys[:, 1].tolist()
    th.join(5)
    assert got == [3, 4] and rx2.samples == 5
