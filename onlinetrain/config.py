"""Study configuration: sectioned dataclasses with defaults, loaded from TOML, overridden by CLI flags.

Precedence: CLI flag > TOML file > default. Every section validates itself in __post_init__ and
names the offending value; an unknown section or key is an error that lists the valid ones.

    cfg = load("examples/heat2d.toml", overrides={"train.max_batches": 200})
    cfg.train.batch_size, cfg.buffer.kind
    cfg.sources["train.max_batches"]           # "flag" ("file"; a key absent here is a default)
    parse_sets(["train.lr=1e-3", "buffer.kind=fifo"])  # `--set`: {"train.lr": 0.001, ...}
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .breed import BreedConfig, BreedError
from .errors import OTError


class ConfigError(OTError, ValueError):
    """A bad configuration value; `key` is the dotted key and `value` the offending value."""

    def __init__(self, message: str, key: str | None = None, value: Any = None):
        super().__init__(message)
        self.key, self.value = key, value


def _check(cond: bool, key: str, value, need: str):
    if not cond:
        raise ConfigError(f"{key} = {value!r}: {need}", key, value)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,)}
_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "list": "a list"}


def _check_types(obj, section: str):
    """Every field of a config section has its declared type (int, float, str, bool, list); the
    error names the key, the value and the type expected. Integral floats are not ints; ints are
    accepted (and converted) where a float is expected; a bool is never a number."""
    for f in dataclasses.fields(obj):
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if want not in _TYPES:
            continue
        v = getattr(obj, f.name)
        ok = isinstance(v, _TYPES[want]) and not (want in ("int", "float") and isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{section}.{f.name} = {v!r}: expected {_NAMES[want]} "
                              f"({type(v).__name__} given)", f"{section}.{f.name}", v)
        if want == "float":
            setattr(obj, f.name, float(v))


@dataclass
class SolverConfig:
    kind: str = "heat2d"  # heat2d | ks1d | python | program
    n: int = 32  # heat2d: interior nodes per side; ks1d: grid points (even)
    steps: int = 100  # heat2d: time steps; ks1d: output frames
    scheme: str = "implicit"  # heat2d: implicit | explicit
    param_order: str = "onlinetrain"  # heat2d: Tx1 Tx2 Ty1 Ty2 T_IC | "melissa": T_IC Tx1 Tx2 Ty1 Ty2
    function: str = ""  # python: "package.module:generator" yielding (step, array) from params
    argv: list = field(default_factory=list)  # program: argv template, {sim_id} {params} {p0}.. {channel}
    length: float = 0.0  # ks1d: domain length L (0: 32 pi)
    dt: float = 0.0  # ks1d: ETDRK4 step (0: 0.25)
    stride: int = 1  # ks1d: solver steps per output frame

    def __post_init__(self):
        _check_types(self, "solver")
        _check(self.kind in ("heat2d", "ks1d", "python", "program"), "solver.kind", self.kind,
               "use heat2d, ks1d, python or program")
        _check(isinstance(self.n, int) and self.n >= 2, "solver.n", self.n, "an integer >= 2")
        _check(isinstance(self.steps, int) and self.steps >= 1, "solver.steps", self.steps,
               "an integer >= 1")
        _check(self.scheme in ("implicit", "explicit"), "solver.scheme", self.scheme,
               "use implicit or explicit")
        if self.kind == "heat2d":
            from solvers.heat2d import PARAM_ORDERS, Heat2DConfig, UnstableTimeStep  # noqa: PLC0415
            _check(self.param_order in PARAM_ORDERS, "solver.param_order", self.param_order,
                   'use "onlinetrain" (Tx1 Tx2 Ty1 Ty2 T_IC) or "melissa" (T_IC Tx1 Tx2 Ty1 Ty2)')
            try:
                Heat2DConfig(n=self.n, steps=self.steps, scheme=self.scheme).check_stable()
            except UnstableTimeStep as e:
                raise ConfigError(f"solver: {e}", "solver.steps", self.steps) from None
        if self.kind == "ks1d":
            from solvers.ks1d import KS1DConfig  # noqa: PLC0415
            _check(self.length >= 0 and self.dt >= 0, "solver.length/dt", (self.length, self.dt),
                   "> 0 (or 0 for the ks1d default)")
            try:
                KS1DConfig(n=self.n, steps=self.steps, stride=self.stride,
                           **{k: getattr(self, k) for k in ("length", "dt") if getattr(self, k)})
            except ValueError as e:
                raise ConfigError(f"solver: {e}", "solver", self.kind) from None
        if self.kind == "python":
            _check(":" in self.function, "solver.function", self.function,
                   "give 'package.module:function'")
        if self.kind == "program":
            _check(bool(self.argv) and all(isinstance(a, str) for a in self.argv), "solver.argv",
                   self.argv, "give a non-empty list of strings")


ADAPTIVE = ("none", "breed")


@dataclass
class SamplingConfig:
    n_train: int = 64
    n_validation: int = 8
    method: str = "halton"
    seed: int = 0
    bounds: list = field(default_factory=lambda: [[100.0, 500.0]] * 5)
    adaptive: str = "none"  # "breed": Breed active learning, settings in [breed] (docs/breed.md)

    def __post_init__(self):
        _check_types(self, "sampling")
        _check(self.adaptive in ADAPTIVE, "sampling.adaptive", self.adaptive,
               f"one of {ADAPTIVE}")
        from .sampler import METHODS, SamplerError, check_bounds  # noqa: PLC0415
        _check(isinstance(self.n_train, int) and self.n_train >= 1, "sampling.n_train",
               self.n_train, "an integer >= 1")
        _check(isinstance(self.n_validation, int) and self.n_validation >= 0,
               "sampling.n_validation", self.n_validation, "an integer >= 0")
        _check(self.method in METHODS, "sampling.method", self.method, f"one of {METHODS}")
        try:
            check_bounds(self.bounds)
        except SamplerError as e:
            raise ConfigError(f"sampling.bounds: {e}", "sampling.bounds", self.bounds) from None


@dataclass
class ChannelConfig:
    url: str = ""  # default: shm://<study name>
    ring_mb: int = 64
    connect_timeout: float = 30.0
    idle_timeout: float = 300.0  # trainer: no frame for this long ends the stream with a warning

    def __post_init__(self):
        _check_types(self, "channel")
        if self.url:
            from .channel import parse_url  # noqa: PLC0415
            try:
                parse_url(self.url)
            except Exception as e:
                raise ConfigError(f"channel.url: {e}", "channel.url", self.url) from None
        _check(self.ring_mb >= 1, "channel.ring_mb", self.ring_mb, "at least 1")
        _check(self.connect_timeout >= 0, "channel.connect_timeout", self.connect_timeout, ">= 0")
        _check(self.idle_timeout > 0, "channel.idle_timeout", self.idle_timeout, "> 0")


@dataclass
class SimulateConfig:
    concurrency: int = 2
    producers: int = 1  # trainer: how many `ot simulate` processes will send STREAM_END
    # fault tolerance (docs/fault-tolerance.md)
    max_restarts: int = 2  # restarts of a crashed / silent simulation before its set is failed
    simulation_timeout: float = 300.0  # s without a frame before a simulation is killed (0: off)
    crashes_before_redraw: int = 0  # > 0: after this many crashes a set fails, a new one is drawn
    worker_timeout: float = 30.0  # a study worker whose heartbeat is older is presumed dead
    ntasks: int = 1  # MPI ranks of each simulation (mpiexec -n / srun --ntasks)

    def __post_init__(self):
        _check_types(self, "simulate")
        _check(isinstance(self.ntasks, int) and self.ntasks >= 1, "simulate.ntasks", self.ntasks,
               "an integer >= 1 (MPI ranks of each simulation)")
        _check(isinstance(self.max_restarts, int) and self.max_restarts >= 0,
               "simulate.max_restarts", self.max_restarts, "an integer >= 0")
        _check(self.simulation_timeout >= 0, "simulate.simulation_timeout",
               self.simulation_timeout, ">= 0 seconds (0 turns the timeout off)")
        _check(isinstance(self.crashes_before_redraw, int) and self.crashes_before_redraw >= 0,
               "simulate.crashes_before_redraw", self.crashes_before_redraw,
               "an integer >= 0 (0: never redraw)")
        _check(self.worker_timeout > 0, "simulate.worker_timeout", self.worker_timeout,
               "> 0 seconds")
        _check(isinstance(self.concurrency, int) and self.concurrency >= 1,
               "simulate.concurrency", self.concurrency, "an integer >= 1")
        _check(isinstance(self.producers, int) and self.producers >= 1, "simulate.producers",
               self.producers, "an integer >= 1")


@dataclass
class BufferConfig:
    kind: str = "reservoir"  # reservoir | fifo | firo | offline
    capacity: int = 2000  # samples (offline: must hold every training sample)
    watermark: int = 0  # reservoir, firo: samples present before a batch is drawn (0: capacity // 4)
    seed: int = 0
    post_stream_batches: int = -1  # reservoir: batches served after the stream ends (-1: no limit)
    epochs: int = 1  # offline: shuffled epochs over the whole data set once the stream has ended
    pseudo_epochs: int = 1  # firo: times each sample is served before it leaves the buffer
    record_arrivals: bool = False  # write arrivals.npy (keys in arrival order) to output.dir

    def __post_init__(self):
        _check_types(self, "buffer")
        _check(self.kind in ("reservoir", "fifo", "firo", "offline"), "buffer.kind", self.kind,
               "use reservoir, fifo, firo or offline")
        _check(isinstance(self.post_stream_batches, int) and self.post_stream_batches >= -1,
               "buffer.post_stream_batches", self.post_stream_batches,
               "an integer >= 0, or -1 to serve until train.max_batches")
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "buffer.epochs", self.epochs,
               "an integer >= 1")
        _check(isinstance(self.pseudo_epochs, int) and not isinstance(self.pseudo_epochs, bool)
               and self.pseudo_epochs >= 1, "buffer.pseudo_epochs", self.pseudo_epochs,
               "an integer >= 1 (times each sample is served; firo)")
        _check(isinstance(self.record_arrivals, bool), "buffer.record_arrivals",
               self.record_arrivals, "true or false")
        _check(isinstance(self.capacity, int) and self.capacity >= 1, "buffer.capacity",
               self.capacity, "an integer >= 1")
        if self.watermark == 0:
            self.watermark = max(1, self.capacity // 4)
        _check(isinstance(self.watermark, int) and 1 <= self.watermark <= self.capacity,
               "buffer.watermark", self.watermark, f"an integer in 1..capacity ({self.capacity})")


@dataclass
class ModelConfig:
    builder: str = "onlinetrain.surrogate:build_mlp"  # fn(in_dim, out_dim, cfg) -> nn.Module
    adapter: str = "onlinetrain.surrogate:heat2d_xy"  # fn(frame, cfg) -> (x, y) float32 arrays
    hidden: int = 256
    layers: int = 2
    mode: str = "field"  # field: (params, t) -> field | autoregressive: (u_t, params) -> u_t+1
    target: str = "next"  # autoregressive: next (u_t+1) | increment (u_t+1 - u_t)
    adapter_message: str = "onlinetrain"  # melissa: adapter is process_simulation_data(msg, config)
    fields: list = field(default_factory=list)  # melissa: fields each message has ([]: one field)

    def __post_init__(self):
        _check_types(self, "model")
        _check(self.adapter_message in ("onlinetrain", "melissa"), "model.adapter_message",
               self.adapter_message, 'use "onlinetrain" (a Step or a frame) or "melissa" '
               "(Melissa's process_simulation_data(msg, config); docs/from-melissa.md)")
        _check(all(isinstance(f, str) and f for f in self.fields), "model.fields", self.fields,
               'a list of field names, e.g. ["temperature", "pressure"]')
        _check(not self.fields or self.adapter_message == "melissa", "model.fields", self.fields,
               'used with model.adapter_message = "melissa" (a step adapter declares its fields: '
               "onlinetrain.step.step_adapter(fields=...))")
        _check(self.adapter_message != "melissa" or self.mode == "field", "model.adapter_message",
               self.adapter_message, 'the Melissa message works with model.mode = "field"')
        _check(self.mode in ("field", "autoregressive"), "model.mode", self.mode,
               "use field or autoregressive")
        _check(self.target in ("next", "increment"), "model.target", self.target,
               "use next or increment")
        for k in ("builder", "adapter"):
            _check(":" in getattr(self, k), f"model.{k}", getattr(self, k),
                   "give 'package.module:function'")
        _check(self.hidden >= 1, "model.hidden", self.hidden, ">= 1")
        _check(self.layers >= 1, "model.layers", self.layers, ">= 1")


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    lr_milestones: list = field(default_factory=lambda: [1000, 2000])
    lr_gamma: float = 0.5
    max_batches: int = 3000
    val_every: int = 100
    seed: int = 0
    threads: int = 0  # torch threads; 0: the cores this process may use, less one (receiver)
    device: str = "cpu"  # cpu | cuda | cuda:N (N ranks: each uses cuda:LOCAL_RANK)
    amp: str = "none"  # none | bf16 (autocast the forward pass to bfloat16)
    compile: bool = False  # torch.compile the model (slow to start, on CPU especially)
    checkpoint_every: int = 0  # batches between resumable checkpoints (0: only at exit)
    keep_checkpoints: int = 2  # resumable checkpoints kept in <output.dir>/checkpoints
    unroll: int = 1  # autoregressive: model steps the loss unrolls (windows of unroll + 1 steps)

    def __post_init__(self):
        _check_types(self, "train")
        _check(isinstance(self.unroll, int) and self.unroll >= 1, "train.unroll", self.unroll,
               "an integer >= 1")
        _check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
               "train.checkpoint_every", self.checkpoint_every, "an integer >= 0")
        _check(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1,
               "train.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(0 < self.lr_gamma <= 1, "train.lr_gamma", self.lr_gamma, "in (0, 1]")
        _check(all(isinstance(m, int) and m > 0 for m in self.lr_milestones), "train.lr_milestones",
               self.lr_milestones, "a list of positive batch counts")
        _check(self.max_batches >= 1, "train.max_batches", self.max_batches, ">= 1")
        _check(self.val_every >= 1, "train.val_every", self.val_every, ">= 1")
        _check(self.threads >= 0, "train.threads", self.threads,
               ">= 1, or 0 for the cores this process may use")
        _check(bool(re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device)), "train.device",
               self.device, 'use "cpu", "cuda" or "cuda:N"')
        _check(self.amp in ("none", "bf16"), "train.amp", self.amp, 'use "none" or "bf16"')
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, ">= 1")

    def resolved_threads(self, environ=None) -> int:
        """train.threads, or (0) the cores this process may run on (os.sched_getaffinity),
        shared among the ranks of this node (LOCAL_WORLD_SIZE), less one core left to the
        receiving and prefetch threads when there are at least two: torch's intra-op threads
        wait for each other at every operation, so one starved thread stalls them all."""
        if self.threads:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no sched_getaffinity (macOS)
            cores = os.cpu_count() or 1
        env = os.environ if environ is None else environ
        try:
            local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            local = 1
        share = max(1, cores // local)
        return share - 1 if share >= 2 else 1


@dataclass
class ValidationConfig:
    every: int = 0  # pipe mode: sim ids with id % every == every - 1 are held out (0: none)
    # internal (INTERNAL_KEYS): set by `ot run` / `ot slurm` from sampling.n_train, n_validation
    first_id: int = field(default=-1, metadata={"internal": True})  # held out: ids >= first_id
    end_id: int = field(default=-1, metadata={"internal": True})  # ... and < end_id (-1: no end)

    def __post_init__(self):
        _check_types(self, "validation")
        _check(self.every >= 0, "validation.every", self.every, ">= 0")

    def is_validation(self, sim_id: int) -> bool:
        if self.first_id >= 0 and sim_id >= self.first_id and (self.end_id < 0
                                                                or sim_id < self.end_id):
            return True
        return self.every > 0 and sim_id % self.every == self.every - 1


@dataclass
class OutputConfig:
    dir: str = "ot-study"  # study directory: metrics.jsonl, checkpoint.pt, params.jsonl
    name: str = "study"  # study name: prefix of shm segments
    tensorboard: bool = False  # also write the metrics to <dir>/tensorboard (the tensorboard extra)

    def __post_init__(self):
        _check_types(self, "output")
        from .channel import _NAME  # noqa: PLC0415
        _check(bool(_NAME.match(self.name)), "output.name", self.name,
               "letters, digits, '.', '-', '_' only")


@dataclass
class SlurmConfig:
    """`ot slurm submit`: how the study is laid out on a Slurm cluster (see docs/slurm.md)."""
    mode: str = "global"  # global: one hetjob (trainer group 0, simulations group 1) | semiglobal
    job_limit: int = 2  # simulations running at once (global: tasks of het group 1)
    max_restarts: int = 2  # a failed simulation is restarted this many times, then marked failed
    trainer_args: list = field(default_factory=list)  # sbatch args of the trainer, e.g. ["--gres=gpu:1"]
    simulation_args: list = field(default_factory=list)  # sbatch args of the simulations
    python: str = ""  # interpreter on the compute nodes (default: the one running `ot`)
    poll: float = 1.0  # seconds between squeue polls (semiglobal)
    nodes: int = 1  # nodes of each simulation
    cpus_per_task: int = 1  # CPUs of each simulation rank (also its BLAS / OpenMP threads)
    gpus: int = 0  # GPUs of the trainer
    cpus: int = 1  # CPUs of the trainer

    def __post_init__(self):
        _check_types(self, "slurm")
        for k in ("nodes", "cpus_per_task", "cpus"):
            _check(isinstance(getattr(self, k), int) and getattr(self, k) >= 1, f"slurm.{k}",
                   getattr(self, k), "an integer >= 1")
        _check(isinstance(self.gpus, int) and self.gpus >= 0, "slurm.gpus", self.gpus,
               "an integer >= 0")
        _check(self.mode in ("global", "semiglobal"), "slurm.mode", self.mode,
               "use global or semiglobal")
        _check(isinstance(self.job_limit, int) and self.job_limit >= 1, "slurm.job_limit",
               self.job_limit, "an integer >= 1")
        _check(isinstance(self.max_restarts, int) and self.max_restarts >= 0,
               "slurm.max_restarts", self.max_restarts, "an integer >= 0")
        for k in ("trainer_args", "simulation_args"):
            v = getattr(self, k)
            _check(isinstance(v, list) and all(isinstance(a, str) and a.startswith("-")
                                               and not any(c.isspace() for c in a) for a in v),
                   f"slurm.{k}", v, 'a list of sbatch options without spaces, e.g. ["--gres=gpu:1"]')
        _check(self.poll > 0, "slurm.poll", self.poll, "> 0")


@dataclass
class StatsConfig:
    """`ot stats`, and the [stats] section of `ot run` / `ot train` (docs/stats.md)."""
    fields: list = field(default_factory=list)  # field names to follow ([]: every field)
    thresholds: list = field(default_factory=list)  # exceedance probability P(u > t) per t
    quantiles: list = field(default_factory=list)  # levels in (0, 1), Robbins-Monro
    sobol: bool = False  # first/total Sobol' indices from pick-freeze groups (ot sample -m pick-freeze)
    second_order: bool = False  # groups have 2p + 2 rows (sampled with --second-order)
    n_params: int = 0  # p of the pick-freeze groups (0: the length of the frames' params)
    groups: int = 0  # groups expected (0: unknown; only reported)
    steps: int = 0  # time steps per simulation, for the memory figure (0: solver.steps)

    def __post_init__(self):
        import math  # noqa: PLC0415
        _check_types(self, "stats")
        _check(isinstance(self.fields, list) and all(isinstance(f, str) and f for f in self.fields),
               "stats.fields", self.fields, 'a list of field names, e.g. ["T"]')
        _check(isinstance(self.thresholds, list) and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
            for t in self.thresholds), "stats.thresholds", self.thresholds,
            "a list of finite numbers")
        _check(isinstance(self.quantiles, list) and all(
            isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1
            for q in self.quantiles), "stats.quantiles", self.quantiles,
            "a list of levels strictly between 0 and 1, e.g. [0.05, 0.5, 0.95]")
        for k in ("sobol", "second_order"):
            _check(isinstance(getattr(self, k), bool), f"stats.{k}", getattr(self, k),
                   "true or false")
        for k in ("n_params", "groups", "steps"):
            _check(isinstance(getattr(self, k), int) and getattr(self, k) >= 0, f"stats.{k}",
                   getattr(self, k), "an integer >= 0 (0: unknown / automatic)")
        self.thresholds = [float(t) for t in self.thresholds]
        self.quantiles = [float(q) for q in self.quantiles]


@dataclass
class BreedSection(BreedConfig):
    """[breed]: the breeder's settings (onlinetrain/breed.py, docs/breed.md); errors name breed.KEY."""

    def __post_init__(self):
        try:
            super().__post_init__()
        except BreedError as e:
            raise ConfigError(str(e), f"breed.{e.key}", e.value) from None


