"""Training the tagger of trained.py from seed annotations (legacy or special-token annotated text).

Each seed call is aligned to the words right after it that state its value (exact match of the
normalised words, else the first..last value word within a short window; calls whose value is not
stated nearby are counted as unaligned and skipped). Mentions of a call's entity in the document
become ENT spans. `evaluate` scores any annotator against gold annotations (triple P/R/F1). The
job entrypoint, `train_annotator(cfg)`, is in train_job.py.
"""
from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmlm.annotate.metrics import score
from lmlm.annotate.trained import (ENT, NEAREST, OTHER, SUBJECT, TaggerNet, TrainedAnnotator, entity_for,
                                   hash_features, spans, token_features, tokenize)
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


# --------------------------------------------------------------------------------------------
# Training


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


def _relation_vocab(annotated: list[str], min_count: int, max_relations: int) -> dict[str, str]:
    """normalised relation -> tag name, for relations frequent enough to get their own tag."""
    counts, surface = relation_counts(annotated)
    return {k: surface[k] for k, c in counts.most_common(max_relations) if c >= min_count}


def seed_fingerprint(annotated: list[str], *settings) -> str:
    """The provenance fingerprint of an annotator trained on these seeds with these settings."""
    return f"{zlib.crc32(json.dumps([annotated[:50], *settings]).encode()):08x}"


@contextmanager
def torch_threads(n: int | None):
    """torch intra-op threads set to n (None/0: unchanged) inside the block, restored after it."""
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def fit(annotated: list[str], *, threads: int | None = 1, **kw) -> TrainedAnnotator:
    """Train a tagger from seed documents in legacy (or special-token) annotated form.

    Keyword arguments: see `_fit`. `threads` torch threads while training (restored afterwards):
    tiny sparse steps gain nothing from more threads and stall badly on a busy machine.
    """
    with torch_threads(threads):
        return _fit(annotated, **kw)


def _fit(annotated: list[str], *, buckets: int = 1 << 17, dim: int = 32, epochs: int = 6, lr: float = 0.02,
         batch_tokens: int = 512, min_relation_count: int = 3, max_relations: int = 64, seed: int = 0,
         span_weight: float = 1.0, log=print) -> TrainedAnnotator:
    if not annotated:
        raise ValueError("train-annotator: no seed documents with annotations")
    torch.manual_seed(seed)
    rel_surface = _relation_vocab(annotated, min_relation_count, max_relations)
    rel_tag = {k: k for k in rel_surface}  # tag name = the normalised relation
    docs = [align(a, rel_tag) for a in annotated]
    n_calls = sum(len(d.calls) for d in docs)
    if n_calls == 0:
        raise ValueError("train-annotator: no seed call could be aligned to its value in the text")
    tags = ["O", "B-" + ENT, "I-" + ENT]
    names = list(rel_surface) + ([OTHER] if any(n == OTHER for d in docs for _, _, n in spans(d.tags)) else [])
    for name in names:
        tags += ["B-" + name, "I-" + name]
    tag_id = {t: i for i, t in enumerate(tags)}

    rules = select_entity_rules(docs, rel_tag)

    ids_l, y_l, prev_l = [], [], []
    for d in docs:
        if d.tokens:
            ids_l.append(hash_features(token_features([w for w, _, _ in d.tokens]), buckets))
            y = [tag_id[t] for t in d.tags]
            y_l += y
            prev_l += [len(tags)] + y[:-1]
    ids, y, prev = torch.cat(ids_l), torch.tensor(y_l), torch.tensor(prev_l)
    net = TaggerNet(buckets, dim, len(tags))
    opts = [torch.optim.SparseAdam([net.emb.weight], lr=lr),
            torch.optim.Adam([p for n_, p in net.named_parameters() if not n_.startswith("emb.")], lr=lr)]
    n = len(y)
    weight = torch.full((len(tags),), float(span_weight))
    weight[0] = 1.0  # "O"
    for epoch in range(epochs):
        perm, total = torch.randperm(n), 0.0
        for b in range(0, n, batch_tokens):
            idx = perm[b:b + batch_tokens]
            logits = net.out(net.hidden(ids[idx])) + net.trans[prev[idx]]
            loss = nn.functional.cross_entropy(logits, y[idx], weight=weight)
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.item() * len(idx)
        log(f"train-annotator: epoch {epoch + 1}/{epochs} loss {total / n:.4f}")

    # kNN memory for the shared OTHER tag: hidden vector of each rare value's first word
    knn = None
    if OTHER in names:
        vecs, labels = [], []
        net.eval()
        with torch.no_grad():
            for d in docs:
                rare = [(i, t) for i, _, t in d.calls if normalize_key(t.relation) not in rel_tag]
                if rare:
                    h = net.hidden(hash_features(token_features([w for w, _, _ in d.tokens]), buckets)).numpy()
                    for i, t in rare:
                        vecs.append(h[i] / (np.linalg.norm(h[i]) + 1e-8))
                        labels.append(t.relation)
        knn = (np.stack(vecs).astype(np.float32), labels) if vecs else None

    fingerprint = seed_fingerprint(annotated, buckets, dim, epochs, seed)
    meta = {"tags": tags, "relation_names": {**rel_surface}, "entity_rules": rules, "buckets": buckets,
            "dim": dim, "fingerprint": fingerprint, "seed_docs": len(annotated), "seed_calls_aligned": n_calls,
            "seed_calls_unaligned": sum(d.unaligned for d in docs)}
    return TrainedAnnotator(net.eval(), meta, knn)


# --------------------------------------------------------------------------------------------
# The job entrypoint


def evaluate(annotator, annotated: list[str], texts: list[str] | None = None) -> dict:
    """Triple P/R/F1 of `annotator` on documents whose gold annotations are `annotated`.

    The input is each document's lookup-free text (`texts`, else the gold text with its calls
    stripped); both matching rules of metrics.py are reported.
    """
    from lmlm.format import strip_lookups

    plain = texts if texts is not None else [strip_lookups(a) for a in annotated]
    pred = [to_special(o).triples for o in annotator.annotate(plain)]
    gold = [to_special(a).triples for a in annotated]
    return {rule: score(pred, gold, rule) for rule in ("exact", "entity_value")}
