"""`ot report DIR`: one self-contained HTML page (images inline, base64) plus its PNGs, made with
matplotlib (the `plot` extra) from the study directory alone, whether the study is running,
finished or crashed.

    path = build_report("ot-study/heat2d")        # ot-study/heat2d/report/report.html + *.png

Sections (each an HTML <section id=...>, present when its data exists): overview; training (train
loss, validation MSE, learning rate against batches and wall time); ingest (samples/s, MB/s);
buffer (fill, times served, evicted unseen); data-wait (the trainer's data-wait fraction, where
metrics.jsonl has `data_wait_frac`); simulations (running / done / failed / restarted over time,
each attempt per worker, from ledger.jsonl); fields (true, predicted and error for a few held-out
simulations and steps, from validation_fields.npz); statistics (mean and standard deviation maps
from stats.npz, where it exists).
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from .errors import OTError
from .report_data import (Study, completion_rates, ingest_rates, load_study, series,
                          sim_timeline)

DPI = 80


class ReportError(OTError, RuntimeError):
    """`ot report` cannot run; `path` is the study directory."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError as e:
        raise ReportError(f"ot report needs matplotlib ({e}): pip install 'onlinetrain[plot]'"
                          ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt  # noqa: PLC0415
    plt.close(fig)
    return buf.getvalue()


def _log_if_positive(ax, values):
    if values and min(values) > 0:
        ax.set_yscale("log")


# ---- figures: each returns PNG bytes, or None when the study has no data for it --------------
def fig_training(plt, s: Study):
    keys = [("train_loss", "train loss (MSE)"), ("val_mse", "validation MSE"), ("lr", "learning rate")]
    data = {k: series(s.metrics, k) for k, _ in keys}
    if not any(data[k][0] for k, _ in keys):
        return None
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for col, (k, label) in enumerate(keys):
        b, t, v = data[k]
        for row, (x, xlabel) in enumerate(((b, "batches"), (t, "wall time (s)"))):
            ax = axes[row][col]
            ax.plot(x, v, marker=".", lw=1)
            _log_if_positive(ax, v)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{label} vs {xlabel.split(' (')[0]}", fontsize=10)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _bytes_per_sample(s: Study) -> int | None:
    if s.fields is not None and "y_true" in s.fields:
        return int(s.fields["y_true"].shape[1]) * 4
    solver = (s.config or {}).get("solver", {})
    if solver.get("kind") == "heat2d" and isinstance(solver.get("n"), int):
        return solver["n"] ** 2 * 4
    return None


def fig_ingest(plt, s: Study):
    t, rate = ingest_rates(s.metrics)
    solver = (s.config or {}).get("solver", {})
    steps = solver.get("steps") if solver.get("kind") == "heat2d" else None
    tc, crate = completion_rates(s.ledger_events, steps) if isinstance(steps, int) else ([], [])
    if not t and not tc:
        return None
    per = _bytes_per_sample(s)
    fig, axes = plt.subplots(1, 2 if per else 1, figsize=(10 if per else 5.5, 3.2), squeeze=False)
    lines = [(t, rate, "received by the trainer (metrics.jsonl)", {"marker": "o", "ms": 3}),
             (tc, crate, f"completed simulations x {steps} steps (ledger.jsonl)",
              {"drawstyle": "steps-mid"})]
    for x, r, label, kw in lines:
        if x:
            axes[0][0].plot(x, r, lw=1, label=label, **kw)
            if per:
                axes[0][1].plot(x, [v * per / 1e6 for v in r], lw=1, **kw)
    axes[0][0].set(xlabel="time since the start (s)", ylabel="frames / s", title="ingest rate")
    axes[0][0].legend(fontsize=7)
    if per:
        axes[0][1].set(xlabel="time since the start (s)", ylabel="MB / s",
                       title=f"ingest volume ({per} B per float32 field)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def fig_buffer(plt, s: Study):
    b, _, fill = series(s.metrics, "buffer")
    served_b, _, served = series(s.metrics, "served")
    ev_b, _, evicted = series(s.metrics, "evicted_unseen")
    final = (s.summary or {}).get("buffer") or {}
    if not b and not final:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    ax = axes[0]
    if b:
        ax.plot(b, fill, marker=".", lw=1, label="samples in the buffer")
    cap = ((s.config or {}).get("buffer") or {}).get("capacity")
    if cap:
        ax.axhline(cap, color="grey", ls="--", lw=1, label=f"capacity {cap}")
    ax.set(xlabel="batches", ylabel="samples", title="buffer fill")
    ax.legend(fontsize=8)
    ax = axes[1]
    if served and evicted:
        ax.plot(served_b, served, label="samples served")
        ax.plot(ev_b, evicted, label="evicted unseen")
        ax.set(xlabel="batches", title="serving and eviction")
        ax.legend(fontsize=8)
    elif final:
        received = final.get("received") or 0
        reuse = (final.get("served") or 0) / received if received else 0.0
        names = ["received", "served", "evicted", "evicted unseen"]
        vals = [final.get("received") or 0, final.get("served") or 0, final.get("evicted") or 0,
                final.get("evicted_unseen") or 0]
        bars = ax.bar(names, vals, color=["C0", "C1", "C2", "C3"])
        ax.bar_label(bars, fontsize=8)
        ax.set_title(f"at the end: each sample served {reuse:.2f} times on average", fontsize=10)
    else:
        ax.text(0.5, 0.5, "reuse and eviction counts: in summary.json\nwhen the study ends",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for a in axes:
        if a.axison:
            a.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def fig_data_wait(plt, s: Study):
    b, t, v = series(s.metrics, "data_wait_frac")
    if not b:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(b, [100 * x for x in v], marker=".", lw=1, color="C4")
    ax.set(xlabel="batches", ylabel="% of the time", ylim=(0, 100),
           title="trainer waiting for data")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def fig_simulations(plt, s: Study):
    tl = sim_timeline(s.ledger_events)
    if not tl["t"]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    ax = axes[0]
    for k, color in (("pending", "grey"), ("running", "C0"), ("done", "C2"), ("failed", "C3")):
        ax.step(tl["t"], tl["counts"][k], where="post", label=k, color=color)
    ax.step(tl["t"], tl["restarts"], where="post", label="restarts (cumulative)", color="C1",
            ls="--")
    ax.set(xlabel="time since the study started (s)", ylabel="simulations",
           title="simulations over time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    end = tl["t"][-1]
    colors = {w: f"C{i % 10}" for i, w in enumerate(tl["workers"])}
    for sid, w, start, stop, outcome in tl["intervals"]:
        stop = end if stop is None else stop
        ax.barh(sid, max(stop - start, end * 0.002), left=start, color=colors[w],
                edgecolor="C3" if outcome in ("fail", "restart") else "none")
    for w, c in colors.items():
        ax.barh([], [], color=c, label=f"worker {w}")
    ax.set(xlabel="time (s)", ylabel="simulation id",
           title="each attempt, by worker (red edge: crashed or failed)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def fig_breed(plt, s: Study):
    """Breed: each set's parameters (first two) by generation, a line from parent to child."""
    params, gen, parent = {}, {}, {}
    for e in s.ledger_events:
        if e.get("ev") in ("add", "breed") and "params" in e:
            params[e["id"]], gen[e["id"]] = e["params"], int(e.get("generation", 0))
            parent[e["id"]] = e.get("parent")
    if not any(gen.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    top = max(gen.values())
    cmap = plt.get_cmap("viridis")
    for sid, p in params.items():
        q = params.get(parent[sid])
        if q is not None:
            ax.plot([q[0], p[0]], [q[1] if len(q) > 1 else 0, p[1] if len(p) > 1 else 0],
                    color="0.6", lw=0.7, zorder=1)
    sc = ax.scatter([p[0] for p in params.values()],
                    [p[1] if len(p) > 1 else 0 for p in params.values()],
                    c=[gen[i] for i in params], cmap=cmap, vmin=0, vmax=max(top, 1), s=22,
                    zorder=2)
    fig.colorbar(sc, ax=ax, label="generation")
    ax.set(xlabel="parameter 0", ylabel="parameter 1",
           title=f"parameter sets by generation ({top} resamplings)")
    fig.tight_layout()
    return _png(fig)


def fig_fields(plt, s: Study):
    f = s.fields
    if not f or len(f.get("sim_ids", ())) == 0:
        return None
    shape = tuple(int(d) for d in f["shape"])
    true, pred = f["y_true"], f["y_pred"]
    k = len(f["sim_ids"])
    if len(shape) == 2:
        fig, axes = plt.subplots(k, 3, figsize=(9, 2.6 * k), squeeze=False)
        for i in range(k):
            t, p = true[i].reshape(shape), pred[i].reshape(shape)
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            err = p - t
            e = float(abs(err).max()) or 1.0
            where = f"sim {f['sim_ids'][i]}, step {f['steps'][i]}"
            for j, (img, title, kw) in enumerate((
                    (t, f"true ({where})", {"vmin": lo, "vmax": hi, "cmap": "inferno"}),
                    (p, "predicted", {"vmin": lo, "vmax": hi, "cmap": "inferno"}),
                    (err, "error (predicted - true)", {"vmin": -e, "vmax": e, "cmap": "RdBu_r"}))):
                ax = axes[i][j]
                im = ax.imshow(img.T, origin="lower", **kw)
                ax.set_title(title, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    else:
        fig, axes = plt.subplots(k, 2, figsize=(9, 2.2 * k), squeeze=False)
        for i in range(k):
            where = f"sim {f['sim_ids'][i]}, step {f['steps'][i]}"
            axes[i][0].plot(true[i], label="true", lw=1)
            axes[i][0].plot(pred[i], label="predicted", lw=1, ls="--")
            axes[i][0].set_title(f"{where} (flat profile)", fontsize=9)
            axes[i][0].legend(fontsize=7)
            axes[i][1].plot(pred[i] - true[i], color="C3", lw=1)
            axes[i][1].set_title("error (predicted - true)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def fig_statistics(plt, s: Study):
    """Mean and standard deviation at the last step of each field of stats.npz (docs/stats.md)."""
    if s.stats_path is None:
        return None
    import numpy as np  # noqa: PLC0415
    try:
        with np.load(s.stats_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    names = sorted(k[:-len("/mean")] for k in arrays if k.endswith("/mean")
                   and f"{k[:-len('/mean')]}/variance" in arrays)
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 3 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        mean, var = arrays[f"{name}/mean"][-1], arrays[f"{name}/variance"][-1]
        for j, (a, title) in enumerate(((mean, "mean"), (np.sqrt(np.maximum(var, 0)), "std"))):
            ax = axes[i][j]
            if a.ndim == 2:
                fig.colorbar(ax.imshow(a.T, origin="lower", cmap="viridis"), ax=ax)
            else:
                ax.plot(a.reshape(-1))
            ax.set_title(f"{name}: {title} at the last step", fontsize=9)
    fig.tight_layout()
    return _png(fig)


SECTIONS = [  # id, title, figure, caption
    ("training", "Training", fig_training,
     "Train loss (mean over the batches since the previous line), validation MSE on the held-out "
     "simulations and learning rate, against batches (top) and wall time (bottom)."),
    ("ingest", "Ingest", fig_ingest,
     "Frames (time steps) per second: received by the trainer between metrics lines, and "
     "simulations completed per time bin times their steps; the bytes they carry."),
    ("buffer", "Training buffer", fig_buffer,
     "Buffer fill, how often samples are served (reuse) and how many were evicted unseen."),
    ("data-wait", "Data wait", fig_data_wait,
     "Share of the trainer's time spent waiting for a batch (the simulations are the bottleneck "
     "when it is high)."),
    ("simulations", "Simulations", fig_simulations,
     "From ledger.jsonl: sets pending, running, done and failed, restarts, and every attempt of "
     "every simulation by the worker that ran it."),
    ("breed", "Breed generations", fig_breed,
     "From ledger.jsonl: every parameter set's first two parameters, coloured by the generation "
     "that drew it (0: the initial design); a grey line joins a bred set to its parent."),
    ("fields", "Held-out fields", fig_fields,
     "A few held-out simulations at a few time steps: true field, the surrogate's prediction and "
     "the error, in the adapter's target units (heat2d: (T - 300 K) / 100 K)."),
    ("statistics", "Statistics maps", fig_statistics, "From stats.npz."),
]


def _overview(s: Study) -> str:
    rows = [("study", str(s.dir.resolve())), ("state", s.state),
            ("report made", time.strftime("%Y-%m-%d %H:%M:%S"))]
    if s.metrics:
        m = s.metrics[-1]
        rows.append(("last metrics line", ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                     else f"{k} {v}" for k, v in m.items())))
    if s.summary:
        sm = s.summary
        for k in ("val_mse", "mean_field_mse", "batches", "samples_received", "sims_done",
                  "sims_failed", "wall_s"):
            if k in sm:
                rows.append((k, f"{sm[k]:.5g}" if isinstance(sm[k], float) else str(sm[k])))
        if sm.get("val_mse") and sm.get("mean_field_mse"):
            rows.append(("MSE ratio to the mean-field baseline",
                         f"{sm['val_mse'] / sm['mean_field_mse']:.3g}"))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<section id="overview"><h2>Overview</h2><table>{cells}</table></section>'


CSS = ("body{font-family:sans-serif;max-width:1250px;margin:1em auto;padding:0 1em;color:#222}"
       "img{max-width:100%;height:auto;border:1px solid #ddd}th{text-align:left;padding-right:1em;"
       "vertical-align:top}td{font-family:monospace}section{margin-bottom:2em}"
       ".caption{color:#555}")


def build_report(study_dir, out_dir=None) -> Path:
    """Write `<out_dir or study_dir/report>/report.html` and one PNG per section; the path."""
    d = Path(study_dir)
    if not d.is_dir():
        raise ReportError(f"{d} is not a directory: give a study directory (output.dir)", d)
    s = load_study(d)
    if not (s.metrics or s.ledger_events or s.summary):
        raise ReportError(f"{d} has no metrics.jsonl, ledger.jsonl or summary.json: is it a study "
                          f"directory (output.dir of ot run / ot train --out)?", d)
    plt = _pyplot()
    out = Path(out_dir) if out_dir else d / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = [_overview(s)]
    for sid, title, fig, caption in SECTIONS:
        png = fig(plt, s)
        if png is None:
            (out / f"{sid}.png").unlink(missing_ok=True)  # from an earlier report
            continue
        (out / f"{sid}.png").write_bytes(png)
        b64 = base64.b64encode(png).decode()
        parts.append(f'<section id="{sid}"><h2>{html.escape(title)}</h2>'
                     f'<p class="caption">{html.escape(caption)}</p>'
                     f'<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
                     f"</section>")
    name = html.escape((s.config or {}).get("output", {}).get("name", d.name))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<link rel="icon" href="data:,"><title>onlinetrain report: {name}</title>'
            f"<style>{CSS}</style></head><body><h1>onlinetrain study {name} ({s.state})</h1>"
            + "".join(parts) + "</body></html>\n")
    path = out / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
