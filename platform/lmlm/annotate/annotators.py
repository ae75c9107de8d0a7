"""The annotators behind one interface (base.py: `Annotator.annotate(texts) -> legacy-annotated texts`).

- `hf` (hf.py): a local transformers causal LM with a chat template, batched greedy decoding.
- `openai`: an OpenAI-compatible chat endpoint over httpx (concurrency limit, retries, timeouts).
The pipeline's validation (pipeline.annotate_rows) anchors every output's calls in its input (anchor.py).
- `trained`: the platform's own learned annotator: the span tagger (trained.py), the MiniLM
  encoder annotator (encoder.py) or the LoRA-fine-tuned SmolLM2 (generative.py), whichever
  `lmlm train-annotator` saved; `minilm`: the encoder annotator only.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlm.annotate.base import Annotator, AnnotatorError
from lmlm.annotate.config import AnnotateConfig, OpenAIAnnotatorConfig
from lmlm.annotate.hf import HFAnnotator
from lmlm.annotate.prompt import build_messages, load_prompt


class _Retryable(AnnotatorError):
    """A failure worth another try: a timeout, a connection error, 408/409/429/5xx."""


# --------------------------------------------------------------------------------------------


class OpenAIAnnotator(Annotator):
    name = "openai"
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
        self.annotator_id = f"openai:{cfg.model}"

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


def load_trained(path: str | Path, num_threads: int | None = None, kind: str | None = None) -> Annotator:
    """The annotator `lmlm train-annotator` saved in `path`: the kind its annotator.json names
    ("minilm", "generative", else the tagger); `kind` given: refuse any other."""
    meta = Path(path) / "annotator.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a trained annotator directory (no annotator.json; "
                                "`lmlm train-annotator` writes one)")
    found = json.loads(meta.read_text()).get("kind", "tagger")
    if kind and found != kind:
        raise ValueError(f"{path} holds a {found!r} annotator, not {kind!r}")
    if found == "minilm":
        from lmlm.annotate.encoder import EncoderAnnotator

        return EncoderAnnotator.load(path, num_threads=num_threads)
    if found == "generative":
        from lmlm.annotate.generative import GenerativeAnnotator

        return GenerativeAnnotator.load(path, num_threads=num_threads)
    from lmlm.annotate.trained import TrainedAnnotator

    return TrainedAnnotator.load(path, num_threads=num_threads)


def build_annotator(cfg: AnnotateConfig, num_threads: int | None = None) -> Annotator:
    """The annotator named by `cfg.annotator`, ready to call."""
    if cfg.annotator in ("trained", "minilm"):
        return load_trained(cfg.trained_path, num_threads, None if cfg.annotator == "trained" else "minilm")
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
    if cfg.annotator == "hf":
        return HFAnnotator(cfg.hf)
    if cfg.annotator == "openai":
        return OpenAIAnnotator(cfg.openai)
    raise ValueError(f"unknown annotator {cfg.annotator!r} (known: trained, minilm, hf, openai)")
