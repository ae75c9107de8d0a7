"""The HTTP API against a real local Ray Serve app, a tiny saved model and a real FactStore."""
from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN
from lmlm.testing.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer
from lmlm.netutil import free_port

pytestmark = pytest.mark.slow
TOKEN = "s3cret-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SLOW_TIMEOUT_S = 8
LONG_TOKENS = 30_000  # about 10x what the slow app decodes in SLOW_TIMEOUT_S on a quiet 2-core machine
NO_EOS = {"0": -100}  # the tiny tokenizer's EOS: long requests run until cancelled


class CountingTokenizer:
    """A real tokenizer that appends every text it encodes to a file (the replica is another process)."""

    def __init__(self, tok, log: str):
        self.tok, self.log = tok, log

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text, **kw):
        with open(self.log, "a") as f:
            f.write(json.dumps(text) + "\n")
        return self.tok.encode(text, **kw)


def counting_tokenizer(path: str, log: str) -> CountingTokenizer:
    from lmlm.serve.loaders import tokenizer_from_dir

    return CountingTokenizer(tokenizer_from_dir(path), log)


@pytest.fixture(scope="module")
def encode_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encode-log") / "encoded.jsonl"


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory, encode_log):
    from ray import cloudpickle, serve

    from lmlm.serve.app import ServeConfig, build_app, model_from_dir, store_at, tokenizer_from_dir
    from lmlm.serve.config import RequestLimits

    d = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer(synthetic_texts(), out_dir=d)
    tiny_model(len(tok), max_len=128).save_pretrained(d)
    store = FactStore.open(FactStoreConfig())
    store.add_triples(synthetic_triples(), annotator="test")
    dead = FactStore.open(FactStoreConfig())  # closed after the second app starts: unreachable store
    long_ctx = tmp_path_factory.mktemp("long-model")
    tok.save_pretrained(long_ctx)
    # Wider and longer than the fast app's model, so a long request cannot finish inside SLOW_TIMEOUT_S
    # even on a quiet machine (6,000 tokens of the 64-wide model took under 8 s on CI).
    tiny_model(len(tok), hidden=128, max_len=LONG_TOKENS + 64).save_pretrained(long_ctx)
    cfg = ServeConfig(model_path=str(d), admin_token=TOKEN, max_tokens_limit=64, default_max_tokens=8,
                      max_batch_size=8, request_timeout_s=60, torch_threads=1, defaults={"max_lookups": 2},
                      limits=RequestLimits(max_body_bytes=20_000, max_prompts=4, max_stop_strings=3, max_stop_chars=20,
                                           max_lookups=8, max_query_tokens=32, max_entity_chars=40))
    # A long context, one row and one queue slot: for joining, queue-full, timeout and cancellation.
    slow = ServeConfig(model_path=str(long_ctx), admin_token=TOKEN, max_tokens_limit=LONG_TOKENS, max_batch_size=2,
                       max_queue=1, request_timeout_s=SLOW_TIMEOUT_S, torch_threads=1, exposure="none")
    loaders = dict(model_loader=partial(model_from_dir, str(d)), tokenizer_loader=partial(tokenizer_from_dir, str(d)))
    # The main app's tokenizer logs what it encodes: this module's helpers travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, store_loader=partial(store_at, store.connection_url, 1.0),
                            **{**loaders, "tokenizer_loader": partial(counting_tokenizer, str(d), str(encode_log))}),
                  name="lmlm", route_prefix="/")
        serve.run(build_app(cfg, store_loader=partial(store_at, dead.connection_url, 1.0), **loaders), name="dead",
                  route_prefix="/dead")
        serve.run(build_app(slow, store_loader=partial(store_at, store.connection_url, 1.0),
                            model_loader=partial(model_from_dir, str(long_ctx)),
                            tokenizer_loader=partial(tokenizer_from_dir, str(long_ctx))), name="slow", route_prefix="/slow")
        dead.close()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, store
    finally:
        serve.shutdown()
        store.close()
        dead.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def cloze(entity: str, relation: str) -> str:
    return f"{entity} lives in {DB_ENTITY} {entity}{DB_RELATIONSHIP} {relation}{DB_RETURN}"


