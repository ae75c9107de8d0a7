"""FactScore-style factual precision, checked exactly against a synthetic world (docs/method.md §7).

FActScore splits a generated bio into atomic facts with an LLM and asks a retriever + LLM whether a
knowledge source supports each. In a synthetic world the knowledge source is the ground truth and
the facts can only be statements about the world's relations, so both steps become exact:

1. Atomic facts. Every mention of a value from the world's value pools (word-bounded, case-blind,
   longest match first, non-overlapping; a capitalised value such as "Split" only when written
   capitalised) is a statement "X's <relation> is <value>". When the value
   belongs to several relations' pools, the nearest relation cue before it in the same sentence
   decides ("born in" -> Birth City); without a cue, the relation under which the value would be
   true for X wins (benefit of the doubt), else the alphabetically first. Slot phrasings (the text
   that precedes `{v}` in the world's sentence templates, e.g. "was born in") also catch values
   outside the pools: the words after the slot, up to punctuation (at most 6 words), are a fact,
   except "unknown" (the store's fallback value restated: an abstention, not a claim).
   Mentions of X's own name are not facts. Values must be written as in the world (a date
   "15 June 1986" written "June 15, 1986" is caught only by a slot, as unsupported): exact checking.
2. Support. A fact is supported when its value equals X's ground truth for that relation
   (normalize_key on both sides). A wrong value, or any value for a relation X does not have, is
   unsupported. Repeated facts (same relation and value) count once per answer.

Aggregates (`score_answers`): `precision` = mean over answers with >= 1 fact of the supported
fraction (FActScore's score; answers without facts are left out as FActScore leaves out
abstentions, and are reported by `answered_share`); `precision_micro` = supported / all facts;
`precision_length_penalized` = the same mean with each answer's score times exp(1 - gamma/#facts)
when #facts < gamma (the LMLM paper's variant, gamma = 10). With no fact at all, the precisions are 0.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

from lmlm.format import UNKNOWN, normalize_key

# Cue phrases per relation used to disambiguate a value that sits in several pools. The world's
# own phrasings and relation synonyms are added by `KnowledgeBase.from_world`.
DEFAULT_CUES: dict[str, tuple[str, ...]] = {
    "Birth Date": ("born on", "born", "birth date", "date of birth", "birthday"),
    "Birth City": ("born in", "birthplace", "birth city", "place of birth", "native of", "hometown"),
    "Nationality": ("nationality", "citizen", "citizenship"),
    "Occupation": ("works as", "worked as", "occupation", "profession", "career", "job"),
    "Employer": ("works at", "worked at", "works for", "worked for", "employed by", "employer", "joined"),
    "Alma Mater": ("graduated from", "studied at", "alma mater", "attended", "educated at", "degree"),
    "Spouse": ("married", "spouse", "wife", "husband", "partner"),
    "Award": ("won", "received", "awarded", "award", "honored with", "recipient", "prize"),
}
_SENTENCE_END = re.compile(r"[.!?\n]")
_SLOT_STOP = re.compile(r"[,.;:!?()\n]| and | in | on | at | from ")
_MAX_SLOT_WORDS = 6
_CUE_WINDOW = 80  # characters before a mention searched for a relation cue
ABSTENTIONS = {UNKNOWN, UNKNOWN + ".", "not known"}  # slot captures that claim nothing
_PLACEHOLDER = re.compile(r"\{[^}]*\}")
_ARTICLE = re.compile(r"(?:a|an|the)\s+", re.IGNORECASE)
# lmlm.world module attributes holding the full value pools (values no person of a small world has)
WORLD_POOLS = {"Birth City": "CITIES", "Nationality": "NATIONALITIES", "Occupation": "OCCUPATIONS",
               "Employer": "EMPLOYERS", "Alma Mater": "ALMA_MATERS", "Award": "AWARDS"}


def slot_of(template: str) -> str | None:
    """The literal words right before a template's value slot (`{v}`), when specific enough.

    "{S} was born in {v}, ..." -> "was born in"; "{S} works as {art} {v}" -> "works as". Slots
    shorter than two words of 6+ characters or one word of 7+ ("is a", "wed") are too generic.
    """
    if "{v}" not in template:
        return None
    segments = [seg.strip() for seg in _PLACEHOLDER.split(template.split("{v}")[0])]
    segments = [seg for seg in segments if seg]
    if not segments:
        return None
    words = segments[-1].rstrip(",;:").split()[-3:]
    slot = " ".join(words).lower()
    ok = (len(words) >= 2 and len(slot) >= 6) or (len(words) == 1 and len(slot) >= 7)
    return slot if ok else None


def _norm(value: str) -> str:
    return normalize_key(value).strip(" .,;:!?\"'")


@dataclass(frozen=True)
class Fact:
    """One atomic statement about the bio's subject."""

    relation: str
    value: str
    supported: bool
    start: int  # character span of the value in the checked text
    end: int


