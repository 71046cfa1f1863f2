"""Import a user's function named in the config as 'package.module:function'.

    fn = import_function("onlinetrain.surrogate:heat2d_xy", key="model.adapter")

A name that cannot be imported or is not callable raises ImportSpecError (an OTError: the CLI
prints it as one line) naming the config key, the value and the fix.
"""
from __future__ import annotations

import importlib

from .errors import OTError


class ImportSpecError(OTError, ValueError):
    def __init__(self, message: str, key: str | None = None, value=None):
        super().__init__(message)
        self.key, self.value = key, value


def import_function(spec: str, key: str | None = None):
    """'package.module:function' -> the function, with a clear error if it is not there."""
    where = f"{key} = {spec!r}" if key else repr(spec)
    mod, _, fn = str(spec).partition(":")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportSpecError(f"{where}: cannot import it ({e}); give 'package.module:function' "
                              f"of an importable module", key, spec) from None
    except Exception as e:  # the user's module raised while being imported
        raise ImportSpecError(f"{where}: importing {mod!r} failed: {type(e).__name__}: {e}",
                              key, spec) from None
    if not callable(obj):
        raise ImportSpecError(f"{where} is not callable: give a function", key, spec)
    return obj
