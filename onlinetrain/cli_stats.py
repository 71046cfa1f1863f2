"""`ot stats`: iterative statistics and Sobol' indices of a stream (docs/stats.md).

    ot sample --method pick-freeze -n 200 --dim 5 --bounds 100:500 | ot simulate --to shm://hs &
    ot stats --from shm://hs --config study.toml --out hs-stats     # writes hs-stats/stats.npz
    ot stats show hs-stats                                           # one-screen summary
"""
from __future__ import annotations

import contextlib
import json
import signal

import click

from . import config as C
from .errors import OTError


@contextlib.contextmanager
def _guard():
    """Library errors -> one-line ClickException; SIGTERM ends the run like Ctrl-C."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except OTError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        click.echo("interrupted; channel removed, no statistics written", err=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)


@click.group(invoke_without_command=True)
@click.option("--from", "url", help="Channel URL to drain (created by this command).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config; its [stats], [channel], [simulate] and [solver] sections are used.")
@click.option("--out", "out_dir", help="Output directory for stats.npz (default: output.dir).")
@click.option("--producers", type=int, help="Number of `ot simulate` processes feeding the channel.")
@click.option("--field", "fields", multiple=True, help="Follow this field (repeat; default: all).")
@click.option("--threshold", "thresholds", multiple=True, type=float,
              help="Exceedance probability P(u > T) of this threshold (repeat).")
@click.option("--quantile", "quantiles", multiple=True, type=float,
              help="Quantile of this level in (0, 1) (repeat).")
@click.option("--sobol/--no-sobol", default=None,
              help="Sobol' indices from pick-freeze groups (`ot sample --method pick-freeze`).")
@click.pass_context
def stats(ctx, url, config_path, out_dir, producers, fields, thresholds, quantiles, sobol):
    """Statistics of every cell and time step of the streamed fields, no file but the results."""
    if ctx.invoked_subcommand is not None:
        return
    if not url and not config_path:
        raise click.UsageError("give --from URL (and --config FILE), or `ot stats show DIR`")
    from .stats_consumer import run_stats  # noqa: PLC0415
    with _guard():
        cfg = C.load(config_path, {
            "channel.url": url, "output.dir": out_dir, "simulate.producers": producers,
            "stats.fields": list(fields) or None, "stats.thresholds": list(thresholds) or None,
            "stats.quantiles": list(quantiles) or None, "stats.sobol": sobol})
        s = run_stats(cfg, out_dir, report=lambda m: click.echo(m, err=True))
        click.echo(json.dumps(s))


@stats.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
def show(out_dir):
    """One-screen summary of OUT_DIR/stats.npz."""
    from .stats_io import show as show_fn  # noqa: PLC0415
    with _guard():
        click.echo(show_fn(out_dir))
