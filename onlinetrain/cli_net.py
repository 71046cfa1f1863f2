"""`ot relay`: forward this node's shm ring to trainer ranks over TCP (see onlinetrain.relay).

    ot relay shm://sims tcp://10.0.0.5:5555 tcp://10.0.0.6:5555 --token-file study/secret.token
    ot simulate --to shm://sims < params.jsonl       # on the same node, any number of times
"""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("src")
@click.argument("dsts", nargs=-1, required=True)
@click.option("--spread", type=click.Choice(["round-robin", "pinned"]), default="round-robin",
              show_default=True, help="round-robin: rank = sim_id % ranks; pinned: all to --pin.")
@click.option("--pin", type=int, default=0, show_default=True,
              help="Destination index for --spread pinned.")
@click.option("--producers", type=int, default=1, show_default=True,
              help="`ot simulate` processes writing to SRC (the relay ends after their ends).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="The study's secret.token (default: $OT_TOKEN_FILE).")
@click.option("--connect-timeout", type=float, default=30.0, show_default=True)
@click.option("--ring-mb", type=int, default=64, show_default=True)
def relay(src, dsts, spread, pin, producers, token_file, connect_timeout, ring_mb):
    """Own ring SRC (shm://NAME) and forward its frames to the trainer ranks DSTS (tcp://HOST:PORT)."""
    from .cli_common import Guard as _Guard  # noqa: PLC0415
    from .relay import run_relay  # noqa: PLC0415
    with _Guard():
        stats = run_relay(src, list(dsts), spread, pin, producers, connect_timeout, ring_mb,
                          token_file=token_file)
        click.echo(json.dumps(stats))
