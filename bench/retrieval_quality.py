"""Retrieval quality of the fact store: `reference` (single-stage, docs/method.md §3) vs `two_stage`.

A synthetic world (lmlm.world) is loaded into a private Redis 8 (90% of its people; the other 10% are
the absent entities). Three query sets: reworded relations (a synonym from RELATION_SYNONYMS, never
the stored label), one-edit entity typos (substitution, insertion, deletion or transposition), and
entities not in the store. Accuracy = the expected value returned; false accept = any accepted
answer for an absent entity. Last line: one JSON object.

MiniLM runs on `--threads` torch threads (1 by default: on a shared 2-core machine a second thread
makes it several times slower). Wall-clock guard: when the build has used more than half of
`--budget-s` (50 s with --quick), each query set is cut (to at least 60 queries); the JSON says how
many were asked.

    python bench/retrieval_quality.py [--quick] [--people N] [--queries N]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmlm.factstore import FactStore, FactStoreConfig  # noqa: E402
from lmlm.format import normalize_key  # noqa: E402
from lmlm.world import RELATION_SYNONYMS, WorldConfig, generate_world  # noqa: E402


def one_edit(rng: random.Random, name: str) -> str:
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    i = rng.choice(letters)
    op = rng.choice(["sub", "ins", "del", "swap"])
    c = rng.choice(string.ascii_lowercase)
    if op == "sub":
        c = rng.choice([x for x in string.ascii_lowercase if x != name[i].lower()])
        return name[:i] + c + name[i + 1:]
    if op == "ins":
        return name[:i] + c + name[i:]
    if op == "del":
        return name[:i] + name[i + 1:]
    j = i + 1 if i + 1 < len(name) and name[i + 1].isalpha() else i - 1
    a, b = sorted((i, j))
    return name[:a] + name[b] + name[a] + name[b + 1:]


def query_sets(people, absent, n: int, seed: int):
    rng = random.Random(seed)
    names = {normalize_key(p.name) for p in people} | {normalize_key(p.name) for p in absent}
    reworded, typos = [], []
    for p in rng.sample(people, min(n, len(people))):
        rel = rng.choice([r for r in p.attributes if r in RELATION_SYNONYMS])
        reworded.append((p.name, rng.choice(RELATION_SYNONYMS[rel]), p.attributes[rel]))
    for p in rng.sample(people, min(n, len(people))):
        rel = rng.choice(list(p.attributes))
        while normalize_key(typo := one_edit(rng, p.name)) in names:
            pass
        typos.append((typo, rel, p.attributes[rel]))
    gone = [(p.name, rng.choice(list(p.attributes)), None) for p in rng.sample(absent, min(n, len(absent)))]
    return {"reworded": reworded, "typo": typos, "absent": gone}


def evaluate(store: FactStore, sets: dict, mode: str) -> dict:
    out = {}
    for kind, qs in sets.items():
        t = time.perf_counter()
        answers = store.lookup_batch([(e, r) for e, r, _ in qs], mode=mode, fallback="abstain")
        dt = time.perf_counter() - t
        if kind == "absent":
            out[f"{mode}_absent_false_accept"] = round(sum(a is not None for a in answers) / len(qs), 4)
        else:
            out[f"{mode}_{kind}_acc"] = round(sum(a is not None and a.value == v
                                                  for a, (_, _, v) in zip(answers, qs)) / len(qs), 4)
        out[f"{mode}_{kind}_ms_per_query"] = round(dt / len(qs) * 1000, 3)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 people, 150 queries per set")
    ap.add_argument("--people", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for MiniLM")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (see the docstring)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    budget = args.budget_s or (50.0 if args.quick else None)
    n_people = args.people or (500 if args.quick else 5000)
    n_q = args.queries or (150 if args.quick else 1000)
    t0 = time.perf_counter()
    world = generate_world(WorldConfig(people=n_people, seed=args.seed))
    cut = int(len(world.people) * 0.9)
    people, absent = world.people[:cut], world.people[cut:]
    sets = query_sets(people, absent, n_q, args.seed)
    result = {"people": len(people), "triples": sum(len(p.attributes) for p in people),
              "absent_people": len(absent), "queries_per_set": n_q}
    with FactStore.open(FactStoreConfig(key_index=True)) as store:
        tb = time.perf_counter()
        store.add_triples([t for t in world.triples() if t.entity in {p.name for p in people}], annotator="world")
        result["build_s"] = round(time.perf_counter() - tb, 2)
        left = budget - (time.perf_counter() - t0) if budget else None
        if left is not None and left < budget / 2:
            keep = max(60, int(n_q * max(left, 0) / (budget / 2)))
            sets = {k: v[:keep] for k, v in sets.items()}
            result["queries_per_set"] = keep
        for mode in ("reference", "two_stage"):
            result.update(evaluate(store, sets, mode))
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    rows = [("reworded relation acc", "reworded_acc"), ("entity typo acc", "typo_acc"),
            ("absent entity false accept", "absent_false_accept")]
    print(f"{'':28s} {'reference':>10s} {'two_stage':>10s}", file=sys.stderr)
    for label, key in rows:
        print(f"{label:28s} {result['reference_' + key]:10.3f} {result['two_stage_' + key]:10.3f}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
