"""Breed active learning: steer the ensemble towards the parameter sets the network finds hard.

The algorithm of Melissa's default breeder (Dymchenko & Raffin), as docs/breed.md states it:

1. Score: each finished training simulation has a loss score (the running mean of the per-sample
   training loss of its samples, `ScoreBoard`); one never served gets the mean score. Scores are
   shifted by their minimum and normalised into probabilities (uniform when all are equal).
2. Breed: with probability R a child is drawn from N(parent, diag(sigma * range)^2) around a parent
   chosen by those probabilities; a child out of bounds is redrawn with the covariance multiplied by
   0.3 (again at each try), at most `max_oob` times, after which the parent's parameters are used.
3. Explore: with probability 1 - R the child comes from the non-breed sampler.
4. R follows linspace(start, end, breakpoint), one step per resampling, then stays at `end`.
5. The first generation always comes from the non-breed sampler (it is the study's initial draw).
6. A resampling happens every `window` finished simulations, only after `skip_batches` batches, and
   re-parameterises min(window, pending) sets that have not started (never running, finished or
   held-out ones).

    br = Breeder(BreedConfig(window=8), bounds=[(100, 500)] * 5, seed=1)
    if br.due(finished=16, batches=4000):
        kids = br.resample(scores={3: 0.2, 5: 0.9}, params={3: [...], 5: [...]},
                           pending=[40, 41, 42])
        # [Child(id=40, params=[...], generation=1, parent=5), Child(id=41, ..., parent=None), ...]
    state = br.state_dict(); br2 = Breeder(...); br2.load_state_dict(state)  # same sequence

Nothing here does I/O: the study driver feeds it the trainer's published scores and the ledger's
pending sets, and writes the children to the ledger.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import OTError
from .sampler import check_bounds, unit_points

NON_BREED = ("uniform", "halton", "lhs")


class BreedError(OTError, ValueError):
    """A bad breed setting; `key` and `value` name it."""

    def __init__(self, message: str, key: str | None = None, value=None):
        super().__init__(message)
        self.key, self.value = key, value


@dataclass
class BreedConfig:
    """`[breed]`: the breeder's settings (Melissa's defaults)."""
    sigma: float | list[float] = 0.005   # std of a child around its parent, fraction of the range
    start: float = 0.15                  # R at the first resampling
    end: float = 0.75                    # R from `breakpoint` resamplings on
    breakpoint: int = 10
    window: int = 10                     # finished simulations between two resamplings
    skip_batches: int = 0                # no resampling before this many training batches
    max_oob: int = 10                    # out-of-bounds redraws before the parent is used
    non_breed: str = "uniform"           # the exploration sampler: uniform, halton or lhs

    def __post_init__(self):
        sig = self.sigma if isinstance(self.sigma, list) else [self.sigma]
        for s in sig:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 \
                    or not math.isfinite(s):
                raise BreedError(f"breed.sigma = {self.sigma!r}: every value must be a number > 0 "
                                 f"(a fraction of the parameter's range, e.g. 0.005)",
                                 "sigma", self.sigma)
        for key in ("start", "end"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise BreedError(f"breed.{key} = {v!r}: must be a probability in [0, 1]", key, v)
        for key, low in (("breakpoint", 1), ("window", 1), ("skip_batches", 0), ("max_oob", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise BreedError(f"breed.{key} = {v!r}: must be an integer >= {low}", key, v)
        if self.non_breed not in NON_BREED:
            raise BreedError(f"breed.non_breed = {self.non_breed!r}: use one of "
                             f"{', '.join(NON_BREED)}", "non_breed", self.non_breed)

    def check_study(self, n_train: int, dim: int) -> None:
        """Settings that only make sense against the study: refuse before anything runs."""
        if self.window > n_train:
            raise BreedError(f"breed.window = {self.window} is larger than the study's "
                             f"{n_train} training simulations: no resampling would ever happen; "
                             f"use a window <= {n_train}", "window", self.window)
        if isinstance(self.sigma, list) and len(self.sigma) != dim:
            raise BreedError(f"breed.sigma has {len(self.sigma)} values for {dim} parameters: give "
                             f"one number, or one per parameter", "sigma", self.sigma)


@dataclass
class Child:
    id: int
    params: list[float]
    generation: int
    parent: int | None            # the parent's simulation id; None for an exploration draw
    oob_redraws: int = 0          # out-of-bounds redraws it took (max_oob + 1: parent copied)


def r_schedule(cfg: BreedConfig, step: int) -> float:
    """R at resampling number `step` (0-based): linspace(start, end, breakpoint), then `end`."""
    if step >= cfg.breakpoint - 1:
        return float(cfg.end)
    return float(np.linspace(cfg.start, cfg.end, cfg.breakpoint)[step])


def probabilities(scores: Sequence[float]) -> np.ndarray:
    """Scores shifted by their minimum and normalised; uniform when all are equal (or none)."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return s
    s = s - s.min()
    total = s.sum()
    if not total > 0 or not math.isfinite(total):
        return np.full(len(s), 1.0 / len(s))
    return s / total


