"""The annotators behind one interface (base.py: `Annotator.annotate(texts) -> legacy-annotated texts`).

- `hf`: a local transformers causal LM with a chat template, batched greedy decoding.
- `openai`: an OpenAI-compatible chat endpoint over httpx (concurrency limit, retries, timeouts).
- `trained`: the platform's own learned annotator: the span tagger (trained.py) or the MiniLM
  encoder annotator (encoder.py), whichever `lmlm train-annotator` saved; `minilm`: the latter only.

"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlm.annotate.base import Annotator, AnnotatorError
from lmlm.annotate.config import AnnotateConfig, HFAnnotatorConfig, OpenAIAnnotatorConfig
from lmlm.annotate.prompt import PLACEHOLDER, default_prompt


class _Retryable(AnnotatorError):
    """A failure worth another try: a timeout, a connection error, 408/409/429/5xx."""


def load_prompt(path: str | Path) -> list[dict]:
    """Chat messages of a prompt file (`[{"role", "content"}, ...]`), validated. "" is the platform's
    own prompt (lmlm.annotate.prompt)."""
    if not path:
        return default_prompt()
    p = Path(path)
    try:
        messages = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"prompt file {p}: cannot read a JSON list of messages ({e})") from e
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError(f"prompt file {p}: expected a list of {{'role': str, 'content': str}} messages")
    return messages


def build_messages(template: list[dict], text: str) -> list[dict]:
    """The template with the document in place of [INSERT_TEXT] (or appended as a user message)."""
    if any(PLACEHOLDER in m["content"] for m in template):
        return [{**m, "content": m["content"].replace(PLACEHOLDER, text)} for m in template]
    return [*template, {"role": "user", "content": text}]


_WORD = re.compile(r"\S+")


def word_cut(text: str, n_words: int) -> int:
    """Character offset just after the n-th word (0 -> 0)."""
    if n_words <= 0:
        return 0
    for k, m in enumerate(_WORD.finditer(text), 1):
        if k == n_words:
            return m.end()
    return len(text)


def chunk_words(text: str, max_words: int) -> list[str]:
    """Split at word boundaries into pieces of at most max_words words; pieces keep their separators."""
    bounds = [m.start() for m in _WORD.finditer(text)][::max_words][1:]
    cuts = [0, *bounds, len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


# --------------------------------------------------------------------------------------------


class HFAnnotator(Annotator):
    name = "hf"

    def __init__(self, cfg: HFAnnotatorConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not cfg.model_path or not Path(cfg.model_path).is_dir():
            raise ValueError(f"hf annotator: model_path {cfg.model_path!r} is not a local model directory")
        self.cfg = cfg
        self.tok = AutoTokenizer.from_pretrained(cfg.model_path)
        if not self.tok.chat_template:
            raise ValueError(f"hf annotator: the tokenizer in {cfg.model_path} has no chat template")
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(device).eval()
        self.device = device
        self.template = load_prompt(cfg.prompt_path)
        self.annotator_id = f"hf:{Path(cfg.model_path).name}"

    def render(self, text: str) -> str:
        """The full prompt string: chat template applied around the document, generation prompt on."""
        return self.tok.apply_chat_template(build_messages(self.template, text), tokenize=False,
                                            add_generation_prompt=True)

    def n_tokens(self, text: str) -> int:
        return len(self.tok(self.render(text), add_special_tokens=False)["input_ids"])

    def pieces(self, text: str) -> list[str]:
        """The document cut at word boundaries so that each piece's whole prompt fits the budget.

        The cut is made in the document, never in the token sequence, so the chat template's
        opening and closing tokens always survive (the reference truncates tokens and loses them).
        """
        out, rest = [], text
        while rest.strip():
            n = len(_WORD.findall(rest))
            if self.n_tokens(rest) <= self.cfg.max_prompt_tokens:
                out.append(rest)
                break
            lo, hi = 1, n  # largest word count that fits, by bisection (at least one word)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.n_tokens(rest[:word_cut(rest, mid)]) <= self.cfg.max_prompt_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            cut = word_cut(rest, lo)
            out.append(rest[:cut])
            rest = rest[cut:]
        return out or [text]

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        return self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def annotate(self, texts: list[str]) -> list[str]:
        pieces = [(i, p) for i, t in enumerate(texts) for p in self.pieces(t)]
        outs: list[str] = []
        bs = max(1, self.cfg.batch_size)
        for b in range(0, len(pieces), bs):
            outs += self._generate([self.render(p) for _, p in pieces[b:b + bs]])
        joined = [[] for _ in texts]
        for (i, piece), out in zip(pieces, outs):
            lead = piece[:len(piece) - len(piece.lstrip())]  # keep the separator before each piece
            joined[i].append(lead + out.strip())
        return ["".join(parts) for parts in joined]


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
    ("minilm", else the tagger); `kind` given: refuse any other."""
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
