"""The resolved configuration as TOML text, each value annotated with where it came from.

`ot config show CONFIG [--set section.key=value ...]` prints it; the output is valid TOML that
reproduces the configuration (keys the runner derives, config.INTERNAL_KEYS, are left out).

    cfg = config.load("examples/heat2d.toml", sets=["train.lr=1e-3"])
    print(resolved_toml(cfg))     # [train] ... lr = 0.001  # flag
"""
from __future__ import annotations

import dataclasses
import json
import math

from .config import Config, INTERNAL_KEYS


def toml_value(v) -> str:
    """A TOML literal for a config value (str, bool, int, float, nested lists)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    return str(v)


def resolved_toml(cfg: Config, header: str = "") -> str:
    """Every user-facing key of `cfg`, section by section, with `# default|file|flag`."""
    sources = getattr(cfg, "sources", {})
    out = [f"# {header}" if header else "# resolved configuration",
           "# precedence: flag (--set, named options) > file > default"]
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        rows = []
        for f in dataclasses.fields(section):
            dotted = f"{sec.name}.{f.name}"
            if dotted in INTERNAL_KEYS:
                continue
            rows.append((f"{f.name} = {toml_value(getattr(section, f.name))}",
                         sources.get(dotted, "default")))
        width = min(max(len(r[0]) for r in rows), 36)
        out += ["", f"[{sec.name}]"] + [f"{text:<{width}}  # {src}" for text, src in rows]
    return "\n".join(out) + "\n"
