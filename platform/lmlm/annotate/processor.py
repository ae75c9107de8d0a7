"""Corpus annotation through Ray Data's LLM processors (ray.data.llm): how the `openai` kind runs.

    processor_dataset(cfg, shards, filesystem, annotator_id) -> Dataset of per-shard count rows (lazy)

    shards -> shard_rows         Ray tasks: each shard's input items that no finished attempt holds
                                 (shards.open_shard), one row each, plus the shard's marker row
           -> HTTP processor     ray.data.llm.HttpRequestProcessorConfig: `num_actors` actors, each with
                                 `openai.concurrency` rows in flight (kinds.openai.StageSession), paced at
                                 `openai.qps`; postprocess validates and converts each document
                                 (shards.annotation_result) in Ray tasks
           -> ShardWriter        one actor: gathers each shard attempt's rows and writes it whole, as the
                                 actor-pool path does (shards.close_shard), one row of counts per shard

The shards, their attempts, the files and per-shard resume are shards.py's; only the
annotating moves into the processor. Every row of an attempt carries how many rows the attempt has
(`expected`), so the writer knows when an attempt is whole; the marker row makes every shard send at
least one row (a shard already finished still reports its count) and is never sent to the endpoint,
nor is a rejected input. A document whose requests keep failing comes back with its reason and
becomes a reject, as in every path, so one document never fails a Ray task.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

from lmlm.annotate.config import AnnotateConfig, OpenAIAnnotatorConfig
from lmlm.annotate.kinds.openai import StageSession, endpoint, request_body
from lmlm.annotate.shards import annotation_result, close_shard, open_shard
from lmlm.annotate.prompt import load_prompt
from lmlm.config import from_dict, to_dict

DOC, REJECT, MARKER = "doc", "reject", "marker"
_ROW = {"shard": "", "attempt": "", "expected": 0, "kind": DOC, "id": "", "doc_id": "", "chunk": 0, "source": "",
        "text": "", "reason": "", "detail": "", "finished": 0}


def shard_rows(batch, cfg: dict, filesystem):
    """Ray Data batch of shard descriptors -> one row per item still to do, per rejected input and per shard."""
    import pyarrow as pa

    acfg = from_dict(AnnotateConfig, cfg)
    out = []
    for shard in batch.to_pylist():
        name, finished, todo, rejects = open_shard(acfg, filesystem, shard)
        head = {"shard": shard["shard"], "attempt": name, "expected": len(todo) + len(rejects) + 1}
        out.append(_ROW | head | {"kind": MARKER, "finished": finished})
        out += [_ROW | head | {k: r[k] for k in ("id", "doc_id", "chunk", "source", "text")} for r in todo]
        out += [_ROW | head | {"kind": REJECT} | {k: r[k] for k in ("id", "doc_id", "source", "reason", "detail")}
                for r in rejects]
    return pa.Table.from_pylist(out)


def _payload(row: dict) -> dict:
    # the chat request is built in the session (it holds the prompt); the row only says what to send
    return {"payload": {"text": row["text"], "send": row["kind"] == DOC}}


def _result(row: dict) -> dict:
    reply = row["http_response"]
    base = {k: row[k] for k in _ROW} | {"worker": reply["worker"] if row["kind"] == DOC else ""}
    if row["kind"] != DOC:
        return base | {"status": "rejected" if row["kind"] == REJECT else MARKER, "annotated_text": "",
                       "special_text": "", "lookups": 0, "dropped": "{}", "triples": "[]"}
    res = annotation_result(row["id"], row["text"], reply["content"] if not reply["error"] else None,
                            reply["error"] or None)
    return base | res


@dataclasses.dataclass
class SessionFactory:
    """What the HTTP stage calls once per batch: a StageSession that builds each row's chat request
    from the prompt, read once per actor."""

    cfg: OpenAIAnnotatorConfig
    template: list | None = None

    def __call__(self):
        if self.template is None:
            self.template = load_prompt(self.cfg.prompt_path)
        return StageSession(self.cfg, partial(request_body, self.cfg, self.template))


class ShardWriter:
    """One actor: gathers the rows of each shard attempt and writes the attempt once it is whole."""

    def __init__(self, output_dir: str, annotator_id: str):
        self.out, self.annotator_id = Path(output_dir), annotator_id
        self.rows: dict[str, dict[tuple, dict]] = defaultdict(dict)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch):
        import pyarrow as pa

        counts = []
        for row in batch.to_pylist():
            rows = self.rows[row["attempt"]]
            rows[(row["kind"], row["id"])] = row  # a retried Ray task may send a row again
            if len(rows) == row["expected"]:
                counts.append(self._close(self.rows.pop(row["attempt"]).values()))
        return pa.Table.from_pylist(counts, schema=COUNTS) if counts else COUNTS.empty_table()

    def _close(self, rows) -> dict:
        marker = next(r for r in rows if r["kind"] == MARKER)
        results = [r for r in rows if r["kind"] == DOC]
        rejects = [{k: r[k] for k in ("id", "doc_id", "source", "reason", "detail")} for r in rows if r["kind"] == REJECT]
        return close_shard(self.out, marker["attempt"], results, rejects, marker["finished"], self.annotator_id,
                           self.worker, Counter(r["worker"] for r in results))


def _counts_schema():
    import pyarrow as pa

    return pa.schema([("shard", pa.string()), ("workers", pa.string()), ("todo", pa.int64()), ("finished", pa.int64()),
                      ("input_rejects", pa.int64()), ("annotated", pa.int64()), ("lookups", pa.int64()),
                      ("reasons", pa.string()), ("dropped", pa.string())])


COUNTS = _counts_schema()


def processor_dataset(cfg: AnnotateConfig, shards: list[dict], filesystem, annotator_id: str):
    """The Ray Dataset of per-shard count rows (lazy) for an `openai` annotator."""
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    oc = cfg.openai
    url, headers = endpoint(oc)  # fails here, in the driver, when no endpoint is set
    n = cfg.num_actors
    processor = build_processor(
        HttpRequestProcessorConfig(
            url=url, headers=headers, qps=oc.qps or None, max_retries=0,  # retries are the session's
            batch_size=oc.concurrency, concurrency=n, session_factory=SessionFactory(oc),
            http_request_stage={"concurrency": (n, n), "num_cpus": cfg.num_cpus_per_actor}),
        preprocess=_payload, postprocess=_result, postprocess_map_kwargs={"num_cpus": cfg.num_cpus_per_actor})
    rows = ray.data.from_items(shards, override_num_blocks=min(len(shards), 4096)).map_batches(
        shard_rows, batch_size=1, batch_format="pyarrow", num_cpus=cfg.num_cpus_per_actor,
        fn_kwargs={"cfg": to_dict(cfg), "filesystem": filesystem})
    return processor(rows).map_batches(
        ShardWriter, batch_format="pyarrow", batch_size=None, num_cpus=cfg.num_cpus_per_actor / 2,
        fn_constructor_kwargs={"output_dir": cfg.output_dir, "annotator_id": annotator_id},
        compute=ActorPoolStrategy(size=1))

