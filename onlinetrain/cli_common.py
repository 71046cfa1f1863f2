"""What every `ot` command shares: the guard that turns library errors and signals into exits.

The cli_* modules and cli.py import this module; nothing here imports a command module, so the
command groups never import each other (no cycle through cli.py).

    with Guard():                     # OTError -> one-line click error; Ctrl-C/SIGTERM -> exit 130
        run_something()
    stop = threading.Event()
    with Guard(stop_event=stop):      # the first signal only sets `stop` (the training loop checks
        train(cfg, stop_event=stop)   # it between steps); a second one interrupts at once
"""
from __future__ import annotations

import os
import signal
import sys

import click

from .errors import OTError


class Guard:
    """Library errors -> ClickException; SIGTERM behaves like Ctrl-C (cleanup runs either way).

    Without `stop_event`, a signal raises KeyboardInterrupt wherever the main thread is. With it,
    the first SIGINT/SIGTERM only sets the event: the code under the guard stops at a point of its
    choosing (the trainer: between two optimizer steps, so its exit checkpoint is consistent) and
    raises KeyboardInterrupt itself; a second signal raises at once.
    After a real SIGINT/SIGTERM, once the library's cleanup has run, the process ends with
    os._exit(130): CPython may otherwise still report the caught interrupt as death by SIGINT."""

    def __init__(self, stop_event=None):
        self.stop_event = stop_event

    def __enter__(self):
        self.signalled = 0

        def on_signal(signum, frame):
            self.signalled += 1
            if self.stop_event is not None and self.signalled == 1:
                self.stop_event.set()  # the loop stops at its next step boundary
                return
            if self.signalled > 1 + (self.stop_event is not None):
                return  # one interrupt is enough: let the cleanup finish
            raise KeyboardInterrupt
        self.old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, etype, exc, tb):
        for s, h in self.old.items():
            signal.signal(s, h)
        if etype is KeyboardInterrupt:
            click.echo("interrupted; children stopped and shared memory removed", err=True)
            if self.signalled:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(130)
        if etype is not None and issubclass(etype, OTError):
            raise click.ClickException(str(exc)) from exc
        return False
