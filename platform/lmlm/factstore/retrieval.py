"""Lookups: exact key first, then `two_stage` (entity, then relation) or `reference` fuzzy matching.

two_stage: an entity that exists exactly is taken as is; otherwise the entity vector set proposes
`top_k` names (VSIM) and each is rescored with a character similarity (optimal-string-alignment edit
distance, from rapidfuzz), which catches one-edit typos that shift MiniLM's word pieces and rejects
absent names that merely sound alike. The relation is then chosen among that entity's few keys by cosine between cached
relation-label embeddings, in process (no second vector search).

Retrieval reads the store only through its public methods (`records`, `entity_records`,
`nearest_entities`, `nearest_keys`, `embedder`, `cfg`).
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from lmlm.format import UNKNOWN, Triple, normalize_key

from .config import FALLBACKS, check_thresholds
from .layout import InvalidFact, clean_name, norm_name
from .records import KeyRecord


class StoreReader(Protocol):
    """The reads retrieval makes of a store (`lmlm.factstore.store.FactStore`)."""

    cfg: Any      # FactStoreConfig
    embedder: Any  # embed.Embedder

    def records(self, keys: list[tuple[str, str]]) -> list[KeyRecord | None]: ...

    def entity_records(self, entities: list[str]) -> list[dict[str, KeyRecord]]: ...

    def lexical_candidates(self, names: list[str]) -> list[list[str]]: ...

    def nearest_entities(self, vectors, k: int) -> list[list[tuple[str, float]]]: ...

    def nearest_keys(self, vectors, k: int, entity: str | None = None) -> list[list[tuple[str, str, float]]]: ...


@dataclass
class Answer:
    """A lookup result: the value, the stored triple it came from, a score in [0, 1], the stage that
    matched ("exact", "entity": entity matched fuzzily, "relation": entity exact and relation fuzzy,
    "fallback": nothing accepted) and the provenance of the value."""

    value: str
    triple: Triple | None
    score: float
    stage: str
    provenance: dict = field(default_factory=dict)


def osa_distance(a: str, b: str, limit: int = 3) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment); `limit` + 1 when above
    `limit` (rapidfuzz stops early there)."""
    return OSA.distance(a, b, score_cutoff=limit)


def entity_similarity(query: str, name: str, cos: float) -> float:
    """Combined similarity of a query entity to a stored name, in [0, 1].

    Character similarity 1 - d/len decides (a one-edit typo of a 12-letter name: 0.92; a different
    surname: < 0.85); MiniLM's cosine alone cannot, since a typo splits a name into other word pieces
    and names of different people share pieces. The cosine only breaks ties between candidates.
    """
    limit = 3
    d = osa_distance(query, name, limit)
    # beyond the limit the distance is not known (rapidfuzz stops early): no character similarity,
    # else a long string a few edits past the limit would look like a near match
    char = 0.0 if d > limit else max(0.0, 1.0 - d / max(len(query), len(name), 1))
    return 0.9 * char + 0.1 * max(cos, 0.0)


_STOP = frozenset("a an and at by for from in is of on or the to was with".split())
_WORD = re.compile(r"[a-z0-9]+")


def _stems(s: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(s) if w not in _STOP}


@functools.lru_cache(maxsize=100_000)  # the relation stage scores the same few labels again and again
def lexical_bonus(query: str, label: str) -> float:
    """Added to the label cosine in the relation stage (both normalised): 0.2 x the Jaccard overlap
    of crude stems (5-letter prefixes of content words: "employed by" / "employer", "awards won" /
    "award"), plus 0.5 when the query is an acronym of the label's words in any order, stop-word
    initials optional ("dob" / "birth date"), which MiniLM cannot read."""
    a, l = _stems(query), _stems(label)
    b = 0.2 * len(a & l) / len(a | l) if a and l else 0.0
    words = [w for w in _WORD.findall(label) if w not in _STOP]
    if 2 <= len(query) <= 5 and query.isalpha() and len(words) >= 2:
        stop_initials = {w[0] for w in _STOP}
        letters = [c for c in query if not (c in stop_initials and c not in {w[0] for w in words})]
        if sorted(letters) == sorted(w[0] for w in words):
            b += 0.5
    return b


