"""Progress of `ot run` / `ot train` on the terminal, and `ot status --watch`.

On a terminal: a live bar (rich) with batches toward train.max_batches, simulations done and
running (from the study ledger, polled once a second), the latest train loss and validation MSE,
the learning rate and the ingest rate (samples/s). Not a terminal (pipes, Slurm logs): one plain
line per validation, as before. `--quiet`: nothing.

    with progress_reporter(quiet=False, max_batches=3000, study_dir="ot-study/x") as on_progress:
        summary = run_study(cfg, on_progress=on_progress)   # on_progress(metrics_dict) or None
    watch_status("ot-study/x", status_text, interval=2.0)  # redraws in place until finished

CLI-level presentation only: nothing below the CLI imports this module.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from pathlib import Path

import click


def plain_line(m: dict) -> str:
    """One metrics line as the non-terminal output prints it."""
    val = "-" if m.get("val_mse") is None else f"{m['val_mse']:.4g}"
    return (f"batch {m['batch']:>6}  sims done {m['sims_done']:>4}  samples {m['samples']:>7}  "
            f"train loss {m['train_loss']:.4g}  val mse {val}  lr {m['lr']:.2g}")


def _plain(m: dict):
    click.echo(plain_line(m), err=True)


def _console(stderr: bool = True):
    from rich.console import Console  # noqa: PLC0415
    return Console(stderr=stderr)


@contextlib.contextmanager
def _logs_to(console):
    """While the bar is live, log records go through the console (printed above the bar)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__)]
    old = [h.setStream(console.file) for h in handlers]
    try:
        yield
    finally:
        for h, s in zip(handlers, old):
            h.setStream(s)


class LiveBar:
    """The rich bar; call it with each metrics dict; a thread polls the ledger for simulations."""

    def __init__(self, console, max_batches: int, study_dir=None, poll_s: float = 1.0):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress,  # noqa: PLC0415
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(
            TextColumn("[bold]batches"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[sims]}"), TextColumn("{task.fields[train]}"),
            console=console, refresh_per_second=4, redirect_stdout=True, redirect_stderr=True)
        self.task = self.progress.add_task("train", total=max_batches, sims="sims -",
                                           train="waiting for data")
        self.ledger_dir = Path(study_dir) if study_dir else None
        self.poll_s = poll_s
        self.sims_done_rx = 0
        self.last = None  # (time, samples) of the previous metrics line
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="ot-progress", daemon=True)

    def __enter__(self):
        self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.progress.stop()
        return False

    def _sims(self) -> str:
        if self.ledger_dir is not None and (self.ledger_dir / "ledger.jsonl").exists():
            from .ledger import Ledger  # noqa: PLC0415
            try:
                c = Ledger(self.ledger_dir).counts()
            except Exception:  # a half-created study: try again next time
                return f"sims {self.sims_done_rx} done"
            text = f"sims {c['done']}/{sum(c.values())} done, {c['running']} running"
            return text + (f", {c['failed']} failed" if c["failed"] else "")
        return f"sims {self.sims_done_rx} done"

    def _poll(self):
        while not self.stop.wait(self.poll_s):
            self.progress.update(self.task, sims=self._sims())

    def __call__(self, m: dict):
        now, samples = m["time"], m["samples"]
        rate = ""
        if self.last is not None and now > self.last[0]:
            rate = f"  ingest {(samples - self.last[1]) / (now - self.last[0]):.0f} samples/s"
        self.last = (now, samples)
        self.sims_done_rx = m["sims_done"]
        val = "-" if m.get("val_mse") is None else f"{m['val_mse']:.3g}"
        self.progress.update(self.task, completed=m["batch"], sims=self._sims(),
                             train=f"loss {m['train_loss']:.3g}  val {val}  lr {m['lr']:.2g}{rate}")


@contextlib.contextmanager
def progress_reporter(quiet: bool, max_batches: int, study_dir=None):
    """Yields the on_progress callback: None (quiet), a live bar (terminal) or plain lines."""
    if quiet:
        yield None
        return
    console = _console()
    if not console.is_terminal:
        yield _plain
        return
    with _logs_to(console), LiveBar(console, max_batches, study_dir) as bar:
        yield bar


def watch_status(study_dir, render, interval: float = 2.0, until_finished: bool = True):
    """Redraw `render(study_dir)` in place every `interval` s (terminal; else print each
    snapshot) until Ctrl-C or, with `until_finished`, until the study has a summary.json."""
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415
    console = _console(stderr=False)
    done = Path(study_dir) / "summary.json"

    def finished():
        return until_finished and done.exists()
    try:
        if not console.is_terminal:
            while True:
                done_before = finished()  # one more snapshot after the study ended
                click.echo(render(study_dir) + "\n")
                if done_before:
                    return
                time.sleep(interval)
        with Live(Text(render(study_dir)), console=console, auto_refresh=False) as live:
            while not finished():
                time.sleep(interval)
                live.update(Text(render(study_dir)), refresh=True)
            live.update(Text(render(study_dir)), refresh=True)  # the final state, once more
    except KeyboardInterrupt:  # the way out of an endless watch: not an error
        pass