@dataclass
class Breeder:
    cfg: BreedConfig
    bounds: Sequence[Sequence[float]]
    seed: int = 0
    step: int = 0                                   # resamplings done (the R step)
    explored: int = 0                               # exploration points drawn so far
    last_scores: dict = field(default_factory=dict)

    def __post_init__(self):
        self.b = check_bounds(self.bounds)
        self.lo, self.hi = self.b[:, 0], self.b[:, 1]
        self.rng = np.random.default_rng([int(self.seed), 0xB7EED])
        sig = self.cfg.sigma if isinstance(self.cfg.sigma, list) else [self.cfg.sigma] * len(self.b)
        if len(sig) != len(self.b):
            raise BreedError(f"breed.sigma has {len(sig)} values for {len(self.b)} parameters",
                             "sigma", self.cfg.sigma)
        self.std = np.asarray(sig, np.float64) * (self.hi - self.lo)

    @property
    def generation(self) -> int:
        """The generation the next resampling produces (the initial draw is generation 0)."""
        return self.step + 1

    def due(self, finished: int, batches: int) -> bool:
        """A resampling is due once `window` more training simulations have finished than at
        the previous one, and the trainer has done `skip_batches` batches."""
        return batches >= self.cfg.skip_batches and finished >= (self.step + 1) * self.cfg.window

    def _explore(self, n: int) -> np.ndarray:
        """n points of the non-breed sampler, continuing its sequence across generations."""
        if self.cfg.non_breed == "halton":  # one scrambled sequence for the whole study
            from scipy.stats import qmc  # noqa: PLC0415
            eng = qmc.Halton(len(self.b), scramble=True, seed=np.random.default_rng(
                [int(self.seed), 0x4A170]))
            if self.explored:
                eng.fast_forward(self.explored)
            u = eng.random(n)
        else:  # uniform / lhs: a fresh block per call, seeded by (seed, points drawn so far)
            u = unit_points(n, len(self.b), int(self.seed) * 1_000_003 + self.explored,
                            self.cfg.non_breed)
        self.explored += n
        return self.lo + u * (self.hi - self.lo)

    def _breed_one(self, parent: np.ndarray) -> tuple[np.ndarray, int]:
        scale = 1.0
        for tries in range(self.cfg.max_oob + 1):
            child = self.rng.normal(parent, self.std * math.sqrt(scale))
            if np.all(child >= self.lo) and np.all(child <= self.hi):
                return child, tries
            scale *= 0.3  # covariance x 0.3 at each out-of-bounds redraw
        return parent.copy(), self.cfg.max_oob + 1

    def resample(self, scores: Mapping[int, float | None], params: Mapping[int, Sequence[float]],
                 pending: Sequence[int]) -> list[Child]:
        """One generation: new parameters for min(window, len(pending)) pending sets.

        `scores`: the finished training simulations' loss scores (None: never served, gets the
        mean score); `params`: their parameters; `pending`: ids of sets not started yet, in the
        order they would run (the first ones are re-parameterised)."""
        ids = sorted(scores)
        missing = [i for i in ids if i not in params]
        if missing:
            raise BreedError(f"no parameters for scored simulations {missing[:5]}", "params",
                             missing)
        known = [float(scores[i]) for i in ids if scores[i] is not None and
                 math.isfinite(float(scores[i]))]
        mean = float(np.mean(known)) if known else 0.0
        s = [mean if scores[i] is None or not math.isfinite(float(scores[i])) else
             float(scores[i]) for i in ids]
        p = probabilities(s)
        r = r_schedule(self.cfg, self.step)
        targets = list(pending)[:min(self.cfg.window, len(pending))]
        bred = self.rng.random(len(targets)) < r if ids else np.zeros(len(targets), bool)
        explore = self._explore(int((~bred).sum())) if (~bred).any() else np.empty((0, len(self.b)))
        out, k = [], 0
        for sid, b in zip(targets, bred):
            if b:
                j = int(self.rng.choice(len(ids), p=p))
                child, tries = self._breed_one(np.asarray(params[ids[j]], np.float64))
                out.append(Child(int(sid), [float(v) for v in child], self.generation, ids[j],
                                 tries))
            else:
                out.append(Child(int(sid), [float(v) for v in explore[k]], self.generation, None))
                k += 1
        self.last_scores = {int(i): v for i, v in zip(ids, s)}
        self.step += 1
        return out

    def state_dict(self) -> dict:
        """Plain types only (the checkpoint's "breeder" section; torch.load weights_only=True)."""
        return {"version": 1, "step": self.step, "explored": self.explored,
                "rng": _plain(self.rng.bit_generator.state),
                "last_scores": {int(k): float(v) for k, v in self.last_scores.items()}}

    def load_state_dict(self, d: dict) -> None:
        if d.get("version") != 1:
            raise BreedError(f"breeder state version {d.get('version')!r} is not 1", "version",
                             d.get("version"))
        self.step, self.explored = int(d["step"]), int(d["explored"])
        self.rng.bit_generator.state = d["rng"]
        self.last_scores = dict(d["last_scores"])


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    return x


