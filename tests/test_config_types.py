"""Every config value's type is checked; the message names the key, the value and the type wanted
(and `ot` prints it as one line, no traceback)."""
import dataclasses
import subprocess
import sys

import pytest

from onlinetrain import config as C

from conftest import ROOT


@pytest.mark.parametrize("key,value,want", [
    ("train.lr", "fast", "train.lr = 'fast': expected a number (str given)"),
    ("train.max_batches", 1.5, "train.max_batches = 1.5: expected an integer (float given)"),
    ("train.compile", "yes", "train.compile = 'yes': expected true or false (str given)"),
    ("model.hidden", True, "model.hidden = True: expected an integer (bool given)"),
    ("buffer.record_arrivals", 1, "buffer.record_arrivals = 1: expected true or false"),
    ("channel.url", 5, "channel.url = 5: expected a string (int given)"),
    ("train.lr_milestones", 100, "train.lr_milestones = 100: expected a list (int given)"),
    ("train.device", "gpu", "train.device = 'gpu': use \"cpu\", \"cuda\" or \"cuda:N\""),
    ("train.amp", "fp16", "train.amp = 'fp16': use \"none\" or \"bf16\""),
])
def test_bad_type_names_key_value_and_type(key, value, want):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, {key: value})
    assert want in str(e.value)
    assert e.value.key == key and e.value.value == value


def test_every_field_of_every_section_is_type_checked():
    """A string where each field wants something else is refused, naming that key."""
    for sec, cls in C.SECTIONS.items():
        cls = C._section_cls(sec)
        for f in dataclasses.fields(cls):
            bad = 3 if f.type == "str" else "x"
            with pytest.raises(C.ConfigError) as e:
                C.from_dict({sec: {f.name: bad}})
            assert e.value.key == f"{sec}.{f.name}", (sec, f.name, str(e.value))


def test_ints_are_accepted_as_floats():
    cfg = C.load(None, {"train.lr": 1, "channel.idle_timeout": 5})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.train.resolved_threads() >= 1 and C.load(None, {"train.threads": 3}) \
        .train.resolved_threads() == 3


def test_cli_prints_one_line_for_a_bad_type(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nlr = "fast"\n')
    r = subprocess.run([sys.executable, "-m", "onlinetrain", "train", "--from", "shm://x",
                        "--config", str(cfg), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "Error: train.lr = 'fast': expected a number (str given)"]
