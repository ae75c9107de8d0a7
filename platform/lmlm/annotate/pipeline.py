"""The annotation job: corpus -> Ray Data actor pool of annotators -> Parquet shards -> fact store.

    run_annotation(AnnotateConfig(input=..., output_dir=...), store=None) -> summary dict

Steps: read (reference JSON, JSONL, Parquet) -> reject empty / oversized / undecodable documents ->
split documents longer than `chunk_words` words at word boundaries (inputs.py) -> `map_batches` over an
`ActorPoolStrategy(size=num_actors)` pool (fractional CPUs per actor, see STACK-NOTES) -> validate
and convert each output with `lmlm.format.to_special` -> the driver streams results into shards:

    output_dir/annotated/<shard>.parquet   id, doc_id, chunk, source, text, annotated_text (legacy),
                                           special_text, annotator, triples (JSON [[e, r, v], ...])
    output_dir/rejected/<shard>.parquet    id, doc_id, source, reason, detail
    output_dir/stats/<shard>.parquet       id, doc_id, status, reason, lookups, dropped (JSON), words, chars,
                                           worker (host:pid of the actor)
    output_dir/loaded/<shard>.json         what loading the shard into the fact store wrote (informational)
    output_dir/summary.json                the last run's summary

Resume: a stats shard is written last, so the ids in stats/ are the finished documents (chunks);
a re-run skips them, except documents whose annotator call failed (endpoint errors, timeouts),
which are tried again (their earlier reject rows stay in rejected/ and stats/). A shard's triples are loaded exactly
once: its chunks carry batch ids whose markers Redis writes with the triples (an interrupted load is finished by
the next run), so no triple is counted twice.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path

from lmlm.annotate.anchor import anchor_calls
from lmlm.annotate.config import AnnotateConfig
from lmlm.annotate.inputs import read_inputs
from lmlm.annotate.registry import annotator_id_for, build_annotator
from lmlm.atomicfile import replacing, write_json
from lmlm.config import from_dict, to_dict
from lmlm.format import Triple, to_special

ANNOTATED, REJECTED, STATS, LOADED = "annotated", "rejected", "stats", "loaded"


# --------------------------------------------------------------------------------------------
# The actor: one annotator per actor, reused across batches


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


class AnnotateActor:
    """Ray Data callable class: builds the annotator once per actor."""

    def __init__(self, cfg: dict):
        self.cfg = from_dict(AnnotateConfig, cfg)
        self.annotator = build_annotator(self.cfg, num_threads=self.cfg.threads_per_actor)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch):
        import pyarrow as pa

        res = annotate_rows(self.annotator, batch.column("id").to_pylist(), batch.column("text").to_pylist())
        cols = {k: [r[k] for r in res] for k in res[0]} if res else {}
        for k in ("doc_id", "chunk", "source", "text"):
            cols[k] = batch.column(k).to_pylist()
        cols["worker"] = [self.worker] * len(res)
        return pa.table(cols)


# --------------------------------------------------------------------------------------------
# Output shards, resume and loading


def _write_table(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with replacing(path) as tmp:  # a shard appears whole or not at all
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def finished_ids(out: Path) -> set[str]:
    """Ids done by earlier runs; documents whose annotator call failed are not done (a re-run retries them)."""
    import pyarrow.parquet as pq

    done = set()
    for p in sorted((out / STATS).glob("*.parquet")):
        for row in pq.read_table(p, columns=["id", "reason"]).to_pylist():
            if row["reason"] != "annotator_error":
                done.add(row["id"])
    return done


def write_shard(out: Path, name: str, results: list[dict], rejects: list[dict], annotator_id: str) -> None:
    ok = [{k: r[k] for k in ("id", "doc_id", "chunk", "source", "text", "annotated_text", "special_text",
                             "triples")} | {"annotator": annotator_id} for r in results if r["status"] == "ok"]
    bad = rejects + [{"id": r["id"], "doc_id": r["doc_id"], "source": r["source"], "reason": r["reason"],
                      "detail": r.get("detail", "")} for r in results if r["status"] != "ok"]
    stats = [{"id": r["id"], "doc_id": r["doc_id"], "status": r["status"], "reason": r["reason"],
              "lookups": r["lookups"], "dropped": r["dropped"], "words": len(r["text"].split()),
              "chars": len(r["text"]), "worker": r.get("worker", "")} for r in results]
    stats += [{"id": r["id"], "doc_id": r["doc_id"], "status": "rejected", "reason": r["reason"], "lookups": 0,
               "dropped": "{}", "words": 0, "chars": 0, "worker": "driver"} for r in rejects]
    if ok:
        _write_table(ok, out / ANNOTATED / f"{name}.parquet")
    if bad:
        _write_table(bad, out / REJECTED / f"{name}.parquet")
    _write_table(stats, out / STATS / f"{name}.parquet")  # last: marks the shard's documents finished


def shard_triples(shard: Path) -> tuple[list[Triple], list[str], str]:
    """The triples of one annotated shard, the chunk id each came from, and the shard's annotator."""
    import pyarrow.parquet as pq

    triples, ids, annotator = [], [], ""
    for row in pq.read_table(shard, columns=["id", "triples", "annotator"]).to_pylist():
        annotator = annotator or row["annotator"]
        for e, r, v in json.loads(row["triples"]):
            triples.append(Triple(e, r, v))
            ids.append(row["id"])
    return triples, ids, annotator


