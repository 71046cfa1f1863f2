"""A resumed autoregressive run continues with the same windows: the receiver's accounting, the
held steps of every simulation and the inner buffer go through a real checkpoint file."""
import numpy as np
import pytest
import torch

from onlinetrain import ar, checkpoint, config
from onlinetrain import frame as fr
from onlinetrain.reservoir import make_buffer
from onlinetrain.receiver import Receiver


def frames(order):
    """ks1d-like frames: 6 parameters, a 16-point field that encodes (sim, step)."""
    out = []
    for sim, step in order:
        p = np.array([sim, 0, 0, 0, 0, 0], np.float64)
        u = np.full(16, 100 * sim + step, np.float32)
        out.append(fr.Frame(sim, step, p, "u", u))
    return out


def setup(cfg, kind):
    mode = ar.training_mode(cfg, ar.ks1d_ar)
    buf = mode.wrap(make_buffer(kind, 500, 1, seed=3, record=True))
    rx = Receiver(None, buf, cfg, mode.adapter)
    return mode, buf, rx


def model_and_opt(mode, cfg):
    torch.manual_seed(0)
    from onlinetrain.models import build_conv1d
    m = mode.build(build_conv1d, 22, 16)
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    return m, o, torch.optim.lr_scheduler.MultiStepLR(o, [100], 0.5)


@pytest.mark.parametrize("kind, unroll", [("reservoir", 1), ("fifo", 2)])
def test_resumed_run_forms_the_same_windows(tmp_path, kind, unroll):
    cfg = config.load(None, {"model.mode": "autoregressive", "model.hidden": 4,
                             "model.layers": 1, "train.unroll": unroll,
                             "model.builder": "onlinetrain.models:build_conv1d"})
    rng = np.random.default_rng(7)
    queues = {s: [(s, t) for t in range(1, 9)] for s in range(4)}
    order = []
    while any(queues.values()):
        s = int(rng.choice([k for k, q in queues.items() if q]))
        order.append(queues[s].pop(0))
    half = len(order) // 2
    mode, buf, rx = setup(cfg, kind)
    model, opt, sched = model_and_opt(mode, cfg)
    for f in frames(order[:half]):
        rx.handle(f)
    checkpoint.save(tmp_path, checkpoint.capture(model, opt, sched, 0, rx, buf, cfg,
                                                dims=(22, 16)))
    for f in frames(order[half:]):
        rx.handle(f)
    straight = buf.inner.arrivals()

    mode2, buf2, rx2 = setup(cfg, kind)
    model2, opt2, sched2 = model_and_opt(mode2, cfg)
    ck = checkpoint.load_latest(tmp_path)
    checkpoint.restore_stream(ck, rx2, buf2)
    checkpoint.restore_training(ck, model2, opt2, sched2)
    # the restarted simulations send everything again: what was taken is dropped as duplicates
    for f in frames(order):
        rx2.handle(f)
    assert rx2.duplicates == half
    resumed = buf2.inner.arrivals()
    w = unroll + 1
    expect = [(s, t) for s in range(4) for t in range(1, 10 - w)]
    assert sorted(map(tuple, straight.tolist())) == expect  # every window once
    # the resumed run formed exactly the windows the uninterrupted one formed after the
    # checkpoint (the window straddling it too); a restored arrival log may hold the ones before
    after = [tuple(k) for k in straight.tolist()][len(straight) - len(resumed):]
    assert sorted(map(tuple, resumed.tolist())) == sorted(after) and len(resumed) > 0
    assert buf2.windows == buf.windows and buf2.gaps == buf.gaps == 0
    # and both serve the same batches from here on (contents and RNG restored)
    buf.end_stream(), buf2.end_stream()
    a, b = buf.get_batch(8, timeout=0), buf2.get_batch(8, timeout=0)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    la = mode.sse(model, torch.from_numpy(a.x), torch.from_numpy(a.y))
    lb = mode2.sse(model2, torch.from_numpy(b.x), torch.from_numpy(b.y))
    assert la.item() == lb.item() > 0
