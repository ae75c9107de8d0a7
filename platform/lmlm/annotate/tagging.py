"""Word tags to lookup calls, shared by the span-tagging kinds (kinds/tagger.py, kinds/minilm.py).

Words are `tokenize`'s. Tags are BIO: `O`, `B-/I-ENT` (mentions of entities) and `B-/I-<name>` for
value spans, a name per relation (`OTHER`: relations without their own tag). `viterbi` decodes the
best BIO-valid path (`bio_mask`); `calls_from_tags` turns value spans into triples, the entity
being the ENT span an entity rule picks (SUBJECT: the document's first; NEAREST: the nearest to the
left); `insert_calls` writes calls into the text right before their values.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from lmlm.format import Triple, render_legacy

TOKEN_RE = re.compile(r"\w+(?:[.\-]\w+)*|[^\w\s]")
OTHER = "OTHER"
ENT = "ENT"
SUBJECT, NEAREST = "subject", "nearest"


def tokenize(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in TOKEN_RE.finditer(text)]


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    out, i = [], 0
    while i < len(tags):
        if tags[i].startswith("B-"):
            name, j = tags[i][2:], i + 1
            while j < len(tags) and tags[j] == "I-" + name:
                j += 1
            out.append((i, j, name))
            i = j
        else:
            i += 1
    return out


def entity_for(ent_spans: list[tuple[int, int]], value_start: int, rule: str) -> tuple[int, int] | None:
    if not ent_spans:
        return None
    if rule == NEAREST:
        left = [s for s in ent_spans if s[1] <= value_start]
        return left[-1] if left else ent_spans[0]
    return ent_spans[0]


def calls_from_tags(text: str, tokens: list[tuple[str, int, int]], tags: list[str], rules: dict[str, str],
                    relation_of) -> list[tuple[tuple[int, int], Triple]]:
    """Calls of a tagged text: each value span with the relation `relation_of(i, j, tag name)` gives
    (None: skipped) and the ENT span that the entity rule of its tag (else rules["*"]) picks."""
    found = spans(tags)
    ents = [(i, j) for i, j, name in found if name == ENT]
    out = []
    for i, j, name in found:
        if name == ENT:
            continue
        relation = relation_of(i, j, name)
        ent = entity_for(ents, i, rules.get(name, rules["*"]))
        if relation is None or ent is None:
            continue
        start, end = tokens[i][1], tokens[j - 1][2]
        entity, value = text[tokens[ent[0]][1]:tokens[ent[1] - 1][2]], text[start:end]
        if "]" in value or "\n" in value or "\n" in entity:
            continue  # not expressible as a legacy call
        out.append(((start, end), Triple(entity, relation, value)))
    return out


def insert_calls(text: str, calls: list[tuple[tuple[int, int], Triple]]) -> str:
    """The text with a legacy call right before each value span (calls in text order)."""
    parts, pos = [], 0
    for (start, _), triple in calls:
        parts += [text[pos:start], render_legacy(triple), " "]
        pos = start
    parts.append(text[pos:])
    return "".join(parts)


def bio_mask(tags: list[str]) -> np.ndarray:
    """(tags + 1, tags) additive transition mask: -1e9 where I-x follows anything but B-x / I-x
    (the last row is the start of the text)."""
    n = len(tags)
    mask = np.zeros((n + 1, n), dtype=np.float32)
    for t, tag in enumerate(tags):
        if tag.startswith("I-"):
            ok = {"B-" + tag[2:], tag}
            mask[[p for p in range(n) if tags[p] not in ok] + [n], t] = -1e9
    return mask


def viterbi(em: np.ndarray, trans: np.ndarray) -> list[int]:
    """Best tag path of emission scores em (n, tags) under transition scores trans (tags + 1, tags),
    each row of em + trans normalised to log-probabilities (a Markov tagger's local model)."""
    s = em[:, None, :] + trans[None]  # (n, prev, tag)
    s = (s - torch.from_numpy(s).logsumexp(2, keepdim=True).numpy())
    n_tags = em.shape[1]
    delta = s[0, n_tags]
    back = np.zeros((len(em), n_tags), dtype=np.int64)
    for i in range(1, len(em)):
        cand = delta[:, None] + s[i, :n_tags]
        back[i] = cand.argmax(0)
        delta = cand.max(0)
    path = [int(delta.argmax())]
    for i in range(len(em) - 1, 0, -1):
        path.append(int(back[i][path[-1]]))
    return path[::-1]
