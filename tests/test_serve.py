"""The HTTP API against a real local Ray Serve app, a tiny saved model and a real FactStore."""
from __future__ import annotations

import json
from functools import partial

import httpx
import pytest

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN
from lmlm.generate.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer
from lmlm.netutil import free_port

pytestmark = pytest.mark.slow
TOKEN = "s3cret-test-token"


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve

    from lmlm.serve.app import ServeConfig, build_app, model_from_dir, store_at, tokenizer_from_dir

    d = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer(synthetic_texts(), out_dir=d)
    tiny_model(len(tok), max_len=128).save_pretrained(d)
    store = FactStore.open(FactStoreConfig())
    store.add_triples(synthetic_triples(), annotator="test")
    dead = FactStore.open(FactStoreConfig())  # closed after the second app starts: unreachable store
    cfg = ServeConfig(model_path=str(d), admin_token=TOKEN, max_tokens_limit=64, default_max_tokens=8,
                      max_batch_size=8, batch_wait_timeout_s=0.2, request_timeout_s=60, torch_threads=1,
                      defaults={"max_lookups": 2})
    loaders = dict(model_loader=partial(model_from_dir, str(d)), tokenizer_loader=partial(tokenizer_from_dir, str(d)))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, store_loader=partial(store_at, store.url, 1.0), **loaders), name="lmlm", route_prefix="/")
        serve.run(build_app(cfg, store_loader=partial(store_at, dead.url, 1.0), **loaders), name="dead",
                  route_prefix="/dead")
        dead.close()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, store
    finally:
        serve.shutdown()
        store.close()
        dead.close()


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


def test_generate_returns_lookup_trace(served):
    client, _ = served
    t = synthetic_triples()[1]
    r = client.post("/v1/generate", json={"prompt": cloze(t.entity, t.relation), "max_tokens": 4, "max_lookups": 0})
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["raw_text"].startswith(f" {t.value}{DB_END}")
    lk = body["lookups"][0]
    assert (lk["entity"], lk["relation"], lk["value"], lk["stage"]) == (t.entity, t.relation, t.value, "exact")
    assert lk["triple"] == {"entity": t.entity, "relation": t.relation, "value": t.value}


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
    after = client.post("/v1/generate", json=gen).json()["lookups"][0]
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
    ({"prompt": "Kira", "model": "gpt-4"}, "model", 404),
])
def test_bad_completion_requests_name_the_field(served, body, field, status):
    client, _ = served
    r = client.post("/v1/completions", json=body)
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
