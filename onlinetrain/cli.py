"""`ot`: the command line. Thin: each command parses options, builds a config, calls one library
function and turns library exceptions into a one-line error with the fix.

    ot sample -n 64 --seed 1 | ot simulate --to shm://demo &
    ot train --from shm://demo --config examples/heat2d.toml
    ot run examples/heat2d.toml
    ot clean                      # remove shm segments left by dead runs
"""
from __future__ import annotations

import json
import logging
import threading

import click

from . import config as C
from .cli_common import Guard as _Guard
from .cli_user import set_option
from .progress import progress_reporter

log = logging.getLogger("onlinetrain")


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="onlinetrain")
def main(verbose):
    """Online training of neural surrogates from running simulations, no files in between."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("-n", "n", type=int, required=True, help="Number of parameter sets.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--method", type=click.Choice(["uniform", "lhs", "halton", "sobol", "pick-freeze"]),
              default="uniform", show_default=True,
              help="pick-freeze: -n groups of p+2 rows for Sobol' indices (docs/stats.md).")
@click.option("--base", type=click.Choice(["uniform", "lhs", "halton", "sobol"]), default="uniform",
              show_default=True, help="pick-freeze: the method drawing each group's A and B.")
@click.option("--second-order", is_flag=True, help="pick-freeze: add C_k rows (2p+2 per group).")
@click.option("--bounds", multiple=True, metavar="LOW:HIGH",
              help="Bounds of each parameter (repeat per parameter; default 100:500 x 5).")
@click.option("--dim", type=int, default=5, show_default=True,
              help="Number of parameters when a single --bounds is given for all.")
@click.option("--start-id", type=int, default=0, show_default=True)
def sample(n, seed, method, base, second_order, bounds, dim, start_id):
    """Print N parameter sets as JSON lines {"id": ..., "params": [...]}."""
    from . import sampler  # noqa: PLC0415
    with _Guard():
        b = sampler.parse_bounds(bounds) if bounds else list(sampler.DEFAULT_BOUNDS)
        if len(b) == 1:
            b = b * dim
        if method == "pick-freeze":
            for row in sampler.pick_freeze(n, seed, base, b, start_id, second_order):
                click.echo(json.dumps(row))
            return
        click.echo(sampler.to_jsonl(sampler.sample(n, seed, method, b, start_id)), nl=False)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--to", "url", help="Channel URL: shm://NAME or tcp://HOST:PORT.")
@click.option("--study", "study_dir", type=click.Path(file_okay=False),
              help="Work for this study directory: claim its pending sets until none is left.")
@click.option("--params", "params_file", type=click.File("r"), default="-",
              help="JSON-lines parameter sets (default: stdin).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config; its [solver] and [simulate] sections are used.")
@click.option("--concurrency", type=int, help="Simulations at once.")
@click.option("--solver", help="heat2d (default), ks1d, or package.module:generator.")
@click.option("--n", type=int, help="heat2d grid (interior nodes per side); ks1d grid points.")
@click.option("--steps", type=int, help="heat2d time steps; ks1d output frames.")
@click.option("--scheme", type=click.Choice(["implicit", "explicit"]))
@click.option("--connect-timeout", type=float, help="Seconds to wait for the channel to appear.")
@click.option("--relay", is_flag=True, help="tcp:// only: simulations write to a local ring and "
              "one relay thread forwards (always on for mpi://).")
@set_option
@click.argument("program", nargs=-1, type=click.UNPROCESSED)
def simulate(url, study_dir, params_file, config_path, concurrency, solver, n, steps, scheme,
             connect_timeout, relay, sets, program):
    """Run a simulation for each parameter set and stream every time step to a channel.

    After `--`, an external PROGRAM template ({sim_id} {params} {p0}.. {channel}) instrumented
    with onlinetrain.client is run instead of a Python solver."""
    from .sampler import read_jsonl  # noqa: PLC0415
    from .simulate import run_simulations  # noqa: PLC0415
    if study_dir:
        from .cli_study import study_worker  # noqa: PLC0415
        with _Guard():
            res = study_worker(study_dir, concurrency)
            click.echo(f"{len(res.done)} simulations done, {len(res.failed)} failed, "
                       f"{res.restarts} restarts in {res.wall_s:.1f} s", err=True)
        return
    if not url:
        raise click.UsageError("give --to URL (or --study DIR)")
    with _Guard():
        kind = "program" if program else (solver if solver in ("heat2d", "ks1d") else
                                          "python" if solver else None)
        cfg = C.load(config_path, {
            "solver.kind": kind, "solver.function": solver if kind == "python" else None,
            "solver.argv": list(program) or None, "solver.n": n, "solver.steps": steps,
            "solver.scheme": scheme, "simulate.concurrency": concurrency,
            "channel.connect_timeout": connect_timeout}, sets=sets)

        def read():
            return read_jsonl(params_file, getattr(params_file, "name", "<stdin>"))
        if url.startswith("mpi://"):  # the first simulate rank reads (stdin is rank 0's only)
            from .mpi_channel import share_read  # noqa: PLC0415
            psets = share_read(read, getattr(params_file, "name", "<stdin>") == "<stdin>")
        else:
            psets = read()
        from .launch import cpu_share  # noqa: PLC0415
        from .relay import maybe_relayed  # noqa: PLC0415
        with maybe_relayed(url, relay, cfg.channel.connect_timeout) as target:
            res = run_simulations(psets, cfg.solver, target, cfg.simulate.concurrency,
                                  cfg.channel.connect_timeout,
                                  max_restarts=cfg.simulate.max_restarts,
                                  simulation_timeout=cfg.simulate.simulation_timeout,
                                  threads=cpu_share(cfg.simulate.concurrency, 0))
        click.echo(f"{len(res.done)} simulations done, {len(res.failed)} failed in "
                   f"{res.wall_s:.1f} s", err=True)
        for sid, why in res.failed.items():
            click.echo(f"  simulation {sid}: {why}", err=True)


def _report(s: dict):
    click.echo(f"trained {s['batches']} batches on {s['samples_received']} samples from "
               f"{s['sims_done']} simulations ({s['sims_failed']} failed) in {s['wall_s']:.1f} s")
    if s["val_mse"] is not None:
        click.echo(f"validation MSE {s['val_mse']:.5g}  vs mean-field baseline "
                   f"{s['mean_field_mse']:.5g}  (ratio {s['val_mse'] / s['mean_field_mse']:.3g})")
    if s.get("mean_nRMSE") is not None:  # autoregressive mode (rollout.py)
        h = s["rollout_horizon"]
        click.echo(f"rollout of {s['rollout_sims']} held-out simulations over "
                   f"{s['rollout_steps']} steps: mean nRMSE {s['mean_nRMSE']:.4g}, one-step MSE "
                   f"{s['one_step_mse']:.4g}, nRMSE "
                   + (f"crosses 1 at step {h}" if h else "stays below 1"))
    keys = ("val_mse", "mean_field_mse", "batches", "samples_received", "duplicates_dropped",
            "one_step_mse", "mean_nRMSE", "rollout_horizon")
    click.echo(json.dumps({k: s[k] for k in keys if k in s}))


@main.command()
@click.option("--from", "url", required=True, help="Channel URL to drain (created by this command).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--max-batches", type=int)
@click.option("--buffer", type=click.Choice(["reservoir", "fifo", "firo", "offline"]))
@click.option("--out", "out_dir", help="Output directory (metrics.jsonl, checkpoint.pt).")
@click.option("--producers", type=int, help="Number of `ot simulate` processes feeding the channel.")
@click.option("--quiet", is_flag=True, help="No progress bar or lines; only the summary.")
@click.option("--resume", is_flag=True, help="Continue from the newest good checkpoint in --out.")
@set_option
def train(url, config_path, max_batches, buffer, out_dir, producers, quiet, resume, sets):
    """Train the surrogate from frames arriving on a channel."""
    from .runner import attach_study  # noqa: PLC0415
    from .trainer import train as train_fn  # noqa: PLC0415
    stop = threading.Event()  # the first signal stops the loop between two steps
    with _Guard(stop_event=stop):
        cfg = C.load(config_path, {"channel.url": url, "train.max_batches": max_batches,
                                   "buffer.kind": buffer, "output.dir": out_dir,
                                   "simulate.producers": producers}, sets=sets)
        if cfg.validation.every == 0 and cfg.validation.first_id < 0:
            click.echo("note: no held-out simulations (set validation.every); no val MSE", err=True)
        finished = attach_study(cfg, resume)
        with progress_reporter(quiet, cfg.train.max_batches,
                               cfg.output.dir if finished else None) as on_progress:
            summary = train_fn(cfg, on_progress=on_progress, resume=resume, finished=finished,
                               stop_event=stop)
        _report(summary)


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--max-batches", type=int)
@click.option("--out", "out_dir")
@click.option("--quiet", is_flag=True, help="No progress bar or lines; only the summary.")
@click.option("--resume", is_flag=True, help="Continue the study in output.dir after a crash.")
@set_option
def run(config_path, max_batches, out_dir, quiet, resume, sets):
    """Run a whole study on this machine: simulations + training, no scheduler."""
    from .runner import run_study  # noqa: PLC0415
    stop = threading.Event()  # the first signal stops simulations and training cleanly
    with _Guard(stop_event=stop):
        cfg = C.load(config_path, {"train.max_batches": max_batches, "output.dir": out_dir},
                     sets=sets)
        with progress_reporter(quiet, cfg.train.max_batches, cfg.output.dir) as on_progress:
            summary = run_study(cfg, on_progress=on_progress, resume=resume, stop_event=stop)
        _report(summary)


@main.command()
@click.option("--prefix", default="", help="Only segments of this study prefix.")
def clean(prefix):
    """Remove onlinetrain shm segments whose creator is dead."""
    from .shm_channel import clean_stale  # noqa: PLC0415
    removed = clean_stale(prefix)
    click.echo(f"removed {len(removed)} stale segment(s)" + (": " + ", ".join(removed) if removed
                                                              else ""))


from .cli_melissa import import_melissa  # noqa: E402
from .cli_net import relay as _relay_cmd  # noqa: E402
from .cli_slurm import slurm as _slurm  # noqa: E402
from .cli_stats import stats as _stats  # noqa: E402
from .cli_study import breed as _breed, status  # noqa: E402
from .cli_user import config_group, report  # noqa: E402

main.add_command(config_group)
main.add_command(report)
main.add_command(_slurm)
main.add_command(_relay_cmd)
main.add_command(status)
main.add_command(_stats)
main.add_command(_breed)
main.add_command(import_melissa)

if __name__ == "__main__":  # pragma: no cover
    main()
