"""The files of an annotation run and their per-shard resume; one document's result.

    annotation_result(id, text, output, failure) -> result row   (validated, converted, anchored)
    open_shard(cfg, out, filesystem, shard) -> (attempt, finished, rows to do, rejected inputs)
    close_shard(out, attempt, results, rejects, ...) -> row of counts  (writes the attempt whole)

    output_dir/annotated/<shard>.parquet   id, doc_id, chunk, source, text, annotated_text (legacy),
                                           special_text, annotator, triples (JSON [[e, r, v], ...])
    output_dir/rejected/<shard>.parquet    id, doc_id, source, reason, detail
    output_dir/stats/<shard>.parquet       id, doc_id, status, reason, lookups, dropped (JSON), words, chars,
                                           worker (host:pid of the actor)
    output_dir/layout.json                 the shard size, fixed by the first run (`plan`)
    output_dir/summary.json                the last run's summary

`output_dir` is a folder or a URI on any pyarrow filesystem (lmlm.storage): every actor, on any node,
writes its shards there. Resume, per shard: each file appears whole (a local file is renamed into
place, an object store's PUT is whole) and the stats file is written last, so a
shard with stats is finished and a rerun annotates none of its documents again, and a shard without
is redone (its files replaced). Documents whose annotator call failed (endpoint errors, timeouts) are
not finished: the next run retries them in a new attempt of their shard, `<shard>-r<n>`, which holds
only them (the earlier reject rows stay in rejected/ and stats/). An output directory of the earlier
layout (shards `part-<run>-<n>`) resumes by the ids its stats hold.

"""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Iterable

from lmlm.annotate.anchor import anchor_calls
from lmlm.annotate.config import AnnotateConfig
from lmlm.annotate.inputs import read_shard
from lmlm.format import to_special
from lmlm.storage import Storage

ANNOTATED, REJECTED, STATS = "annotated", "rejected", "stats"
LEGACY = re.compile(r"part-\d{8}-\d{6}-[0-9a-f]{6}-\d{5}\.parquet")  # shards of the layout before per-shard resume


def annotation_result(rid: str, text: str, ann: str | None, err: str | None) -> dict:
    """One document's result (status ok or rejected) from the annotator's output or failure reason:
    validated and converted. A model that changed the text around its calls gets its calls anchored
    in the input (anchor.py)."""
    res = {"id": rid, "status": "ok", "reason": "", "detail": "", "annotated_text": "", "special_text": "",
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
    return res


def annotate_rows(annotator, ids: list[str], texts: list[str]) -> list[dict]:
    """Annotate, validate and convert; one result dict per input (status ok or rejected)."""
    return [annotation_result(rid, text, ann, err)
            for rid, text, (ann, err) in zip(ids, texts, annotator.annotate_safe(texts))]




def _write_table(rows: list[dict], out: Storage, rel: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with out.writing(rel) as path:  # a shard appears whole or not at all
        pq.write_table(pa.Table.from_pylist(rows), path, filesystem=out.fs)


def attempt_name(shard: str, n: int) -> str:
    return shard if n == 0 else f"{shard}-r{n}"


def finished_attempts(out: Storage, shard: str) -> list[str]:
    """The attempts of `shard` that finished (a stats file), in order: shard, shard-r1, ..."""
    n = 0
    while out.is_file(f"{STATS}/{attempt_name(shard, n)}.parquet"):
        n += 1
    return [attempt_name(shard, i) for i in range(n)]


def finished_ids(out: Storage, stats_files: Iterable[str]) -> set[str]:
    """Ids these stats files (names in stats/) finished; a document whose annotator call failed is not finished."""
    import pyarrow.parquet as pq

    done = set()
    for name in stats_files:
        t = pq.read_table(out.path(f"{STATS}/{name}"), columns=["id", "reason"], filesystem=out.fs)
        done.update(i for i, r in zip(t["id"].to_pylist(), t["reason"].to_pylist()) if r != "annotator_error")
    return done


def write_shard(out: Storage, name: str, results: list[dict], rejects: list[dict], annotator_id: str,
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
            _write_table(table, out, f"{sub}/{name}.parquet")
        else:  # what a killed try of this attempt left
            out.delete(f"{sub}/{name}.parquet")
    _write_table(stats, out, f"{STATS}/{name}.parquet")  # last: marks the shard finished


@functools.lru_cache(maxsize=8)
def legacy_ids(output_dir: str) -> frozenset[str]:
    """Ids the stats files of the layout before per-shard resume finished (none in a newer output dir)."""
    out = Storage(output_dir)
    return frozenset(finished_ids(out, (n for n in out.listdir(STATS) if LEGACY.fullmatch(n))))


def open_shard(cfg: AnnotateConfig, out: Storage, filesystem, shard: dict) -> tuple[str, int, list[dict], list[dict]]:
    """(name of its next attempt, items its finished attempts hold, rows to annotate, rejected inputs)
    of one shard of the run in `out` (cfg.output_dir, opened once by the caller): the rows and
    rejects leave out what a finished attempt holds."""
    before = finished_attempts(out, shard["shard"])
    done = finished_ids(out, (f"{a}.parquet" for a in before)) | legacy_ids(cfg.output_dir)
    rows, rejects = read_shard(filesystem, shard, cfg.max_doc_bytes, cfg.chunk_words)
    todo = [r for r in rows if r["id"] not in done]
    return (attempt_name(shard["shard"], len(before)), len(rows) - len(todo), todo,
            [r for r in rejects if r["id"] not in done])


def close_shard(out: Storage, name: str, results: list[dict], rejects: list[dict], finished: int, annotator_id: str,
                writer: str, workers: Counter, annotator_seconds: float = 0.0) -> dict:
    """Write the attempt `name` of a shard when it holds anything, and return its row of counts
    (`workers`: documents per annotating worker; `annotator_seconds`: the time its documents spent in
    the annotator and validation, where one worker did both; 0 where another stage annotated)."""
    name = name if results or rejects else ""
    if name:
        write_shard(out, name, results, rejects, annotator_id, writer)
    ok = [r for r in results if r["status"] == "ok"]
    dropped: Counter = Counter()
    for r in ok:
        dropped.update(json.loads(r["dropped"]))
    reasons = Counter(r["reason"] for r in [*rejects, *results] if r.get("status") != "ok")
    return {"shard": name, "workers": json.dumps(workers), "todo": len(results), "finished": finished,
            "input_rejects": len(rejects), "annotated": len(ok), "lookups": sum(r["lookups"] for r in ok),
            "reasons": json.dumps(reasons), "dropped": json.dumps(dropped), "annotator_seconds": annotator_seconds}