def load_pending(out: Path, store, annotator_id: str, log=print, force: bool = False) -> tuple[int, int]:
    """Load the triples of every annotated shard exactly once; returns (triples loaded now, invalid).

    Exactly once by content (FactStore.load): each document's triples are a unit whose marker lives
    in Redis, written by the same script as the triples, so a load killed at any point and run again
    counts each triple once, a document loaded before (from this shard or any other) writes nothing,
    and a new, empty store gets every shard. Invalid triples are left out and counted. Facts deleted
    from the store (tombstones) are skipped unless `force`. loaded/<shard>.json only records what a
    run wrote. (`annotator_id` is unused: each shard names its annotator.)
    """
    loaded = invalid = 0
    for stats in sorted((out / STATS).glob("*.parquet")):
        shard = out / ANNOTATED / stats.name
        if not shard.exists():
            continue
        triples, doc_ids, annotator = shard_triples(shard)
        res = store.load(triples, doc_ids, annotator=annotator, batch_id="annotated", force=force,
                         on_invalid="skip")
        invalid += res.invalid
        loaded += res.written
        if res.written or res.skipped:
            write_json(out / LOADED / f"{stats.stem}.json",
                       {"triples": res.written, "skipped_deleted": res.skipped, "forced": res.forced, "at": time.time()})
    if loaded:
        log(f"annotate: loaded {loaded} triples into the fact store")
    return loaded, invalid


# --------------------------------------------------------------------------------------------
# The job


def _ensure_ray(cfg: AnnotateConfig):
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        kw = {"num_cpus": cfg.ray_num_cpus} if cfg.ray_address is None and cfg.ray_num_cpus else {}
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False, **kw)
    return ray


