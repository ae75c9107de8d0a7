"""The annotation job: corpus shards -> Ray Data actor pool of annotators -> Parquet shards -> fact store.

    run_annotation(AnnotateConfig(input=..., output_dir=...), store=None) -> summary dict

The driver names the input files (a file, directory or glob, on any pyarrow filesystem) and has Ray
tasks cut them into shards of `shard_docs` items, fewer for a small corpus (`plan`; inputs.py: offsets
and counts); a Ray Dataset of those shards goes through `map_batches` over an
`ActorPoolStrategy(size=num_actors)` pool (fractional CPUs per actor, see STACK-NOTES), a shard at a
time. The actor reads its shard, rejects empty / oversized / undecodable documents, splits long ones
(inputs.py), annotates in batches of `batch_size`, validates and converts each output with
`lmlm.format.to_special`, writes the shard and returns one row of counts. The driver holds counts
and shard descriptors, never documents:

    output_dir/annotated/<shard>.parquet   id, doc_id, chunk, source, text, annotated_text (legacy),
                                           special_text, annotator, triples (JSON [[e, r, v], ...])
    output_dir/rejected/<shard>.parquet    id, doc_id, source, reason, detail
    output_dir/stats/<shard>.parquet       id, doc_id, status, reason, lookups, dropped (JSON), words, chars,
                                           worker (host:pid of the actor)
    output_dir/layout.json                 the shard size, fixed by the first run (`plan`)
    output_dir/summary.json                the last run's summary

Resume, per shard: each file appears whole (lmlm.atomicfile) and the stats file is written last, so a
shard with stats is finished and a rerun annotates none of its documents again, and a shard without
is redone (its files replaced). Documents whose annotator call failed (endpoint errors, timeouts) are
not finished: the next run retries them in a new attempt of their shard, `<shard>-r<n>`, which holds
only them (the earlier reject rows stay in rejected/ and stats/). An output directory of the earlier
layout (shards `part-<run>-<n>`) resumes by the ids its stats hold.

Loading: the annotated rows of finished shards are read with Ray Data and written by factstore.bulk's
loader actors under the batch scope "annotated": each document's triples are a unit named by its
content, so a rerun, or a load killed and run again, writes nothing twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

from lmlm.annotate.anchor import anchor_calls
from lmlm.annotate.config import AnnotateConfig
from lmlm.annotate.inputs import plan_shards, read_shard
from lmlm.annotate.registry import annotator_id_for, build_annotator
from lmlm.atomicfile import replacing, write_json
from lmlm.config import from_dict, to_dict
from lmlm.format import to_special
from lmlm.rayinit import init_ray

ANNOTATED, REJECTED, STATS = "annotated", "rejected", "stats"
LEGACY = re.compile(r"part-\d{8}-\d{6}-[0-9a-f]{6}-\d{5}\.parquet")  # shards of the layout before per-shard resume


def annotate_rows(annotator, ids: list[str], texts: list[str]) -> list[dict]:
    """Annotate, validate and convert; one result dict per input (status ok or rejected). A model that
    changed the text around its calls gets its calls anchored in the input (anchor.py)."""
    out = []
    for rid, text, (ann, err) in zip(ids, texts, annotator.annotate_safe(texts)):
        res = {"id": rid, "status": "ok", "reason": "", "annotated_text": "", "special_text": "",
               "lookups": 0, "dropped": "{}", "triples": "[]"}
        if ann is None:
            res.update(status="rejected", reason="annotator_error", detail=err or "")
        elif not ann.strip():
            res.update(status="rejected", reason="empty_output", detail="the annotator returned no text")
        else:
            parsed = to_special(ann)
            dropped = parsed.drop_counts()  # the output's own invalid calls, before anchoring
            anchored = anchor_calls(text, ann)  # the input word for word, plus the output's valid calls
            if anchored is not ann:
                ann, parsed = anchored, to_special(anchored)
            res.update(annotated_text=ann, special_text=parsed.text, lookups=len(parsed.lookups),
                       dropped=json.dumps(dropped),
                       triples=json.dumps([[t.entity, t.relation, t.value] for t in parsed.triples]))
        res.setdefault("detail", "")
        out.append(res)
    return out


# --------------------------------------------------------------------------------------------
# Shard files and resume


def _write_table(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with replacing(path) as tmp:  # a shard appears whole or not at all
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def attempt_name(shard: str, n: int) -> str:
    return shard if n == 0 else f"{shard}-r{n}"


def finished_attempts(out: Path, shard: str) -> list[str]:
    """The attempts of `shard` that finished (a stats file), in order: shard, shard-r1, ..."""
    n = 0
    while (out / STATS / f"{attempt_name(shard, n)}.parquet").is_file():
        n += 1
    return [attempt_name(shard, i) for i in range(n)]


def finished_ids(stats_files: Iterable[Path]) -> set[str]:
    """Ids these stats files finished; a document whose annotator call failed is not finished."""
    import pyarrow.parquet as pq

    done = set()
    for p in stats_files:
        t = pq.read_table(p, columns=["id", "reason"])
        done.update(i for i, r in zip(t["id"].to_pylist(), t["reason"].to_pylist()) if r != "annotator_error")
    return done


def write_shard(out: Path, name: str, results: list[dict], rejects: list[dict], annotator_id: str,
                worker: str) -> None:
    ok = [{k: r[k] for k in ("id", "doc_id", "chunk", "source", "text", "annotated_text", "special_text",
                             "triples")} | {"annotator": annotator_id} for r in results if r["status"] == "ok"]
    bad = rejects + [{"id": r["id"], "doc_id": r["doc_id"], "source": r["source"], "reason": r["reason"],
                      "detail": r.get("detail", "")} for r in results if r["status"] != "ok"]
    stats = [{"id": r["id"], "doc_id": r["doc_id"], "status": r["status"], "reason": r["reason"],
              "lookups": r["lookups"], "dropped": r["dropped"], "words": len(r["text"].split()),
              "chars": len(r["text"]), "worker": worker} for r in results]
    stats += [{"id": r["id"], "doc_id": r["doc_id"], "status": "rejected", "reason": r["reason"], "lookups": 0,
               "dropped": "{}", "words": 0, "chars": 0, "worker": worker} for r in rejects]
    for sub, table in ((ANNOTATED, ok), (REJECTED, bad)):
        if table:
            _write_table(table, out / sub / f"{name}.parquet")
        else:  # what a killed try of this attempt left
            (out / sub / f"{name}.parquet").unlink(missing_ok=True)
    _write_table(stats, out / STATS / f"{name}.parquet")  # last: marks the shard finished


def plan(cfg: AnnotateConfig, out: Path, log=print):
    """(filesystem, shards) of `cfg.input`, cut in shards of the size `out` was started with
    (layout.json): shards are the unit of resume, so every run must cut the same ones. A first run
    that would give fewer than 4 shards per actor cuts smaller ones (a shard is the pool's unit of
    work), unless `cfg.limit` makes it a trial."""
    layout = out / "layout.json"
    if layout.is_file():
        fixed = json.loads(layout.read_text())
        if fixed["asked"] != cfg.shard_docs:
            log(f"annotate: {out} holds shards of {fixed['shard_docs']} items; "
                f"shard_docs={cfg.shard_docs} does not apply")
        return plan_shards(cfg, fixed["shard_docs"])
    filesystem, shards = plan_shards(cfg, cfg.shard_docs)
    size = cfg.shard_docs
    if cfg.limit is None:
        size = min(size, max(1, -(-sum(s["count"] for s in shards) // (4 * cfg.num_actors))))
        if size < cfg.shard_docs:
            filesystem, shards = plan_shards(cfg, size)
    write_json(layout, {"shard_docs": size, "asked": cfg.shard_docs})
    return filesystem, shards


# --------------------------------------------------------------------------------------------
# The actor: one annotator per actor, reused for every shard it is given


class AnnotateActor:
    """Ray Data callable class: reads, annotates and writes whole shards; returns a row of counts each."""

    def __init__(self, cfg: dict, annotator_id: str, filesystem):
        self.cfg = from_dict(AnnotateConfig, cfg)
        self.out, self.fs, self.annotator_id = Path(self.cfg.output_dir), filesystem, annotator_id
        self.annotator = build_annotator(self.cfg, num_threads=self.cfg.threads_per_actor)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        self.legacy = finished_ids(p for p in sorted((self.out / STATS).glob("part-*")) if LEGACY.fullmatch(p.name))

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist([self.run_shard(shard) for shard in batch.to_pylist()])

    def run_shard(self, shard: dict) -> dict:
        before = finished_attempts(self.out, shard["shard"])
        done = finished_ids(self.out / STATS / f"{a}.parquet" for a in before) | self.legacy
        rows, rejects = read_shard(self.fs, shard, self.cfg.max_doc_bytes, self.cfg.chunk_words)
        todo = [r for r in rows if r["id"] not in done]
        rejects = [r for r in rejects if r["id"] not in done]
        results = []
        for b in range(0, len(todo), self.cfg.batch_size):
            batch = todo[b:b + self.cfg.batch_size]
            res = annotate_rows(self.annotator, [r["id"] for r in batch], [r["text"] for r in batch])
            results += [row | r for row, r in zip(batch, res)]
        name = attempt_name(shard["shard"], len(before)) if results or rejects else ""
        if name:
            write_shard(self.out, name, results, rejects, self.annotator_id, self.worker)
        ok = [r for r in results if r["status"] == "ok"]
        dropped: Counter = Counter()
        for r in ok:
            dropped.update(json.loads(r["dropped"]))
        reasons = Counter(r["reason"] for r in [*rejects, *results] if r.get("status") != "ok")
        return {"shard": name, "worker": self.worker, "todo": len(todo), "finished": len(rows) - len(todo),
                "input_rejects": len(rejects), "annotated": len(ok), "lookups": sum(r["lookups"] for r in ok),
                "reasons": json.dumps(reasons), "dropped": json.dumps(dropped)}


# --------------------------------------------------------------------------------------------
# The job


def build_dataset(cfg: AnnotateConfig, shards: list[dict], filesystem, annotator_id: str):
    """The Ray Dataset of per-shard count rows (lazy): shards -> actor pool of AnnotateActor."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = cfg.progress
    ds = ray.data.from_items(shards, override_num_blocks=min(len(shards), 4096))
    # one shard in flight per actor: a shard is seconds of work, and the pool stays balanced
    return ds.map_batches(AnnotateActor, batch_size=1, batch_format="pyarrow",
                          fn_constructor_kwargs={"cfg": to_dict(cfg), "annotator_id": annotator_id,
                                                 "filesystem": filesystem},
                          compute=ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=1),
                          num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None)


