"""The `openai` kind: an OpenAI-compatible chat endpoint over httpx (concurrency limit, retries with
backoff, timeouts). A document that keeps failing is a rejected document, never a failed batch.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from lmlm.annotate.base import Annotator, AnnotatorError
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.annotate.prompt import build_messages, load_prompt


class _Retryable(AnnotatorError):
    """A failure worth another try: a timeout, a connection error, 408/409/429/5xx."""


def openai_annotator_id(cfg: OpenAIAnnotatorConfig) -> str:
    return f"openai:{cfg.model}"


class OpenAIAnnotator(Annotator):
    kind = "openai"
    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, cfg: OpenAIAnnotatorConfig):
        import httpx

        base = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "")
        if not base:
            raise ValueError("openai annotator: no endpoint (set openai.base_url or OPENAI_BASE_URL)")
        key = cfg.api_key or os.environ.get(cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cfg = cfg
        self.url = base.rstrip("/") + "/chat/completions"
        self.client = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), headers=headers)
        self.template = load_prompt(cfg.prompt_path)
        self.annotator_id = openai_annotator_id(cfg)

    def _call(self, text: str) -> str:
        """The completion of one document: `max_retries` more tries after a retryable failure, waiting
        min(backoff_max_s, backoff_s * 2**k) x uniform(0.5, 1) before retry k + 1 (equal jitter)."""
        from tenacity import (RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential,
                              wait_random_exponential)

        body = {"model": self.cfg.model, "messages": build_messages(self.template, text),
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        tries = self.cfg.max_retries + 1
        half, cap = self.cfg.backoff_s / 2, self.cfg.backoff_max_s / 2
        wait = wait_exponential(multiplier=half, max=cap) + wait_random_exponential(multiplier=half, max=cap)
        retrying = Retrying(stop=stop_after_attempt(tries), retry=retry_if_exception_type(_Retryable), wait=wait)
        try:
            return retrying(self._post, body)
        except RetryError as e:
            raise AnnotatorError(e.last_attempt.exception().reason, f"after {tries} tries to {self.url}") from None

    def _post(self, body: dict) -> str:
        """One request: the message content, or _Retryable, or AnnotatorError (not worth a retry)."""
        import httpx

        try:
            r = self.client.post(self.url, json=body)
        except httpx.TimeoutException as e:
            raise _Retryable("timeout") from e
        except httpx.TransportError as e:
            raise _Retryable(f"connect:{type(e).__name__}") from e
        if r.status_code in self.RETRY_STATUS:
            raise _Retryable(f"http_{r.status_code}", r.text[:200])
        if r.status_code != 200:
            raise AnnotatorError(f"http_{r.status_code}", r.text[:200])
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise AnnotatorError("bad_response", repr(e)) from e
        if not isinstance(content, str):
            raise AnnotatorError("bad_response", "message content is not a string")
        return content

    def _safe(self, text: str) -> tuple[str | None, str | None]:
        try:
            return self._call(text), None
        except AnnotatorError as e:
            return None, e.reason

    def annotate_safe(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        if not texts:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(texts)))) as pool:
            return list(pool.map(self._safe, texts))

    def annotate(self, texts: list[str]) -> list[str]:
        results = self.annotate_safe(texts)
        for out, reason in results:
            if out is None:
                raise AnnotatorError(reason or "failed")
        return [out for out, _ in results]  # type: ignore[misc]

    def close(self) -> None:
        self.client.close()