@dataclass
class AnswerCheck:
    name: str
    facts: list[Fact]

    @property
    def n_facts(self) -> int:
        return len(self.facts)

    @property
    def n_supported(self) -> int:
        return sum(f.supported for f in self.facts)


@dataclass
class KnowledgeBase:
    """Ground truth of a world: who has which value, every value seen per relation, and cues."""

    truth: dict[str, dict[str, str]]  # person name -> relation -> value
    pools: dict[str, set[str]] = field(default_factory=dict)  # relation -> values (display form)
    cues: dict[str, list[str]] = field(default_factory=dict)  # relation -> cue phrases
    slots: dict[str, list[str]] = field(default_factory=dict)  # relation -> text right before a value

    def __post_init__(self) -> None:
        if not self.truth:
            raise ValueError("KnowledgeBase: truth is empty (no people)")
        for attrs in self.truth.values():
            for rel, value in attrs.items():
                self.pools.setdefault(rel, set()).add(value)
        for rel in self.pools:
            extra = [c.lower() for c in DEFAULT_CUES.get(rel, ())] + [rel.lower()]
            self.cues[rel] = sorted(set(self.cues.get(rel, [])) | set(extra), key=len, reverse=True)
        self._truth_norm = {normalize_key(n): {r: _norm(v) for r, v in a.items()} for n, a in self.truth.items()}
        self._value_rels: dict[str, set[str]] = {}
        self._proper = {_norm(v) for vs in self.pools.values() for v in vs if v.strip()[:1].isupper()}
        for rel, values in self.pools.items():
            for v in values:
                if _norm(v):
                    self._value_rels.setdefault(_norm(v), set()).add(rel)
        alternatives = sorted({re.escape(v.strip()) for vs in self.pools.values() for v in vs if _norm(v)},
                              key=len, reverse=True)
        self._mention_re = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
        slot_items = [(s.lower().strip(), rel) for rel, ss in self.slots.items() for s in ss if s.strip()]
        self._slot_re = [(re.compile(r"(?<!\w)" + re.escape(s) + r"\s+", re.IGNORECASE), rel)
                         for s, rel in sorted(set(slot_items), key=lambda x: -len(x[0]))]

    @classmethod
    def from_world(cls, world) -> "KnowledgeBase":
        """From a `lmlm.world.World`: its people, plus the world module's value pools, relation
        synonyms (cues) and sentence phrasings (slots) when it exposes them."""
        truth = {p.name: dict(p.attributes) for p in world.people}
        try:
            from lmlm import world as world_mod
        except ImportError:  # pragma: no cover - the world module is a sibling dependency
            world_mod = None
        pools: dict[str, set[str]] = {}
        for rel, attr in WORLD_POOLS.items():
            pools[rel] = set(getattr(world_mod, attr, None) or ())
        cues: dict[str, list[str]] = {}
        for rel, syns in (getattr(world_mod, "RELATION_SYNONYMS", None) or {}).items():
            cues.setdefault(rel, []).extend(s.lower() for s in syns)
        slots: dict[str, list[str]] = {}
        phrasings = [getattr(world_mod, name, None) or {} for name in ("PHRASINGS", "NOVEL_PHRASINGS")]
        for rel, templates in ((r, t) for p in phrasings for r, t in p.items()):
            for t in templates:
                slot = slot_of(t)
                if slot:
                    slots.setdefault(rel, []).append(slot)
                    cues.setdefault(rel, []).append(slot)
        return cls(truth=truth, pools=pools, cues=cues, slots=slots)

    # ----------------------------------------------------------------------------------------

    def _relation_for(self, name_key: str, text: str, start: int, value_key: str, rels: set[str]) -> str:
        if len(rels) == 1:
            return next(iter(rels))
        window_start = max(0, start - _CUE_WINDOW)
        ends = [m.end() for m in _SENTENCE_END.finditer(text, window_start, start)]
        window = text[ends[-1] if ends else window_start:start].lower()
        best, best_pos = None, -1
        for rel in sorted(rels):
            for cue in self.cues.get(rel, ()):
                pos = window.rfind(cue)
                if pos > best_pos:
                    best, best_pos = rel, pos
        if best is not None:
            return best
        truth = self._truth_norm.get(name_key, {})
        for rel in sorted(rels):
            if truth.get(rel) == value_key:
                return rel
        return sorted(rels)[0]

    def check(self, name: str, text: str) -> AnswerCheck:
        """The atomic facts of `text`, a generated bio of `name`, each marked supported or not."""
        if not isinstance(text, str):
            raise TypeError(f"check: text for {name!r} must be a string, got {type(text).__name__}")
        name_key = normalize_key(name)
        truth = self._truth_norm.get(name_key, {})
        own_name = re.compile(r"(?<!\w)" + re.escape(name.strip()) + r"(?!\w)", re.IGNORECASE)
        taken = [(m.start(), m.end()) for m in own_name.finditer(text)]
        found: list[tuple[int, int, str, str]] = []  # start, end, relation, value

        def free(s: int, e: int) -> bool:
            return all(e <= a or s >= b for a, b in taken)

        for m in self._mention_re.finditer(text):
            vkey = _norm(m.group(0))
            if not free(m.start(), m.end()) or (vkey in self._proper and not m.group(0)[0].isupper()):
                continue  # a capitalised value ("Split", "Bern") matches only when capitalised
            rel = self._relation_for(name_key, text, m.start(), vkey, self._value_rels[vkey])
            found.append((m.start(), m.end(), rel, m.group(0)))
            taken.append((m.start(), m.end()))
        for pattern, rel in self._slot_re:
            for m in pattern.finditer(text):
                s = m.end()
                stop = _SLOT_STOP.search(text, s)
                e = stop.start() if stop else len(text)
                art = _ARTICLE.match(text, s)
                s = art.end() if art else s
                words = text[s:e].split()[:_MAX_SLOT_WORDS] if s < e else []
                if not words or " ".join(words).lower() in ABSTENTIONS:
                    continue
                e = s + len(" ".join(words))
                if free(s, e):
                    found.append((s, e, rel, text[s:e]))
                    taken.append((s, e))
        facts: list[Fact] = []
        seen: set[tuple[str, str]] = set()
        for s, e, rel, value in sorted(found):
            key = (rel, _norm(value))
            if key in seen:
                continue
            seen.add(key)
            facts.append(Fact(rel, value, truth.get(rel) == key[1], s, e))
        return AnswerCheck(name, facts)


