"""`ot import-melissa CONFIG.json > study.toml`: a Melissa study configuration as ours.

    ot import-melissa config_slurm.json > study.toml     # each key not mapped: one line on stderr
    ot slurm submit study.toml --dry-run
"""
from __future__ import annotations

import click


@click.command("import-melissa")
@click.argument("config_path", type=click.Path(dir_okay=False))
def import_melissa(config_path):
    """Print the onlinetrain study (TOML) of a Melissa JSON configuration; the keys it does not
    support are listed on stderr with the reason (docs/from-melissa.md)."""
    from .cli_common import Guard  # noqa: PLC0415
    from .melissa_import import import_file  # noqa: PLC0415
    with Guard():
        text, warnings = import_file(config_path)
    for w in warnings:
        click.echo(f"ot import-melissa: {w}", err=True)
    click.echo(text, nl=False)