def build_dataset(cfg: AnnotateConfig, rows: list[dict]):
    """The Ray Dataset of annotation results (lazy): rows -> actor pool of AnnotateActor."""
    ray = _ensure_ray(cfg)
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = cfg.progress
    blocks = max(1, min(len(rows), max(cfg.num_actors * 4, -(-len(rows) // max(1, cfg.batch_size)))))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    return ds.map_batches(AnnotateActor, fn_constructor_kwargs={"cfg": to_dict(cfg)}, batch_size=cfg.batch_size,
                          batch_format="pyarrow", compute=ActorPoolStrategy(size=cfg.num_actors),
                          num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None)


def run_annotation(cfg: AnnotateConfig, store=None, log=print) -> dict:
    """Annotate `cfg.input` into `cfg.output_dir` and load the triples into the fact store.

    `store`: an open FactStore to load into; None opens `FactStore.open(cfg.store)` when
    `cfg.load_store` (and closes it at the end). Re-running skips finished documents and loads
    no triple twice. Returns the summary dict (also written to output_dir/summary.json).
    """
    t0 = time.time()
    if cfg.num_actors < 1 or cfg.batch_size < 1 or cfg.shard_docs < 1 or cfg.chunk_words < 1:
        raise ValueError("annotate: num_actors, batch_size, shard_docs and chunk_words must be >= 1")
    if store is None and cfg.load_store and not cfg.store.resolved_url() and not cfg.store.data_dir:
        raise ValueError("annotate: load_store needs a persistent fact store (set store.url or LMLM_REDIS_URL, "
                         "or store.data_dir), or pass a store, or set load_store=false; a throw-away server "
                         "would lose the triples while the loaded/ markers say they are in")
    out = Path(cfg.output_dir)
    for d in (ANNOTATED, REJECTED, STATS, LOADED):
        (out / d).mkdir(parents=True, exist_ok=True)
    annotator_id = annotator_id_for(cfg)
    rows, rejects = read_inputs(cfg)
    done = finished_ids(out)
    todo = [r for r in rows if r["id"] not in done]
    rejects = [r for r in rejects if r["id"] not in done]
    log(f"annotate: {len(rows)} documents/chunks read, {len(rows) - len(todo)} already finished, "
        f"{len(todo)} to annotate with {annotator_id} on {cfg.num_actors} actors; {len(rejects)} rejected inputs")

    n_input_rejects = len(rejects)
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    reasons, dropped = Counter(r["reason"] for r in rejects), Counter()
    n_ok = n_lookups = shard_no = 0
    workers: Counter = Counter()
    buf: list[dict] = []

    n_done = 0

    def flush(pending_rejects: list[dict]) -> None:
        nonlocal shard_no, n_done
        if buf or pending_rejects:
            write_shard(out, f"part-{run}-{shard_no:05d}", buf, pending_rejects, annotator_id)
            shard_no += 1
            n_done += len(buf)
            buf.clear()
            elapsed = time.time() - t_annot
            eta = elapsed / max(n_done, 1) * (len(todo) - n_done)
            log(f"annotate: shard {shard_no} written, {n_done}/{len(todo)} documents, "
                f"{n_done / max(elapsed, 1e-9):.0f} docs/s, elapsed {elapsed:.0f} s, eta {eta:.0f} s")

    t_annot, t_first = time.time(), None
    if todo:
        for batch in build_dataset(cfg, todo).iter_batches(batch_size=None, batch_format="pyarrow"):
            t_first = t_first or time.time() - t_annot
            for r in batch.to_pylist():
                buf.append(r)
                workers[r["worker"]] += 1
                if r["status"] == "ok":
                    n_ok += 1
                    n_lookups += r["lookups"]
                    dropped.update(json.loads(r["dropped"]))
                else:
                    reasons[r["reason"]] += 1
                if len(buf) >= cfg.shard_docs:
                    flush(rejects)
                    rejects = []
    flush(rejects)
    t_annot = time.time() - t_annot

    loaded = invalid = 0
    if store is not None or cfg.load_store:
        from lmlm.factstore import FactStore

        own = store is None
        store = FactStore.open(cfg.store) if own else store
        try:
            loaded, invalid = load_pending(out, store, annotator_id, log=log)
        finally:
            if own:
                store.close()
    seconds = time.time() - t0
    summary = {
        "documents": len(todo) + n_input_rejects,
        "annotated": n_ok, "skipped_finished": len(rows) - len(todo), "lookups": n_lookups,
        "rejected": sum(reasons.values()), "rejects_by_reason": dict(sorted(reasons.items())),
        "dropped_calls_by_reason": dict(sorted(dropped.items())), "triples_loaded": loaded,
        "triples_invalid": invalid, "annotator": annotator_id, "num_actors": cfg.num_actors,
        "docs_per_worker": sorted(workers.values(), reverse=True),
        "seconds": round(seconds, 3), "annotate_seconds": round(t_annot, 3),
        "first_result_s": round(t_first or 0.0, 3),
        "docs_per_s": round(len(todo) / t_annot, 2) if todo and t_annot > 0 else 0.0,
        "output_dir": str(out), "shards_written": shard_no,
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