@dataclass
class Config:
    solver: SolverConfig = field(default_factory=SolverConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    breed: BreedSection = field(default_factory=BreedSection)

    def __post_init__(self):
        if self.sampling.adaptive == "breed":  # against the study: refused before anything runs
            try:
                self.breed.check_study(self.sampling.n_train, len(self.sampling.bounds))
            except BreedError as e:
                raise ConfigError(str(e), f"breed.{e.key}", e.value) from None

    @property
    def channel_url(self) -> str:
        return self.channel.url or f"shm://{self.output.name}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
# keys the runner derives and carries in the study's own files (config.json, study.toml); not
# shown by `ot config show`, not listed as valid keys, refused from `--set`
INTERNAL_KEYS = frozenset({"validation.first_id", "validation.end_id"})


def _section_cls(name: str):
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}[name]().__class__


def from_dict(data: dict, source: str = "config") -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys by name."""
    sections = {}
    for sec, values in data.items():
        if sec not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{sec}]; valid sections: "
                              f"{', '.join(SECTIONS)}", sec, values)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table", sec, values)
        cls = _section_cls(sec)
        valid = user_keys(sec)
        for k in values:
            if k not in valid and f"{sec}.{k}" not in INTERNAL_KEYS:
                raise ConfigError(f"{source}: unknown key {sec}.{k}; valid keys in [{sec}]: "
                                  f"{', '.join(valid)}", f"{sec}.{k}", values[k])
        try:
            sections[sec] = cls(**values)
        except TypeError as e:
            raise ConfigError(f"{source}: [{sec}]: {e}", sec, values) from None
    cfg = Config(**sections)
    cfg.given = frozenset(f"{s}.{k}" for s, v in data.items() for k in v)  # keys set explicitly
    return cfg


def user_keys(section: str) -> list[str]:
    """The keys of [section] a user may set (INTERNAL_KEYS left out)."""
    return [f.name for f in dataclasses.fields(_section_cls(section))
            if f"{section}.{f.name}" not in INTERNAL_KEYS]


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/@+-]*\Z")  # a bare word: taken as a string


def parse_sets(items) -> dict[str, Any]:
    """`--set section.key=value` items -> {"section.key": value}; the value is a TOML literal
    (1e-3, true, [100, 200], "text") or a bare word taken as a string (fifo, pkg.mod:fn)."""
    out: dict[str, Any] = {}
    for item in items or ():
        dotted, eq, text = item.partition("=")
        dotted, text = dotted.strip(), text.strip()
        sec, dot, key = dotted.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {item!r}: give section.key=value, e.g. --set train.lr=1e-3",
                              dotted, item)
        if sec not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section [{sec}]; valid sections: "
                              f"{', '.join(SECTIONS)}", dotted, item)
        if dotted in INTERNAL_KEYS:
            raise ConfigError(f"--set {item!r}: {dotted} is derived by ot run / ot slurm from "
                              f"sampling.n_train and sampling.n_validation; set those instead",
                              dotted, item)
        if key not in user_keys(sec):
            raise ConfigError(f"--set {item!r}: unknown key {dotted}; valid keys in [{sec}]: "
                              f"{', '.join(user_keys(sec))}", dotted, item)
        try:
            out[dotted] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            if not _BARE.match(text):
                raise ConfigError(f"--set {item!r}: {text!r} is not a TOML value; quote a string "
                                  f"('{dotted}=\"...\"'), write lists as [1, 2]", dotted,
                                  text) from None
            out[dotted] = text
    return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         sets=()) -> Config:
    """Defaults, then the TOML file at `path`, then `--set` items (parse_sets), then `overrides`
    {"section.key": value} (named CLI flags; None: not given). `cfg.sources` maps each key given
    in the file or by a flag to "file" or "flag"."""
    if sets:
        overrides = {**parse_sets(sets), **{k: v for k, v in (overrides or {}).items()
                                             if v is not None}}
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found", "path", str(path)) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}", "path", str(path)) from None
    sources = {f"{s}.{k}": "file" for s, v in data.items() if isinstance(v, dict) for k in v}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        sec, _, key = dotted.partition(".")
        data.setdefault(sec, {})[key] = value
        sources[dotted] = "flag"
    cfg = from_dict(data, source)
    cfg.sources = sources
    return cfg
