"""End to end: Ray Data actor pool on the session's local Ray cluster, real Redis fact store."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from lmlm.annotate import AnnotateConfig, fit_tagger, run_annotation
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.corpus import Record, write_jsonl
from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.world import WorldConfig, generate_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    docs = [d.annotated_text for d in generate_world(WorldConfig(people=40, seed=1)).documents]
    return fit_tagger(docs, epochs=4, log=lambda s: None).save(tmp_path_factory.mktemp("ann") / "model")


def _corpus(path, world) -> None:
    recs = [Record(d.id, d.text, "", "world", {}) for d in world.documents]
    recs.append(Record("long", " ".join(world.documents[0].text.split()) + " " + " ".join(["filler"] * 1500), "", "t"))
    recs.append(Record("huge", "word " * 220_000, "", "t"))  # 1.1 MB
    recs.append(Record("empty", "   ", "", "t"))
    write_jsonl(recs, path)
    with path.open("ab") as f:
        f.write(b'{"id": "latin1", "text": "caf\xe9 au lait"}\n')
        f.write(b'{"id": "cut", "text": "no closing\n')


def _rows(out, sub):
    return [r for p in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_pipeline_end_to_end_resumable_into_redis(ray_cluster, trained_dir, tmp_path):
    world = generate_world(WorldConfig(people=30, seed=11))
    src = tmp_path / "corpus.jsonl"
    _corpus(src, world)
    cfg = AnnotateConfig(input=str(src), output_dir=str(tmp_path / "out"), trained_path=str(trained_dir),
                         num_actors=2, num_cpus_per_actor=0.5, batch_size=4, shard_docs=8, load_store=False,
                         progress=False)
    s1 = run_annotation(cfg)
    assert s1["rejects_by_reason"] == {"broken_json": 1, "empty": 1, "invalid_utf8": 1, "too_large": 1}
    assert s1["annotated"] == 30 + 3 and s1["documents"] == 30 + 3 + 4  # "long" became 3 chunks
    assert s1["lookups"] >= 0.9 * 8 * 30 and s1["shards_written"] >= 4 and s1["triples_loaded"] == 0
    assert sum(s1["docs_per_worker"]) == 33 and 1 <= len(s1["docs_per_worker"]) <= 2
    # the actors' time in the annotator, summed over shards: part of the run's, never more than all of it
    assert 0 < s1["annotator_seconds"] and 0 < s1["annotator_busy"] <= 1
    out = tmp_path / "out"
    ids = {r["id"] for r in _rows(out, "annotated")}
    assert {"long#c0", "long#c1", "long#c2"} <= ids
    rejected = {r["id"]: r for r in _rows(out, "rejected")}
    assert rejected["huge"]["reason"] == "too_large" and "line" in rejected["corpus:35"]["detail"]

    cfg = dataclasses.replace(cfg, output_dir=f"file://{out}")  # the same folder by URI, as another node names it
    with FactStore.open(FactStoreConfig()) as store:
        s2 = run_annotation(cfg, store=store)  # everything finished: only the pending triples load
        n_triples = sum(len(json.loads(r["triples"])) for r in _rows(out, "annotated"))
        assert s2["skipped_finished"] == 33 and s2["annotated"] == 0 and s2["triples_loaded"] == n_triples
        person = world.people[0]
        got = store.get(person.name, "Birth City")
        assert got["chosen"] == person.attributes["Birth City"]
        assert got["values"][0]["annotators"] == [s1["annotator"]] and got["values"][0]["doc_ids"]
        mentions = store.stats()["mentions"]
        s3 = run_annotation(cfg, store=store)
        assert s3["triples_loaded"] == 0 and store.stats()["mentions"] == mentions  # no duplicates


class FlakyChat(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        if "SLOW" in doc:
            time.sleep(1.5)
        code, body = (500, b"{}") if "FAIL" in doc else (200, json.dumps({"choices": [{"message": {
            "content": "[dblookup('Doc', 'Says') -> hello] hello [dblookup('Doc', 'Cut') -> "}}]}).encode())
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_pipeline_with_failing_endpoint_completes_and_records_reasons(ray_cluster, chat_prompt, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyChat)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = tmp_path / "c.jsonl"
        write_jsonl([Record(f"d{i}", t, "", "t") for i, t in enumerate(["hello a", "FAIL b", "SLOW c", "hello d"])], src)
        cfg = AnnotateConfig(input=str(src), output_dir=str(tmp_path / "out"), annotator="openai", num_actors=1,
                             batch_size=2, load_store=False, progress=False,
                             openai=OpenAIAnnotatorConfig(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                                          timeout_s=0.5, max_retries=1, backoff_s=0.01,
                                                          prompt_path=chat_prompt))
        s = run_annotation(cfg)
        again = run_annotation(cfg)  # finished documents skipped, failed annotator calls retried
    finally:
        server.shutdown()
        server.server_close()
    assert s["annotated"] == 2 and s["rejects_by_reason"] == {"annotator_error": 2}
    assert s["lookups"] == 2 and s["dropped_calls_by_reason"] == {"truncated": 2}
    assert again["skipped_finished"] == 2 and again["rejects_by_reason"] == {"annotator_error": 2}
    details = sorted((r["id"], r["detail"]) for r in _rows(tmp_path / "out", "rejected"))
    assert details == [("d1", "http_500"), ("d1", "http_500"), ("d2", "timeout"), ("d2", "timeout")]