def test_health_models_and_completion(served):
    client, _ = served
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["id"] == "lmlm"
    r = client.post("/v1/completions", json={"prompt": ["Tell me a bio of Ada Varen. Ada Varen is", "Kira"],
                                             "max_tokens": 6, "model": "lmlm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    assert all(DB_ENTITY not in c["text"] for c in body["choices"])
    assert body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]


def test_lookup_trace_exposure(served):
    client, _ = served
    t = synthetic_triples()[1]
    gen = {"prompt": cloze(t.entity, t.relation), "max_tokens": 4, "max_lookups": 0}
    # Default (citations): the value, its stage and source documents; no stored record.
    r = client.post("/v1/generate", json=gen)
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["raw_text"].startswith(f" {t.value}{DB_END}")
    lk = body["lookups"][0]
    assert lk == {"entity": t.entity, "relation": t.relation, "value": t.value, "stage": "exact", "doc_ids": []}
    # The admin token sees the full record; a wrong token is refused, not downgraded.
    full = client.post("/v1/generate", json=gen, headers=AUTH).json()["lookups"][0]
    assert full["triple"] == {"entity": t.entity, "relation": t.relation, "value": t.value}
    assert full["provenance"]["annotators"] == ["test"]
    assert client.post("/v1/generate", json=gen, headers={"authorization": "Bearer nope"}).status_code == 401
    # exposure: none (the slow app): no trace and no raw text, which holds the injected values.
    none = client.post("/slow/v1/generate", json=gen).json()
    assert "lookups" not in none and "raw_text" not in none and "text" in none
    assert "lookups" in client.post("/slow/v1/generate", json=gen, headers=AUTH).json()


def test_streaming_matches_the_plain_answer(served):
    client, _ = served
    req = {"prompt": "Tell me a bio of Hugo Marsh. Hugo Marsh is", "max_tokens": 12}
    plain = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    events = []
    with client.stream("POST", "/v1/completions", json={**req, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_each_prompt_is_tokenised_once(served, encode_log):
    """Validation encodes each prompt (its length is checked against the context) and the engine
    decodes from those very ids: one encode per prompt, whatever the endpoint."""
    client, _ = served
    p = "Tell me a bio of Once Counted. Once Counted is"
    assert client.post("/v1/generate", json={"prompt": p, "max_tokens": 2}).status_code == 200
    r = client.post("/v1/completions", json={"prompt": [p + " a", p + " b"], "max_tokens": 2})
    assert r.status_code == 200, r.text
    with client.stream("POST", "/v1/completions", json={"prompt": p + " c", "max_tokens": 2, "stream": True}) as s:
        assert s.status_code == 200 and [x for x in s.iter_lines() if x.startswith("data: ")][-1] == "data: [DONE]"
    encoded = [json.loads(line) for line in encode_log.read_text().splitlines()]
    assert [encoded.count(q) for q in (p, p + " a", p + " b", p + " c")] == [1, 1, 1, 1]


def test_concurrent_requests_are_decoded_together(served):
    import concurrent.futures

    client, _ = served
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda i: client.post("/v1/generate", json={"prompt": f"Kira {i}", "max_tokens": 4}).json(),
                               range(8)))
    assert max(b["batch_size"] for b in bodies) > 1


def test_facts_admin_auth_and_unlearning(served):
    client, _ = served
    fact = {"entity": "Zed Quill", "relation": "Birth City", "value": "Reykjavik"}
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert client.put("/v1/facts", json={"facts": [fact]}).status_code == 401
    assert client.put("/v1/facts", json={"facts": [fact]}, headers={"authorization": "Bearer nope"}).status_code == 401
    assert client.put("/v1/facts", json={"facts": [fact]}, headers=auth).json() == {"written": 1}
    got = client.get("/v1/facts", params={"entity": "Zed Quill", "relation": "Birth City"}, headers=auth)
    assert got.status_code == 200 and got.json()["chosen"] == "Reykjavik"
    gen = {"prompt": cloze("Zed Quill", "Birth City"), "max_tokens": 2, "max_lookups": 0, "fallback": "unknown"}
    assert client.post("/v1/generate", json=gen).json()["lookups"][0]["value"] == "Reykjavik"
    d = client.request("DELETE", "/v1/facts", json={"entity": "Zed Quill", "relation": "Birth City"}, headers=auth)
    assert d.json() == {"deleted": 1}
    after = client.post("/v1/generate", json=gen, headers=auth).json()["lookups"][0]
    assert after["value"] != "Reykjavik"
    assert after["triple"] is None or after["triple"]["entity"] != "Zed Quill"
    assert client.get("/v1/facts", params={"entity": "Zed Quill", "relation": "Birth City"}, headers=auth).status_code == 404


@pytest.mark.parametrize("body,field,status", [
    ({"max_tokens": 4}, "prompt", 400),
    ({"prompt": 42}, "prompt", 400),
    ({"prompt": "Kira", "max_tokens": "5"}, "max_tokens", 400),
    ({"prompt": "Kira", "temperature": "hot"}, "temperature", 400),
    ({"prompt": "Kira", "stream": "yes"}, "stream", 400),
    ({"prompt": "Kira", "max_tokens": 0}, "max_tokens", 400),
    ({"prompt": "Kira", "max_tokens": 65}, "max_tokens", 400),
    ({"prompt": "Kira " * 200}, "prompt", 400),
    ({"prompt": "Kira", "frobnicate": 1}, "frobnicate", 400),
    ({"prompt": "Kira", "top_p": 0}, "top_p", 400),
    ({"prompt": "Kira", "seed": 2**70}, "seed", 400),
    ({"prompt": "Kira", "seed": -1}, "seed", 400),
    ({"prompt": "Kira", "temperature": float("nan")}, "temperature", 400),
    ({"prompt": "Kira", "top_p": float("inf")}, "top_p", 400),
    ({"prompt": "Kira", "temperature": 5e-324}, "temperature", 400),
    ({"prompt": "Kira", "logit_bias": {"3": 1e39}}, "logit_bias", 400),
    ({"prompt": "Kira", "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", 400),
    ({"prompt": "Kira", "max_lookups": 10**9}, "max_lookups", 400),
    ({"prompt": "Kira", "max_query_tokens": 33}, "max_query_tokens", 400),
    ({"prompt": "Kira", "stop": ["a", "b", "c", "d"]}, "stop", 400),
    ({"prompt": "Kira", "stop": "x" * 21}, "stop", 400),
    ({"prompt": ["Kira"] * 5}, "prompt", 400),
    ({"prompt": "Kira", "stop": ["s"] * 100_000}, "body", 413),
    ({"prompt": "Kira", "model": "gpt-4"}, "model", 404),
])
def test_bad_completion_requests_name_the_field(served, body, field, status):
    client, _ = served
    # json.dumps, not httpx: it writes NaN and Infinity, as some clients do.
    r = client.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_bad_generate_and_facts_requests(served):
    client, _ = served
    r = client.post("/v1/generate", json={"prompt": "Kira", "max_tokens": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = client.put("/v1/facts", json={"facts": [{"entity": "A"}]}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "facts.0.relation"


def test_store_unreachable_is_503_or_flagged(served):
    client, _ = served
    gen = {"prompt": cloze("Ada Varen", "Birth City"), "max_tokens": 3}
    r = client.post("/dead/v1/generate", json=gen)
    assert r.status_code == 503 and "unavailable" in r.json()["error"]["message"]
    r = client.post("/dead/v1/generate", json={**gen, "allow_lookups_disabled": True})
    assert r.status_code == 200 and r.json()["lookups_disabled"] is True


def test_poisoned_requests_beside_good_ones(served):
    """Bad values are 400s naming the field; a Redis error for one query is that request's 500; the
    good requests sent at the same time all succeed."""
    import concurrent.futures

    from lmlm.factstore.layout import norm_name

    client, store = served
    bad_entity = norm_name("Poisoned Person", "entity")
    key = store.layout.of(bad_entity).entity(bad_entity)
    store.r.set(key, "not a hash")  # WRONGTYPE for any read of this entity
    good = [{"prompt": cloze(t.entity, t.relation), "max_tokens": 6, "max_lookups": 1} for t in synthetic_triples()[:8]]
    bad = [{"prompt": "Kira", "seed": 2**70}, {"prompt": "Kira", "temperature": 5e-324},
           {"prompt": "Kira", "logit_bias": {"5": 1e39}}, {"prompt": "Kira", "max_lookups": 10**9},
           {"prompt": "Kira", "stop": [str(i) for i in range(100_000)]}]
    store_bad = {"prompt": cloze("Poisoned Person", "Birth City"), "max_tokens": 6}
    bodies = good[:4] + bad + [store_bad] + good[4:]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            rs = list(pool.map(lambda b: client.post("/v1/generate", json=b), bodies))
    finally:
        store.r.delete(key)
    assert [r.status_code for r in rs[4:9]] == [400, 400, 400, 400, 413]
    assert [r.json()["error"]["param"] for r in rs[4:9]] == ["seed", "temperature", "logit_bias", "max_lookups", "body"]
    assert rs[9].status_code == 500 and "WRONGTYPE" in rs[9].json()["error"]["message"]
    for r, b in zip(rs[:4] + rs[10:], good):
        assert r.status_code == 200, r.text
        assert r.json()["lookups"][0]["stage"] == "exact"


def _wait_for(client, path: str, pred, timeout_s: float = 30.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        h = client.get(path).json()
        if pred(h) or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


class _Stream:
    """A long streaming completion on the slow app, held open until closed."""

    def __init__(self, client, max_tokens: int = LONG_TOKENS):
        self.cm = client.stream("POST", "/slow/v1/completions",
                                json={"prompt": "Tell me a bio of Kira Dunn.", "max_tokens": max_tokens, "stream": True,
                                      "logit_bias": NO_EOS})
        self.r = self.cm.__enter__()
        self.lines = self.r.iter_lines()

    def first_event(self) -> str:
        for line in self.lines:
            if line.startswith("data: "):
                return line[6:]
        raise AssertionError("the stream ended before its first event")

    def close(self) -> None:
        self.cm.__exit__(None, None, None)


def test_join_queue_full_and_disconnect(served):
    client, _ = served
    start = client.get("/slow/healthz").json()
    before = start["cancelled"].get("disconnect", 0)
    a = _Stream(client)
    try:
        assert json.loads(a.first_event())["choices"][0]["text"] is not None
        # A short request joins the running batch and finishes while the long one still decodes.
        short = client.post("/slow/v1/generate", json={"prompt": "Kira", "max_tokens": 4})
        assert short.status_code == 200 and short.json()["batch_size"] == 2
        assert client.get("/slow/healthz").json()["running"] == 1
        # Both rows taken and the one queue slot filled: the next request is turned away at once.
        b = _Stream(client)
        c = None
        try:
            b.first_event()
            c = _Stream(client)
            assert _wait_for(client, "/slow/healthz", lambda h: h["waiting"] == 1)["waiting"] == 1
            full = client.post("/slow/v1/generate", json={"prompt": "Kira", "max_tokens": 4})
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["type"] == "overloaded"
        finally:
            b.close()
            if c is not None:
                c.close()
    finally:
        a.close()
    # Clients that went away: their rows (and the queued request) leave the batch.
    h = _wait_for(client, "/slow/healthz", lambda h: h["running"] == 0 and h["waiting"] == 0)
    assert (h["running"], h["waiting"]) == (0, 0), h
    assert h["uptime_s"] > start["uptime_s"], f"the replica was replaced (its counts start afresh): {start} -> {h}"
    assert h["cancelled"].get("disconnect", 0) - before == 3, h


def test_timeout_and_client_timeout_end_the_row(served):
    import httpx

    client, _ = served
    long = {"prompt": "Kira", "max_tokens": LONG_TOKENS, "logit_bias": NO_EOS}
    before = client.get("/slow/healthz").json()["cancelled"]
    r = client.post("/slow/v1/generate", json=long)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    h = _wait_for(client, "/slow/healthz", lambda h: h["running"] == 0)
    assert h["running"] == 0 and h["cancelled"].get("timeout", 0) - before.get("timeout", 0) == 1
    # A plain (not streamed) request whose client gives up: Serve cancels the handler, the row leaves.
    with pytest.raises(httpx.ReadTimeout):
        client.post("/slow/v1/generate", json=long, timeout=1.0)
    h = _wait_for(client, "/slow/healthz",
                  lambda h: h["running"] == 0 and h["cancelled"].get("disconnect", 0) > before.get("disconnect", 0))
    assert h["running"] == 0 and h["cancelled"].get("disconnect", 0) - before.get("disconnect", 0) == 1


def test_prometheus_metrics(served, ray_cluster):
    """The replica's metrics reach Ray's Prometheus endpoint (exported every few seconds)."""
    import time

    client, _ = served
    t = synthetic_triples()[2]
    assert client.post("/v1/generate", json={"prompt": cloze(t.entity, t.relation), "max_tokens": 4}).status_code == 200
    port = ray_cluster.nodes()[0]["MetricsExportPort"]
    names = ["queue_length", "running_batch_size", "generated_tokens_total", "tokens_per_second",
             "time_to_first_token_s_bucket", "lookups_total", "lookup_latency_s_bucket"]
    deadline, missing = time.monotonic() + 60, names
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        missing = [n for n in names if f"ray_lmlm_{n}{{" not in text]
        time.sleep(1)
    assert not missing, f"not exported: {missing}"
