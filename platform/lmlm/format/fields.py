"""The parts every syntax shares: the four special tokens, a triple and where it was found, how
a field is cleaned and a key normalised, the canonical block, and the text builder the parsers
delete calls with."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

DB_ENTITY = "<|db_entity|>"
DB_RELATIONSHIP = "<|db_relationship|>"
DB_RETURN = "<|db_return|>"
DB_END = "<|db_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)
_ANY_TOKEN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
UNKNOWN = "unknown"  # the value of a lookup the database has no answer for

LEGACY_OPEN = "[dblookup"


@dataclass(frozen=True)
class Triple:
    """One database fact. Fields hold display text (unescaped, stripped), not normalised keys."""

    entity: str
    relation: str
    value: str

    def key(self) -> tuple[str, str]:
        return normalize_key(self.entity), normalize_key(self.relation)


@dataclass
class Lookup:
    """A lookup call found in a text: its triple and its character span in that text."""

    triple: Triple
    start: int
    end: int


@dataclass
class Drop:
    """A call removed by validation, with the reason and the removed text."""

    reason: str
    text: str
    start: int


@dataclass
class Parsed:
    """Result of parsing one document: the text in special-token form, its lookups and drops."""

    text: str
    lookups: list[Lookup] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)

    @property
    def triples(self) -> list[Triple]:
        return [lk.triple for lk in self.lookups]

    def drop_counts(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.drops))


# --------------------------------------------------------------------------------------------
# Escaping and key normalisation


_ESCAPE = re.compile(r"\\(['\"\\])")
_WS = re.compile(r"\s+")


def unescape(s: str) -> str:
    """Undo backslash escapes of quotes and backslashes, once (`Destiny\\'s` -> `Destiny's`)."""
    return _ESCAPE.sub(r"\1", s)


def normalize_key(s: str) -> str:
    """The one key normaliser: unescape, lower-case, `_` -> space, collapse whitespace."""
    return _WS.sub(" ", unescape(s).replace("_", " ").lower()).strip()


def clean_field(s: str) -> str:
    """Display form of an entity, relation or value: unescaped, whitespace collapsed.

    A field wrapped in one pair of matching quotes that occur nowhere else loses them
    (`"I Feel Love"` -> `I Feel Love`), as the reference database does.
    """
    s = _WS.sub(" ", unescape(s)).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" and s[0] not in s[1:-1]:
        s = s[1:-1].strip()
    return s


def render_block(triple: Triple) -> str:
    """A triple as a special-token block, with the exact spacing of training text."""
    return f"{DB_ENTITY} {triple.entity}{DB_RELATIONSHIP} {triple.relation}{DB_RETURN} {triple.value}{DB_END}"


class _Builder:
    """Output text under construction; deletions take one preceding whitespace with them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def add(self, s: str) -> None:
        if s:
            self.parts.append(s)
            self.length += len(s)

    def delete_preceding_space(self) -> bool:
        """Remove one whitespace before a deleted block; False when the block opened a line."""
        if not self.parts or self.parts[-1].endswith("\n"):
            return False
        if self.parts[-1][-1].isspace():
            self.parts[-1] = self.parts[-1][:-1]
            self.length -= 1
            if not self.parts[-1]:
                self.parts.pop()
        return True

    def text(self) -> str:
        return "".join(self.parts)


def _empty_field(t: Triple) -> str | None:
    if not t.entity:
        return "empty_entity"
    if not t.relation:
        return "empty_relation"
    if not t.value:
        return "missing_value"
    return None
