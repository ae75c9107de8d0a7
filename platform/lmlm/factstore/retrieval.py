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

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import OSA

from lmlm.format import UNKNOWN, Triple, normalize_key

from .config import FALLBACKS, check_thresholds
from .layout import InvalidFact, clean_name, norm_name
from .records import KeyRecord

if TYPE_CHECKING:
    from .store import FactStore


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
    d = osa_distance(query, name)
    char = max(0.0, 1.0 - d / max(len(query), len(name), 1))
    return 0.9 * char + 0.1 * max(cos, 0.0)


_STOP = frozenset("a an and at by for from in is of on or the to was with".split())
_WORD = re.compile(r"[a-z0-9]+")
_LEX: dict[tuple[str, str], float] = {}


def _stems(s: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(s) if w not in _STOP}


def lexical_bonus(query: str, label: str) -> float:
    """Added to the label cosine in the relation stage (both normalised): 0.2 x the Jaccard overlap
    of crude stems (5-letter prefixes of content words: "employed by" / "employer", "awards won" /
    "award"), plus 0.5 when the query is an acronym of the label's words in any order, stop-word
    initials optional ("dob" / "birth date"), which MiniLM cannot read."""
    key = (query, label)
    b = _LEX.get(key)
    if b is None:
        a, l = _stems(query), _stems(label)
        b = 0.2 * len(a & l) / len(a | l) if a and l else 0.0
        words = [w for w in _WORD.findall(label) if w not in _STOP]
        if 2 <= len(query) <= 5 and query.isalpha() and len(words) >= 2:
            stop_initials = {w[0] for w in _STOP}
            letters = [c for c in query if not (c in stop_initials and c not in {w[0] for w in words})]
            if sorted(letters) == sorted(w[0] for w in words):
                b += 0.5
        if len(_LEX) >= 100_000:
            _LEX.clear()
        _LEX[key] = b
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


def lookup_batch(store: "FactStore", queries, *, mode, top_k, fallback, **thresholds) -> list[Answer | None]:
    """`thresholds`: entity_threshold / relation_threshold (two_stage) or cosine_threshold (reference);
    None: the config's; a threshold the mode does not compare against is refused."""
    check_thresholds(mode, thresholds)
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
    if misses:
        fuzzy = _two_stage if mode == "two_stage" else _reference
        for i, a in zip(misses, fuzzy(store, [parsed[i] for i in misses], top_k=top_k, fallback=fallback,
                                      **thresholds)):
            out[i] = a
    return out


def _reference(store, qs, *, top_k, fallback, cosine_threshold=None) -> list[Answer | None]:
    """LMLM.md §3: embed "{entity} {relation}", top-k inner product, accept cosine >= 0.6, top-1."""
    if not store.cfg.key_index:
        raise ValueError("reference mode needs the '{entity} {relation}' vector set: create the store "
                         "with FactStoreConfig(key_index=True)")
    thr = store.cfg.cosine_threshold if cosine_threshold is None else cosine_threshold
    vecs = store.embedder.encode([f"{E} {R}" for E, R in qs])
    best = [max(cands, key=lambda c: c[2]) if cands else None for cands in store.nearest_keys(vecs, top_k)]
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


def _two_stage(store, qs, *, top_k, fallback, entity_threshold=None, relation_threshold=None) -> list[Answer | None]:
    cfg = store.cfg
    e_thr = cfg.entity_threshold if entity_threshold is None else entity_threshold
    r_thr = cfg.relation_threshold if relation_threshold is None else relation_threshold
    recs = store.entity_records([E for E, _ in qs])  # per query: {relation: record} of its entity
    need = [i for i, h in enumerate(recs) if not h]
    # One model call for the query strings and the labels of entities found exactly; labels of
    # fuzzily found entities come from the cache (a second call only for labels never seen).
    known = sorted({R for h in recs for R in h})
    tmpl = cfg.relation_template
    texts = [qs[i][0] for i in need] + [tmpl.format(relation=R) for _, R in qs] + [tmpl.format(relation=r) for r in known]
    vecs = store.embedder.encode(texts)
    evecs, rvecs = vecs[: len(need)], vecs[len(need): len(need) + len(qs)]
    # entity[i] = (stored normalised name, entity score); rejected[i]: the best candidate below threshold
    entity: dict[int, tuple[str, float]] = {i: (qs[i][0], 1.0) for i, h in enumerate(recs) if h}
    rejected: dict[int, tuple[str, float]] = {}
    if need:
        for i, cands in zip(need, store.nearest_entities(evecs, top_k)):
            scored = [(name, entity_similarity(qs[i][0], name, cos)) for name, cos in cands]
            if not scored:
                continue
            name, s = max(scored, key=lambda c: (c[1], c[0]))
            (entity if s >= e_thr else rejected)[i] = (name, s)
        fetch = [i for i in need if i in entity or (fallback == "top1_anyway" and i in rejected)]
        for i, h in zip(fetch, store.entity_records([(entity.get(i) or rejected[i])[0] for i in fetch])):
            recs[i] = h
    # Relation stage: cosine between the query label and this entity's labels (cached embeddings).
    labels = sorted({R for h in recs for R in h})
    lvec = dict(zip(labels, _label_vectors(store, labels))) if labels else {}
    out: list[Answer | None] = []
    for i, (E, R) in enumerate(qs):
        h = recs[i]
        ent = entity.get(i) or rejected.get(i)
        if not h or ent is None:
            out.append(_fallback(fallback, None, "entity not found", (E, R)))
            continue
        rels = list(h)
        cos = np.array([1.0 if r == R else min(1.0, float(lvec[r] @ rvecs[i]) + lexical_bonus(R, r))
                        for r in rels])
        j = int(np.argmax(cos))
        e_ok, r_ok = i in entity, cos[j] >= r_thr
        stage = "relation" if ent[1] == 1.0 and ent[0] == E else "entity"
        ans = _answer(h[rels[j]], ent[1] * float(cos[j]), stage,
                      {"entity_score": ent[1], "relation_score": float(cos[j])})
        if e_ok and r_ok:
            out.append(ans)
        else:
            why = "entity below threshold" if not e_ok else f"no relation with cosine >= {r_thr}"
            out.append(_fallback(fallback, ans, why, (E, R)))
    return out


def _label_vectors(store, labels: list[str]) -> np.ndarray:
    return store.embedder.encode([store.cfg.relation_template.format(relation=r) for r in labels])


def search(store: "FactStore", text: str, k: int, entity: str | None) -> list[Answer]:
    """Top-k keys by cosine to free text; with `entity`, only that entity's keys."""
    if not store.cfg.key_index:
        raise ValueError("search needs the key vector set: create the store with FactStoreConfig(key_index=True)")
    E = clean_name(entity, "entity")[1] if entity is not None else None
    q = store.embedder.encode([normalize_key(text)])
    cands = sorted(store.nearest_keys(q, k, entity=E)[0], key=lambda c: -c[2])[:k]
    cands = [c for c in cands if E is None or c[0] == E]
    return [_answer(rec, cos, "entity", {"cosine": cos})
            for (_, _, cos), rec in zip(cands, store.records([c[:2] for c in cands])) if rec is not None]
