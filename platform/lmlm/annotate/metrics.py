"""Triple precision / recall / F1 of predicted annotations against reference ones.

Matching is per document, as multisets of keys built with `lmlm.format.normalize_key`:
- `exact`: (entity, relation, value) all equal after normalisation;
- `entity_value`: (entity, value) equal, the relation label ignored (labels are free text and two
  annotators rarely pick the same words for the same fact).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal

from lmlm.format import Triple, normalize_key

Rule = Literal["exact", "entity_value"]


def triple_key(t: Triple, rule: Rule = "exact") -> tuple[str, ...]:
    if rule == "exact":
        return normalize_key(t.entity), normalize_key(t.relation), normalize_key(t.value)
    if rule == "entity_value":
        return normalize_key(t.entity), normalize_key(t.value)
    raise ValueError(f"unknown matching rule {rule!r} (known: exact, entity_value)")


def score(predicted: Iterable[list[Triple]], gold: Iterable[list[Triple]], rule: Rule = "exact") -> dict:
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
