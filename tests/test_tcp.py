"""tcp:// channels with real sockets: auth, malformed peers, backpressure, reconnect, relay, ot CLI."""
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from onlinetrain import auth
from onlinetrain import frame as fr
from onlinetrain.shm_channel import ChannelError, ChannelNotFound, ConsumerGone, Empty, Full
from onlinetrain.tcp_channel import TcpConsumer, TcpProducer

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _frame(sid, step, n=16, dtype=np.float32):
    return fr.Frame(sid, step, np.arange(5.0) + sid, "T", (np.arange(n) * step).astype(dtype))


@pytest.fixture
def cons(tmp_path):
    c = TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path)
    yield c
    c.close()


def _prod(c, tmp_path, **kw):
    return TcpProducer.connect("127.0.0.1", c.port, timeout=5, study_dir=tmp_path, **kw)


@pytest.mark.timeout(30)
def test_frames_roundtrip_from_several_producers(cons, tmp_path):
    def send(sid):
        with _prod(cons, tmp_path) as p:
            for k in range(50):
                p.put(_frame(sid, k, n=1000 + k, dtype=[np.float32, np.float64, np.int32][sid]))
    ths = [threading.Thread(target=send, args=(s,)) for s in range(3)]
    for t in ths:
        t.start()
    got = []
    while len(got) < 150:
        got += cons.get_many(64, timeout=5)
    for t in ths:
        t.join()
    for sid in range(3):
        mine = [f for f in got if f.sim_id == sid]
        assert [f.time_step for f in mine] == list(range(50))  # in order per producer
        f = mine[7]
        assert f.array.dtype == [np.float32, np.float64, np.int32][sid]
        assert np.array_equal(f.array, np.arange(1007) * 7) and f.params[0] == sid
    with pytest.raises(Empty):
        cons.get(timeout=0.1)
    assert cons.auth_failures == 0 and cons.rejected == 0


def test_token_file_is_private_and_checked(tmp_path):
    tok = auth.load_or_create(tmp_path)
    path = auth.token_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(tok) == 32
    assert auth.load_or_create(tmp_path) == tok
    path.chmod(0o644)
    with pytest.raises(auth.AuthError, match="chmod 600") as e:
        auth.load_token(path)
    assert e.value.value == str(path)
    with pytest.raises(auth.AuthError, match="not found"):
        auth.load_token(tmp_path / "nope")


@pytest.mark.timeout(30)
def test_wrong_token_is_refused_and_logged(cons, tmp_path, caplog):
    bad = tmp_path / "bad.token"
    bad.write_text("ab" * 32)
    bad.chmod(0o600)
    with caplog.at_level(logging.WARNING, "onlinetrain.tcp_channel"):
        with pytest.raises(auth.AuthError, match="refused this producer"):
            TcpProducer.connect("127.0.0.1", cons.port, timeout=2, token_file=bad)
        with _prod(cons, tmp_path) as good:  # the trainer is unaffected
            good.put(_frame(1, 1))
        assert cons.get(timeout=5).sim_id == 1
    assert cons.auth_failures == 1
    assert "does not know the study token" in caplog.text


@pytest.mark.timeout(30)
def test_unauthenticated_peer_sending_frames_is_refused(cons, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "onlinetrain.tcp_channel"):
        s = socket.create_connection(("127.0.0.1", cons.port))
        s.sendall(fr.encode(_frame(9, 9)) * 3)  # frames straight away, no handshake
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:  # the trainer closed with our frames unread
            pass
        s.close()
    assert data.startswith(auth.HELLO) and cons.auth_failures == 1
    with pytest.raises(Empty):
        cons.get(timeout=0.3)  # nothing of it reached the trainer
    assert "without authenticating" in caplog.text


class _RawProducer(TcpProducer):
    def raw(self, data: bytes):
        self.sock.sendall(data)


