"""Corpus annotation through Ray Data's LLM processors (ray.data.llm), for the annotators that are
models behind an engine:

- `openai` (any OpenAI-compatible endpoint): the HTTP request processor, `num_actors` actors with
  `openai.concurrency` requests in flight each (kinds.openai.StageSession), paced at `openai.qps`;
- `generative` or `hf` with `vllm.enabled` (GPUs, the `vllm` extra): the vLLM engine processor, one
  engine per actor, the model's chat template and tokenizer applied in Ray Data's own stages.
  Built and checked on CPU here (tests/test_annotate_processor.py); the engine itself has not run.

    processor_dataset(cfg, shards, filesystem, annotator_id, kind) -> Dataset of per-shard count rows (lazy)
                                                                       (shards: the Dataset of shard descriptors)

    shards -> shard_rows   Ray tasks: each shard's input items that no finished attempt holds
                           (shards.open_shard), one row each, plus the shard's marker row
           -> processor    the backend above
           -> _result      Ray tasks: each document validated, converted and anchored
                           (shards.annotation_result), as every annotator's output is
           -> ShardWriter  one actor: gathers each shard attempt's rows and writes it whole, as the
                           actor-pool path does (shards.close_shard); one row of counts per shard

The shards, their attempts, the files and per-shard resume are shards.py's; the prompt (prompt.py),
the pieces (`chunk_words`), anchoring and validation are those of every annotator: only the model
call moves into the processor. Every row of an attempt carries how many rows the attempt has
(`expected`), so the writer knows when an attempt is whole; the marker row makes every shard send at
least one row (a shard already finished still reports its count). A document whose call keeps
failing comes back with its reason and becomes a reject, as in every path, never a failed Ray task.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Callable

from lmlm.annotate.config import AnnotateConfig, OpenAIAnnotatorConfig
from lmlm.annotate.kinds.generative import prompt_messages
from lmlm.annotate.kinds.openai import StageSession, endpoint, request_body
from lmlm.annotate.prompt import build_messages, load_prompt
from lmlm.annotate.saved import read_meta
from lmlm.annotate.shards import annotation_result, close_shard, open_shard
from lmlm.config import from_dict, to_dict
from lmlm.storage import Storage, is_uri, local_dir

DOC, REJECT, MARKER = "doc", "reject", "marker"
_ROW = {"shard": "", "attempt": "", "expected": 0, "kind": DOC, "id": "", "doc_id": "", "chunk": 0, "source": "",
        "text": "", "reason": "", "detail": "", "finished": 0}


def shard_rows(batch, cfg: dict, filesystem):
    """Ray Data batch of shard descriptors -> one row per item still to do, per rejected input and per shard."""
    import pyarrow as pa

    acfg = from_dict(AnnotateConfig, cfg)
    store, out = Storage(acfg.output_dir), []
    for shard in batch.to_pylist():
        name, finished, todo, rejects = open_shard(acfg, store, filesystem, shard)
        head = {"shard": shard["shard"], "attempt": name, "expected": len(todo) + len(rejects) + 1}
        out.append(_ROW | head | {"kind": MARKER, "finished": finished})
        out += [_ROW | head | {k: r[k] for k in ("id", "doc_id", "chunk", "source", "text")} for r in todo]
        out += [_ROW | head | {"kind": REJECT} | {k: r[k] for k in ("id", "doc_id", "source", "reason", "detail")}
                for r in rejects]
    return pa.Table.from_pylist(out)


def _result(row: dict, reply) -> dict:
    """A processed row in the writer's schema; `reply(row)` -> (output, failure reason, worker) of a document."""
    out = {k: row[k] for k in _ROW}
    if row["kind"] != DOC:
        return out | {"worker": "", "status": "rejected" if row["kind"] == REJECT else MARKER, "annotated_text": "",
                      "special_text": "", "lookups": 0, "dropped": "{}", "triples": "[]"}
    output, failure, worker = reply(row)
    return out | {"worker": worker} | annotation_result(row["id"], row["text"], output, failure)


def _unchanged(row: dict) -> dict:
    return row


@dataclasses.dataclass(frozen=True)
class Backend:
    processor: Callable  # a ray.data.llm Processor: Dataset -> Dataset
    reply: Callable[[dict], tuple]  # a processed document row -> (output, failure reason, worker)


# --------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint: the HTTP request processor


def _http_payload(row: dict) -> dict:
    # the chat request is built in the session (it holds the prompt); the row only says what to send
    return {"payload": {"text": row["text"], "send": row["kind"] == DOC}}


def _http_reply(row: dict) -> tuple:
    r = row["http_response"]
    return (None if r["error"] else r["content"]), (r["error"] or None), r["worker"]


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


def http_backend(cfg: AnnotateConfig) -> Backend:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    oc, n = cfg.openai, cfg.num_actors
    url, headers = endpoint(oc)  # fails here, in the driver, when no endpoint is set
    return Backend(build_processor(
        HttpRequestProcessorConfig(
            url=url, headers=headers, qps=oc.qps or None, max_retries=0,  # retries are the session's
            batch_size=oc.concurrency, concurrency=n, session_factory=SessionFactory(oc),
            http_request_stage={"concurrency": (n, n), "num_cpus": cfg.num_cpus_per_actor}),
        preprocess=_http_payload, postprocess=_unchanged), _http_reply)


