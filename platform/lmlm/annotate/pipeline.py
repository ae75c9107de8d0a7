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

The files and per-shard resume are shards.py's; an `openai` annotator runs in Ray Data's HTTP request
processor instead of the actor pool (processor.py), over the same shards and files.

Loading: the annotated rows of finished shards are read with Ray Data and written by factstore.bulk's
loader actors under the batch scope "annotated": each document's triples are a unit named by its
content, so a rerun, or a load killed and run again, writes nothing twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter

from lmlm.annotate.config import AnnotateConfig
from lmlm.annotate.inputs import plan_shards
from lmlm.annotate.processor import processor_dataset, uses_processor
from lmlm.annotate.registry import annotator_id_for, build_annotator, kind_of
from lmlm.annotate.shards import ANNOTATED, REJECTED, STATS, annotate_rows, close_shard, open_shard
from lmlm.config import from_dict, to_dict
from lmlm.rayinit import init_ray
from lmlm.storage import Storage


def plan(cfg: AnnotateConfig, out: Storage, log=print):
    """(filesystem, shards) of `cfg.input`, cut in shards of the size `out` was started with
    (layout.json): shards are the unit of resume, so every run must cut the same ones. A first run
    that would give fewer than 4 shards per actor cuts smaller ones (a shard is the pool's unit of
    work), unless `cfg.limit` makes it a trial."""
    if out.is_file("layout.json"):
        fixed = json.loads(out.read_text("layout.json"))
        if fixed["asked"] != cfg.shard_docs:
            log(f"annotate: {out.uri} holds shards of {fixed['shard_docs']} items; "
                f"shard_docs={cfg.shard_docs} does not apply")
        return plan_shards(cfg, fixed["shard_docs"])
    filesystem, shards = plan_shards(cfg, cfg.shard_docs)
    size = cfg.shard_docs
    if cfg.limit is None:
        size = min(size, max(1, -(-sum(s["count"] for s in shards) // (4 * cfg.num_actors))))
        if size < cfg.shard_docs:
            filesystem, shards = plan_shards(cfg, size)
    out.write_text("layout.json", json.dumps({"shard_docs": size, "asked": cfg.shard_docs}))
    return filesystem, shards


# --------------------------------------------------------------------------------------------
# The actor: one annotator per actor, reused for every shard it is given


class AnnotateActor:
    """Ray Data callable class: reads, annotates and writes whole shards; returns a row of counts each."""

    def __init__(self, cfg: dict, annotator_id: str, filesystem):
        self.cfg = from_dict(AnnotateConfig, cfg)
        self.out, self.fs, self.annotator_id = Storage(self.cfg.output_dir), filesystem, annotator_id
        self.annotator = build_annotator(self.cfg, num_threads=self.cfg.threads_per_actor)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist([self.run_shard(shard) for shard in batch.to_pylist()])

    def run_shard(self, shard: dict) -> dict:
        name, finished, todo, rejects = open_shard(self.cfg, self.out, self.fs, shard)
        results, busy = [], 0.0
        for b in range(0, len(todo), self.cfg.batch_size):
            batch = todo[b:b + self.cfg.batch_size]
            t = time.perf_counter()
            res = annotate_rows(self.annotator, [r["id"] for r in batch], [r["text"] for r in batch])
            busy += time.perf_counter() - t
            results += [row | r for row, r in zip(batch, res)]
        return close_shard(self.out, name, results, rejects, finished, self.annotator_id, self.worker,
                           Counter({self.worker: len(results)}), annotator_seconds=busy)


# --------------------------------------------------------------------------------------------
# The job


def build_dataset(cfg: AnnotateConfig, shards: list[dict], filesystem, annotator_id: str):
    """The Ray Dataset of per-shard count rows (lazy): shards -> actor pool of AnnotateActor, or
    a ray.data.llm processor for an `openai` annotator, or with vllm.enabled (processor.py)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = cfg.progress
    # shard descriptors (file, offset, count), never documents: the workers read the documents
    ds = ray.data.from_items(shards, override_num_blocks=min(len(shards), 4096))
    kind = kind_of(cfg)
    if uses_processor(cfg, kind):
        return processor_dataset(cfg, ds, filesystem, annotator_id, kind)
    # one shard in flight per actor: a shard is seconds of work, and the pool stays balanced
    return ds.map_batches(AnnotateActor, batch_size=1, batch_format="pyarrow",
                          fn_constructor_kwargs={"cfg": to_dict(cfg), "annotator_id": annotator_id,
                                                 "filesystem": filesystem},
                          compute=ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=1),
                          num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None)


def load_annotated(output_dir: str, store, workers: int = 2, cpus_per_worker: float = 0.5) -> dict:
    """Load the triples of every finished annotated shard of `output_dir` (a folder or a URI) into
    `store` (an open FactStore)
    with factstore.bulk's loader actors, which connect to `store.connection_url`; returns its counts
    {documents, triples, written, skipped, forced, replayed, invalid}. A document already loaded
    writes nothing."""
    from lmlm.factstore.bulk import COUNTS, load_dataset
    from lmlm.storage import read_parquet

    out = Storage(output_dir)
    annotated = set(out.listdir(ANNOTATED))
    files = [out.path(f"{ANNOTATED}/{name}") for name in out.listdir(STATS) if name in annotated]
    if not files:
        return dict.fromkeys(COUNTS, 0)
    # read_parquet gives small files one block, and a block goes to one loader: blocks of a loader's batch
    ds = read_parquet(files, filesystem=out.fs, columns=["id", "triples", "annotator"])
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
    out = Storage(cfg.output_dir)
    cfg = dataclasses.replace(cfg, output_dir=out.uri)  # what every actor opens: absolute, or a URI
    for d in (ANNOTATED, REJECTED, STATS):
        out.fs.create_dir(out.path(d), recursive=True)
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
        n.update({k: c[k] for k in ("todo", "finished", "input_rejects", "annotated", "lookups", "annotator_seconds")})
        n["shards_written"] += bool(c["shard"])
        reasons.update(json.loads(c["reasons"]))
        dropped.update(json.loads(c["dropped"]))
        workers.update(json.loads(c["workers"]))
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
            loaded = load_annotated(out.uri, store, workers=cfg.num_actors, cpus_per_worker=cfg.num_cpus_per_actor)
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
        "docs_per_worker": sorted((v for v in workers.values() if v), reverse=True),
        "seconds": round(time.time() - t0, 3), "annotate_seconds": round(t_annot, 3),
        "first_result_s": round(t_first or 0.0, 3), "annotator_seconds": round(n["annotator_seconds"], 3),
        # the actors' share of the run spent annotating (0 where a processor annotates): what is left is
        # reading and writing shards, scheduling and starting the actors
        "annotator_busy": round(n["annotator_seconds"] / (t_annot * cfg.num_actors), 3) if t_annot > 0 else 0.0,
        "docs_per_s": round(n["todo"] / t_annot, 2) if n["todo"] and t_annot > 0 else 0.0,
        "output_dir": out.uri, "shards": len(shards), "shards_written": n["shards_written"],
    }
    out.write_text("summary.json", json.dumps(summary, ensure_ascii=False, indent=1))
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
