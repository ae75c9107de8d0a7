"""T-REx-style knowledge completion (docs/method.md §7): cloze left contexts as prompts, exact match of the
gold answer within the first generated words.

Prompts. The standard model and the LMLM with lookups off get the left context as is. The LMLM with
lookups on is forced to start a lookup right after it: the prompt is `context.rstrip() + " " +
<|db_entity|>` and the model writes the query; generation pauses at `<|db_return|>`, the store
answers, the model continues.

Exact match (our decision). `em` = the gold answer's words occur contiguously within the first
`n_words` (5) words of the *display* continuation (lookup blocks removed, docs/method.md §6), comparing
lower-cased word tokens (`\\w+`); a gold answer longer than the window must begin at the first
generated word. This is the paper's rule and treats every setting alike. Because an LMLM states a
fact by looking it up, `em_with_lookup` additionally counts a question as answered when the value
returned to the model's own first lookup equals the gold answer (normalize_key); it is reported
separately, never mixed into `em`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from lmlm.format import DB_ENTITY, normalize_key


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def exact_match(continuation: str, gold: str, n_words: int = 5) -> bool:
    """Gold answer's words contiguously inside the first n_words words (or, when the answer has more
    words than that, starting at the first word)."""
    g = _words(gold)
    if not g:
        raise ValueError(f"exact_match: gold answer {gold!r} has no words")
    if n_words < 1:
        raise ValueError(f"exact_match: n_words must be >= 1, got {n_words}")
    w = _words(continuation)[: max(n_words, len(g))]
    return any(w[i:i + len(g)] == g for i in range(0, min(n_words, len(w) - len(g) + 1)))


def completion_prompt(context: str, force_lookup: bool) -> str:
    return context.rstrip() + " " + DB_ENTITY if force_lookup else context


def display_continuation(result: Any) -> str:
    """The generated text without lookups: the engine's display text, which also strips a block
    the prompt opened (`<|db_entity|>` of a forced lookup) however many lookups follow it."""
    text = getattr(result, "display_text", None)
    if not isinstance(text, str):
        raise TypeError(f"display_continuation: result {type(result).__name__} has no display_text string")
    return text


def lookup_values(result: Any) -> list[str]:
    """Values returned to the model's lookups, in order, from a generation result."""
    out = []
    for lk in getattr(result, "lookups", None) or []:
        value = lk.get("value") if isinstance(lk, dict) else getattr(lk, "value", None)
        if value is not None:
            out.append(str(value))
    return out


@dataclass
class ClozeOutcome:
    name: str
    relation: str
    answer: str
    continuation: str
    em: bool
    em_with_lookup: bool


def score_completion(clozes: Sequence[Any], results: Sequence[Any], prompts: Sequence[str],
                     n_words: int = 5) -> tuple[dict, list[ClozeOutcome]]:
    """EM aggregates over clozes (objects with name, relation, answer) and their generations."""
    if not (len(clozes) == len(results) == len(prompts)):
        raise ValueError(f"score_completion: {len(clozes)} clozes, {len(results)} results, {len(prompts)} prompts")
    outcomes = []
    for c, r, p in zip(clozes, results, prompts):
        cont = display_continuation(r)
        em = exact_match(cont, c.answer, n_words)
        values = lookup_values(r)
        by_lookup = bool(values) and normalize_key(values[0]) == normalize_key(c.answer)
        outcomes.append(ClozeOutcome(c.name, c.relation, c.answer, cont, em, em or by_lookup))
    return summarize(outcomes), outcomes


def summarize(outcomes: Sequence[ClozeOutcome]) -> dict:
    n = len(outcomes)
    return {"em": sum(o.em for o in outcomes) / n if n else 0.0,
            "em_with_lookup": sum(o.em_with_lookup for o in outcomes) / n if n else 0.0, "n": n}
