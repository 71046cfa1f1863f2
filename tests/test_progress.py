"""Live progress: a bar on a real pseudo-terminal, plain lines in a pipe, nothing with --quiet, and
`ot status --watch` redrawing in place. Real `ot run` processes of the tiny study."""
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

OT = [sys.executable, "-m", "onlinetrain"]
TINY = str(ROOT / "examples" / "heat2d-tiny.toml")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "160",
            "LINES": "40"}


def run_in_pty(argv, timeout, on_output=None):
    """Run argv with stdin/stdout/stderr on a new pseudo-terminal; (returncode, all output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env(),
                         start_new_session=True, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if on_output:
                    on_output(p, out)
            elif p.poll() is not None:
                break
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace")


def _run_args(tmp_path, ring_name, *extra):
    return OT + ["run", TINY, "--out", str(tmp_path / "study"), "--max-batches", "300",
                 "--set", f'output.name="{ring_name}"', *extra]


@pytest.mark.timeout(300)
def test_ot_run_on_a_terminal_shows_a_live_bar(tmp_path, ring_name):
    rc, out = run_in_pty(_run_args(tmp_path, ring_name), timeout=280)
    assert rc == 0, out
    assert ANSI.search(out), "no terminal control sequences: the bar was not drawn"
    text = ANSI.sub("", out)
    assert "batches" in text and "━" in text  # rich's bar
    assert "300/300" in text  # batches toward max_batches
    assert re.search(r"sims \d+/15 done, \d+ running", text)  # from the study ledger
    assert re.search(r"loss [0-9.e+-]+  val [0-9.e+-]+  lr ", text)
    assert re.search(r"ingest \d+ samples/s", text)
    assert "batch    100  sims done" not in text  # not the plain lines
    assert "validation MSE" in text and "trained 300 batches" in text  # the summary follows


@pytest.mark.timeout(300)
def test_ot_run_piped_prints_plain_lines(tmp_path, ring_name):
    p = subprocess.run(_run_args(tmp_path, ring_name), env=_env(), capture_output=True,
                       text=True, timeout=280)
    assert p.returncode == 0, p.stderr
    assert not ANSI.search(p.stderr + p.stdout) and "━" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("batch ")]
    assert [int(ln.split()[1]) for ln in lines] == [100, 200, 300]
    assert "sims done" in lines[0] and "val mse" in lines[0]


@pytest.mark.timeout(300)
def test_ot_run_quiet_on_a_terminal_prints_only_the_summary(tmp_path, ring_name):
    rc, out = run_in_pty(_run_args(tmp_path, ring_name, "--quiet"), timeout=280)
    assert rc == 0, out
    text = ANSI.sub("", out)
    assert "━" not in text and "/300" not in text and "batch    100" not in text
    assert "trained 300 batches" in text


@pytest.mark.timeout(60)
def test_status_watch_redraws_in_place_until_the_study_ends(tmp_path):
    from onlinetrain import config
    from onlinetrain.ledger import Ledger, worker_id
    from onlinetrain.runner import new_study
    cfg = config.load(TINY, {"output.dir": str(tmp_path / "s")})
    d = tmp_path / "s"
    new_study(cfg, d)
    led = Ledger(d)
    state = {"step": 0}

    def advance(p, out):  # change the study between redraws, then finish it
        text = ANSI.sub("", out.decode(errors="replace"))
        if state["step"] == 0 and "15 pending" in text:
            led.claim(worker_id(), 2)
            state["step"] = 1
        elif state["step"] == 1 and "2 running" in text:
            (d / "summary.json").write_text(json.dumps({"val_mse": 0.5}) + "\n")
            state["step"] = 2
    rc, out = run_in_pty(OT + ["status", str(d), "--watch", "--interval", "0.3"], timeout=50,
                         on_output=advance)
    assert rc == 0, out
    assert state["step"] == 2, out
    text = ANSI.sub("", out)
    assert "15 pending, 0 running" in text and "13 pending, 2 running" in text
    assert "finished:" in text
    assert re.search(r"\x1b\[\d*A", out), "no cursor-up: the status was not redrawn in place"
