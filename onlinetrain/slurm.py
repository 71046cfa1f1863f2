"""Slurm, the pure part: sbatch scripts, srun/sbatch argv, node lists, squeue output. No I/O here.

    parse_nodelist("node-[001-004,010]")    # ['node-001', ..., 'node-004', 'node-010']
    driver_script(cfg, study_dir, python)  # the readable sbatch script `ot slurm submit` writes
    srun_argv(["python", "-m", "onlinetrain.simrun"], name="sim3", het_group=1)
    parse_squeue("12|12|RUNNING|None|ot-x\\n")  # [Job(id='12', state='RUNNING', ...)]

The processes that use these (submit, the in-allocation driver, status, cancel) are in
onlinetrain/slurm_run.py and onlinetrain/slurm_launch.py; the study's records in its ledger.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import OTError

SQUEUE_FORMAT = "%i|%A|%T|%r|%j"  # job id (12+1) | numeric id (13, its steps' job) | state | reason | name
STEPS_FORMAT = "%i|%j|%N"  # step id | step name | nodes
DONE_STATES = {"COMPLETED"}
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                 "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
DRIVER_SCRIPT, SIM_SCRIPT = "ot-slurm.sbatch", "ot-sim.sbatch"


class SlurmError(OTError, RuntimeError):
    """A Slurm command failed or printed something unexpected; `value` is the offending input."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


# ---- node lists ------------------------------------------------------------------------------
def _split_top(s: str) -> list[str]:
    """Split at commas outside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"bad node list {s!r}: ']' without '['", s)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise SlurmError(f"bad node list {s!r}: '[' without ']'", s)
    return out + [cur]


def _expand_range(part: str, whole: str) -> list[str]:
    lo, sep, hi = part.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise SlurmError(f"bad range {part!r} in node list {whole!r}: use N or N-M", whole)
    if not sep:
        return [lo]
    if int(hi) < int(lo):
        raise SlurmError(f"bad range {part!r} in node list {whole!r}: end before start", whole)
    width = len(lo)  # zero padding is taken from the start: 001-010
    return [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]


def _expand_host(h: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", h)
    if not m:
        return [h]
    head, tail = h[:m.start()], h[m.end():]
    out = []
    for part in m[1].split(","):
        for num in _expand_range(part, whole):
            out += [head + num + rest for rest in _expand_host(tail, whole)]
    return out


def parse_nodelist(s: str) -> list[str]:
    """Expand a Slurm host list ('node-[001-004,010]', 'a[1-2]-ib,b3') into host names, in order."""
    s = (s or "").strip()
    if not s:
        return []
    out = []
    for h in _split_top(s):
        if not h:
            raise SlurmError(f"bad node list {s!r}: empty host name", s)
        out += _expand_host(h, s)
    return out


# ---- squeue / sbatch output ------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    id: str  # '12', or '12+1' for a component of heterogeneous job 12
    job_id: str  # the numeric id of this job or het component: its steps are JOB_ID.STEP
    state: str
    reason: str
    name: str

    @property
    def base(self) -> str:
        return self.id.split("+")[0].split("_")[0]


@dataclass(frozen=True)
class Step:
    id: str  # '12.3', '12.batch'
    name: str
    nodes: str

    @property
    def job(self) -> str:
        return self.id.split(".")[0]


def _rows(text: str, ncols: int, what: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.strip().split("|", ncols - 1)
        if len(cols) != ncols:
            raise SlurmError(f"unexpected {what} line {line!r}: expected {ncols} '|'-separated "
                             f"fields", line)
        rows.append([c.strip() for c in cols])
    return rows


def parse_squeue(text: str) -> list[Job]:
    """Parse `squeue --noheader --format=SQUEUE_FORMAT` output."""
    return [Job(*r) for r in _rows(text, 5, "squeue")]


def parse_steps(text: str) -> list[Step]:
    """Parse `squeue --steps --noheader --format=STEPS_FORMAT` output."""
    return [Step(*r) for r in _rows(text, 3, "squeue --steps")]


def parse_sbatch_id(text: str) -> str:
    """The job id from `sbatch --parsable` output ('123' or '123;cluster')."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    jid = first.split(";")[0]
    if not jid.isdigit():
        raise SlurmError(f"sbatch printed {text!r}, not a job id", text)
    return jid


def job_outcome(state: str) -> str:
    """'done', 'failed' or 'active' for a Slurm job state such as 'CANCELLED by 0'."""
    s = state.split()[0].rstrip("+") if state else ""
    if s in DONE_STATES:
        return "done"
    return "failed" if s in FAILED_STATES else "active"


