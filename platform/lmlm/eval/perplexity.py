"""Perplexity of LMLMs and standard models on held-out annotated text (docs/method.md §7).

Each document is scored on its own as `EOS doc EOS` (windows of `max_len` tokens overlapping by one,
so every token is predicted exactly once), with the token kinds of lmlm.train.masks:

- static (oracle) perplexity: exp(NLL summed over the trained tokens / number of trained tokens),
  with the true lookups (and their values) in context;
- normalized perplexity: exp(the same NLL sum / number of tokens of the same documents with every
  lookup removed), comparable to the standard model's ordinary perplexity on the lookup-free text;
- mean NLL on value, entity, relation and text tokens. For the standard model "value" tokens are
  the words that restate a removed lookup's value (their `value_span` in lmlm.format.strip_with_spans).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lmlm.format import strip_lookups
from lmlm.tokenizer import lookup_token_ids
from lmlm.train.data import encode_document
from lmlm.train.masks import EVAL_GROUPS, NOT_TRAINED, PAD, TEXT, masked_nll


@dataclass
class PerplexityReport:
    variant: str  # "lmlm" or "standard": which tokens count as trained
    n_documents: int
    static_ppl: float  # exp(NLL / trained tokens), true lookups in context
    normalized_ppl: float  # exp(NLL / tokens of the lookup-free text)
    nll_sum: float  # NLL summed over the trained tokens
    n_trained_tokens: int
    n_plain_tokens: int  # tokens of the documents with lookups removed (+1 EOS each)
    value_loss: float  # mean NLL on value tokens (nan when there are none)
    entity_loss: float
    relation_loss: float
    marker_loss: float  # <|db_entity|>, <|db_relationship|>, <|db_return|>
    text_loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def _windows(ids: np.ndarray, kinds: np.ndarray, max_len: int):
    """Windows of at most max_len tokens overlapping by one token: every target appears once."""
    start = 0
    while start < len(ids) - 1:
        yield ids[start:start + max_len], kinds[start:start + max_len]
        start += max_len - 1


@torch.no_grad()
def evaluate_perplexity(model, tokenizer, documents: Sequence[str], variant: str = "lmlm",
                        max_len: int | None = None, batch_size: int = 8) -> PerplexityReport:
    """Perplexities and per-kind losses of `model` on annotated `documents` (legacy or special form).

    variant "lmlm": the model reads the documents with their lookups; "standard": it reads the
    lookup-free text (its normalized perplexity is its ordinary perplexity).
    """
    if variant not in NOT_TRAINED:
        raise ValueError(f"variant: {variant!r} is not one of {sorted(NOT_TRAINED)}")
    docs = [d for d in documents if d and d.strip()]
    if not docs:
        raise ValueError("documents: no non-empty document to evaluate")
    max_len = max_len or getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    if max_len < 2:
        raise ValueError(f"max_len: {max_len} must be at least 2")
    device = next(model.parameters()).device
    token_ids = lookup_token_ids(tokenizer, require_eos=True)
    eos, pad = token_ids.eos, token_ids.pad
    was_training = model.training
    model.eval()

    windows, n_plain = [], 0
    for doc in docs:
        ids, kinds = encode_document(doc, tokenizer, variant, token_ids)
        ids = np.concatenate([[eos], ids, [eos]]).astype(np.int64)
        kinds = np.concatenate([[TEXT], kinds, [TEXT]]).astype(np.int8)
        windows += list(_windows(ids, kinds, max_len))
        n_plain += len(tokenizer(strip_lookups(doc), add_special_tokens=False)["input_ids"]) + 1

    total = torch.zeros(2 + 2 * len(EVAL_GROUPS), dtype=torch.float64, device=device)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))  # little padding per batch
    for b in range(0, len(order), batch_size):
        batch = [windows[i] for i in order[b:b + batch_size]]
        L = max(len(w[0]) for w in batch)
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        kinds = torch.full((len(batch), L), PAD, dtype=torch.int8)
        for j, (wi, wk) in enumerate(batch):
            ids[j, :len(wi)] = torch.from_numpy(wi)
            kinds[j, :len(wk)] = torch.from_numpy(wk)
        attn = (kinds != PAD).long()
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        total += masked_nll(logits, ids, kinds, variant, EVAL_GROUPS)[2]
    if was_training:
        model.train()
    nll_sum, n_trained, *per_group = total.tolist()
    sums, counts = dict(zip(EVAL_GROUPS, per_group[0::2])), dict(zip(EVAL_GROUPS, per_group[1::2]))
    n_trained = int(n_trained)

    def mean(k: str) -> float:
        return sums[k] / counts[k] if counts[k] else float("nan")

    return PerplexityReport(
        variant=variant, n_documents=len(docs),
        static_ppl=math.exp(nll_sum / max(n_trained, 1)), normalized_ppl=math.exp(nll_sum / max(n_plain, 1)),
        nll_sum=nll_sum, n_trained_tokens=n_trained, n_plain_tokens=n_plain,
        value_loss=mean("value"), entity_loss=mean("entity"), relation_loss=mean("relation"),
        marker_loss=mean("marker"), text_loss=mean("text"))


def evaluate_pair(lmlm_model, standard_model, tokenizer, documents: Sequence[str], batch_size: int = 8,
                  max_len: int | None = None, standard_tokenizer=None) -> dict:
    """Both models on the same held-out annotated documents: the LMLM with its lookups, the standard
    model on the lookup-free text. Flat keys for reports plus both full reports."""
    lm = evaluate_perplexity(lmlm_model, tokenizer, documents, "lmlm", max_len, batch_size)
    std = evaluate_perplexity(standard_model, standard_tokenizer or tokenizer, documents, "standard", max_len, batch_size)
    return pair_summary(lm, std)


def pair_summary(lm: PerplexityReport, std: PerplexityReport) -> dict:
    """evaluate_pair's flat keys and both reports, from the two models' reports."""
    return {"ppl_normalized_lmlm": lm.normalized_ppl, "ppl_static_lmlm": lm.static_ppl,
            "ppl_standard": std.normalized_ppl, "value_loss_lmlm": lm.value_loss,
            "value_loss_standard": std.value_loss, "entity_loss_lmlm": lm.entity_loss,
            "relation_loss_lmlm": lm.relation_loss, "lmlm": lm.to_dict(), "standard": std.to_dict()}


def evaluate_model_dir(model_dir, documents: Sequence[str], variant: str, max_len: int | None = None,
                       batch_size: int = 8) -> PerplexityReport:
    """`evaluate_perplexity` of an HF export directory (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"model_dir: {model_dir} is not an HF model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return evaluate_perplexity(model, AutoTokenizer.from_pretrained(str(model_dir)), documents, variant,
                               max_len, batch_size)
