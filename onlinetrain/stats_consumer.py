"""`ot stats`: a consumer like `ot train` that turns the stream into statistics, no file in between.

It creates the channel, drains frames into onlinetrain.stats.Statistics until every producer sent
STREAM_END (simulate.producers) or no frame came for channel.idle_timeout seconds, then writes
<out>/stats.npz (documented in stats_io and docs/stats.md) and <out>/stats-summary.json.

    ot sample --method pick-freeze -n 100 --dim 5 --bounds 100:500 | ot simulate --to shm://hs &
    ot stats --from shm://hs --config study.toml --out hs-stats
    ot stats show hs-stats

    summary = run_stats(cfg, "hs-stats", report=print)      # library form
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from . import frame as fr
from .channel import open_consumer
from .errors import Empty
from .stats import Statistics

log = logging.getLogger(__name__)


def drain(consumer, st: Statistics, producers: int, idle_timeout: float,
          stop_event: threading.Event | None = None, batch: int = 256) -> str:
    """Feed `st` from `consumer` until `producers` STREAM_END frames, the idle timeout or
    `stop_event`; returns why it stopped ("stream end", "idle", "stopped")."""
    last = time.monotonic()
    while True:
        if stop_event is not None and stop_event.is_set():
            return "stopped"
        if st.counts["stream_ends"] >= producers:
            return "stream end"
        try:
            frames = consumer.get_many(batch, timeout=0.2, copy=False)
        except Empty:
            idle = time.monotonic() - last
            if idle > idle_timeout:
                log.warning("no frame for %.0f s (channel.idle_timeout): ending the statistics "
                            "with %d frames", idle, st.counts["accepted"])
                return "idle"
            continue
        except fr.FrameError as e:
            st.counts["rejected"] += 1
            st.reasons["malformed"] = st.reasons.get("malformed", 0) + 1
            log.warning("rejected a malformed frame: %s", e)
            continue
        last = time.monotonic()
        try:
            st.update_many(frames)  # copies what it keeps (group members in flight)
        finally:
            for f in frames:
                if hasattr(f, "release"):
                    f.release()


def run_stats(cfg, out_dir: str | Path | None = None, consumer=None,
              stop_event: threading.Event | None = None, report=None) -> dict:
    """Drain cfg's channel into the statistics of cfg.stats; write stats.npz; return the summary."""
    t0 = time.monotonic()
    out = Path(out_dir or cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    st = Statistics(cfg.stats, steps_hint=cfg.solver.steps, report=report)
    own = consumer is None
    if own:
        consumer = open_consumer(cfg.channel_url, capacity=cfg.channel.ring_mb << 20,
                                 study_dir=str(out))
    try:
        why = drain(consumer, st, cfg.simulate.producers, cfg.channel.idle_timeout, stop_event)
    finally:
        if own:
            consumer.close()
    st.save(out / "stats.npz")
    summary = {"ended": why, **st.counts, "rejected_reasons": st.reasons,
               "sims_done": len(st.sims_done), "sims_failed": len(st.sims_failed),
               "groups": st.group_counts() if cfg.stats.sobol else None,
               "fields": {n: list(f.shape) for n, f in st.fields.items()},
               "memory_bytes": st.memory_bytes, "wall_s": round(time.monotonic() - t0, 3)}
    (out / "stats-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
