"""`ot import-melissa CONFIG.json > study.toml`: a Melissa study configuration as ours.

Maps the keys of Melissa's documented JSON configuration (study_options, dl_config,
launcher_config, client_config, server_filename/server_class) to our sections; every key it does
not map is reported with the reason, never dropped silently. A file that is not JSON, or JSON that
is not a Melissa configuration (not an object, an unknown top-level key, a value of the wrong
type), is a MelissaImportError naming the key and the value. docs/from-melissa.md has the table.

    toml_text, warnings = import_file("config_slurm.json")
    data, notes, warnings = convert(json.load(f), name="heatpde")   # {section: {key: value}}
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from .config import ConfigError, TrainConfig, from_dict
from .config_view import toml_value
from .errors import OTError


class MelissaImportError(OTError, ValueError):
    def __init__(self, message: str, key: str | None = None, value=None):
        super().__init__(message)
        self.key, self.value = key, value


TOP = ("server_filename", "server_class", "output_dir", "study_options", "dl_config",
       "launcher_config", "client_config", "server_config", "sa_config")
BUFFERS = {"fifo": "fifo", "firo": "firo", "reservoir": "reservoir"}
SAMPLERS = {"random_uniform": "uniform", "uniform": "uniform", "halton": "halton", "lhs": "lhs",
            "sobol": "sobol"}
SCHEDULERS = {"slurm": "semiglobal", "slurm-semiglobal": "semiglobal", "slurm-global": "global"}
ORDER = ("solver", "sampling", "simulate", "buffer", "model", "train", "output", "slurm")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pos_int(v) -> bool:
    return _is_int(v) and v >= 1


class _Converter:
    def __init__(self, doc: dict, name: str):
        self.doc, self.name = doc, name
        self.data: dict[str, dict] = {}
        self.notes: dict[str, str] = {}  # "section.key" -> where it came from
        self.warnings: list[str] = []
        self.mpirun_client: list[str] | None = None  # openmpi: mpirun's options for a client
        self.layout: list[str] = []  # server options ot's own trainer layout already gives

    # -- helpers ---------------------------------------------------------------------------------
    def set(self, dotted: str, value, note: str):
        sec, key = dotted.split(".")
        self.data.setdefault(sec, {})[key] = value
        self.notes[dotted] = note

    def skip(self, key: str, reason: str):
        self.warnings.append(f"{key}: not supported: {reason}")

    def get(self, sec: str, key: str, check, need: str):
        v = self.doc.get(sec, {}).get(key) if sec else self.doc.get(key)
        if v is not None and not check(v):
            k = f"{sec}.{key}" if sec else key
            raise MelissaImportError(f"{k} = {v!r}: expected {need}", k, v)
        return v

    def section(self, sec: str) -> dict:
        v = self.doc.get(sec, {})
        if not isinstance(v, dict):
            raise MelissaImportError(f"{sec} = {v!r}: expected a JSON object", sec, v)
        return v

    # -- sections --------------------------------------------------------------------------------
    def study(self):
        so = self.section("study_options")
        table = (("parameters_sweep_size", "sampling.n_train", _pos_int, "an integer >= 1"),
                 ("nb_time_steps", "solver.steps", _pos_int, "an integer >= 1"),
                 ("seed", "sampling.seed", _is_int, "an integer"),
                 ("simulation_timeout", "simulate.simulation_timeout",
                  lambda v: _is_num(v) and v >= 0, "a number of seconds >= 0"),
                 ("crashes_before_redraw", "simulate.crashes_before_redraw",
                  lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                 ("field_names", "model.fields", lambda v: isinstance(v, list) and v and all(
                     isinstance(x, str) and x for x in v), 'a list of field names, e.g. ["T"]'))
        for mkey, ours, check, need in table:
            v = self.get("study_options", mkey, check, need)
            if v is not None:
                self.set(ours, float(v) if ours.endswith("timeout") else v,
                         f"study_options.{mkey}")
        if "parameters_sweep_size" in so:
            self.set("sampling.n_validation", 0, "Melissa validates on a data set of your own: "
                                                 "no held-out simulations (set n > 0 to add some)")
        n_par = self.get("study_options", "nb_parameters", _pos_int, "an integer >= 1")
        self.bounds(so, n_par)
        s = self.get("study_options", "sampler", lambda v: isinstance(v, str)
                     and v.lower() in SAMPLERS, f"one of {', '.join(s.upper() for s in SAMPLERS)}")
        if s is not None:
            self.set("sampling.method", SAMPLERS[s.lower()], "study_options.sampler")
        else:
            self.set("sampling.method", "uniform", "Melissa picks the sampler in the server's "
                                                   "code (set_parameter_sampler); uniform assumed")
        done = {"parameters_sweep_size", "nb_parameters", "nb_time_steps", "field_names", "seed",
                "simulation_timeout", "crashes_before_redraw", "parameter_range", "l_bounds",
                "u_bounds", "sampler"}
        for k in so:
            if k in done:
                continue
            if k == "verbosity":
                self.skip("study_options.verbosity", "log levels are `ot -v` / `-vv` and `--quiet`")
            elif k == "group_size":
                self.skip("study_options.group_size", "Sobol' groups: sample them with `ot sample "
                                                      "-m pick-freeze` and use `ot stats`")
            else:
                self.skip(f"study_options.{k}", "a key of your own, read by your server code: ot "
                                                "does not use it (keep the value in your adapter)")

    def bounds(self, so: dict, n_par):
        pr, lo, hi = so.get("parameter_range"), so.get("l_bounds"), so.get("u_bounds")
        pair = (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v))
        if pr is not None:
            if pair(pr):
                bounds = [[float(pr[0]), float(pr[1])]] * (n_par or 1)
            elif isinstance(pr, list) and pr and all(pair(b) for b in pr):
                bounds = [[float(a), float(b)] for a, b in pr]
            else:
                raise MelissaImportError(f"study_options.parameter_range = {pr!r}: expected [low, "
                                         f"high] or one [low, high] per parameter",
                                         "study_options.parameter_range", pr)
            src = "study_options.parameter_range"
        elif lo is not None or hi is not None:
            if not (isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi)
                    and all(_is_num(x) for x in lo + hi)):
                raise MelissaImportError(f"study_options.l_bounds / u_bounds = {lo!r} / {hi!r}: "
                                         f"expected two lists of numbers of one length",
                                         "study_options.l_bounds", (lo, hi))
            bounds = [[float(a), float(b)] for a, b in zip(lo, hi)]
            src = "study_options.l_bounds / u_bounds"
        else:
            if n_par is None:
                return
            bounds = [[0.0, 1.0]] * n_par
            self.warnings.append("study_options: no parameter range (Melissa sets it in the "
                                 "server's code): sampling.bounds is [0, 1] per parameter; edit it")
            src = "no range given: [0, 1] per parameter"
        if n_par is not None and len(bounds) != n_par:
            raise MelissaImportError(f"study_options.nb_parameters = {n_par} but {src} gives "
                                     f"{len(bounds)} ranges", "study_options.nb_parameters", n_par)
        self.set("sampling.bounds", bounds, src + ("" if n_par is None else
                                                   ", one per study_options.nb_parameters"))

    def dl(self):
        dl = self.section("dl_config")
        pos_int = _pos_int
        for mkey, ours in (("batch_size", "train.batch_size"), ("buffer_size", "buffer.capacity"),
                           ("per_server_watermark", "buffer.watermark"),
                           ("nb_batches_update", "train.val_every"),
                           ("checkpoint_interval", "train.checkpoint_every")):
            v = self.get("dl_config", mkey, pos_int, "an integer >= 1")
            if v is not None:
                self.set(ours, v, f"dl_config.{mkey}")
        kind = self.get("dl_config", "buffer", lambda v: isinstance(v, str), "a buffer name")
        if kind is not None:
            if kind.lower() in BUFFERS:
                self.set("buffer.kind", BUFFERS[kind.lower()], "dl_config.buffer")
            else:
                self.skip(f"dl_config.buffer = {kind!r}", "ot's buffers are FIFO, FIRO and "
                          "Reservoir; the default, reservoir, is used")
        pe = self.get("dl_config", "pseudo_epochs", pos_int, "an integer >= 1")
        kind_ours = self.data.get("buffer", {}).get("kind", "reservoir")
        if pe is not None:
            if kind_ours == "firo":
                self.set("buffer.pseudo_epochs", pe, "dl_config.pseudo_epochs")
            else:
                self.skip("dl_config.pseudo_epochs", "with a FIRO buffer only (buffer.pseudo_"
                          "epochs); for offline epochs: buffer.kind = \"offline\", buffer.epochs")
        tb = self.get("dl_config", "tensorboard", lambda v: isinstance(v, bool), "true or false")
        if tb is not None:
            self.set("output.tensorboard", tb, "dl_config.tensorboard")
        n = self.data.get("sampling", {}).get("n_train")
        steps = self.data.get("solver", {}).get("steps")
        bs = self.data.get("train", {}).get("batch_size")
        if kind_ours in ("fifo", "firo") and n and steps and bs:
            about = -(-n * steps * (pe if kind_ours == "firo" and pe else 1) // bs)
            self.set("train.max_batches", max(TrainConfig().max_batches, 2 * about),
                     f"a cap only: {kind_ours.upper()} training ends when the buffer is drained "
                     f"after the last simulation, about {about} batches (parameters_sweep_size "
                     f"* nb_time_steps * pseudo_epochs / batch_size)")
        done = {"batch_size", "buffer_size", "per_server_watermark", "nb_batches_update",
                "checkpoint_interval", "buffer", "pseudo_epochs", "tensorboard"}
        for k in dl:
            if k not in done:
                self.skip(f"dl_config.{k}", "no ot equivalent; training options are [train] "
                                            "(`ot config show` lists them)")

    def launcher(self):
        lc = self.section("launcher_config")
        sched = self.get("launcher_config", "scheduler", lambda v: isinstance(v, str),
                         "a scheduler name")
        local = sched == "openmpi"
        if sched in SCHEDULERS:
            self.set("slurm.mode", SCHEDULERS[sched], f"launcher_config.scheduler = {sched!r}")
        elif local:
            self.warnings.append("launcher_config.scheduler = 'openmpi': run the study on one "
                                 "machine with `ot run study.toml` (no [slurm] section needed)")
        elif sched is not None:
            self.skip(f"launcher_config.scheduler = {sched!r}", "ot schedules with Slurm "
                      "(slurm, slurm-semiglobal, slurm-global) or locally (`ot run`)")
        jl = self.get("launcher_config", "job_limit", lambda v: _is_int(v) and v >= 2,
                      "an integer >= 2 (the server's job and at least one simulation)")
        if jl is not None:
            note = "launcher_config.job_limit - 1: Melissa's limit counts the server's job"
            self.set("simulate.concurrency" if local else "slurm.job_limit", jl - 1, note)
        td = self.get("launcher_config", "timer_delay", lambda v: _is_num(v) and v > 0,
                      "a number of seconds > 0")
        if td is not None and not local:
            self.set("slurm.poll", float(td), "launcher_config.timer_delay")
        elif td is not None:
            self.skip("launcher_config.timer_delay", "`ot run` watches its simulations itself")
        opts = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
        server = self.get("launcher_config", "scheduler_arg_server", opts, "a list of strings")
        client = self.get("launcher_config", "scheduler_arg_client", opts, "a list of strings")
        if local:
            if server:
                self.skip("launcher_config.scheduler_arg_server", "`ot run` trains in its own "
                          "process (no mpirun for the trainer)")
            self.mpirun_client = list(client or [])
        else:
            self.sched_args(server or [], "server")
            self.sched_args(client or [], "client")
        done = {"scheduler", "job_limit", "timer_delay", "scheduler_arg_server",
                "scheduler_arg_client"}
        reasons = {"fault_tolerance": "ot always restarts failed simulations "
                                      "(slurm.max_restarts / simulate.max_restarts)",
                   "verbosity": "log levels are `ot -v` / `-vv` and `--quiet`",
                   "std_output": "logs go to STUDY_DIR/logs"}
        for k in lc:
            if k not in done:
                self.skip(f"launcher_config.{k}", reasons.get(k, "no ot equivalent ([slurm] "
                                                                  "options: docs/slurm.md)"))

    def sched_args(self, args: list[str], who: str):
        """scheduler_arg_server / _client: the options ot has keys for, the rest as sbatch args."""
        key, rest, server = f"launcher_config.scheduler_arg_{who}", [], who == "server"
        ints = {"--cpus-per-task": "slurm.cpus"} if server else {
            "--ntasks": "simulate.ntasks", "-n": "simulate.ntasks", "--nodes": "slurm.nodes",
            "--cpus-per-task": "slurm.cpus_per_task"}
        for a in args:
            m = re.fullmatch(r"(--?[A-Za-z][\w-]*)(?:=(.*))?", a)
            opt, val = (m.group(1), m.group(2)) if m else (None, None)
            gpus = re.fullmatch(r"(gpu:)?([\w-]+:)?(\d+)", val or "")
            if opt in ints and val is not None and val.isdigit():
                self.set(ints[opt], int(val), f"{key} {a}")
            elif server and opt in ("--ntasks", "-n", "--nodes") and val == "1":
                self.layout.append(f"{key} {a}")  # what ot asks for the trainer anyway
            elif server and opt in ("--ntasks", "-n") and val is not None:
                self.skip(f"{key} {a}", "`ot slurm` runs the trainer as one task (one rank); "
                          "DDP over several GPUs is `ot train` under srun (docs/distributed.md)")
            elif server and opt == "--nodes" and val is not None:
                self.skip(f"{key} {a}", "the trainer runs on one node")
            elif server and opt in ("--gres", "--gpus") and gpus:
                n = int(gpus.group(3))
                self.set("slurm.gpus", n, f"{key} {a}")
                self.set("train.device", "cuda", f"{key} {a}")
                if n > 1:
                    self.warnings.append(f"{key} {a}: the trainer is one rank on one GPU: {n} "
                                         f"GPUs are requested, one is used")
            elif opt is None:
                self.skip(f"{key} {a!r}", "give sbatch options as single --name=value items")
            else:
                rest.append(a)
        if rest:
            self.set("slurm.trainer_args" if server else "slurm.simulation_args", rest, key)

    def client(self):
        cc = self.section("client_config")
        exe = self.get("client_config", "executable_command", lambda v: isinstance(v, str)
                       and v.strip(), "the solver's command line (a string)")
        if exe is None:
            raise MelissaImportError("client_config.executable_command is missing: it names the "
                                     "solver program, which becomes solver.argv",
                                     "client_config.executable_command", None)
        args = self.get("client_config", "command_default_args", lambda v: isinstance(v, list)
                        and all(isinstance(x, (str, int, float)) for x in v), "a list of arguments")
        n_par = len(self.data.get("sampling", {}).get("bounds", []))
        argv = (["mpirun", *self.mpirun_client] if self.mpirun_client is not None else []) \
            + shlex.split(exe) + [str(a) for a in args or []] + [f"{{p{i}}}" for i in range(n_par)]
        self.set("solver.kind", "program", "client_config")
        self.set("solver.argv", argv, "client_config.executable_command + "
                                      "client_config.command_default_args + the parameters as "
                                      "arguments, as Melissa's launcher passes them")
        for k in cc:
            if k == "preprocessing_commands":
                self.skip("client_config.preprocessing_commands", "run them in a wrapper script "
                          "and name that script in executable_command (solver.argv)")
            elif k not in ("executable_command", "command_default_args"):
                self.skip(f"client_config.{k}", "no ot equivalent ([solver] options)")

    def server(self):
        fname = self.get(None, "server_filename", lambda v: isinstance(v, str) and v,
                         "a file name")
        cls = self.get(None, "server_class", lambda v: isinstance(v, str) and v, "a class name")
        if fname is not None:
            mod = Path(fname).stem
            self.set("model.adapter", f"{mod}:process_simulation_data",
                     f"server_filename, server_class: {cls or 'the server'}."
                     f"process_simulation_data as a module-level function (docs/from-melissa.md)")
            self.warnings.append(f"server_class {cls!r}: the server class is not used: move its "
                                 f"process_simulation_data to module level in {fname} (its "
                                 f"signature line only changes; docs/from-melissa.md)")
        self.set("model.adapter_message", "melissa", "adapters get Melissa's SimulationData")
        sc = self.section("server_config")
        for k in sc:
            self.skip(f"server_config.{k}", "the trainer is `ot train`; prepare its environment "
                                            "before `ot run` / in slurm.trainer_args")
        od = self.get(None, "output_dir", lambda v: isinstance(v, str) and v, "a directory")
        if od is not None:
            self.set("output.dir", od, "output_dir")
        self.set("output.name", self.name, "the configuration file's name")
        if "sa_config" in self.doc:
            self.skip("sa_config", "sensitivity analysis is `ot stats` (moments, quantiles, "
                                   "Sobol' indices online; docs/stats.md)")

    def run(self):
        for k in self.doc:
            if k not in TOP:
                raise MelissaImportError(f"unknown top-level key {k!r}: is this a Melissa "
                                         f"configuration? Melissa's keys: {', '.join(TOP)}", k,
                                         self.doc[k])
        if "study_options" not in self.doc:
            raise MelissaImportError("no study_options: is this a Melissa configuration? (its "
                                     "study_options section gives the parameter sweep)",
                                     "study_options", None)
        self.study()
        self.launcher()
        self.dl()
        self.client()
        self.server()
        return self


def convert(doc, name: str = "melissa"):
    """(data {section: {key: value}}, notes {"section.key": source}, warnings) of a Melissa
    configuration (the parsed JSON); the data is a valid onlinetrain config (checked). notes[""]
    lists what needs no key (server options ot's trainer layout already gives)."""
    if not isinstance(doc, dict):
        raise MelissaImportError(f"a Melissa configuration is a JSON object, not "
                                 f"{type(doc).__name__}", None, doc)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name) or "melissa"
    c = _Converter(doc, name).run()
    try:
        from_dict(c.data, "imported configuration")
    except ConfigError as e:
        src = c.notes.get(e.key or "", "")
        raise MelissaImportError(f"{e}" + (f" (from {src})" if src else ""), e.key,
                                 e.value) from None
    if c.layout:
        c.notes[""] = ", ".join(c.layout) + ": one trainer task on one node, as ot asks anyway"
    return c.data, c.notes, c.warnings


def render(data: dict, notes: dict, source: str) -> str:
    """TOML text: one section after the other, each key with where it came from."""
    out = [f"# onlinetrain study imported from Melissa's {source} by `ot import-melissa`",
           "# (docs/from-melissa.md). Shared memory (the default channel) needs the trainer and",
           "# the simulations on one node; across nodes set [channel] url = \"tcp://HOST:PORT\"."]
    if notes.get(""):
        out.append(f"# {notes['']}")
    for sec in ORDER:
        if sec not in data:
            continue
        out += ["", f"[{sec}]"]
        for k, v in data[sec].items():
            out.append(f"{k} = {toml_value(v)}  # {notes.get(f'{sec}.{k}', '')}")
    return "\n".join(out) + "\n"


def import_file(path) -> tuple[str, list[str]]:
    """(TOML text, warnings) of the Melissa configuration file at `path`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise MelissaImportError(f"cannot read {path}: {e.strerror}", "path", str(path)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MelissaImportError(f"{path} is not JSON: {e.msg} at line {e.lineno} column "
                                 f"{e.colno} (Melissa configurations are plain JSON, no comments)",
                                 "path", str(path)) from None
    data, notes, warnings = convert(doc, p.stem)
    return render(data, notes, p.name), warnings
