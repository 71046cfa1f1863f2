"""Study commands: `ot status DIR`, and the study worker behind `ot simulate --study DIR`.

    ot run examples/heat2d.toml                 # creates the study directory (output.dir)
    ot simulate --study ot-study/heat2d &       # one more worker, on this or any node
    ot status ot-study/heat2d                   # ledger and training progress at a glance
    ot run examples/heat2d.toml --resume        # after a crash: continue from the checkpoint

A worker claims pending parameter sets from the ledger until every set is done or failed; start
more at any time and the study speeds up, stop some (Ctrl-C, SIGTERM: their running sets go back
to pending; SIGKILL: reclaimed once their pid / heartbeat is gone) and the others go on.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import click

from . import config as C
from .ledger import FAILED, RUNNING, STATES, Ledger, read_heartbeat
from .study import LedgerSource


def study_config(study_dir) -> C.Config:
    path = Path(study_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise C.ConfigError(f"{path} not found: is {study_dir} a study directory? (`ot run "
                            f"CONFIG` creates one)", "study", str(study_dir)) from None
    except ValueError as e:
        raise C.ConfigError(f"{path} is not valid JSON: {e}", "study", str(path)) from None
    return C.from_dict(data, str(path))


def study_worker(study_dir, concurrency: int | None = None,
                 stop_event: threading.Event | None = None):
    """Run simulations claimed from the study's ledger until none is left; a SimResult."""
    from .runner import redraw_for  # noqa: PLC0415
    from .simulate import run_simulations  # noqa: PLC0415
    from .launch import ProcessLauncher, cpu_share, token_env  # noqa: PLC0415
    cfg = study_config(study_dir)
    k = concurrency or cfg.simulate.concurrency
    from .breed_study import breeder_for  # noqa: PLC0415
    source = LedgerSource(Ledger(study_dir), cfg.simulate, redraw=redraw_for(cfg),
                          breeder=breeder_for(cfg, study_dir))  # Breed: every worker polls
    return run_simulations(None, cfg.solver, cfg.channel_url, k, cfg.channel.connect_timeout,
                           stop_event=stop_event, send_stream_end=False,
                           simulation_timeout=cfg.simulate.simulation_timeout, source=source,
                           threads=cpu_share(k, 0), launcher=ProcessLauncher(cfg.simulate.ntasks),
                           env_extra=token_env(cfg.channel_url, study_dir))


def status_text(study_dir) -> str:
    """The ledger and training progress as a few lines of text."""
    d = Path(study_dir)
    led = Ledger(d)
    snap = led.snapshot()
    by = {k: sorted(i for i, s in snap.items() if s["state"] == k) for k in STATES}
    lines = [f"study {d}: {len(snap)} parameter sets: " +
             ", ".join(f"{len(v)} {k}" for k, v in by.items())]
    if led.ended:
        lines.append(f"  study ended: {led.ended}")
    restarts = sum(s["attempts"] for s in snap.values() if s["state"] != FAILED)
    if restarts:
        lines.append(f"  restarts so far: {restarts}")
    workers = {}
    for i in by[RUNNING]:
        workers.setdefault(snap[i]["worker"], []).append(i)
    now = time.time()
    for hb_path in sorted((d / "workers").glob("*.json")):
        hb = read_heartbeat(hb_path)
        if hb:
            workers.setdefault(hb["worker"], [])
    for w, ids in sorted(workers.items()):
        hb = read_heartbeat(d / "workers" / (w.replace(":", "-") + ".json"))
        age = f"heartbeat {now - hb['t']:.0f} s ago" if hb else "no heartbeat"
        lines.append(f"  worker {w} ({age}): running {ids}")
    if led.generations or any(s.get("generation") for s in snap.values()):
        lines.append("  " + generations_line(snap, led.generations))
    for i in by[FAILED]:
        lines.append(f"  failed {i} after {snap[i]['attempts']} attempts: {snap[i]['reason']}")
    metrics = d / "metrics.jsonl"
    last = None
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                last = json.loads(line)
            except ValueError:
                pass
    if last:
        val = "-" if last.get("val_mse") is None else f"{last['val_mse']:.4g}"
        lines.append(f"  training: batch {last['batch']}, train loss {last['train_loss']:.4g}, "
                     f"val mse {val}, {last['samples']} samples")
    from .checkpoint import list_checkpoints  # noqa: PLC0415
    cks = list_checkpoints(d)
    if cks:
        lines.append(f"  newest checkpoint: {cks[-1]}")
    summ = d / "summary.json"
    if summ.exists():
        lines.append("  finished: " + summ.read_text().replace("\n", " ")[:200])
    return "\n".join(lines)


def generations_line(snap: dict, generations: list) -> str:
    """Breed: sets per generation, how many were bred from how many parents, the R used."""
    from .breed_study import generations_summary  # noqa: PLC0415
    g = generations_summary(snap, generations)
    per = ", ".join(f"gen {k}: {v}" for k, v in g["sets_per_generation"].items())
    top = ", ".join(f"{p} ({n})" for p, n in g["top_parents"])
    r = f"; R {g['r'][0]} .. {g['r'][-1]}" if g["r"] else ""
    return (f"Breed: {g['resamplings']} resamplings; sets per generation: {per}; "
            f"{g['bred']} bred from {g['parents']} parents{r}" +
            (f"; most used parents: {top}" if top else ""))


@click.command()
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The ledger as JSON (id -> state).")
@click.option("--watch", is_flag=True, help="Refresh in place until the study ends (or Ctrl-C).")
@click.option("--interval", type=float, default=2.0, show_default=True,
              help="Seconds between refreshes (--watch).")
def status(study_dir, as_json, watch, interval):
    """Show a study's ledger (pending / running / done / failed) and training progress."""
    from .cli_common import Guard as _Guard  # noqa: PLC0415
    from .ledger import LedgerError  # noqa: PLC0415
    with _Guard():
        try:
            if as_json:
                snap = Ledger(study_dir).snapshot()
                click.echo(json.dumps({str(k): v for k, v in snap.items()}))
            elif watch:
                from .progress import watch_status  # noqa: PLC0415
                watch_status(study_dir, status_text, interval)
            else:
                click.echo(status_text(study_dir))
        except LedgerError as e:
            raise click.ClickException(str(e)) from e


@click.command()
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between two looks at the scores and the ledger.")
@click.option("--once", is_flag=True, help="One look (breed what is due now), then exit.")
def breed(study_dir, interval, once):
    """Run the Breed breeder of a study driven by another program (docs/breed.md).

    `ot run`, `ot slurm` and `ot simulate --study` workers already run it; use this beside a
    launcher of your own that claims sets from the study's ledger."""
    from .breed_study import breeder_for, watch  # noqa: PLC0415
    from .cli_common import Guard as _Guard  # noqa: PLC0415
    with _Guard():
        d = Path(study_dir)
        cfg = study_config(d) if (d / "config.json").exists() or not (d / "study.toml").exists() \
            else C.load(d / "study.toml")
        if cfg.sampling.adaptive != "breed":
            raise click.ClickException(f"{d}: sampling.adaptive = {cfg.sampling.adaptive!r}; "
                                       f"Breed needs [sampling] adaptive = \"breed\" in the "
                                       f"study's config")
        if once:
            kids = breeder_for(cfg, d).poll()
            click.echo(f"{len(kids)} sets re-parameterised")
        else:
            click.echo(f"{watch(cfg, d, interval)} generations bred")

