"""Evaluation on any annotated corpus (real text): perplexity and knowledge completion.

Perplexity (lmlm.eval.perplexity, docs/method.md §7): the LMLM reads each document with its true
lookups, the standard model the same document with the lookups removed; normalized perplexity
divides both NLL sums by the tokens of the lookup-free text, so the two are comparable. Per-kind
losses (text, entity, relation, marker, value) say where each model pays.

Knowledge completion: every lookup whose value the text restates word for word right after it
is a question. The prompt is the lookup-free text before the restated value (its last
`context_chars` characters); the answer is the value; exact match is lmlm.eval.completion's rule
(the value's words within the first generated words). Three settings: the LMLM forced to look up
(its query answered by the store), the LMLM with lookups off, the standard model.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

from lmlm.format import strip_with_spans


@dataclass
class RealTextEvalConfig:
    max_docs: int = 0  # evaluation documents used (0: all)
    batch_size: int = 8  # sequences per forward pass (perplexity windows, generation)
    max_len: int = 1024  # perplexity window length in tokens (at most the model's context)
    completion: int = 200  # completion questions, spread evenly over the documents' values (0: none)
    context_chars: int = 1200  # characters of text before the value kept in each prompt
    cloze_max_new_tokens: int = 12  # tokens generated per question (a lookup's query included)
    completion_words: int = 5  # the value must occur within this many generated words
    repetition_penalty: float = 1.0  # generation (1.0: off; 1.2 penalises copying names into queries)
    max_lookups: int = 2  # lookups per generated answer

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_len", "context_chars", "cloze_max_new_tokens", "completion_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.max_docs < 0 or self.completion < 0:
            raise ValueError("max_docs and completion must be >= 0")


@dataclass(frozen=True)
class Cloze:
    """A completion question from annotated text (`name`, `relation` as score_completion expects)."""

    doc: int  # index of the document
    name: str  # the lookup's entity
    relation: str
    answer: str  # the lookup's value, restated by the text at the end of `prompt`
    prompt: str


def corpus_clozes(documents: Sequence[str], limit: int, context_chars: int) -> list[Cloze]:
    """Up to `limit` questions, spread evenly over all restated values of `documents` (in order)."""
    clozes = []
    for i, doc in enumerate(documents):
        stripped = strip_with_spans(doc)
        for lk in stripped.lookups:
            if lk.value_span is None or not lk.triple.value.strip():
                continue
            start = lk.value_span[0]
            prompt = stripped.text[max(0, start - context_chars):start].rstrip()
            if prompt:
                clozes.append(Cloze(i, lk.triple.entity, lk.triple.relation, lk.triple.value, prompt))
    if limit and len(clozes) > limit:
        step = len(clozes) / limit
        clozes = [clozes[int(k * step)] for k in range(limit)]
    return clozes


def _losses(prefix: str, report) -> dict:
    return {f"{k}_loss_{prefix}": getattr(report, f"{k}_loss") for k in ("text", "entity", "relation", "marker", "value")}


def evaluate_corpus(lmlm, standard, documents: Sequence[str], store: Any, cfg: RealTextEvalConfig,
                    log=print) -> dict:
    """Perplexity and completion of the LMLM and the standard model (lmlm.eval.scoring.EvalModel)
    on annotated `documents`; `store` answers the LMLM's lookups (None: no completion with lookups).
    Returns flat keys (docs, ppl_*, *_loss_*, completion_*) plus the full perplexity reports."""
    from lmlm.eval.perplexity import evaluate_perplexity
    from lmlm.eval.scoring import cloze_em

    docs = [d for d in documents if d and d.strip()]
    if cfg.max_docs:
        docs = docs[:cfg.max_docs]
    if not docs:
        raise ValueError("documents: no non-empty annotated document to evaluate")
    out: dict[str, Any] = {"docs": len(docs)}
    t = time.perf_counter()
    reports = {}
    for em in (lmlm, standard):
        log(f"evaluate: perplexity of the {em.kind} model on {len(docs)} documents")
        max_len = min(cfg.max_len, getattr(em.model.config, "max_position_embeddings", cfg.max_len))
        reports[em.kind] = evaluate_perplexity(em.model, em.tokenizer, docs, em.kind, max_len, cfg.batch_size)
    lm, std = reports["lmlm"], reports["standard"]
    out.update(ppl_normalized_lmlm=lm.normalized_ppl, ppl_normalized_standard=std.normalized_ppl,
               ppl_static_lmlm=lm.static_ppl, ppl_static_standard=std.static_ppl,
               **_losses("lmlm", lm), **_losses("standard", std),
               tokens_plain=lm.n_plain_tokens, tokens_trained_lmlm=lm.n_trained_tokens,
               perplexity_s=round(time.perf_counter() - t, 1))
    clozes = corpus_clozes(docs, cfg.completion, cfg.context_chars) if cfg.completion else []
    if clozes:
        t = time.perf_counter()
        settings = [("completion_em_standard", standard, False), ("completion_em_lmlm_db_off", lmlm, False)]
        if store is not None:
            settings.append(("completion_em_lmlm", lmlm, True))
        for key, em, lookups in settings:
            summary, _ = cloze_em(em, store, clozes, cfg, lookups)
            out[key] = summary["em"]
            if lookups:
                out["completion_em_with_lookup_lmlm"] = summary["em_with_lookup"]
        out.update(completion_n=len(clozes), completion_s=round(time.perf_counter() - t, 1))
    out["reports"] = {"lmlm": lm.to_dict(), "standard": std.to_dict()}
    return out


def summary_line(result: dict) -> str:
    """The result without the full reports, as one JSON line (the command's last line)."""
    from lmlm.eval.results import json_safe

    flat = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "reports"}
    return json.dumps(json_safe(flat))



