"""Fact-store speed and memory: exact and fuzzy lookups, batching, bytes per triple, build rate.

Baselines measured in the same run: a raw redis-py HGET (exact) and the reference's in-process flat
inner-product index (numpy, float32, over the same keys, same query embedding) for fuzzy lookups.
The 100k (quick) / 1M (full) store is built with random unit vectors, since MiniLM embeds ~700
strings/s on 2 idle cores (minutes for 100k); vector memory and VSIM cost do not depend on the
values. Query embeddings are real MiniLM, computed per query with the cache cleared (cold), and the
embedding rate is measured separately. Fuzzy accuracy is bench/retrieval_quality.py's job.

The build rate is measured through `add_triples` on the first `--measured-build` triples; the rest is
written with plain pipelined HSET/VADD in the same layout (the build is not what the rest measures).
Each sampling loop stops early (after a minimum sample) once the run passes its wall-clock budget;
the JSON says how many samples each figure has. MiniLM runs on `--threads` torch threads (1 by
default: on a shared 2-core machine a second thread makes it several times slower).

    python bench/factstore.py [--quick] [--triples N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmlm.factstore import FactStore, FactStoreConfig, RedisServer  # noqa: E402
from lmlm.factstore.embed import DIM, get_embedder  # noqa: E402
from lmlm.format import Triple, normalize_key  # noqa: E402

RELATIONS = ["Birth Date", "Birth City", "Nationality", "Occupation", "Employer", "Alma Mater", "Spouse", "Award"]


class RandomVectors:
    """Deterministic random unit vectors per string (build only; see the module docstring)."""

    calls = encoded = 0

    def encode(self, texts, cache=True):
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def raw_fill(store: FactStore, triples: list[Triple], batch: int = 4000) -> None:
    """Write whole new entities as the ADD script would (one value, count 1), in plain pipelines."""
    ms, lay = int(time.time() * 1000), store.layout
    per_part: dict = {}
    for i in range(0, len(triples), batch):
        chunk = triples[i:i + batch]
        ents = list(dict.fromkeys(t.entity for t in chunk))
        vecs = dict(zip(ents, store.embedder.encode([normalize_key(e) for e in ents])))
        pipe = store.r.pipeline(transaction=False)
        for t in chunk:
            E, R = t.key()
            rec = {"e": t.entity, "r": t.relation, "v": [[t.value, 1, ms, ms, ["bench"], []]]}
            pipe.hset(lay.of(E).entity(E), R, json.dumps(rec))
        for e, v in vecs.items():
            E = normalize_key(e)
            ks = lay.of(E)
            pipe.execute_command("VADD", ks.entity_vectors, "FP32", v.astype(np.float32).tobytes(), E, "Q8")
            per_part[ks.stats] = per_part.get(ks.stats, 0) + 1
        pipe.execute()
    n_ent = len({t.entity for t in triples})
    for key, ents in per_part.items():
        share = ents / max(n_ent, 1)
        store.r.hincrby(key, "entities", ents)
        for f in ("triples", "keys", "mentions"):
            store.r.hincrby(key, f, round(len(triples) * share))


def pct(xs, q):
    return round(float(np.percentile(np.array(xs) * 1000, q)), 4)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k triples, fewer queries")
    ap.add_argument("--triples", type=int, default=None)
    ap.add_argument("--measured-build", type=int, default=None, help="triples built through add_triples")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the sampling loops")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for MiniLM")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    n = args.triples or (100_000 if args.quick else 1_000_000)
    n_q = 200 if args.quick else 2000
    rng = random.Random(0)
    n_ent = n // len(RELATIONS)
    names = [f"person{i:07d} {rng.choice(['alder', 'brook', 'corin', 'dell'])}{i % 97}" for i in range(n_ent)]
    triples = [Triple(e, r, f"{r} value {i}") for i, e in enumerate(names) for r in RELATIONS]
    res = {"triples": len(triples), "entities": n_ent, "quick": args.quick,
           "vectors": "random unit vectors for the build; real MiniLM for every query"}
    t_all = time.perf_counter()
    deadline = t_all + (args.budget_s or (45.0 if args.quick else 1e9))

    def sampling(xs, least):
        """xs, cut short once past the deadline (but never below `least` items)."""
        for k, x in enumerate(xs):
            if k >= least and time.perf_counter() > deadline:
                return
            yield x

    with RedisServer() as server:
        cfg = FactStoreConfig(url=server.url, key_index=False, write_batch=2000)
        builder = FactStore.open(cfg, embedder=RandomVectors())
        n_build = min(len(triples), args.measured_build or (8_000 if args.quick else 100_000))
        n_build -= n_build % len(RELATIONS)  # whole entities, so the raw writes never share a hash
        t = time.perf_counter()
        builder.add_triples(triples[:n_build], annotator="bench")
        res["build_triples_per_s"] = round(n_build / (time.perf_counter() - t))
        res["build_measured_triples"] = n_build
        t = time.perf_counter()
        raw_fill(builder, triples[n_build:])
        res["raw_fill_triples_per_s"] = round((len(triples) - n_build) / max(time.perf_counter() - t, 1e-9))
        s = builder.stats()
        res["used_memory_bytes_per_triple"] = round(s["used_memory"] / len(triples), 1)
        res["vector_bytes_per_triple"] = round(s["vector_bytes"] / len(triples), 1)
        res["vector_bytes_per_entity"] = round(s["vector_bytes"] / n_ent, 1)
        res["flat_bytes_per_triple"] = DIM * 4  # the reference indexes every key as float32
        res["vector_vs_flat_memory"] = round(res["vector_bytes_per_triple"] / res["flat_bytes_per_triple"], 4)

        emb = get_embedder()
        store = FactStore.open(cfg, embedder=emb)
        sample = rng.sample(triples, n_q)
        # exact, single: the store against a raw HGET of the same key
        raw, ex = [], []
        for tr in sampling(sample, 50):
            E, R = tr.key()
            key = store.layout.of(E).entity(E)
            t = time.perf_counter(); store.r.hget(key, R); raw.append(time.perf_counter() - t)
            t = time.perf_counter(); a = store.lookup(tr.entity, tr.relation); ex.append(time.perf_counter() - t)
            assert a.value == tr.value
        res["exact_samples"] = len(ex)
        res.update(exact_p50_ms=pct(ex, 50), exact_p99_ms=pct(ex, 99), raw_hget_p50_ms=pct(raw, 50),
                   exact_vs_raw_hget_p50=round(pct(ex, 50) / pct(raw, 50), 2))
        batches = [rng.sample(triples, 64) for _ in range(300 if args.quick else 2000)]
        qb = [[(x.entity, x.relation) for x in b] for b in batches]
        store.lookup_batch(qb[0])
        t, done = time.perf_counter(), 0
        for b in sampling(qb, 10):
            store.lookup_batch(b)
            done += 1
        res["batched_lookups_per_s"] = round(64 * done / (time.perf_counter() - t))
        t = time.perf_counter()
        for b in batches[:done]:
            pipe = store.r.pipeline(transaction=False)
            for x in b:
                E, R = x.key()
                pipe.hget(store.layout.of(E).entity(E), R)
            pipe.execute()
        res["raw_pipeline_lookups_per_s"] = round(64 * done / (time.perf_counter() - t))
        res["batched_rounds"] = done
        res["batched_vs_raw_pipeline"] = round(res["batched_lookups_per_s"] / res["raw_pipeline_lookups_per_s"], 3)

        # fuzzy: one-edit typo in the entity (cold: cache cleared, so each query runs MiniLM)
        n_emb = 64 if args.quick else 256
        emb.encode(["warm up"], cache=False)
        t = time.perf_counter()
        emb.encode([f"warm up string {i}" for i in range(n_emb)], cache=False)
        res["embeddings_per_s"] = round(n_emb / (time.perf_counter() - t))
        flat = np.random.default_rng(0).standard_normal((len(triples), DIM), dtype=np.float32)  # one per key
        flat /= np.linalg.norm(flat, axis=1, keepdims=True)
        fz, fl = [], []
        for tr in sampling(sample[: 30 if args.quick else 500], 8):
            typo = tr.entity[:3] + "x" + tr.entity[4:]
            emb.clear_cache()
            t = time.perf_counter(); store.lookup(typo, tr.relation); fz.append(time.perf_counter() - t)
            emb.clear_cache()
            t = time.perf_counter()
            q = emb.encode([f"{typo} {tr.relation}".lower()])[0]
            top = np.argpartition(-(flat @ q), 5)[:5]
            fl.append(time.perf_counter() - t)
        assert len(top) == 5
        res["fuzzy_samples"] = len(fz)
        res.update(fuzzy_p50_ms=pct(fz, 50), fuzzy_p99_ms=pct(fz, 99), flat_fuzzy_p50_ms=pct(fl, 50),
                   flat_fuzzy_p99_ms=pct(fl, 99), fuzzy_vs_flat_p50=round(pct(fz, 50) / pct(fl, 50), 3))
        # fuzzy relation on an exact entity: label embeddings cached, no model call
        warm = []
        for tr in sampling(sample[: n_q // 2], 20):
            t = time.perf_counter(); store.lookup(tr.entity, "Place of " + tr.relation); warm.append(time.perf_counter() - t)
        res["fuzzy_relation_warm_p50_ms"] = pct(warm, 50)
        store.close()
        builder.close()
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