@pytest.mark.timeout(30)
def test_malformed_frames_from_an_authenticated_peer(cons, tmp_path):
    p = _RawProducer.connect("127.0.0.1", cons.port, timeout=5, study_dir=tmp_path)
    good = fr.encode(_frame(1, 1))
    bad_dtype = bytearray(good)
    bad_dtype[9] = 99  # dtype code: framing intact, frame invalid
    p.raw(bytes(bad_dtype) + good)
    with pytest.raises(fr.FrameError, match="unknown dtype code 99"):
        cons.get(timeout=5)
    assert cons.get(timeout=5).sim_id == 1  # the connection goes on after a well-framed bad frame
    p.raw(b"GARBAGE!" * 10)  # framing broken: reported, connection closed
    with pytest.raises(fr.FrameError, match="not an onlinetrain frame"):
        cons.get(timeout=5)
    assert cons.rejected == 2
    p.close()
    with _prod(cons, tmp_path) as q:
        q.put(_frame(2, 2))
    assert cons.get(timeout=5).sim_id == 2


@pytest.mark.timeout(60)
def test_backpressure_blocks_the_producer(tmp_path):
    c = TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path, capacity=1 << 20)
    try:
        p = _prod(c, tmp_path)
        sent = 0
        with pytest.raises(Full, match="accepted nothing"):
            for k in range(200):  # 200 MB: far more than queue + socket buffers
                p.put(_frame(0, k, n=1 << 18), timeout=1.0)
                sent += 1
        assert 0 < sent < 200
        got = []
        while True:
            try:
                got += c.get_many(64, timeout=1.0)
            except Empty:
                break
            except fr.FrameError:  # the frame cut short by the timeout
                continue
        assert [f.time_step for f in got] == list(range(sent))  # nothing lost before the stall
        p.put(_frame(0, 999))  # a new connection after the stall
        assert c.get(timeout=5).time_step == 999 and p.reconnects == 1
        p.close()
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_reconnect_when_the_trainer_restarts_then_a_clear_error(tmp_path):
    c1 = TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path)
    port = c1.port
    p = TcpProducer.connect("127.0.0.1", port, timeout=5, study_dir=tmp_path, reconnect_timeout=20)
    p.put(_frame(0, 1))
    assert c1.get(timeout=5).time_step == 1
    c1.close()
    box = {}
    timer = threading.Timer(0.5, lambda: box.setdefault(
        "c", TcpConsumer.listen("127.0.0.1", port, study_dir=tmp_path)))
    timer.start()
    try:
        p.put(_frame(0, 2))  # trainer gone: retries until the new one listens
        timer.join()
        assert box["c"].get(timeout=5).time_step == 2 and p.reconnects == 1
    finally:
        timer.join()
        box["c"].close()
    p.reconnect_timeout = 0.5
    with pytest.raises(ConsumerGone, match="did not come back within 0.5 s") as e:
        p.put(_frame(0, 3))
    assert e.value.name == f"tcp://127.0.0.1:{port}"
    p.close()