def load_annotated(out: Path, store, workers: int = 2, cpus_per_worker: float = 0.5) -> dict:
    """Load the triples of every finished annotated shard of `out` into `store` (an open FactStore)
    with factstore.bulk's loader actors, which connect to `store.connection_url`; returns its counts
    {documents, triples, written, skipped, forced, replayed, invalid}. A document already loaded
    writes nothing."""
    import ray

    from lmlm.factstore.bulk import COUNTS, load_dataset

    files = [str(out / ANNOTATED / p.name) for p in sorted((out / STATS).glob("*.parquet"))
             if (out / ANNOTATED / p.name).is_file()]
    if not files:
        return dict.fromkeys(COUNTS, 0)
    # read_parquet gives small files one block, and a block goes to one loader: blocks of a loader's batch
    ds = ray.data.read_parquet(files).select_columns(["id", "triples", "annotator"])
    return load_dataset(ds.repartition(target_num_rows_per_block=256),
                        dataclasses.replace(store.cfg, url=store.connection_url), batch_id="annotated",
                        workers=workers, batch_docs=256, cpus_per_worker=cpus_per_worker)


def run_annotation(cfg: AnnotateConfig, store=None, log=print) -> dict:
    """Annotate `cfg.input` into `cfg.output_dir` and load the triples into the fact store.

    `store`: an open FactStore to load into; None opens `FactStore.open(cfg.store)` when
    `cfg.load_store` (and closes it at the end). Re-running skips finished shards and loads
    no triple twice. Returns the summary dict (also written to output_dir/summary.json).
    """
    t0 = time.time()
    if cfg.num_actors < 1 or cfg.batch_size < 1 or cfg.shard_docs < 1 or cfg.chunk_words < 1:
        raise ValueError("annotate: num_actors, batch_size, shard_docs and chunk_words must be >= 1")
    if store is None and cfg.load_store and not cfg.store.resolved_url() and not cfg.store.data_dir:
        raise ValueError("annotate: load_store needs a persistent fact store (set store.url or LMLM_REDIS_URL, "
                         "or store.data_dir), or pass a store, or set load_store=false; a throw-away server "
                         "would lose the triples once the run ends")
    out = Path(cfg.output_dir)
    for d in (ANNOTATED, REJECTED, STATS):
        (out / d).mkdir(parents=True, exist_ok=True)
    annotator_id = annotator_id_for(cfg)
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    filesystem, shards = plan(cfg, out, log)
    log(f"annotate: {sum(s['count'] for s in shards)} input items in {len(shards)} shards; what is not finished "
        f"goes to {annotator_id} on {cfg.num_actors} actors")

    n = Counter()
    reasons, dropped, workers = Counter(), Counter(), Counter()
    t_annot, t_first = time.time(), None
    rows = build_dataset(cfg, shards, filesystem, annotator_id).iter_rows() if shards else ()
    for i, c in enumerate(rows, 1):
        t_first = t_first or time.time() - t_annot
        n.update({k: c[k] for k in ("todo", "finished", "input_rejects", "annotated", "lookups")})
        n["shards_written"] += bool(c["shard"])
        reasons.update(json.loads(c["reasons"]))
        dropped.update(json.loads(c["dropped"]))
        if c["todo"]:
            workers[c["worker"]] += c["todo"]
        if c["shard"]:
            elapsed = time.time() - t_annot
            log(f"annotate: shard {c['shard']} written ({i}/{len(shards)} shards), {n['todo']} documents annotated, "
                f"{n['todo'] / max(elapsed, 1e-9):.0f} docs/s, elapsed {elapsed:.0f} s, "
                f"eta {elapsed / i * (len(shards) - i):.0f} s")
    t_annot = time.time() - t_annot

    loaded = {}
    if store is not None or cfg.load_store:
        from lmlm.factstore import FactStore

        own = store is None
        store = FactStore.open(cfg.store) if own else store
        try:
            loaded = load_annotated(out, store, workers=cfg.num_actors, cpus_per_worker=cfg.num_cpus_per_actor)
        finally:
            if own:
                store.close()
        log(f"annotate: loaded {loaded['written']} triples into the fact store ({loaded['documents']} documents)")
    summary = {
        "documents": n["todo"] + n["input_rejects"],
        "annotated": n["annotated"], "skipped_finished": n["finished"], "lookups": n["lookups"],
        "rejected": sum(reasons.values()), "rejects_by_reason": dict(sorted(reasons.items())),
        "dropped_calls_by_reason": dict(sorted(dropped.items())), "triples_loaded": loaded.get("written", 0),
        "triples_invalid": loaded.get("invalid", 0), "annotator": annotator_id, "num_actors": cfg.num_actors,
        "docs_per_worker": sorted(workers.values(), reverse=True),
        "seconds": round(time.time() - t0, 3), "annotate_seconds": round(t_annot, 3),
        "first_result_s": round(t_first or 0.0, 3),
        "docs_per_s": round(n["todo"] / t_annot, 2) if n["todo"] and t_annot > 0 else 0.0,
        "output_dir": str(out), "shards": len(shards), "shards_written": n["shards_written"],
    }
    write_json(out / "summary.json", summary)
    log("annotate: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("output_dir",)))
    return summary


def annotate_loop(cfg: AnnotateConfig, texts: list[str]) -> list[dict]:
    """The same annotator and validation in a plain single-process loop (the benchmark baseline)."""
    annotator = build_annotator(cfg, num_threads=cfg.threads_per_actor)
    out: list[dict] = []
    for b in range(0, len(texts), cfg.batch_size):
        chunk = texts[b:b + cfg.batch_size]
        out += annotate_rows(annotator, [str(i) for i in range(b, b + len(chunk))], chunk)
    return out
