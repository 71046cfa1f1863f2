"""The trainer's receiver reads the ring zero-copy: nothing it keeps may still view ring memory."""
import numpy as np
import pytest

from onlinetrain import config, frame as fr
from onlinetrain.reservoir import make_buffer
from onlinetrain.shm_channel import RingConsumer, RingProducer
from onlinetrain.receiver import Receiver


def view_adapter(frame, cfg):
    """An adapter that returns views of the frame (allowed: the receiver must copy)."""
    return frame.array[:2], frame.array


@pytest.mark.timeout(60)
def test_samples_and_validation_survive_slot_reuse(ring_name):
    cfg = config.load(None, {"validation.every": 2, "simulate.producers": 1})
    # a ring of 64 KiB holds ~15 of these frames, so slots are reused many times over
    with RingConsumer.create(ring_name, capacity=64 << 10) as ring, \
            RingProducer.attach(ring_name) as prod:
        buf = make_buffer("fifo", capacity=1000)
        rx = Receiver(ring, buf, cfg, view_adapter)
        rx.start()
        sent = {}
        for sid in range(4):
            for step in range(1, 41):
                a = np.full(1000, sid * 1000 + step, np.float32)
                sent[(sid, step)] = a
                prod.put(fr.Frame(sid, step, np.zeros(1), "T", a))
        prod.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        rx.join(20)
        assert not rx.is_alive() and rx.error is None
    assert rx.samples == 160 and len(rx.val) == 80  # sims 1 and 3 are held out
    for key, (x, y) in rx.val.items():
        assert np.array_equal(y, sent[key]) and np.array_equal(x, sent[key][:2])
    b = buf.get_batch(1000)
    assert len(b.keys) == 80
    for k, y in zip(map(tuple, b.keys), b.y):
        assert np.array_equal(y, sent[k])


@pytest.mark.timeout(60)
def test_a_failure_report_after_completion_does_not_count_as_failed(ring_name):
    """Restarts can deliver an attempt's SIM_FAILED after another attempt's SIM_END (Slurm path)."""
    cfg = config.load(None, {"simulate.producers": 1})
    with RingConsumer.create(ring_name, capacity=1 << 20) as ring, \
            RingProducer.attach(ring_name) as prod:
        rx = Receiver(ring, make_buffer("fifo", capacity=100), cfg, view_adapter)
        rx.start()
        nothing = np.zeros(0, np.float32)
        prod.put(fr.Frame(0, 1, np.zeros(1), "crash", nothing, fr.SIM_FAILED))  # attempt 1
        for sid in (0, 1):  # done = SIM_END and every step it announces
            prod.put_many([fr.Frame(sid, k, np.zeros(1), "T", np.ones(4, np.float32))
                           for k in range(5)])
        prod.put(fr.sim_end(0, {"T": (5, 1)}))                                  # attempt 2 done
        prod.put(fr.sim_end(1, {"T": (5, 1)}))
        prod.put(fr.Frame(1, 1, np.zeros(1), "node lost", nothing, fr.SIM_FAILED))  # late report
        prod.put(fr.Frame(2, 1, np.zeros(1), "diverged", nothing, fr.SIM_FAILED))
        prod.put(fr.Frame(-1, 0, np.zeros(0), "end", nothing, fr.STREAM_END))
        rx.join(20)
        assert not rx.is_alive() and rx.error is None
    assert rx.sims_done == {0, 1} and rx.sims_failed == {2: "diverged"}
