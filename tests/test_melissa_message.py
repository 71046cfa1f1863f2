"""`model.adapter_message = "melissa"` (issue 18, part C): the receiver hands the adapter Melissa's
SimulationData; a Melissa process_simulation_data ports by its signature line. Real Receiver,
real ring, real frames (the multi-rank, multi-field path under `ot run` is in
tests/test_melissa_api.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onlinetrain import config
from onlinetrain import frame as fr
from onlinetrain.melissa_message import MelissaMessageError, SimulationData
from onlinetrain.receiver import Receiver
from onlinetrain.reservoir import make_buffer
from onlinetrain.shm_channel import RingConsumer, RingProducer
from onlinetrain.step import Step, resolve_adapter


def _cfg(**model):
    return config.from_dict({"model": {"adapter_message": "melissa", **model},
                             "sampling": {"bounds": [[0.0, 1.0]] * 3}, "solver": {"steps": 7}})


def _step():
    return Step(5, 2, np.array([0.5, 1.5, 2.5]),
                {"T": np.arange(6.0).reshape(2, 3), "P": np.ones(2)}, {"P": b'{"t": 0.2}'})


def test_plain_function_gets_the_melissa_message():
    got = []

    def process_simulation_data(msg, config):
        got.append((msg, config))
        x = np.array(msg.parameters + [msg.time_step], dtype=np.float32)
        return x, msg.data["T"].astype(np.float32)
    cfg = _cfg(fields=["T", "P"])
    one, many, fields = resolve_adapter(process_simulation_data, cfg)
    assert many is None and fields == ("T", "P")
    x, y = one(_step(), cfg)
    msg, c = got[0]
    assert isinstance(msg, SimulationData) and c is cfg
    assert (msg.simulation_id, msg.time_step) == (5, 2)
    assert msg.parameters == [0.5, 1.5, 2.5] and isinstance(msg.parameters, list)
    assert msg.data["T"].shape == (6,) and msg.metadata == {"P": '{"t": 0.2}'}
    assert x.tolist() == [0.5, 1.5, 2.5, 2.0] and y.tolist() == list(range(6))


def test_method_form_gets_the_study_as_self_and_may_return_tensors():
    def process_simulation_data(self, msg, config_dict):
        x = torch.from_numpy(np.array(msg.parameters[-self.nb_parameters:] + [msg.time_step],
                                      dtype=np.float32))
        return x, torch.tensor([self.nb_time_steps, len(self.field_names)], dtype=torch.float64)
    cfg = _cfg(fields=["T"])
    one, _, fields = resolve_adapter(process_simulation_data, cfg)
    x, y = one(_step(), cfg)
    assert fields == ("T",)
    assert x.dtype == np.float32 and x.tolist() == [0.5, 1.5, 2.5, 2.0]
    assert y.dtype == np.float32 and y.tolist() == [7.0, 1.0]


def test_wrong_signature_and_config_are_clear_errors():
    with pytest.raises(MelissaMessageError, match=r"takes 1 positional argument.*"
                                                  r"process_simulation_data\(msg, config\)") as e:
        resolve_adapter(lambda msg: msg, _cfg())
    assert "lambda" in e.value.value
    with pytest.raises(config.ConfigError, match='model.adapter_message.*"onlinetrain".*"melissa"'):
        config.from_dict({"model": {"adapter_message": "zmq"}})
    with pytest.raises(config.ConfigError, match='model.fields.*adapter_message = "melissa"') as e:
        config.from_dict({"model": {"fields": ["T"]}})
    assert e.value.key == "model.fields" and e.value.value == ["T"]
    with pytest.raises(config.ConfigError, match='model.mode = "field"'):
        config.from_dict({"model": {"adapter_message": "melissa", "mode": "autoregressive"}})
    # the default is unchanged: a frame adapter still gets a frame
    one, _, fields = resolve_adapter(lambda f, c: (f.params, f.array), config.Config())
    assert fields is None


@pytest.mark.timeout(60)
def test_receiver_hands_melissa_messages_once_every_field_is_complete(ring_name):
    seen = []

    def process_simulation_data(msg, config):
        seen.append((msg.time_step, sorted(msg.data), msg.data["T"].copy()))
        return np.array(msg.parameters + [msg.time_step]), msg.data["T"] + msg.data["P"].sum()
    cfg = _cfg(fields=["T", "P"])
    with RingConsumer.create(ring_name, 1 << 20) as ring:
        with RingProducer.attach(ring_name, timeout=5) as p:
            for k in range(3):  # T in two pieces (rank order), P whole; P of step 2 never comes
                for off in (0, 2):
                    p.put(fr.Frame(1, k, np.array([0.5, 1.5, 2.5]), "T",
                                   np.arange(2.0) + off + 10 * k, global_shape=(4,),
                                   offset=(off,)))
                if k < 2:
                    p.put(fr.Frame(1, k, np.array([0.5, 1.5, 2.5]), "P", np.ones(3)))
            p.put(fr.Frame(-1, 0, np.zeros(0), "end", np.zeros(0, np.float32), fr.STREAM_END))
        rx = Receiver(ring, make_buffer("fifo", capacity=64), cfg, process_simulation_data)
        rx.start()
        rx.join(20)
        assert not rx.is_alive() and rx.error is None
    assert [s[:2] for s in seen] == [(0, ["P", "T"]), (1, ["P", "T"])]
    assert seen[1][2].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert rx.samples == 2 and rx.rejected == 0