class ScoreBoard:
    """Per-simulation running mean of per-sample training losses, O(simulations) memory.

    The trainer feeds it the per-sample losses of batches it already computed:
        board.update(sim_ids, losses)          # two 1-D arrays of one batch
        board.scores()                         # {sim_id: mean loss}
    With N ranks, `sums_counts()` of every rank are added (one all_reduce) before publishing.
    """

    def __init__(self):
        self.sum: dict[int, float] = {}
        self.count: dict[int, int] = {}

    def update(self, sim_ids, losses) -> None:
        sims = np.asarray(sim_ids, np.int64).reshape(-1)
        loss = np.asarray(losses, np.float64).reshape(-1)
        if sims.shape != loss.shape:
            raise BreedError(f"{sims.size} simulation ids for {loss.size} losses", "losses",
                             loss.size)
        uniq, inv = np.unique(sims, return_inverse=True)
        sums = np.bincount(inv, weights=loss, minlength=len(uniq))
        cnts = np.bincount(inv, minlength=len(uniq))
        for s, a, c in zip(uniq.tolist(), sums.tolist(), cnts.tolist()):
            self.sum[s] = self.sum.get(s, 0.0) + a
            self.count[s] = self.count.get(s, 0) + c

    def merge(self, sums: Mapping[int, float], counts: Mapping[int, int]) -> None:
        for s, a in sums.items():
            self.sum[int(s)] = self.sum.get(int(s), 0.0) + float(a)
            self.count[int(s)] = self.count.get(int(s), 0) + int(counts[s])

    def scores(self) -> dict[int, float]:
        return {s: self.sum[s] / self.count[s] for s in self.sum if self.count[s]}

    def state_dict(self) -> dict:
        ids = sorted(self.sum)
        return {"ids": ids, "sum": [self.sum[i] for i in ids], "count": [self.count[i] for i in ids]}

    def load_state_dict(self, d: dict) -> None:
        self.sum = {int(i): float(a) for i, a in zip(d["ids"], d["sum"])}
        self.count = {int(i): int(c) for i, c in zip(d["ids"], d["count"])}
