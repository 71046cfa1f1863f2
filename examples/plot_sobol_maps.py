"""Plot the first-order Sobol' maps of a heat2d study's stats.npz (the picture in docs/stats.md).

    python examples/plot_sobol_maps.py STATS_DIR --out docs/stats-heat2d.png [--field T] [--step -1]

Needs matplotlib (`pip install onlinetrain[plot]`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NAMES = ("Tx1 (wall x=0)", "Tx2 (wall x=L)", "Ty1 (wall y=0)", "Ty2 (wall y=L)", "T_IC (initial)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stats_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--field", default="T")
    ap.add_argument("--step", type=int, default=-1, help="index into the steps (default: last)")
    a = ap.parse_args()
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    with np.load(Path(a.stats_dir) / "stats.npz") as z:
        first = z[f"{a.field}/first"][a.step]
        step, groups = z[f"{a.field}/steps"][a.step], z[f"{a.field}/sobol_n"][a.step]
    p = first.shape[0]
    fig, axes = plt.subplots(1, p, figsize=(2.1 * p, 2.4), constrained_layout=True)
    for k, ax in enumerate(np.atleast_1d(axes)):
        # array axis 0 is x: transpose so x runs left to right, y bottom to top
        im = ax.imshow(first[k].T, origin="lower", vmin=0, vmax=1, cmap="viridis")
        ax.set_title(NAMES[k] if k < len(NAMES) else f"X{k + 1}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="first-order index")
    fig.suptitle(f"heat2d: first-order Sobol' index per cell, step {step}, {groups} groups",
                 fontsize=9)
    fig.savefig(a.out, dpi=72)


if __name__ == "__main__":
    main()
