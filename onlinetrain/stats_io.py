"""stats.npz and the one-screen summary of the statistics (docs/stats.md).

    save_npz("out/stats.npz", st)       # written to a temporary name, then renamed
    print(show("out"))                   # `ot stats show out`

stats.npz holds, for each field F (S time steps, the field's shape ...):
  F/steps (S,), F/n (S,), F/mean F/variance F/skewness F/kurtosis F/min F/max (S, ...),
  F/thresholds (T,), F/exceedance (S, T, ...), F/levels (L,), F/quantiles (S, L, ...),
  F/sobol_n (S,), F/first F/first_lo F/first_hi F/first_se and F/total... (S, p, ...),
and `meta`: a JSON string (counts, pick-freeze groups, the [stats] config).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from .stats_state import STATE_VERSION


def field_results(name: str, fld, cfg) -> dict:
    steps = sorted(fld.steps)
    sh = fld.shape
    if not steps:
        return {}

    def stack(fn, inner=()):
        return np.stack([fn(fld.steps[t]) for t in steps]).reshape((len(steps),) + inner + sh)

    out = {"steps": np.array(steps, np.int64),
           "n": np.array([fld.steps[t].mom.n for t in steps], np.int64),
           "mean": stack(lambda s: s.mom.mean), "variance": stack(lambda s: s.mom.variance()),
           "skewness": stack(lambda s: s.mom.skewness()),
           "kurtosis": stack(lambda s: s.mom.kurtosis()),
           "min": stack(lambda s: s.mom.min), "max": stack(lambda s: s.mom.max),
           "thresholds": np.array(cfg.thresholds, np.float64),
           "exceedance": stack(lambda s: s.mom.exceedance(), (len(cfg.thresholds),))}
    if cfg.quantiles:
        out["levels"] = np.array(cfg.quantiles, np.float64)
        out["quantiles"] = stack(lambda s: s.q.values(), (len(cfg.quantiles),))
    if cfg.sobol:
        out["sobol_n"] = np.array([fld.steps[t].sob.n for t in steps], np.int64)
        idx = {t: fld.steps[t].sob.indices() for t in steps}
        for k in ("first", "first_lo", "first_hi", "first_se", "total", "total_lo", "total_hi",
                  "total_se"):
            out[k] = np.stack([idx[t][k] for t in steps]).reshape((len(steps), fld.p) + sh)
    return {f"{name}/{k}": v for k, v in out.items()}


def meta(st) -> dict:
    return {"version": STATE_VERSION, "counts": dict(st.counts), "rejected": dict(st.reasons),
            "groups": st.group_counts() if st.cfg.sobol else None, "p": st.p,
            "fields": {n: list(f.shape) for n, f in st.fields.items()},
            "memory_bytes": st.memory_bytes, "config": dataclasses.asdict(st.cfg)}


def save_npz(path, st) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = st.results()
    arrays["meta"] = np.array(json.dumps(meta(st)))
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# -- summary ---------------------------------------------------------------------------------------
def show(out_dir) -> str:
    """A one-screen summary of <out_dir>/stats.npz."""
    from .stats_state import StatsError  # noqa: PLC0415
    path = Path(out_dir) / "stats.npz"
    if not path.exists():
        raise StatsError(f"{path} not found: run `ot stats --from URL --out {out_dir}` first",
                         str(path))
    with np.load(path) as z:
        m = json.loads(str(z["meta"]))
        c = m["counts"]
        lines = [f"{path}: {c['accepted']} frames in the statistics of {c['frames']} received "
                 f"({c['duplicates']} duplicates, {c['rejected']} rejected"
                 + (f": {m['rejected']}" if m["rejected"] else "") + ")"]
        if m["groups"]:
            g = m["groups"]
            lines.append(f"pick-freeze groups (p = {m['p']}): {g['complete']} complete, "
                         f"{g['failed']} with a failed member, {g['rejected']} rejected, "
                         f"{g['incomplete']} incomplete" + (f" (of {g['expected']} expected)"
                                                            if g["expected"] else ""))
        for name, shape in m["fields"].items():
            if f"{name}/steps" not in z:
                continue
            steps, n = z[f"{name}/steps"], z[f"{name}/n"]
            last = -1
            mean, var = z[f"{name}/mean"][last], z[f"{name}/variance"][last]
            lines.append(f"field {name!r} {tuple(shape)}: steps {steps[0]}..{steps[-1]} "
                         f"({len(steps)}), {n.min()}..{n.max()} simulations per step")
            lines.append(f"  last step {steps[last]}: mean {np.nanmin(mean):.4g}..{np.nanmax(mean):.4g}"
                         f"  std {np.sqrt(np.nanmin(var)):.4g}..{np.sqrt(np.nanmax(var)):.4g}"
                         f"  min {z[f'{name}/min'][last].min():.4g}  max {z[f'{name}/max'][last].max():.4g}")
            for j, t in enumerate(z[f"{name}/thresholds"]):
                e = z[f"{name}/exceedance"][last][j]
                lines.append(f"  P(u > {t:g}): {e.min():.3f}..{e.max():.3f} over cells")
            if f"{name}/quantiles" in z:
                for j, a in enumerate(z[f"{name}/levels"]):
                    q = z[f"{name}/quantiles"][last][j]
                    lines.append(f"  quantile {a:g}: {np.nanmin(q):.4g}..{np.nanmax(q):.4g}")
            if f"{name}/first" in z:
                s1, st = z[f"{name}/first"][last], z[f"{name}/total"][last]
                p = s1.shape[0]
                s1m = np.nanmean(s1.reshape(p, -1), axis=1)
                stm = np.nanmean(st.reshape(p, -1), axis=1)
                lines.append(f"  Sobol' ({z[f'{name}/sobol_n'][last]} groups), mean over cells:")
                for k in range(p):
                    lines.append(f"    X{k + 1}: first {s1m[k]:.3f}  total {stm[k]:.3f}")
    return "\n".join(lines)
