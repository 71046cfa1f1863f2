"""The study side of Breed: runs the breeder (breed.py) against a study's ledger and scores.

Whoever hands out the study's work calls `poll()` before claiming a set: `ot run`'s simulation
thread, the Slurm driver and every `ot simulate --study` worker do it through LedgerSource, and a
program that drives a study by other means can run `ot breed STUDY_DIR` beside it. A poll reads the
trainer's last published scores (scores.json, written by scores.py) and, as ONE ledger transaction
(Ledger.breed, under the ledger's lock), decides whether a resampling is due (every `window`
finished training simulations, after `skip_batches` training batches) and re-parameterises
min(window, pending) training sets that never started. Held-out validation sets (ids n_train ..
n_train + n_validation - 1, and their replacements) are never scored, bred or re-parameterised.

The breeder's state (R step, exploration count, random generator, last scores) is stored in each
`generation` ledger event, so any process that polls continues the same sequence, a resumed study
included, and two pollers never breed the same generation twice (docs/breed.md, docs/ledger.md).

    sb = breeder_for(cfg, study_dir)        # None unless [sampling] adaptive = "breed"
    kids = sb.poll()                         # [] or the children written to the ledger
"""
from __future__ import annotations

import logging
import time

from .breed import Breeder, r_schedule
from .ledger import DONE, PENDING, Ledger
from .scores import read_scores

log = logging.getLogger(__name__)


class StudyBreeder:
    def __init__(self, ledger: Ledger, cfg):
        self.ledger, self.cfg = ledger, cfg
        s = cfg.sampling
        self.held = range(s.n_train, s.n_train + s.n_validation)
        self.generations = 0  # resamplings this poller wrote

    def held_out(self, sid: int, state: dict) -> bool:
        seen = set()
        while sid not in self.held and sid not in seen:
            seen.add(sid)
            nxt = state.get(sid, {}).get("replaces")
            if nxt is None:
                return False
            sid = nxt
        return sid in self.held

    def breeder(self, generations: list[dict]) -> Breeder:
        br = Breeder(self.cfg.breed, self.cfg.sampling.bounds, seed=self.cfg.sampling.seed)
        if generations:
            br.load_state_dict(generations[-1]["state"])
        return br

    def plan(self, scores: dict | None):
        """Ledger.breed's plan: the next generation, or None when none is due."""
        batches = int(scores["batches"]) if scores else 0
        sims = scores["sims"] if scores else {}

        def plan(state: dict, generations: list[dict]):
            br = self.breeder(generations)
            train = {i: s for i, s in state.items() if not self.held_out(i, state)}
            finished = [i for i, s in train.items() if s["state"] == DONE]
            if not br.due(len(finished), batches):
                return None
            pending = [i for i, s in train.items() if s["state"] == PENDING and not s["starts"]]
            if not pending:
                return None  # nothing left to steer: no generation
            r = r_schedule(self.cfg.breed, br.step)
            kids = br.resample({i: sims[i][0] if i in sims else None for i in finished},
                               {i: train[i]["params"] for i in finished}, pending)
            bred = sum(k.parent is not None for k in kids)
            gen = {"generation": br.step, "r": r, "finished": len(finished), "batches": batches,
                   "bred": bred, "explored": len(kids) - bred,
                   "scored": sum(i in sims for i in finished), "state": br.state_dict()}
            return gen, [{"id": k.id, "params": k.params, "generation": k.generation,
                          "parent": k.parent} for k in kids]
        return plan

    def poll(self) -> list[dict]:
        """Breed the due generations (usually none; several if polls were far apart)."""
        out = []
        while True:
            kids = self.ledger.breed(self.plan(read_scores(self.ledger.dir)))
            if not kids:
                return out
            self.generations += 1
            g = kids[0]["generation"]
            log.info("Breed generation %d: %d sets re-parameterised (%d bred from parents)", g,
                     len(kids), sum(k["parent"] is not None for k in kids))
            out += kids


def breeder_for(cfg, study_dir) -> StudyBreeder | None:
    if getattr(cfg.sampling, "adaptive", "none") != "breed":
        return None
    return StudyBreeder(Ledger(study_dir), cfg)


def watch(cfg, study_dir, every: float = 1.0, stop=None) -> int:
    """`ot breed STUDY_DIR`: poll until the study ends (`stop()` true, or the ledger's end);
    returns the generations written. For studies driven by a program that does not poll."""
    sb = StudyBreeder(Ledger(study_dir), cfg)
    while True:
        sb.poll()
        if sb.ledger.is_ended() or (stop is not None and stop()) or sb.ledger.finished():
            return sb.generations
        time.sleep(every)


def generations_summary(snap: dict, generations: list[dict]) -> dict:
    """For `ot status` / the report: sets per generation, parents, resamplings."""
    per: dict[int, int] = {}
    parents: dict = {}
    for s in snap.values():
        g = int(s.get("generation") or 0)
        per[g] = per.get(g, 0) + 1
        if s.get("parent") is not None:
            parents[s["parent"]] = parents.get(s["parent"], 0) + 1
    top = sorted(parents.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {"sets_per_generation": {str(k): v for k, v in sorted(per.items())},
            "resamplings": len(generations), "bred": sum(parents.values()),
            "parents": len(parents), "top_parents": [[int(p), n] for p, n in top],
            "r": [round(float(g.get("r", 0.0)), 3) for g in generations]}


