"""User-facing commands that read a study or a config and change nothing: `ot config show`,
`ot report`; and the `--set` option every command that takes a config shares.

    ot config show examples/heat2d.toml --set train.lr=1e-3 --set buffer.kind=fifo
    ot report ot-study/heat2d                     # -> ot-study/heat2d/report/report.html

Imports library code and cli_common only, never cli.py (cli.py registers these commands).
"""
from __future__ import annotations

import click

from .cli_common import Guard


def set_option(f):
    """`--set section.key=value`, repeatable; the value is a TOML literal or a bare word."""
    return click.option(
        "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
        help="Override one config key (repeatable); VALUE is a TOML literal (1e-3, true, "
             "[100, 200], \"text\") or a bare word taken as a string (fifo).")(f)


@click.group("config")
def config_group():
    """Inspect configurations."""


@config_group.command("show")
@click.argument("config_path", type=click.Path(dir_okay=False), required=False)
@set_option
def config_show(config_path, sets):
    """Print the resolved configuration (TOML) and where each value came from."""
    from . import config as C  # noqa: PLC0415
    from .config_view import resolved_toml  # noqa: PLC0415
    with Guard():
        cfg = C.load(config_path, sets=sets)
        click.echo(resolved_toml(cfg, f"resolved configuration of {config_path or 'the defaults'}"),
                   nl=False)


@click.command("report")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write report.html and the PNGs (default: STUDY_DIR/report).")
def report(study_dir, out_dir):
    """One self-contained HTML report (plus PNGs) of a study: running, finished or crashed."""
    from .report import build_report  # noqa: PLC0415
    with Guard():
        click.echo(str(build_report(study_dir, out_dir)))