def length_penalty(n_facts: int, gamma: int = 10) -> float:
    """FActScore's length penalty exp(1 - gamma / #facts) for answers with fewer than gamma facts."""
    if n_facts <= 0:
        return 0.0
    return 1.0 if n_facts >= gamma else math.exp(1.0 - gamma / n_facts)


def score_answers(kb: KnowledgeBase, answers: Iterable[tuple[str, str]], gamma: int = 10) -> dict:
    """Aggregate precision over (person name, generated bio) pairs; see the module docstring."""
    checks = [kb.check(name, text) for name, text in answers]
    answered = [c for c in checks if c.n_facts]
    per = [c.n_supported / c.n_facts for c in answered]
    total = sum(c.n_facts for c in checks)
    supported = sum(c.n_supported for c in checks)
    return {
        "precision": sum(per) / len(per) if per else 0.0,
        "precision_micro": supported / total if total else 0.0,
        "precision_length_penalized": (sum(p * length_penalty(c.n_facts, gamma) for p, c in zip(per, answered))
                                       / len(per) if per else 0.0),
        "facts_per_answer": total / len(checks) if checks else 0.0,
        "answered_share": len(answered) / len(checks) if checks else 0.0,
        "n_answers": len(checks),
        "n_facts": total,
        "n_supported": supported,
    }

