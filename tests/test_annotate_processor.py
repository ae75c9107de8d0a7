"""The `openai` kind over a corpus: Ray Data's HTTP request processor against a real local endpoint."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pyarrow.parquet as pq
import pytest
from http_harness import serving

from lmlm.annotate import AnnotateConfig, run_annotation
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.corpus import Record, write_jsonl

pytestmark = pytest.mark.slow


class Chat(BaseHTTPRequestHandler):
    """/chat/completions that takes 0.4 s, counts requests in flight, and fails documents that ask for it."""

    lock = threading.Lock()
    inflight = peak = 0
    calls: Counter = Counter()
    auth: set = set()

    def log_message(self, *args):
        pass

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

    def _send(self, code: int, payload: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


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