# ---- argv and scripts ------------------------------------------------------------------------
def srun_argv(command: list[str], name: str, het_group: int | None = None, ntasks: int = 1,
              extra: list[str] = (), nodes: int = 1, cpus_per_task: int | None = None,
              gpus: int = 0) -> list[str]:
    """One job step running `command`: exclusive CPUs, a name squeue shows, in a het group;
    `ntasks` > 1 runs it as an MPI program (--mpi=pmi2)."""
    argv = ["srun", f"--ntasks={ntasks}", f"--nodes={nodes}", "--exact", f"--job-name={name}",
            "--kill-on-bad-exit=1"]
    if cpus_per_task:
        argv.append(f"--cpus-per-task={cpus_per_task}")
    if gpus:
        argv.append(f"--gpus={gpus}")
    if ntasks > 1:
        argv.append("--mpi=pmi2")
    if het_group is not None:
        argv.append(f"--het-group={het_group}")
    return argv + list(extra) + ["--"] + list(command)


def sim_sbatch_argv(script: str, name: str, log: str, args: list[str],
                    command: list[str]) -> list[str]:
    """Submit one simulation as its own job (semiglobal mode); `script` execs its arguments."""
    return ["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", *args, script,
            *command]


def _sbatch_lines(args: list[str]) -> list[str]:
    return [f"#SBATCH {a}" for a in args]


def driver_script(cfg, study_dir: str, python: str, pythonpath: str) -> str:
    """The sbatch script of a study: resources as #SBATCH lines, then the driver (`ot slurm drive`).

    global: group 0 is the trainer (slurm.trainer_args), `hetjob`, group 1 has job_limit tasks for
    the simulations (slurm.simulation_args). semiglobal: the trainer's job only."""
    s, d = cfg.slurm, str(study_dir)
    head = ["#!/bin/bash",
            f"# onlinetrain study {cfg.output.name!r}, {s.mode} mode: written by `ot slurm submit`.",
            f"# Resubmit by hand with: sbatch {shlex.quote(str(Path(d) / DRIVER_SCRIPT))}",
            f"#SBATCH --job-name=ot-{cfg.output.name}",
            f"#SBATCH --output={d}/logs/driver-%j.out",
            "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={s.cpus}",
            *([f"#SBATCH --gpus={s.gpus}"] if s.gpus else []), *_sbatch_lines(s.trainer_args)]
    if s.mode == "global":
        ntasks = s.job_limit * cfg.simulate.ntasks
        head += ["#SBATCH hetjob", f"#SBATCH --ntasks={ntasks}",
                 f"#SBATCH --cpus-per-task={s.cpus_per_task}",
                 *([f"#SBATCH --nodes={s.job_limit * s.nodes}"] if s.nodes > 1 else []),
                 *_sbatch_lines(s.simulation_args)]
    body = ["", "set -e", f"export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"exec {shlex.quote(python)} -m onlinetrain slurm drive {shlex.quote(d)}"]
    return "\n".join(head + body) + "\n"


def sim_script() -> str:
    """The batch script of one simulation job (semiglobal): runs its arguments. OT_SIM_ID,
    OT_PARAMS, OT_CHANNEL, OT_SOLVER, PYTHONPATH come from the environment of the driver."""
    return "#!/bin/bash\n# one onlinetrain simulation job (semiglobal mode): runs its arguments\n" \
           'exec "$@"\n'


def trainer_command(python: str, study_dir: str, url: str, resume: bool = False) -> list[str]:
    """`ot train` on the study's resolved config; the driver is its one producer (STREAM_END).
    `resume`: a restarted trainer continues from the newest good checkpoint in the study dir."""
    return [python, "-m", "onlinetrain", "train", "--config", str(Path(study_dir) / "study.toml"),
            "--from", url, "--producers", "1", "--quiet", *(["--resume"] if resume else [])]


# ---- the resolved config as TOML ---------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise SlurmError(f"cannot write {v!r} ({type(v).__name__}) as TOML", v)


def to_toml(data: dict) -> str:
    """{section: {key: value}} -> TOML text (scalars, strings and nested lists only)."""
    out = []
    for sec, values in data.items():
        out.append(f"[{sec}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)


# ---- inside an allocation ----------------------------------------------------------------------
@dataclass(frozen=True)
class Allocation:
    job_id: str
    nodes: tuple
    het_size: int  # 0: not a heterogeneous job

    @classmethod
    def from_env(cls, env) -> "Allocation | None":
        """The allocation this process runs in (salloc, sbatch), from SLURM_* variables, or None."""
        jid = env.get("SLURM_JOB_ID")
        if not jid:
            return None
        nodes = parse_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", ""))
        return cls(jid, tuple(nodes), int(env.get("SLURM_HET_SIZE", "0") or 0))