def _answer(rec: KeyRecord, score: float, stage: str, extra: dict | None = None) -> Answer:
    v = rec.chosen()
    prov = rec.provenance(v)
    if extra:
        prov.update(extra)
    return Answer(v.value, Triple(rec.entity, rec.relation, v.value), float(score), stage, prov)


def _fallback(policy: str, best: Answer | None, reason: str, query: tuple[str, str]) -> Answer | None:
    if policy == "abstain":
        return None
    if policy == "top1_anyway" and best is not None:
        best.stage = "fallback"
        best.provenance["reason"] = reason
        return best
    return Answer(UNKNOWN, None, float(best.score) if best else 0.0, "fallback",
                  {"reason": reason, "query": list(query),
                   "best": [best.triple.entity, best.triple.relation, best.value] if best and best.triple else None})


class StageTimer:
    """Seconds spent per lookup stage, added into a caller's dict (None: not timed)."""

    def __init__(self, into: dict | None):
        self.into = into
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.into is not None:
            now = time.perf_counter()
            self.into[stage] = self.into.get(stage, 0.0) + now - self.t
            self.t = now


def lookup_batch(store: StoreReader, queries, *, mode, top_k, fallback, timings: dict | None = None,
                 **thresholds) -> list[Answer | None]:
    """`thresholds`: entity_threshold / relation_threshold (two_stage) or cosine_threshold (reference);
    None: the config's; a threshold the mode does not compare against is refused. `timings`: a dict
    that gets the seconds spent per stage added (exact, entity_exact, lexical, contained, embed, vector_search,
    relation)."""
    check_thresholds(mode, thresholds)
    clock = StageTimer(timings)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    cfg = store.cfg
    top_k = top_k or cfg.top_k
    out: list[Answer | None] = [None] * len(queries)
    parsed: dict[int, tuple[str, str]] = {}
    for i, q in enumerate(queries):
        try:
            parsed[i] = (norm_name(q[0], "entity"), norm_name(q[1], "relation"))
        except (InvalidFact, TypeError, IndexError) as e:
            out[i] = _fallback(fallback, None, f"invalid query: {e}", tuple(map(str, q))[:2])
    misses = []
    for i, rec in zip(parsed, store.records(list(parsed.values())) if parsed else []):
        if rec is None:
            misses.append(i)
        else:
            out[i] = _answer(rec, 1.0, "exact")
    clock.lap("exact")
    if misses:
        fuzzy = _two_stage if mode == "two_stage" else _reference
        for i, a in zip(misses, fuzzy(store, [parsed[i] for i in misses], top_k=top_k, fallback=fallback,
                                      clock=clock, **thresholds)):
            out[i] = a
    return out


def _reference(store, qs, *, top_k, fallback, clock, cosine_threshold=None) -> list[Answer | None]:
    """docs/method.md §3: embed "{entity} {relation}", top-k inner product, accept cosine >= 0.6, top-1."""
    if not store.cfg.key_index:
        raise ValueError("reference mode needs the '{entity} {relation}' vector set: create the store "
                         "with FactStoreConfig(key_index=True)")
    thr = store.cfg.cosine_threshold if cosine_threshold is None else cosine_threshold
    vecs = store.embedder.encode([f"{E} {R}" for E, R in qs])
    clock.lap("embed")
    best = [max(cands, key=lambda c: c[2]) if cands else None for cands in store.nearest_keys(vecs, top_k)]
    clock.lap("vector_search")
    recs = iter(store.records([b[:2] for b in best if b]))
    out = []
    for (E, R), b in zip(qs, best):
        rec = next(recs) if b else None
        cand = None
        if rec is not None:
            cand = _answer(rec, b[2], "relation" if b[0] == E else "entity", {"cosine": b[2]})
        if cand is not None and b[2] >= thr:
            out.append(cand)
        else:
            out.append(_fallback(fallback, cand, f"no key with cosine >= {thr}", (E, R)))
    return out