def load_corpus_facts(store: Any, documents: Sequence[str], doc_ids: Sequence[str], annotator: str,
                      batch_id: str | None = None) -> dict:
    """Put every valid lookup of the documents into `store`: {"loaded", "replayed", "invalid"}.
    With `batch_id` the load is exactly once: run again, it writes nothing."""
    from lmlm.corpus import document_triples

    triples, ids = document_triples(documents, doc_ids)
    result = store.load(triples, ids, annotator=annotator, batch_id=batch_id, on_invalid="skip")
    return {"loaded": result.written, "replayed": result.replayed, "invalid": result.invalid}


@dataclass
class CorpusEvalJob:
    """`lmlm eval perplexity`: both models on one annotated corpus file."""

    lmlm: str  # the LMLM: HF directory or pretraining run directory
    standard: str  # the standard model
    corpus: str  # annotated corpus (reference JSON layout, JSONL, Parquet)
    store_url: str | None = None  # a store holding the corpus's facts; None: a private one loaded from it
    out: str | None = None  # also write the full result here (JSON)
    max_docs: int = 0
    completion: int = 200
    batch_size: int = 8


def run_corpus_eval(job: CorpusEvalJob, log=print) -> dict:
    import dataclasses
    from pathlib import Path

    from lmlm.corpus import read_corpus
    from lmlm.eval.scoring import load_model
    from lmlm.factstore import FactStore, FactStoreConfig

    records = [r for r in read_corpus(job.corpus) if r.annotated_text.strip()]
    if not records:
        raise ValueError(f"corpus: {job.corpus} holds no annotated document")
    if job.max_docs:
        records = records[:job.max_docs]
    cfg = RealTextEvalConfig(max_docs=0, completion=job.completion, batch_size=job.batch_size)
    docs = [r.annotated_text for r in records]
    lmlm, standard = load_model(job.lmlm, "lmlm"), load_model(job.standard, "standard")
    # Real relations are free-form labels, not a person's attributes: embed them as they are.
    store_cfg = FactStoreConfig(url=job.store_url, relation_templates=["{relation}"])
    with FactStore.open(store_cfg) as store:
        if job.store_url is None:
            loaded = load_corpus_facts(store, docs, [r.id for r in records], "corpus:" + Path(job.corpus).name)
            log(f"evaluate: a private store with the corpus's facts: {json.dumps(loaded)}")
        result = evaluate_corpus(lmlm, standard, docs, store, cfg, log)
    result["corpus"] = str(job.corpus)
    if job.out:
        from lmlm.eval.results import write_json

        write_json(result | {"job": dataclasses.asdict(job)}, job.out)
    return result