# --------------------------------------------------------------------------------------------
# A model on GPUs: the vLLM engine processor (the `vllm` extra)


def _vllm_request(row: dict, template: list[dict], max_tokens: int, lora: str) -> dict:
    # every row goes through the engine (a row it skipped would leave the processor in another
    # schema); a row that is not a document asks for one token
    doc = row["kind"] == DOC
    req = {"messages": build_messages(template, row["text"] if doc else "-"),
           "sampling_params": {"temperature": 0.0, "max_tokens": max_tokens if doc else 1}}
    return req | {"model": lora} if lora else req


def _vllm_reply(row: dict) -> tuple:
    error = row.get("__inference_error__") or ""
    return (None, f"vllm: {error[:300]}", "vllm") if error else (row["generated_text"], None, "vllm")


def _model_source(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path  # s3:// and gs:// vLLM fetches itself


def vllm_settings(cfg: AnnotateConfig, kind: str) -> tuple[str, list[dict], int]:
    """(model source, prompt messages, output tokens) of the annotator vLLM runs: a trained
    `generative` directory (its prompt.json and max_new_tokens) or an `hf` model (hf.*)."""
    if kind == "generative":
        meta = read_meta(local_dir(cfg.trained_path) if is_uri(cfg.trained_path) else cfg.trained_path, kind)
        return (_model_source(cfg.trained_path), meta.get("prompt") or prompt_messages(),
                meta["train"]["max_new_tokens"])
    if kind == "hf":
        return _model_source(cfg.hf.model_path), load_prompt(cfg.hf.prompt_path), cfg.hf.max_new_tokens
    raise ValueError(f"annotate: vllm.enabled runs a generative or hf annotator, not {kind!r}")


def vllm_backend(cfg: AnnotateConfig, kind: str) -> Backend:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    vc = cfg.vllm
    model, template, max_tokens = vllm_settings(cfg, kind)
    engine = {"max_model_len": vc.max_model_len, "tensor_parallel_size": vc.tensor_parallel_size,
              "gpu_memory_utilization": vc.gpu_memory_utilization, "enable_prefix_caching": True}
    lora, lora_root = "", None
    if vc.lora_adapter:
        adapter = Path(vc.lora_adapter)
        try:
            rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"annotate: vllm.lora_adapter {adapter} is not a PEFT LoRA adapter directory ({e})") from e
        engine |= {"enable_lora": True, "max_lora_rank": rank}
        lora, lora_root = adapter.name, str(adapter.resolve().parent)
    config = vLLMEngineProcessorConfig(
        model_source=model, engine_kwargs=engine, batch_size=cfg.batch_size, concurrency=cfg.num_actors,
        max_concurrent_batches=vc.max_concurrent_batches, accelerator_type=vc.accelerator_type or None,
        dynamic_lora_loading_path=lora_root, should_continue_on_error=True,
        chat_template_stage=True, tokenize_stage=True, detokenize_stage=True)
    return Backend(build_processor(config, preprocess=partial(_vllm_request, template=template, max_tokens=max_tokens,
                                                              lora=lora), postprocess=_unchanged), _vllm_reply)


# --------------------------------------------------------------------------------------------
# The dataset


class ShardWriter:
    """One actor: gathers the rows of each shard attempt and writes the attempt once it is whole."""

    def __init__(self, output_dir: str, annotator_id: str):
        self.out, self.annotator_id = Storage(output_dir), annotator_id
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
                      ("reasons", pa.string()), ("dropped", pa.string()),
                      ("annotator_seconds", pa.float64())])


COUNTS = _counts_schema()


def uses_processor(cfg: AnnotateConfig, kind: str) -> bool:
    return kind == "openai" or cfg.vllm.enabled


def processor_dataset(cfg: AnnotateConfig, shards, filesystem, annotator_id: str, kind: str):
    """The Ray Dataset of per-shard count rows (lazy) for an `openai` annotator, or a `generative` /
    `hf` one with vllm.enabled; `shards`: the Dataset of shard descriptors."""
    from ray.data import ActorPoolStrategy

    if kind == "openai":
        backend = http_backend(cfg)
    elif importlib.util.find_spec("vllm") is None:
        raise RuntimeError("annotate: vllm.enabled needs vLLM where the job runs (pip install 'lmlm[vllm]' in the "
                           "image of the driver and the GPU workers)")
    else:
        backend = vllm_backend(cfg, kind)
    rows = shards.map_batches(
        shard_rows, batch_size=1, batch_format="pyarrow", num_cpus=cfg.num_cpus_per_actor,
        fn_kwargs={"cfg": to_dict(cfg), "filesystem": filesystem})
    results = backend.processor(rows).map(_result, fn_kwargs={"reply": backend.reply}, num_cpus=cfg.num_cpus_per_actor)
    return results.map_batches(
        ShardWriter, batch_format="pyarrow", batch_size=None, num_cpus=cfg.num_cpus_per_actor / 2,
        fn_constructor_kwargs={"output_dir": cfg.output_dir, "annotator_id": annotator_id},
        compute=ActorPoolStrategy(size=1))