def lexical_match(query: str, names: list[str], threshold: float) -> tuple[str, float] | None:
    """The one stored name within one edit of `query` (optimal string alignment), if its character
    similarity 1 - d/len reaches `threshold`; None when there is none, or two (ambiguous: left to
    the embedding stage)."""
    best = process.extract(query, names, scorer=OSA.distance, score_cutoff=1, limit=2)
    if not best or (len(best) == 2 and best[1][1] == best[0][1]):
        return None
    name, d, _ = best[0]
    sim = 1.0 - d / max(len(query), len(name), 1)
    return (name, sim) if sim >= threshold else None


CONTAINED_MAX_WORDS = 12  # a longer query is a run of text, not a name with a few words after it
_EDGE_PUNCT = " ,.;:!?()[]\"'"


def name_spans(query: str) -> list[str]:
    """The runs of whole words of `query` that could be a stored name written inside it, longest
    first, then leftmost; edge punctuation stripped. At least two words, or one word of five
    characters or more; never the whole query; none for a query of over CONTAINED_MAX_WORDS words."""
    words = query.split()
    if len(words) > CONTAINED_MAX_WORDS:
        return []
    out = []
    for n in range(len(words) - 1, 0, -1):
        for a in range(len(words) - n + 1):
            span = " ".join(words[a:a + n]).strip(_EDGE_PUNCT)
            if span and (n >= 2 or len(span) >= 5) and span not in out:
                out.append(span)
    return out


def contained_names(store, queries: list[str]) -> list[tuple[str, dict]]:
    """Per normalised query name, the longest stored name it contains as a run of whole words and that
    name's records: a generated query often copies the name and the words after it ("beyoncé giselle
    knowles-carter (born september 4, 1981)"). ("", {}) when there is none, or when the query holds
    two names neither of which is inside the other (ambiguous). One pipelined round for all."""
    spans = [name_spans(q) for q in queries]
    flat = list(dict.fromkeys(x for ss in spans for x in ss))
    found = dict(zip(flat, store.entity_records(flat))) if flat else {}
    out = []
    for ss in spans:
        hits = [x for x in ss if found[x]]
        if hits and all(f" {h} " in f" {hits[0]} " for h in hits):
            out.append((hits[0], found[hits[0]]))
        else:
            out.append(("", {}))
    return out


