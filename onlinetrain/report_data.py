"""What `ot report` reads from a study directory, tolerant of a study that is running or crashed.

Every reader returns empty data rather than failing on a missing file or a half-written last
line (a trainer or worker killed mid-write), so a report can be made at any moment.

    s = load_study("ot-study/heat2d")
    s.metrics           # list of metrics.jsonl dicts
    s.ledger_events     # ledger.jsonl events in file order (with "t", epoch seconds)
    s.summary, s.config, s.fields, s.stats_path, s.state
    sim_timeline(s.ledger_events)   # counts over time, per-simulation intervals per worker
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import valfields


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; unparsable lines (a half-written tail) skipped."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class Study:
    dir: Path
    metrics: list = field(default_factory=list)
    ledger_events: list = field(default_factory=list)
    summary: dict | None = None
    config: dict | None = None
    fields: dict | None = None
    stats_path: Path | None = None
    state: str = "unknown"


def study_state(d: Path, metrics: list, summary: dict | None, quiet_s: float = 60.0) -> str:
    """finished (summary.json), running (metrics or ledger written in the last quiet_s), or
    stopped (neither: crashed, interrupted, or not started)."""
    if summary is not None:
        return "finished"
    newest = max((p.stat().st_mtime for p in (d / "metrics.jsonl", d / "ledger.jsonl")
                  if p.exists()), default=0.0)
    return "running" if time.time() - newest < quiet_s else "stopped"


def load_study(study_dir) -> Study:
    d = Path(study_dir)
    metrics = read_jsonl(d / "metrics.jsonl")
    summary = read_json(d / "summary.json")
    stats = d / "stats.npz"
    return Study(dir=d, metrics=metrics, ledger_events=read_jsonl(d / "ledger.jsonl"),
                 summary=summary, config=read_json(d / "config.json"),
                 fields=valfields.load(d), stats_path=stats if stats.exists() else None,
                 state=study_state(d, metrics, summary))


def sim_timeline(events: list[dict]) -> dict:
    """From ledger events: `t` (s since the first event) with the pending/running/done/failed
    counts and cumulative restarts after each event, and `intervals`: (sim id, worker, start,
    end or None, outcome) for every attempt (claim to done/fail/restart/release)."""
    evs = [e for e in events if isinstance(e.get("t"), (int, float)) and "id" in e]
    if not evs:
        return {"t": [], "counts": {}, "restarts": [], "intervals": [], "workers": []}
    t0 = evs[0]["t"]
    state: dict = {}
    open_: dict = {}
    intervals = []
    names = ("pending", "running", "done", "failed")
    counts = {k: [] for k in names}
    ts, restarts, n_restarts = [], [], 0
    for e in evs:
        sid, ev, t = e["id"], e.get("ev"), e["t"] - t0
        if ev == "claim":
            state[sid] = "running"
            open_[sid] = (e.get("worker", "?"), t)
        elif ev in ("release", "restart", "done", "fail"):
            w = "?"
            if sid in open_:
                w, start = open_.pop(sid)
                intervals.append((sid, w, start, t, ev))
            if ev == "restart":  # run again by the same worker
                n_restarts += 1
                state[sid] = "running"
                open_[sid] = (w, t)
            else:
                state[sid] = {"release": "pending", "done": "done", "fail": "failed"}[ev]
        elif ev == "add":
            state[sid] = "pending"
        else:
            continue
        ts.append(t)
        restarts.append(n_restarts)
        for k in names:
            counts[k].append(sum(1 for s in state.values() if s == k))
    for sid, (w, start) in open_.items():
        intervals.append((sid, w, start, None, "running"))
    workers = sorted({iv[1] for iv in intervals})
    return {"t": ts, "counts": counts, "restarts": restarts, "intervals": intervals,
            "workers": workers}


def series(metrics: list[dict], key: str) -> tuple[list, list, list]:
    """(batches, times, values) of `key` over the metrics lines that have a number for it."""
    b, t, v = [], [], []
    for m in metrics:
        x = m.get(key)
        if isinstance(x, (int, float)) and not isinstance(x, bool) and "batch" in m:
            b.append(m["batch"])
            t.append(m.get("time", float("nan")))
            v.append(x)
    return b, t, v


def completion_rates(events: list[dict], frames_per_sim: int, bins: int = 30) -> tuple[list, list]:
    """(bin centres in s since the first ledger event, frames/s): simulations completed ("done")
    per time bin times the frames each sends; ([], []) without completions."""
    evs = [e for e in events if isinstance(e.get("t"), (int, float))]
    done = [e["t"] for e in evs if e.get("ev") == "done"]
    if not done:
        return [], []
    t0 = evs[0]["t"]
    bins = max(3, min(bins, len(done) // 3))  # ~3 completions a bin at least: not spikes
    span = max(max(done) - t0, 1e-3)
    width = span / bins
    counts = [0] * bins
    for t in done:
        counts[min(int((t - t0) / width), bins - 1)] += 1
    return [(i + 0.5) * width for i in range(bins)], [c * frames_per_sim / width for c in counts]


def ingest_rates(metrics: list[dict]) -> tuple[list, list]:
    """(times, samples/s) between consecutive metrics lines, the first from the trainer's start."""
    ts, rates = [], []
    prev = (0.0, 0)
    for m in metrics:
        if not isinstance(m.get("time"), (int, float)) or not isinstance(m.get("samples"), int):
            continue
        if prev is not None and m["time"] > prev[0]:
            ts.append(m["time"])
            rates.append((m["samples"] - prev[1]) / (m["time"] - prev[0]))
        prev = (m["time"], m["samples"])
    return ts, rates
