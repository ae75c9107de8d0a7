"""Seed annotations as training targets for the span-tagging kinds (kinds/tagger.py, kinds/minilm.py).

Each seed call is aligned to the words right after it that state its value (exact match of the
normalised words, else the first..last value word within a short window; calls whose value is not
stated nearby are counted as unaligned and skipped). Mentions of a call's entity in the document
become ENT spans. `relation_counts` says which relations are frequent enough for a tag of their
own; `select_entity_rules` picks, per tag, the entity rule (tagging.SUBJECT or NEAREST) that names
the seed calls' entities more often.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from lmlm.annotate.tagging import ENT, NEAREST, OTHER, SUBJECT, entity_for, spans, tokenize
from lmlm.format import Triple, normalize_key, strip_with_spans, to_special


@dataclass
class Aligned:
    """One seed document: plain text, its tokens, a tag per token, and its calls (value span, triple)."""

    text: str
    tokens: list[tuple[str, int, int]]
    tags: list[str]
    calls: list[tuple[int, int, Triple]]  # token span [i, j) of the value, and the seed triple
    unaligned: int


def _find_span(keys: list[str], k: int, value_keys: list[str], window: int = 6) -> tuple[int, int] | None:
    """Token span of the value at or just after token k: exact, else first..last value word."""
    m = len(value_keys)
    if not m:
        return None
    for j in range(k, min(k + window, len(keys))):
        if keys[j:j + m] == value_keys:
            return j, j + m
    for j in range(k, min(k + window, len(keys))):
        if keys[j] == value_keys[0]:
            for e in range(min(j + m + window, len(keys)) - 1, j, -1):
                if keys[e] == value_keys[-1]:
                    return j, e + 1
            return (j, j + 1) if m == 1 else None
    return None


def _mentions(keys: list[str], entity: str) -> list[tuple[int, int]]:
    target = normalize_key(entity).split()
    out, m = [], len(target)
    if not m:
        return out
    joined = [k.split() for k in keys]
    for i in range(len(keys)):
        acc: list[str] = []
        for j in range(i, min(i + m, len(keys))):
            acc += joined[j]
            if acc == target:
                out.append((i, j + 1))
                break
            if len(acc) >= m or acc != target[:len(acc)]:
                break
    return out


def align(annotated: str, relation_tag: dict[str, str] | None = None) -> Aligned:
    """Word tags for one seed document (relation_tag maps a normalised relation to its tag name)."""
    stripped = strip_with_spans(annotated)  # the plain text the annotator sees (strip_lookups)
    text = stripped.text
    tokens = tokenize(text)
    keys = [normalize_key(w) for w, _, _ in tokens]
    tags = ["O"] * len(tokens)
    calls, unaligned = [], 0
    starts = [s for _, s, _ in tokens]
    for lk in stripped.lookups:
        triple = lk.triple
        k = int(np.searchsorted(starts, lk.at))
        span = _find_span(keys, k, [normalize_key(w) for w, _, _ in tokenize(triple.value)])
        if span is None or any(t != "O" for t in tags[span[0]:span[1]]):
            unaligned += 1
            continue
        calls.append((span[0], span[1], triple))
    for _, _, triple in calls:
        for i, j in _mentions(keys, triple.entity):
            if all(t == "O" for t in tags[i:j]):
                tags[i:j] = ["B-" + ENT] + ["I-" + ENT] * (j - i - 1)
    for i, j, triple in calls:
        name = (relation_tag or {}).get(normalize_key(triple.relation), OTHER)
        tags[i:j] = ["B-" + name] + ["I-" + name] * (j - i - 1)
    return Aligned(text, tokens, tags, calls, unaligned)


def align_seeds(annotated: list[str], relation_tag: dict[str, str]) -> tuple[list[Aligned], dict]:
    """Every seed aligned, and the counts a trained annotator's meta keeps ({"seed_docs",
    "seed_calls_aligned", "seed_calls_unaligned"}); refuses seeds of which no call aligns."""
    docs = [align(a, relation_tag) for a in annotated]
    counts = {"seed_docs": len(annotated), "seed_calls_aligned": sum(len(d.calls) for d in docs),
              "seed_calls_unaligned": sum(d.unaligned for d in docs)}
    if counts["seed_calls_aligned"] == 0:
        raise ValueError("train-annotator: no seed call could be aligned to its value in the text")
    return docs, counts


def relation_counts(annotated: list[str]) -> tuple[Counter, dict[str, str]]:
    """Seed calls per normalised relation, and each relation's most frequent surface form."""
    counts: Counter = Counter()
    surface: dict[str, Counter] = defaultdict(Counter)
    for doc in annotated:
        for t in to_special(doc).triples:
            k = normalize_key(t.relation)
            counts[k] += 1
            surface[k][t.relation] += 1
    return counts, {k: c.most_common(1)[0][0] for k, c in surface.items()}


def select_entity_rules(docs: list[Aligned], rel_tag: dict[str, str]) -> dict[str, str]:
    """Per tag name (and "*" for all), the entity rule that names the seed calls' entities more often:
    the document's subject (first ENT span) or the nearest ENT span to the left of the value."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for d in docs:
        ents = [(i, j) for i, j, n in spans(d.tags) if n == ENT]
        keys = [normalize_key(w) for w, _, _ in d.tokens]
        for i, _, triple in d.calls:
            name = rel_tag.get(normalize_key(triple.relation), OTHER)
            for rule in (SUBJECT, NEAREST):
                e = entity_for(ents, i, rule)
                if e and " ".join(keys[e[0]:e[1]]) == normalize_key(triple.entity):
                    votes[name][rule] += 1
                    votes["*"][rule] += 1
    rules = {name: (NEAREST if v[NEAREST] > v[SUBJECT] else SUBJECT) for name, v in votes.items()}
    rules.setdefault("*", SUBJECT)
    return rules
