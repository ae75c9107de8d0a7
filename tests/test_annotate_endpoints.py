"""The `openai` annotator against a real local HTTP server, and the `hf` annotator with a tiny local model."""
from __future__ import annotations

import json
import threading
import time

import pytest
from http_harness import JSONHandler, serving

from lmlm.annotate import AnnotatorError, HFAnnotator, OpenAIAnnotator
from lmlm.annotate.config import HFAnnotatorConfig, OpenAIAnnotatorConfig
from lmlm.annotate.prompt import default_prompt
from lmlm.format import extract_triples


class ChatHandler(JSONHandler):
    """An OpenAI-style /chat/completions whose behaviour is chosen by a word in the document."""

    calls: dict[str, int] = {}
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        doc = body["messages"][-1]["content"]
        with self.lock:
            n = self.calls[doc] = self.calls.get(doc, 0) + 1
        if "SLOW" in doc:
            time.sleep(1.5)
        if "ALWAYS500" in doc or ("FLAKY" in doc and n == 1):
            return self._send(500, b'{"error": "boom"}')
        if "DENIED" in doc:
            return self._send(401, b'{"error": "bad key"}')
        if "GARBAGE" in doc:
            return self._send(200, b"<html>not json")
        content = "[dblookup('Mara Quell', 'Birth City') -> Lisbon] " + doc.split("\n")[-1]
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                                    "auth": self.headers.get("Authorization", "")}).encode())



@pytest.fixture
def chat_server():
    ChatHandler.calls = {}
    with serving(ChatHandler, "/v1") as url:
        yield url


def _openai(url: str, prompt: str, **kw) -> OpenAIAnnotator:
    cfg = OpenAIAnnotatorConfig(base_url=url, model="test", timeout_s=0.5, max_retries=2, backoff_s=0.01,
                                concurrency=4, prompt_path=prompt, **kw)
    return OpenAIAnnotator(cfg)


def test_openai_annotator_retries_then_records_each_failure(chat_server, chat_prompt):
    ann = _openai(chat_server, chat_prompt)
    docs = ["Mara Quell was born in Lisbon.", "FLAKY doc", "ALWAYS500 doc", "SLOW doc", "GARBAGE doc", "DENIED doc"]
    t0 = time.time()
    res = ann.annotate_safe(docs)
    assert time.time() - t0 < 20  # bounded by timeouts and retries, never hangs
    assert extract_triples(res[0][0])[0].value == "Lisbon" and res[0][1] is None
    assert res[1][0] is not None and ChatHandler.calls["FLAKY doc"] == 2  # one retry after a 500
    assert res[2] == (None, "http_500") and ChatHandler.calls["ALWAYS500 doc"] == 3
    assert res[3] == (None, "timeout")
    assert res[4] == (None, "bad_response")
    assert res[5] == (None, "http_401") and ChatHandler.calls["DENIED doc"] == 1  # no retry on 401
    with pytest.raises(AnnotatorError, match="http_500"):
        ann.annotate(["ALWAYS500 again"])


def test_openai_endpoint_and_key_from_environment(chat_server, chat_prompt, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server)
    monkeypatch.setenv("MY_KEY", "sk-test")
    ann = OpenAIAnnotator(OpenAIAnnotatorConfig(api_key_env="MY_KEY", timeout_s=2, prompt_path=chat_prompt))
    assert ann.headers["Authorization"] == "Bearer sk-test"
    assert extract_triples(ann.annotate(["x"])[0])
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="no endpoint"):
        OpenAIAnnotator(OpenAIAnnotatorConfig())
    bad = tmp_path / "p.json"
    bad.write_text('{"role": "system"}')
    with pytest.raises(ValueError, match="list of"):
        OpenAIAnnotator(OpenAIAnnotatorConfig(base_url=chat_server, prompt_path=str(bad)))


def test_openai_unreachable_endpoint_is_a_recorded_failure(chat_prompt):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _openai(f"http://127.0.0.1:{port}/v1", chat_prompt).annotate_safe(["doc"])
    assert res[0][0] is None and res[0][1].startswith("connect:")


# --------------------------------------------------------------------------------------------

def test_hf_annotator_keeps_the_chat_template_and_chunks_at_words(tiny_chat_model, chat_prompt):
    cfg = HFAnnotatorConfig(model_path=str(tiny_chat_model), prompt_path=chat_prompt,
                            max_new_tokens=6, max_prompt_tokens=400, batch_size=2, device="cpu")
    ann = HFAnnotator(cfg)
    long_doc = " ".join(["Mara Quell was born in Lisbon."] * 60)
    pieces = ann.pieces(long_doc)
    assert len(pieces) > 1 and "".join(pieces) == long_doc
    for p in pieces:
        prompt = ann.render(p)
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        assert ann.n_tokens(p) <= cfg.max_prompt_tokens
        assert set(p.split()) <= {"Mara", "Quell", "was", "born", "in", "Lisbon."}  # cut between words
    docs = ["Mara Quell was born in Lisbon.", long_doc, "short"]
    out = ann.annotate(docs)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    assert ann.annotate(docs) == out  # greedy: deterministic
    with pytest.raises(ValueError, match="not a local model directory"):
        HFAnnotator(HFAnnotatorConfig(model_path="/nonexistent/model"))


def test_empty_prompt_path_is_the_builtin_prompt(chat_server, tiny_chat_model, monkeypatch):
    monkeypatch.delenv("LMLM_DATA_DIR", raising=False)  # the built-in prompt needs no data directory
    ann = _openai(chat_server, "")
    assert ann.template == default_prompt() and ann.template[0]["role"] == "system"
    assert extract_triples(ann.annotate(["Mara Quell was born in Lisbon."])[0])[0].value == "Lisbon"
    hf = HFAnnotator(HFAnnotatorConfig(model_path=str(tiny_chat_model), device="cpu"))
    prompt = hf.render("Mara Quell was born in Lisbon.")
    assert prompt.startswith("<|im_start|>system\nYou annotate documents") and "[INSERT_TEXT]" not in prompt
    assert prompt.rstrip().endswith("Mara Quell was born in Lisbon.<|im_end|>\n<|im_start|>assistant")