def test_nobody_listening_and_bad_addresses(tmp_path):
    with pytest.raises(auth.AuthError, match="secret.token not found"):  # no trainer ever came
        TcpProducer.connect("127.0.0.1", 9, timeout=0.3, study_dir=tmp_path)
    auth.load_or_create(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ChannelNotFound, match="nobody listens on tcp://127.0.0.1"):
        TcpProducer.connect("127.0.0.1", free, timeout=0.3, study_dir=tmp_path)
    with pytest.raises(ChannelError, match="needs a host"):
        TcpConsumer.listen("", 0, study_dir=tmp_path)
    with pytest.raises(ChannelError, match="cannot listen on tcp://192.0.2.1"):
        TcpConsumer.listen("192.0.2.1", 0, study_dir=tmp_path)  # not an address of this host
    with pytest.raises(auth.AuthError, match="OT_TOKEN_FILE"):
        auth.resolve_token()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_ot_simulate_over_tcp_feeds_the_trainer(tiny_config, tmp_path, mode):
    from onlinetrain.trainer import train
    cfg = tiny_config
    cons = TcpConsumer.listen("127.0.0.1", 0, study_dir=cfg.output.dir)
    url = f"tcp://127.0.0.1:{cons.port}"
    env = {**ENV, "OT_TOKEN_FILE": str(auth.token_path(cfg.output.dir))}
    params = subprocess.run(OT + ["sample", "-n", "6", "--seed", "1"], capture_output=True,
                            text=True, check=True, env=ENV).stdout
    argv = OT + ["simulate", "--to", url, "--n", "12", "--steps", "20"]
    sim = subprocess.Popen(argv + (["--relay"] if mode == "relay" else []), stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        sim.stdin.write(params)
        sim.stdin.close()
        cfg.buffer.kind = "fifo"  # each sample once: training ends with the stream
        s = train(cfg, consumer=cons)
        assert sim.wait(30) == 0, sim.stderr.read()
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        cons.close()
    assert s["sims_done"] == 6 and s["samples_received"] == 6 * 20
    assert s["batches"] == 4  # 5 training sims x 20 steps, FIFO batches of 32: 32+32+32+4
    assert s["frames_rejected"] == 0 and cons.auth_failures == 0


@pytest.mark.timeout(60)
def test_ot_relay_cli_spreads_by_simulation_id(tmp_path, ring_name):
    from onlinetrain.shm_channel import RingProducer
    cs = [TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path) for _ in range(2)]
    env = {**ENV, "OT_TOKEN_FILE": str(auth.token_path(tmp_path))}
    rel = subprocess.Popen(OT + ["relay", f"shm://{ring_name}"] +
                           [f"tcp://127.0.0.1:{c.port}" for c in cs], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p = RingProducer.attach(ring_name, timeout=20)
        for sid in range(6):
            p.put(_frame(sid, 1))
        p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        p.close()
        out, err = rel.communicate(timeout=30)
        assert rel.returncode == 0, err
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["per_rank"] == [3, 3] and stats["stream_ends"] == 1
        for r, c in enumerate(cs):
            got = c.get_many(64, timeout=5)
            while len(got) < 4:
                got += c.get_many(64, timeout=5)
            assert sorted(f.sim_id for f in got if f.kind == fr.DATA) == [r, r + 2, r + 4]
            assert got[-1].kind == fr.STREAM_END  # every rank learns the producer ended
    finally:
        if rel.poll() is None:
            rel.kill()
            rel.communicate()
        for c in cs:
            c.close()


def test_relay_rejects_bad_arguments():
    from onlinetrain.relay import RelayError, route, run_relay
    assert [route(s, 3) for s in range(5)] == [0, 1, 2, 0, 1]
    assert route(7, 3, "pinned", 2) == 2
    with pytest.raises(RelayError, match="pin 3 is not a destination") as e:
        route(0, 2, "pinned", 3)
    assert e.value.value == 3
    with pytest.raises(RelayError, match="unknown spread 'random'"):
        route(0, 2, "random")
    with pytest.raises(RelayError, match="must be a local ring"):
        run_relay("tcp://127.0.0.1:5", ["tcp://127.0.0.1:6"])


@pytest.mark.timeout(60)
def test_close_waits_until_the_trainer_took_every_frame(tmp_path):
    """A simulation's frames come before the STREAM_END its launcher sends on another connection
    after the simulation closed (exited): close() returns only once the trainer queued them all."""
    c = TcpConsumer.listen("127.0.0.1", 0, study_dir=tmp_path, capacity=64 << 10)
    try:
        sim, launcher = _prod(c, tmp_path), _prod(c, tmp_path)
        for k in range(40):  # 40 x 16 KB: far more than the trainer's queue holds
            sim.put(_frame(1, k, n=4096))
        closed = threading.Event()

        def finish():
            sim.close()
            closed.set()
            launcher.put(fr.Frame(-1, 0, np.zeros(0), "stream end", np.zeros(0, np.float32),
                                  fr.STREAM_END))
            launcher.close()

        t = threading.Thread(target=finish)
        t.start()
        assert not closed.wait(0.5)  # the trainer has not taken the frames yet: close waits
        got = []
        while len(got) < 41:
            got += c.get_many(64, timeout=10)
        t.join(10)
        assert [f.time_step for f in got[:40]] == list(range(40)) and got[40].kind == fr.STREAM_END
    finally:
        c.close()
