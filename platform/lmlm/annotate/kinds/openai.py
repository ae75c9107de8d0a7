"""The `openai` kind: an OpenAI-compatible chat endpoint.

One request path, `complete` (aiohttp; retries with backoff for timeouts, connection errors, 408/409/
429/5xx; a short reason for every failure), serves both ways the kind runs:

- over a corpus, Ray Data's HTTP request processor (lmlm.annotate.processor) sends the rows, and its
  stage opens a `StageSession` per batch: the session starts every row's request at once (the stage
  alone would await them one after another), retries them here, and answers each with
  {"content", "error", "worker"}, so a document that keeps failing is a recorded reject,
  never a failed Ray task;
- in a process (`OpenAIAnnotator.annotate_safe`: the benchmark's loop, text files), a batch of
  documents with `concurrency` requests in flight.
"""
from __future__ import annotations

import asyncio
import json
import os

from lmlm.annotate.base import Annotator, AnnotatorError
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.annotate.prompt import build_messages, load_prompt

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Retryable(AnnotatorError):
    """A failure worth another try: a timeout, a connection error, 408/409/429/5xx."""


def openai_annotator_id(cfg: OpenAIAnnotatorConfig) -> str:
    return f"openai:{cfg.model}"


def endpoint(cfg: OpenAIAnnotatorConfig) -> tuple[str, dict]:
    """(chat completions URL, request headers) of `cfg`; base URL and key may come from the environment."""
    base = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "")
    if not base:
        raise ValueError("openai annotator: no endpoint (set openai.base_url or OPENAI_BASE_URL)")
    key = cfg.api_key or os.environ.get(cfg.api_key_env, "")
    return base.rstrip("/") + "/chat/completions", {"Authorization": f"Bearer {key}"} if key else {}


def request_body(cfg: OpenAIAnnotatorConfig, template: list[dict], text: str) -> dict:
    """The chat request for one document."""
    return {"model": cfg.model, "messages": build_messages(template, text), "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens}


def open_session(cfg: OpenAIAnnotatorConfig, headers: dict):
    import aiohttp

    return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s))


async def _post(session, url: str, body: dict) -> str:
    """One request: the message content, or _Retryable, or AnnotatorError (not worth a retry)."""
    import aiohttp

    try:
        async with session.post(url, json=body) as r:
            status, text = r.status, await r.text()
    except asyncio.TimeoutError as e:
        raise _Retryable("timeout") from e
    except aiohttp.ClientError as e:
        raise _Retryable(f"connect:{type(e).__name__}") from e
    if status in RETRY_STATUS:
        raise _Retryable(f"http_{status}", text[:200])
    if status != 200:
        raise AnnotatorError(f"http_{status}", text[:200])
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise AnnotatorError("bad_response", repr(e)) from e
    if not isinstance(content, str):
        raise AnnotatorError("bad_response", "message content is not a string")
    return content


async def complete(session, url: str, body: dict, cfg: OpenAIAnnotatorConfig) -> str:
    """The completion of one request: `max_retries` more tries after a retryable failure, waiting
    min(backoff_max_s, backoff_s * 2**k) x uniform(0.5, 1) before retry k + 1 (equal jitter); raises
    AnnotatorError with the last failure's reason."""
    from tenacity import (AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt,
                          wait_exponential, wait_random_exponential)

    tries = cfg.max_retries + 1
    half, cap = cfg.backoff_s / 2, cfg.backoff_max_s / 2
    wait = wait_exponential(multiplier=half, max=cap) + wait_random_exponential(multiplier=half, max=cap)
    try:
        async for attempt in AsyncRetrying(stop=stop_after_attempt(tries), wait=wait,
                                           retry=retry_if_exception_type(_Retryable)):
            with attempt:
                return await _post(session, url, body)
    except RetryError as e:
        raise AnnotatorError(e.last_attempt.exception().reason, f"after {tries} tries to {url}") from None
    raise AssertionError("unreachable")  # pragma: no cover


class OpenAIAnnotator(Annotator):
    kind = "openai"

    def __init__(self, cfg: OpenAIAnnotatorConfig):
        self.cfg = cfg
        self.url, self.headers = endpoint(cfg)
        self.template = load_prompt(cfg.prompt_path)
        self.annotator_id = openai_annotator_id(cfg)

    async def _all(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        limit = asyncio.Semaphore(max(1, self.cfg.concurrency))

        async def one(text: str):
            async with limit:
                try:
                    return await complete(session, self.url, request_body(self.cfg, self.template, text), self.cfg), None
                except AnnotatorError as e:
                    return None, e.reason

        async with open_session(self.cfg, self.headers) as session:
            return list(await asyncio.gather(*(one(t) for t in texts)))

    def annotate_safe(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        return asyncio.run(self._all(texts)) if texts else []

    def annotate(self, texts: list[str]) -> list[str]:
        results = self.annotate_safe(texts)
        for out, reason in results:
            if out is None:
                raise AnnotatorError(reason or "failed")
        return [out for out, _ in results]  # type: ignore[misc]


class _Reply:
    """What the HTTP request stage reads from a response: status 200 and one JSON row."""

    status, reason = 200, "OK"

    def __init__(self, row: dict):
        self.row = row

    async def json(self) -> dict:
        return self.row

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class StageSession:
    """The `session_factory` of the HTTP request processor (lmlm.annotate.processor). The stage calls
    `post(url, headers=..., data=json)` for every row of a batch before awaiting the first; each call
    starts its request here at once, so a batch's rows are in flight together (the processor's batch
    size is `openai.concurrency`). A row's payload is {"text", "send"}: `body_of(text)` is the request,
    and a row with send false (not a document) is answered without one."""

    def __init__(self, cfg: OpenAIAnnotatorConfig, body_of):
        self.cfg, self.body_of = cfg, body_of
        self.url, self.headers = endpoint(cfg)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    async def __aenter__(self):
        self.session = open_session(self.cfg, self.headers)
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        return False

    def post(self, url: str, headers: dict | None = None, data: str = "{}"):
        return asyncio.ensure_future(self._answer(json.loads(data)))

    async def _answer(self, payload: dict) -> _Reply:
        row = {"content": "", "error": "", "worker": self.worker}
        if payload["send"]:
            try:
                row["content"] = await complete(self.session, self.url, self.body_of(payload["text"]), self.cfg)
            except AnnotatorError as e:
                row["error"] = e.reason
        return _Reply(row)
