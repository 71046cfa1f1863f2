"""`ot slurm`: run a study on a Slurm cluster (see docs/slurm.md).

    ot slurm submit examples/heat2d-tiny.toml --dry-run   # print the sbatch script
    ot slurm submit examples/heat2d-tiny.toml --wait      # submit and wait for the result
    ot slurm status ot-study/tiny
    ot slurm cancel ot-study/tiny
"""
from __future__ import annotations

import json
import sys

import click

from .cli_user import set_option


def _guard():
    from .cli_common import Guard as _Guard  # noqa: PLC0415
    return _Guard()


def _fail_on(exc_types):
    class G:
        def __enter__(self):
            return self

        def __exit__(self, et, e, tb):
            if et is not None and issubclass(et, exc_types):
                raise click.ClickException(str(e)) from e
            return False
    return G()


def _slurm_error():
    from .slurm import SlurmError  # noqa: PLC0415
    return SlurmError


@click.group()
def slurm():
    """Run a study on a Slurm cluster: global (hetjob) or semiglobal mode, restarts, job limit."""


@slurm.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["global", "semiglobal"]), help="Overrides slurm.mode.")
@click.option("--out", "out_dir", help="Study directory (overrides output.dir).")
@click.option("--dry-run", is_flag=True, help="Write the study directory, print the script, submit nothing.")
@click.option("--wait", "wait_s", type=float, default=None, is_flag=False, flag_value=86400.0,
              help="Wait (at most this many seconds) for the study to finish.")
@set_option
def submit(config_path, mode, out_dir, dry_run, wait_s, sets):
    """Write an sbatch script into the study directory and submit it (inside an allocation: run)."""
    from . import config as C  # noqa: PLC0415
    from . import slurm_study  # noqa: PLC0415
    with _guard(), _fail_on(_slurm_error()):
        cfg = C.load(config_path, {"slurm.mode": mode, "output.dir": out_dir}, sets=sets)
        res = slurm_study.submit(cfg, dry_run=dry_run)
        if dry_run:
            click.echo(res["script"], nl=False)
            return
        if "result" not in res:
            click.echo(f"submitted job {res['job']}; study directory {res['dir']}")
            if wait_s is None:
                return
            res["result"] = slurm_study.wait(res["dir"], timeout=wait_s)
        r = res["result"]
        click.echo(json.dumps(r))
        if r.get("status") != "completed":
            sys.exit(1)


@slurm.command()
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(study_dir, as_json):
    """Jobs, steps, simulations done/failed, training progress of a study."""
    from . import slurm_study  # noqa: PLC0415
    with _guard(), _fail_on(_slurm_error()):
        s = slurm_study.status(study_dir)
    if as_json:
        click.echo(json.dumps(s))
        return
    for j in s["jobs"]:
        click.echo(f"job {j['id']:<10} {j['state']:<11} {j['name']}  ({j['reason']})")
    for st in s["steps"]:
        click.echo(f"  step {st['id']:<10} {st['name']:<12} on {st['nodes']}")
    sims = s["simulations"]
    click.echo(f"simulations: {len(sims['done'])} done, {len(sims['failed'])} failed, "
               f"{len(sims['running'])} running, {len(sims['pending'])} pending, "
               f"{len(sims['stopped'])} stopped, {sims['restarts']} restarts")
    if sims["ended"]:
        click.echo(f"study ended: {sims['ended']}")
    if sims.get("breed"):
        b = sims["breed"]
        click.echo(f"Breed: {b['resamplings']} resamplings; sets per generation: "
                   f"{b['sets_per_generation']}; {b['bred']} bred from {b['parents']} parents")
    for sid, why in sims["failed"].items():
        click.echo(f"  simulation {sid}: {why}")
    t = s["training"]
    if t:
        click.echo(f"training: batch {t['batch']}, samples {t['samples']}, loss {t['train_loss']:.4g}")
    if s["result"]:
        click.echo(f"result: {s['result'].get('status')}")


@slurm.command()
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True))
def cancel(study_dir):
    """Cancel every job of the study and remove its shared-memory segments."""
    from . import slurm_study  # noqa: PLC0415
    with _guard(), _fail_on(_slurm_error()):
        r = slurm_study.cancel(study_dir)
    click.echo(f"cancelled {len(r['cancelled'])} job(s); removed {len(r['segments_removed'])} "
               f"segment(s)")


@slurm.command(hidden=True)
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True))
def drive(study_dir):
    """(inside the allocation) run the trainer and the simulations of a prepared study."""
    from .slurm_run import drive as drive_fn  # noqa: PLC0415
    with _guard(), _fail_on(_slurm_error()):
        r = drive_fn(study_dir)
    click.echo(json.dumps(r))
    if r.get("status") != "completed":
        sys.exit(1)
