"""Parameter sets for a study: N points in a box, reproducible from a seed.

    sets = sample(n=64, seed=1, method="halton", bounds=[(100, 500)] * 5)
    for s in sets: print(json.dumps(s))   # {"id": 0, "params": [...]}

Methods: uniform (numpy), lhs, halton, sobol (scipy.stats.qmc, scrambled with the seed).
The same (n, seed, method, bounds, start_id) always gives the same floats, hence byte-identical JSON.

Pick-freeze groups for Sobol' indices (docs/stats.md): `pick_freeze(groups, seed, base, bounds)`
yields, per group g, the rows A, B, then E_k = A with column k taken from B (k = 1..p), and with
`second_order` C_k = B with column k taken from A. Ids are laid out so that group = id // R and
role = id % R (R = p + 2, or 2p + 2), and every row also says its "group" and "role":

    for row in pick_freeze(100, seed=1, base="sobol", bounds=[(0, 1)] * 3): ...
    # {"id": 7, "params": [...], "group": 1, "role": 2}    role 0: A, 1: B, 2..p+1: E_k, then C_k
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import OTError

METHODS = ("uniform", "lhs", "halton", "sobol")
DEFAULT_BOUNDS = ((100.0, 500.0),) * 5


class SamplerError(OTError, ValueError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def parse_bounds(specs: Iterable[str]) -> list[tuple[float, float]]:
    """'LOW:HIGH' strings to pairs; one spec applies to every parameter when it is alone."""
    out = []
    for s in specs:
        lo, sep, hi = str(s).partition(":")
        try:
            pair = (float(lo), float(hi))
        except ValueError:
            raise SamplerError(f"bounds {s!r} are not LOW:HIGH numbers (e.g. 100:500)", s) from None
        if not sep:
            raise SamplerError(f"bounds {s!r} are not LOW:HIGH (e.g. 100:500)", s)
        out.append(pair)
    return out


def check_bounds(bounds: Sequence[Sequence[float]]) -> np.ndarray:
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 2 or len(b) == 0:
        raise SamplerError(f"bounds must be a list of [low, high] pairs, got {bounds!r}", bounds)
    for i, (lo, hi) in enumerate(b):
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise SamplerError(f"bounds of parameter {i} are {lo:g}:{hi:g}: LOW must be <= HIGH "
                               f"and both finite (swap them?)", (lo, hi))
    return b


def unit_points(n: int, dim: int, seed: int, method: str) -> np.ndarray:
    if n < 0:
        raise SamplerError(f"n={n}: must be >= 0", n)
    if method not in METHODS:
        raise SamplerError(f"unknown sampling method {method!r}: use one of {', '.join(METHODS)}",
                           method)
    if method == "uniform" or n == 0:
        return np.random.default_rng(seed).random((n, dim))
    from scipy.stats import qmc  # noqa: PLC0415 (only for quasi-random methods)
    rng = np.random.default_rng(seed)
    eng = {"lhs": lambda: qmc.LatinHypercube(dim, seed=rng),
           "halton": lambda: qmc.Halton(dim, scramble=True, seed=rng),
           "sobol": lambda: qmc.Sobol(dim, scramble=True, seed=rng)}[method]()
    if method == "sobol":
        m = int(np.ceil(np.log2(max(n, 1))))
        return eng.random_base2(m)[:n]
    return eng.random(n)


def sample(n: int, seed: int = 0, method: str = "uniform",
           bounds: Sequence[Sequence[float]] = DEFAULT_BOUNDS, start_id: int = 0) -> list[dict]:
    b = check_bounds(bounds)
    u = unit_points(n, len(b), seed, method)
    pts = b[:, 0] + u * (b[:, 1] - b[:, 0])
    return [{"id": start_id + i, "params": [float(v) for v in row]} for i, row in enumerate(pts)]


def rows_per_group(p: int, second_order: bool = False) -> int:
    """R: the rows of one pick-freeze group of p parameters (group = id // R, role = id % R)."""
    return 2 * p + 2 if second_order else p + 2


def role_name(role: int, p: int) -> str:
    """'A', 'B', 'E1'..'Ep', 'C1'..'Cp' for a role number (k is 1-based, as in docs/stats.md)."""
    if role == 0:
        return "A"
    if role == 1:
        return "B"
    return f"E{role - 1}" if role < p + 2 else f"C{role - p - 1}"


def pick_freeze(groups: int, seed: int = 0, base: str = "uniform",
                bounds: Sequence[Sequence[float]] = DEFAULT_BOUNDS, start_id: int = 0,
                second_order: bool = False) -> Iterator[dict]:
    """Yield the rows of `groups` pick-freeze groups, group by group (streamable: a consumer may
    start on the first group while later ones are produced). A and B of every group are the two
    halves of one 2p-dimensional `base` point set, drawn from `seed`."""
    b = check_bounds(bounds)
    p = len(b)
    r = rows_per_group(p, second_order)
    if groups < 0:
        raise SamplerError(f"-n {groups}: the number of groups must be >= 0", groups)
    if start_id % r:
        raise SamplerError(f"--start-id {start_id} is not a multiple of the {r} rows of a group "
                           f"(group = id // {r}); use e.g. {start_id // r * r}", start_id)
    u = unit_points(groups, 2 * p, seed, base)
    pts = b[:, 0] + u.reshape(groups, 2, p) * (b[:, 1] - b[:, 0])
    sid = start_id
    for g in range(groups):
        a, bb = pts[g, 0], pts[g, 1]
        rows = [a, bb]
        for k in range(p):
            e = a.copy()
            e[k] = bb[k]
            rows.append(e)
        if second_order:
            for k in range(p):
                c = bb.copy()
                c[k] = a[k]
                rows.append(c)
        for role, row in enumerate(rows):
            yield {"id": sid, "params": [float(v) for v in row], "group": sid // r, "role": role}
            sid += 1


def to_jsonl(sets: Iterable[dict]) -> str:
    return "".join(json.dumps(s) + "\n" for s in sets)


def read_jsonl(lines: Iterable[str], source: str = "<stdin>") -> list[dict]:
    """Parse parameter-set lines, with a clear error naming the line that is wrong."""
    out, ids = [], set()
    for no, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
            sid, params = int(d["id"]), [float(v) for v in d["params"]]
        except (ValueError, KeyError, TypeError) as e:
            raise SamplerError(f"{source}:{no}: expected {{\"id\": INT, \"params\": [FLOATS]}}, got "
                               f"{line[:80]!r} ({e})", line) from None
        if sid in ids:
            raise SamplerError(f"{source}:{no}: simulation id {sid} appears twice", sid)
        ids.add(sid)
        out.append({"id": sid, "params": params})
    return out
