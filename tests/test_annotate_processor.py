"""The `openai` kind over a corpus: Ray Data's HTTP request processor against a real local endpoint."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from http_harness import JSONHandler, serving

from lmlm.annotate import AnnotateConfig, run_annotation
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.corpus import Record, write_jsonl

pytestmark = pytest.mark.slow


class Chat(JSONHandler):
    """/chat/completions that takes 0.4 s, counts requests in flight, and fails documents that ask for it."""

    lock = threading.Lock()
    inflight = peak = 0
    calls: Counter = Counter()
    auth: set = set()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        doc = body["messages"][-1]["content"]
        with self.lock:
            Chat.inflight += 1
            Chat.peak = max(Chat.peak, Chat.inflight)
            Chat.calls[doc] += 1
            Chat.auth.add(self.headers.get("Authorization", ""))
        try:
            time.sleep(0.4)
            if "BROKEN" in doc:
                return self._send(503, b'{"error": "overloaded"}')
            if "DENIED" in doc:
                return self._send(401, b'{"error": "bad key"}')
            word = doc.split()[-1]
            content = f"{doc.rsplit(' ', 1)[0]} [dblookup('Doc', 'Says') -> {word}] {word}"
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())
        finally:
            with self.lock:
                Chat.inflight -= 1



def _rows(out, sub):
    return [r for p in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_http_processor_annotates_a_corpus_and_keeps_failures_per_document(ray_cluster, chat_prompt, tmp_path):
    texts = [f"Doc {i} says w{i}" for i in range(10)] + ["BROKEN says b", "DENIED says d", "", "  "]
    src = write_jsonl([Record(f"d{i}", t, "", "t") for i, t in enumerate(texts)], tmp_path / "c.jsonl")
    Chat.calls, Chat.auth, Chat.peak = Counter(), set(), 0
    with serving(Chat, "/v1") as url:
        cfg = AnnotateConfig(input=str(src), output_dir=str(tmp_path / "out"), annotator="openai", num_actors=1,
                             shard_docs=4, load_store=False, progress=False,
                             openai=OpenAIAnnotatorConfig(base_url=url, api_key="sk-t", prompt_path=chat_prompt,
                                                          concurrency=4, max_retries=2, backoff_s=0.01))
        first = run_annotation(cfg, log=lambda s: None)
        calls = Counter(Chat.calls)
        again = run_annotation(cfg, log=lambda s: None)  # only the failed documents are sent again
    out = tmp_path / "out"
    assert first["annotated"] == 10 and first["lookups"] == 10 and first["shards"] == 4
    assert first["rejects_by_reason"] == {"annotator_error": 2, "empty": 2}
    assert first["docs_per_worker"] == [12]  # the HTTP stage's one actor sent every document
    assert first["annotator_seconds"] == 0 and first["annotator_busy"] == 0  # the HTTP stage is not timed per shard
    # the stage's rows are in flight together (the session starts each request when the stage asks)
    assert Chat.peak >= 3
    assert Chat.auth == {"Bearer sk-t"}
    assert calls["BROKEN says b"] == 3 and calls["DENIED says d"] == 1  # 503 retried, 401 not
    assert all(calls[t] == 1 for t in texts[:10]) and "" not in calls  # an empty input is never sent
    assert again["skipped_finished"] == 10 and again["annotated"] == 0 and again["shards_written"] == 1
    assert Chat.calls - calls == Counter({"BROKEN says b": 3, "DENIED says d": 1})

    annotated = {r["id"]: r for r in _rows(out, "annotated")}
    assert sorted(annotated) == sorted(f"d{i}" for i in range(10))
    assert all(json.loads(r["triples"]) == [["Doc", "Says", f"w{r['id'][1:]}"]] and r["annotator"] == "openai:gpt-4o"
               for r in annotated.values())
    rejected = Counter((r["id"], r["reason"], r["detail"].split(":")[0]) for r in _rows(out, "rejected"))
    assert rejected == Counter({("d10", "annotator_error", "http_503"): 2, ("d11", "annotator_error", "http_401"): 2,
                                ("d12", "empty", "the text is empty"): 1, ("d13", "empty", "the text is empty"): 1})
    # the shard of the two empty inputs was written whole, with nothing sent; retries went to -r1
    stats = sorted(p.stem for p in (out / "stats").glob("*.parquet"))
    assert len(stats) == 5 and sum(s.endswith("-r1") for s in stats) == 1


# --------------------------------------------------------------------------------------------
# The vLLM engine processor: built and checked here; the engine needs vLLM and a GPU


def _vllm_cfg(model_dir, prompt, **vllm) -> AnnotateConfig:
    from lmlm.annotate.config import HFAnnotatorConfig, VLLMAnnotatorConfig

    return AnnotateConfig(annotator="hf", num_actors=2, batch_size=8, load_store=False,
                          hf=HFAnnotatorConfig(model_path=str(model_dir), prompt_path=prompt, max_new_tokens=300),
                          vllm=VLLMAnnotatorConfig(enabled=True, max_model_len=2048, **vllm))


def test_vllm_processor_runs_the_model_with_the_annotators_prompt_and_validation(ray_cluster, tiny_chat_model,
                                                                                  chat_prompt, tmp_path):
    from lmlm.annotate.processor import DOC, MARKER, _result, _vllm_reply, vllm_backend
    from lmlm.annotate.prompt import build_messages, load_prompt

    backend = vllm_backend(_vllm_cfg(tiny_chat_model, chat_prompt), "hf")
    proc = backend.processor
    assert proc.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    c = proc.config
    assert (c.model_source, c.batch_size, c.concurrency, c.should_continue_on_error) == (str(tiny_chat_model), 8, 2, True)
    assert {k: c.engine_kwargs[k] for k in ("max_model_len", "tensor_parallel_size")} == {"max_model_len": 2048,
                                                                                         "tensor_parallel_size": 1}
    row = {"shard": "s", "attempt": "s", "expected": 3, "kind": DOC, "id": "d1", "doc_id": "d1", "chunk": 0,
           "source": "t", "text": "Doc 1 says w1", "reason": "", "detail": "", "finished": 0}
    request = proc.preprocess(row)["__data"]  # what Ray Data's chat template stage receives
    assert request["messages"] == build_messages(load_prompt(chat_prompt), "Doc 1 says w1")
    assert request["sampling_params"] == {"temperature": 0.0, "max_tokens": 300}
    assert proc.preprocess(row | {"kind": MARKER})["__data"]["sampling_params"]["max_tokens"] == 1

    # the engine stage's output rows, as ray.data.llm documents them: generated_text, __inference_error__
    ok = _result(request | {"generated_text": "Doc 1 says [dblookup('Doc', 'Says') -> w1] w1",
                            "__inference_error__": ""}, _vllm_reply)
    assert ok["status"] == "ok" and json.loads(ok["triples"]) == [["Doc", "Says", "w1"]]
    assert ok["annotated_text"].startswith("Doc 1 says") and ok["shard"] == "s"
    failed = _result(request | {"generated_text": "", "__inference_error__": "ValueError: prompt too long"},
                     _vllm_reply)
    assert (failed["status"], failed["reason"], failed["detail"]) == ("rejected", "annotator_error",
                                                                      "vllm: ValueError: prompt too long")


def test_vllm_processor_with_a_lora_adapter_and_its_refusals(ray_cluster, tiny_chat_model, chat_prompt, tmp_path):
    import importlib.util

    from lmlm.annotate.processor import DOC, processor_dataset, vllm_backend

    adapter = tmp_path / "adapters" / "squad-v1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    proc = vllm_backend(_vllm_cfg(tiny_chat_model, chat_prompt, lora_adapter=str(adapter)), "hf").processor
    assert proc.config.engine_kwargs["enable_lora"] and proc.config.engine_kwargs["max_lora_rank"] == 8
    assert proc.config.dynamic_lora_loading_path == str(adapter.parent)
    row = {"kind": DOC, "text": "x", "shard": "s"}
    assert proc.preprocess(row)["__data"]["model"] == "squad-v1"  # each request asks for the adapter

    with pytest.raises(ValueError, match="not a PEFT LoRA adapter directory"):
        vllm_backend(_vllm_cfg(tiny_chat_model, chat_prompt, lora_adapter=str(tmp_path)), "hf")
    with pytest.raises(ValueError, match="generative or hf annotator, not 'tagger'"):
        vllm_backend(_vllm_cfg(tiny_chat_model, chat_prompt), "tagger")
    if importlib.util.find_spec("vllm") is None:  # this machine: the job refuses before any actor starts
        with pytest.raises(RuntimeError, match=r"pip install 'lmlm\[vllm\]'"):
            processor_dataset(_vllm_cfg(tiny_chat_model, chat_prompt), [], None, "hf:x", "hf")


def test_vllm_settings_of_a_trained_generative_directory(tmp_path):
    from lmlm.annotate.processor import vllm_settings

    prompt = [{"role": "system", "content": "Copy the text with calls."}]
    (tmp_path / "annotator.json").write_text(json.dumps({"kind": "generative", "prompt": prompt,
                                                         "train": {"max_new_tokens": 768}}))
    cfg = AnnotateConfig(annotator="generative", trained_path=f"file://{tmp_path}")
    assert vllm_settings(cfg, "generative") == (str(tmp_path), prompt, 768)
