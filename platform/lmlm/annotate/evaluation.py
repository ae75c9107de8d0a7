"""Scoring annotators: triple precision / recall / F1 of predicted annotations against reference ones.

    evaluate_annotator(annotator, gold_annotated, texts=None) -> {"exact": scores, "entity_value": scores}
    score_triples(predicted, gold, rule) -> {"precision", "recall", "f1", "tp", "predicted", "gold"}

Matching is per document, as multisets of keys built with `lmlm.format.normalize_key`:
- `exact`: (entity, relation, value) all equal after normalisation;
- `entity_value`: (entity, value) equal, the relation label ignored (labels are free text and two
  annotators rarely pick the same words for the same fact).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal

from lmlm.format import Triple, normalize_key, strip_lookups, to_special

Rule = Literal["exact", "entity_value"]
RULES: tuple[Rule, ...] = ("exact", "entity_value")


def triple_key(t: Triple, rule: Rule = "exact") -> tuple[str, ...]:
    if rule == "exact":
        return normalize_key(t.entity), normalize_key(t.relation), normalize_key(t.value)
    if rule == "entity_value":
        return normalize_key(t.entity), normalize_key(t.value)
    raise ValueError(f"unknown matching rule {rule!r} (known: exact, entity_value)")


def score_triples(predicted: Iterable[list[Triple]], gold: Iterable[list[Triple]], rule: Rule = "exact") -> dict:
    """Micro-averaged P/R/F1 over documents; `predicted` and `gold` are parallel per-document lists."""
    tp = n_pred = n_gold = 0
    for p, g in zip(predicted, gold, strict=True):
        cp, cg = Counter(triple_key(t, rule) for t in p), Counter(triple_key(t, rule) for t in g)
        tp += sum((cp & cg).values())
        n_pred += sum(cp.values())
        n_gold += sum(cg.values())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "predicted": n_pred, "gold": n_gold}


def evaluate_annotator(annotator, annotated: list[str], texts: list[str] | None = None) -> dict:
    """Triple P/R/F1 of `annotator` on documents whose gold annotations are `annotated`, by both rules.
    The input is each document's lookup-free text (`texts`, else the gold text with its calls stripped)."""
    plain = texts if texts is not None else [strip_lookups(a) for a in annotated]
    pred = [to_special(o).triples for o in annotator.annotate(plain)]
    gold = [to_special(a).triples for a in annotated]
    return {rule: score_triples(pred, gold, rule) for rule in RULES}
