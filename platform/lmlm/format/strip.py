"""Stripping lookups: the plain text of an annotated document (the standard baseline's text, what
an annotator reads), and where each removed lookup stood and its value is restated."""
from __future__ import annotations

import re
from dataclasses import dataclass

from lmlm.format.fields import _ANY_TOKEN, DB_END, DB_ENTITY, Triple, _empty_field, clean_field
from lmlm.format.legacy import _convert_legacy
from lmlm.format.special import _BLOCK

_STRIP_BLOCK = re.compile(r"\s?" + re.escape(DB_ENTITY) + r".*?" + re.escape(DB_END), re.DOTALL)
_TRAILING_PARTIAL = re.compile(r"\s?" + re.escape(DB_ENTITY) + r"(?:(?!" + re.escape(DB_END) + r").)*$", re.DOTALL)
RESTATE_WINDOW = 64  # characters after a removed block (beyond the value's length) searched for the value


@dataclass(frozen=True)
class StrippedLookup:
    """A lookup removed by `strip_with_spans`: its triple, where it stood and where its value is restated.

    `at`: the offset in the plain text where the block was (the text after it starts there).
    `value_span`: the [start, end) of the value in the plain text when the words right after the
    block restate it (case-insensitive, within RESTATE_WINDOW characters beyond the value's length,
    before the next block's position), else None.
    """

    triple: Triple
    at: int
    value_span: tuple[int, int] | None


@dataclass(frozen=True)
class Stripped:
    """The plain text of an annotated document (equal to `strip_lookups`) and its removed lookups."""

    text: str
    lookups: tuple[StrippedLookup, ...]

    @property
    def value_spans(self) -> list[tuple[int, int]]:
        return [lk.value_span for lk in self.lookups if lk.value_span is not None]


def _strip(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The one stripping implementation: (plain text, [(offset in it, removed block text)]).

    The whitespace rule: every block goes with the one whitespace character (space, tab or newline)
    right before it, if any; a trailing incomplete block goes with its preceding whitespace too;
    stray special tokens are deleted alone. Legacy calls are converted first (malformed ones are
    deleted by `to_special`'s rule).
    """
    if "dblookup" in text:
        text, _ = _convert_legacy(text)
    parts: list[str] = []
    marks: list[tuple[int, str]] = []
    pos = length = 0
    for m in _STRIP_BLOCK.finditer(text):
        parts.append(text[pos:m.start()])
        length += m.start() - pos
        marks.append((length, m.group()))
        pos = m.end()
    parts.append(text[pos:])
    plain = "".join(parts)
    if (tail := _TRAILING_PARTIAL.search(plain)) is not None:
        plain = plain[:tail.start()]
        marks = [(min(at, tail.start()), block) for at, block in marks]
    stray = [m.span() for m in _ANY_TOKEN.finditer(plain)]
    if stray:
        marks = [(at - sum(max(0, min(e, at) - s) for s, e in stray), block) for at, block in marks]
        plain = _ANY_TOKEN.sub("", plain)
    return plain, marks


def _block_triple(block: str) -> Triple | None:
    """The valid triple of a removed block (its last `<|db_entity|>` on, as `to_special` reads it)."""
    m = _BLOCK.fullmatch(block, block.rfind(DB_ENTITY))
    if m is None:
        return None
    triple = Triple(*(clean_field(g) for g in m.groups()))
    return None if _empty_field(triple) else triple


def strip_lookups(text: str) -> str:
    """Text without lookups: every block (plus one preceding whitespace) removed, in either syntax.

    A trailing incomplete block (generation cut mid-lookup) and stray special tokens go too, so the
    result never holds a special token: the standard baseline's text and the display rule of §6.
    `strip_with_spans` gives the same text plus where each lookup stood.
    """
    return _strip(text)[0]


def strip_with_spans(text: str) -> Stripped:
    """`strip_lookups(text)` plus each valid lookup's position and restated value span in it.

    The text is exactly `strip_lookups(text)` (same whitespace rule, see `_strip`). Each valid
    lookup (those `to_special(text).triples` holds, in order) records the offset where its block
    stood and the span of the words right after it that restate its value (case-insensitive
    search from that offset, up to RESTATE_WINDOW characters past the value's length and never past
    the next removed block); values restated in another surface form have no span.
    """
    plain, marks = _strip(text)
    lookups = []
    for i, (at, block) in enumerate(marks):
        triple = _block_triple(block)
        if triple is None:
            continue
        stop = min(marks[i + 1][0] if i + 1 < len(marks) else len(plain), at + len(triple.value) + RESTATE_WINDOW)
        m = re.compile(re.escape(triple.value), re.IGNORECASE).search(plain, at, stop)
        lookups.append(StrippedLookup(triple, at, m.span() if m else None))
    return Stripped(plain, tuple(lookups))
