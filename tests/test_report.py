"""`ot report` of real `ot run` studies (running, finished, crashed), checked in a real headless
browser: Playwright driving Debian's chromium (/usr/bin/chromium, installed by `make deps`)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onlinetrain.cli import main
from onlinetrain.valfields import FILENAME

from conftest import ROOT, wait_until

CHROMIUM = "/usr/bin/chromium"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FINISHED_SECTIONS = ["overview", "training", "ingest", "buffer", "simulations", "fields"]


@pytest.fixture
def browser():  # per test: the leak check wants no browser process left after a test
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def open_report(browser, path):
    """Load the page; (console errors, [(alt, naturalWidth)], section ids, body text)."""
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && "
                           "i.naturalWidth])")
    sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    text = page.inner_text("body")
    page.close()
    return errors, images, sections, text


def report(study, *extra):
    r = CliRunner().invoke(main, ["report", str(study), *extra])
    assert r.exit_code == 0, r.output
    return Path(r.output.strip())


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """One real tiny `ot run`: a report while it runs, then the finished study."""
    d = tmp_path_factory.mktemp("report")
    study = d / "study"
    name = f"t{os.getpid()}-report"
    p = subprocess.Popen([sys.executable, "-m", "onlinetrain", "run",
                          str(ROOT / "examples" / "heat2d-tiny.toml"), "--out", str(study),
                          "--max-batches", "300", "--set", f"output.name={name}"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert wait_until(lambda: (study / "metrics.jsonl").exists()
                          and (study / "metrics.jsonl").read_text().count("\n") >= 1, 250)
        running = d / "running"
        r = CliRunner().invoke(main, ["report", str(study), "--out", str(running)])
        assert r.exit_code == 0, r.output
        out, err = p.communicate(timeout=280)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err
    return {"study": study, "running": running / "report.html", "dir": d}


@pytest.mark.timeout(600)
def test_report_of_a_finished_study_renders(browser, studies):
    study = studies["study"]
    path = report(study)
    assert path == study / "report" / "report.html"
    errors, images, sections, text = open_report(browser, path)
    assert errors == []
    assert images and all(w and w > 0 for _, w in images), images
    metrics = [json.loads(ln) for ln in (study / "metrics.jsonl").read_text().splitlines()]
    want = FINISHED_SECTIONS + (["data-wait"] if any("data_wait_frac" in m for m in metrics)
                                else [])
    assert sorted(sections) == sorted(want)
    assert "statistics" not in sections  # no stats.npz in this study: no section
    assert "onlinetrain study" in text and "(finished)" in text and "MSE ratio" in text
    html = path.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("data:image/png;base64,") == len(images)
    for sid in sections[1:]:
        png = study / "report" / f"{sid}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(600)
def test_validation_fields_file_holds_held_out_fields(studies):
    with np.load(studies["study"] / FILENAME, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    assert list(f["shape"]) == [12, 12]  # heat2d-tiny: n = 12, the adapter knows the shape
    assert set(f["sim_ids"]) <= {12, 13, 14}  # the held-out ids (n_train = 12)
    assert len(f["sim_ids"]) == 9 and f["y_true"].shape == f["y_pred"].shape == (9, 144)
    assert int(f["batch"]) == 300
    mse = float(((f["y_pred"] - f["y_true"]) ** 2).mean())
    assert 0 < mse < float(((f["y_true"] - f["y_true"].mean(0)) ** 2).mean()) * 2


@pytest.mark.timeout(600)
def test_report_made_while_the_study_ran(browser, studies):
    errors, images, sections, text = open_report(browser, studies["running"])
    assert errors == [] and images and all(w and w > 0 for _, w in images)
    assert "(running)" in text
    assert {"overview", "training", "simulations"} <= set(sections)


@pytest.mark.timeout(600)
def test_report_of_a_crashed_study_and_optional_sections(browser, studies, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(studies["study"], crashed, ignore=shutil.ignore_patterns("report"))
    (crashed / "summary.json").unlink()
    old = time.time() - 3600  # nothing written for an hour: not running
    with open(crashed / "metrics.jsonl", "a") as fh:
        fh.write('{"batch": 400, "time": 9')  # a trainer killed mid-write
    with open(crashed / "ledger.jsonl", "a") as fh:
        fh.write('{"ev": "claim", "id"')
    for f in ("metrics.jsonl", "ledger.jsonl"):
        os.utime(crashed / f, (old, old))
    # statistics maps where stats.npz exists (docs/stats.md: F/mean, F/variance (S, ...))
    np.savez(crashed / "stats.npz", **{"T/mean": np.random.rand(3, 12, 12),
                                       "T/variance": np.random.rand(3, 12, 12),
                                       "T/steps": np.arange(3)})
    # an adapter that does not know the shape: flat profiles
    with np.load(crashed / FILENAME, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    f["shape"] = np.zeros(0, np.int64)
    np.savez(crashed / FILENAME, **f)
    path = report(crashed)
    errors, images, sections, text = open_report(browser, path)
    assert errors == [] and all(w and w > 0 for _, w in images)
    assert "(stopped)" in text
    assert {"training", "simulations", "fields", "statistics"} <= set(sections)


def test_report_of_something_else_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "is not a directory: give a study directory" in r.output
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "has no metrics.jsonl, ledger.jsonl or summary.json" in r.output
