"""Study configuration: sectioned dataclasses with defaults, loaded from TOML, overridden by CLI flags.

Precedence: CLI flag > TOML file > default. The sections are in config_sections.py, their checks
in config_check.py. Every section validates itself in __post_init__ and
names the offending value; an unknown section or key is an error that lists the valid ones.

    cfg = load("examples/heat2d.toml", overrides={"train.max_batches": 200})
    cfg.train.batch_size, cfg.buffer.kind
    cfg.sources["train.max_batches"]           # "flag" ("file"; a key absent here is a default)
    parse_sets(["train.lr=1e-3", "buffer.kind=fifo"])  # `--set`: {"train.lr": 0.001, ...}
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .breed import BreedError
from .config_check import ConfigError, _check, _check_types  # noqa: F401 (re-exported)
from .config_sections import (ADAPTIVE, BreedSection, BufferConfig,  # noqa: F401 (re-exported)
                              ChannelConfig, ModelConfig, OutputConfig, SamplingConfig,
                              SimulateConfig, SlurmConfig, SolverConfig, StatsConfig,
                              TrainConfig, ValidationConfig)


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