def _two_stage(store, qs, *, top_k, fallback, clock, entity_threshold=None,
               relation_threshold=None) -> list[Answer | None]:
    """Entity: the stored name if it exists as typed; else the one name within one edit found
    through the lexical blocks (no model); else the longest stored name the query contains as whole
    words (contained_names); else the entity vector set's candidates rescored by
    `entity_similarity`. Relation: among that entity's labels, by cosine of cached label
    embeddings; a query label stored as is needs no embedding at all."""
    cfg = store.cfg
    e_thr = cfg.entity_threshold if entity_threshold is None else entity_threshold
    r_thr = cfg.relation_threshold if relation_threshold is None else relation_threshold
    recs = store.entity_records([E for E, _ in qs])  # per query: {relation: record} of its entity
    clock.lap("entity_exact")
    # entity[i] = (stored normalised name, entity score); rejected[i]: the best candidate below threshold
    entity: dict[int, tuple[str, float]] = {i: (qs[i][0], 1.0) for i, h in enumerate(recs) if h}
    rejected: dict[int, tuple[str, float]] = {}
    need = [i for i, h in enumerate(recs) if not h]
    if need:
        for i, names in zip(need, store.lexical_candidates([qs[i][0] for i in need])):
            if (m := lexical_match(qs[i][0], names, e_thr)) is not None:
                entity[i] = m
        need = [i for i in need if i not in entity]
        clock.lap("lexical")
    if need:
        for i, (name, h) in zip(need, contained_names(store, [qs[i][0] for i in need])):
            if h:
                entity[i], recs[i] = (name, round(len(name) / len(qs[i][0]), 4)), h
        need = [i for i in need if i not in entity]
        clock.lap("contained")
    if need:
        evecs = store.embedder.encode([qs[i][0] for i in need])
        clock.lap("embed")
        for i, cands in zip(need, store.nearest_entities(evecs, top_k)):
            scored = [(name, entity_similarity(qs[i][0], name, cos)) for name, cos in cands]
            if not scored:
                continue
            name, s = max(scored, key=lambda c: (c[1], c[0]))
            (entity if s >= e_thr else rejected)[i] = (name, s)
        clock.lap("vector_search")
    fetch = [i for i in range(len(qs))
             if not recs[i] and (i in entity or (fallback == "top1_anyway" and i in rejected))]
    if fetch:
        for i, h in zip(fetch, store.entity_records([(entity.get(i) or rejected[i])[0] for i in fetch])):
            recs[i] = h
        clock.lap("entity_exact")
    # Relation stage: cosine between the query label and this entity's labels (cached embeddings);
    # one model call for every string not cached yet.
    asked = [i for i, (_, R) in enumerate(qs) if recs[i] and R not in recs[i]]
    labels = sorted({R for i in asked for R in recs[i]})
    rvec = relation_vectors(store, list(dict.fromkeys([qs[i][1] for i in asked] + labels)))
    clock.lap("embed")
    qvec = {i: rvec[qs[i][1]] for i in asked}
    lvec = rvec
    out: list[Answer | None] = []
    for i, (E, R) in enumerate(qs):
        h = recs[i]
        ent = entity.get(i) or rejected.get(i)
        if not h or ent is None:
            out.append(_fallback(fallback, None, "entity not found", (E, R)))
            continue
        rels = list(h)
        if R in h:
            j, score = rels.index(R), 1.0
        else:
            cos = [min(1.0, float(lvec[r] @ qvec[i]) + lexical_bonus(R, r)) for r in rels]
            j = int(np.argmax(cos))
            score = cos[j]
        e_ok, r_ok = i in entity, score >= r_thr
        stage = "relation" if ent[1] == 1.0 and ent[0] == E else "entity"
        ans = _answer(h[rels[j]], ent[1] * score, stage, {"entity_score": ent[1], "relation_score": score})
        if e_ok and r_ok:
            out.append(ans)
        else:
            why = "entity below threshold" if not e_ok else f"no relation with cosine >= {r_thr}"
            out.append(_fallback(fallback, ans, why, (E, R)))
    clock.lap("relation")
    return out


def relation_vectors(store, rels: list[str]) -> dict[str, np.ndarray]:
    """Per relation label, its embeddings in each of `cfg.relation_templates` side by side, scaled so
    that a dot product is the mean cosine over the templates (one model call, cached strings free)."""
    tmpls = store.cfg.relation_templates
    if not rels:
        return {}
    vecs = store.embedder.encode([t.format(relation=r) for r in rels for t in tmpls])
    vecs = vecs.reshape(len(rels), -1) / np.sqrt(len(tmpls))
    return dict(zip(rels, vecs))


def search(store: StoreReader, text: str, k: int, entity: str | None) -> list[Answer]:
    """Top-k keys by cosine to free text; with `entity`, only that entity's keys."""
    if not store.cfg.key_index:
        raise ValueError("search needs the key vector set: create the store with FactStoreConfig(key_index=True)")
    E = clean_name(entity, "entity")[1] if entity is not None else None
    q = store.embedder.encode([normalize_key(text)])
    cands = sorted(store.nearest_keys(q, k, entity=E)[0], key=lambda c: -c[2])[:k]
    cands = [c for c in cands if E is None or c[0] == E]
    return [_answer(rec, cos, "entity", {"cosine": cos})
            for (_, _, cos), rec in zip(cands, store.records([c[:2] for c in cands])) if rec is not None]
