"""The checks every config section runs in __post_init__, and the error they raise.

    _check(self.lr > 0, "train.lr", self.lr, "> 0")   # ConfigError: train.lr = -1: > 0
    _check_types(self, "train")                       # each field has its declared type
"""
from __future__ import annotations

import dataclasses
from typing import Any

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
