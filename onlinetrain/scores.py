"""The trainer's Breed scores: per-simulation mean training loss, published as STUDY_DIR/scores.json.

With `[sampling] adaptive = "breed"` the training loop hands each batch's per-sample losses (the
ones it already computed for the gradient, detached) and the batch's keys to a ScorePublisher.
They stay on the model's device until a publish, every `every` batches and at the end: then they
are copied to the host once, folded into this rank's ScoreBoard (breed.py), summed over the ranks
(two all-reduces, only at publish time) and rank 0 writes the file atomically (tmp + os.replace).
The study driver (breed_study.py) reads it; the trainer never writes the ledger.

    pub = publisher_for(cfg, out_dir, coll, env, ck)     # None unless breed is on: zero cost
    pub.add(item.keys, per_sample_losses)                # every step, no host sync
    pub.step(batches)                                    # publishes every `every` batches
    pub.publish(batches)                                 # at the end
    state["sections"]["scores"] = pub.state_dict()       # this rank's board, in its checkpoint

scores.json: {"version": 1, "batches": B, "ranks": N, "t": unix time,
              "sims": {"<sim id>": [mean loss, samples served], ...}}
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .breed import ScoreBoard
from .errors import OTError

log = logging.getLogger(__name__)
SCORES = "scores.json"
EVERY = 20  # batches between two publishes


class ScoresError(OTError, ValueError):
    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class ScorePublisher:
    def __init__(self, out_dir, coll=None, world: int = 1, rank: int = 0, every: int = EVERY):
        self.path = Path(out_dir) / SCORES
        self.coll, self.world, self.rank, self.every = coll, world, rank, max(1, int(every))
        self.board = ScoreBoard()
        self._sims: list[np.ndarray] = []
        self._losses: list = []  # detached tensors on the model's device

    def add(self, keys, losses) -> None:
        """One batch: keys (B, 2) int64 (simulation id, step), losses (B,) per-sample."""
        if keys is None or len(keys) == 0:
            return
        self._sims.append(np.asarray(keys, np.int64)[:, 0].copy())
        self._losses.append(losses.detach())

    def _flush(self) -> None:
        if not self._sims:
            return
        import torch  # noqa: PLC0415
        losses = torch.cat([t.float().reshape(-1) for t in self._losses]).cpu().numpy()
        self.board.update(np.concatenate(self._sims), losses)
        self._sims, self._losses = [], []

    def step(self, batches: int) -> None:
        if batches % self.every == 0:
            self.publish(batches)

    def totals(self) -> tuple[dict, dict]:
        """Sums and counts over every rank (collective when world > 1: every rank calls it)."""
        self._flush()
        b = self.board
        if self.world == 1 or self.coll is None:
            return dict(b.sum), dict(b.count)
        n = self.coll.max_ints([max(b.sum, default=-1) + 1])[0]
        sums, cnts = np.zeros(n), np.zeros(n, np.int64)
        for i in b.sum:
            sums[i], cnts[i] = b.sum[i], b.count[i]
        sums, cnts = self.coll.sum(sums), np.asarray(self.coll.sum_ints(cnts))
        ids = np.nonzero(cnts)[0].tolist()
        return {i: float(sums[i]) for i in ids}, {i: int(cnts[i]) for i in ids}

    def publish(self, batches: int) -> None:
        sums, cnts = self.totals()
        if self.rank != 0:
            return
        doc = {"version": 1, "batches": int(batches), "ranks": int(self.world),
               "t": round(time.time(), 3),
               "sims": {str(i): [sums[i] / cnts[i], cnts[i]] for i in sorted(sums) if cnts[i]}}
        tmp = self.path.with_name(f"{SCORES}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as e:  # a full file system must not stop training: the breeder waits
            log.warning("cannot publish Breed scores to %s: %s", self.path, e)

    def state_dict(self) -> dict:
        self._flush()
        return self.board.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.board.load_state_dict(d)


def publisher_for(cfg, out_dir, coll, env, ck: dict | None = None) -> ScorePublisher | None:
    """A publisher when `[sampling] adaptive = "breed"` (with this rank's board from `ck`)."""
    if getattr(cfg.sampling, "adaptive", "none") != "breed":
        return None
    pub = ScorePublisher(out_dir, coll, env.world, env.rank)
    if ck is not None and "scores" in ck.get("sections", {}):
        pub.load_state_dict(ck["sections"]["scores"])
    return pub


def read_scores(study_dir) -> dict | None:
    """The last published scores ({"batches", "sims": {id: (mean, count)}, ...}), or None."""
    path = Path(study_dir) / SCORES
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ScoresError(f"{path} is unreadable ({e}); delete it (the trainer writes it again)",
                          str(path)) from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ScoresError(f"{path}: not a version-1 scores file; delete it", str(path))
    return {**doc, "sims": {int(k): (float(v[0]), int(v[1])) for k, v in doc["sims"].items()}}
