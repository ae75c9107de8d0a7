"""The lookup format: the one parser, converter, stripper and key normaliser of lookup calls.

Two syntaxes carry the same information (docs/method.md §2):

    legacy:  [dblookup('Ko Itakura', 'Birth Place') -> Yokohama]
    special: <|db_entity|> Ko Itakura<|db_relationship|> Birth Place<|db_return|> Yokohama<|db_end|>

Every other stage (annotation, fact store, training, generation, evaluation) goes through this
module, so quoting, escaping and spacing rules live in exactly one place.

What a field can hold so that it survives a round trip (render, then parse, gives it back): any
printable text, single-spaced and stripped, without a backslash (escapes are undone once), without
`<|db_` or `dblookup`, and not wrapped in one pair of quotes (the reference strips those). A value
also holds no `]`, which closes a legacy call. Parsing accepts any text and never raises.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

DB_ENTITY = "<|db_entity|>"
DB_RELATIONSHIP = "<|db_relationship|>"
DB_RETURN = "<|db_return|>"
DB_END = "<|db_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)
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


# --------------------------------------------------------------------------------------------
# Legacy calls

# The entity and relation are quoted with ' or "; annotators leave apostrophes unescaped inside
# single-quoted names (`'Trajan's Column'`), so a field ends only where its closing quote is
# followed by the separator that must come next (`, '`  or  `) ->`).
_LEGACY = re.compile(
    r"""\[dblookup\(\s*
        (?P<q1>['"])(?P<entity>.*?)(?P=q1)\s*,\s*
        (?P<q2>['"])(?P<relation>.*?)(?P=q2)\s*\)\s*
        ->\s*(?P<value>[^\]]*?)\s*\]""",
    re.VERBOSE | re.DOTALL,
)


def _classify_malformed(call: str, at_end: bool) -> str:
    """Why a `[dblookup...` fragment that is not a valid call is invalid."""
    if "]" in call:  # judge the call itself, not an orphaned `-> V]` tail after its bracket
        call = call[: call.index("]") + 1]
    if at_end and not call.rstrip().endswith("]"):
        return "truncated"
    if "->" not in call:
        return "missing_arrow"
    head, _, value = call.partition("->")
    if not value.strip().rstrip("]").strip():
        return "missing_value"
    if not re.match(r"""\[dblookup\(\s*['"].*['"]\s*,\s*['"].*['"]\s*\)\s*$""", head.strip(), re.DOTALL):
        if not re.search(r""",""", head):
            return "missing_relation"
        return "missing_quotes"
    return "malformed"


_ORPHAN_TAIL = re.compile(r"[ \t]*->[^\[\]\n]*\]")


def _fragment_end(text: str, start: int) -> tuple[int, bool]:
    """End of a malformed call starting at `start`: its `]`, or the next call, or the text's end."""
    nxt = text.find(LEGACY_OPEN, start + len(LEGACY_OPEN))
    close = text.find("]", start)
    if close != -1 and (nxt == -1 or close < nxt):
        # A call closed before its arrow (`[dblookup('E', 'R')] -> V]`) takes its orphaned tail along.
        tail = _ORPHAN_TAIL.match(text, close + 1)
        return (tail.end() if tail else close + 1), False
    if nxt != -1:  # leave the whitespace before the next call to that call
        return len(text[:nxt].rstrip()), False
    return len(text), True


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


def _convert_legacy(text: str) -> tuple[str, list[Drop]]:
    """Rewrite valid legacy calls as special-token blocks; delete invalid ones and record why."""
    out = _Builder()
    drops: list[Drop] = []
    pos = 0
    while (start := text.find(LEGACY_OPEN, pos)) != -1:
        out.add(text[pos:start])
        m = _LEGACY.match(text, start)
        # A match must not swallow a following call (a malformed call before a valid one).
        if m and LEGACY_OPEN not in text[start + 1 : m.end()]:
            pos = m.end()
            triple = Triple(*(clean_field(m.group(g)) for g in ("entity", "relation", "value")))
            reason = _empty_field(triple)
            if reason is None:
                out.add(render_block(triple))
                continue
            call = m.group(0)
        else:
            pos, at_end = _fragment_end(text, start)
            call = text[start:pos]
            reason = _classify_malformed(call, at_end)
        drops.append(Drop(reason, call, start))
        if not out.delete_preceding_space() and text[pos : pos + 1] == " ":
            pos += 1
    out.add(text[pos:])
    converted = out.text()
    # A call mangled so that it no longer opens with `[dblookup` (`[x](dblookup('E', 'R')) -> V]`)
    # is deleted from its enclosing `[` to the `]` that closes it, never reaching into a block.
    while (at := converted.find("dblookup(")) != -1:
        floor = max((m.end() for m in _ANY_TOKEN.finditer(converted, 0, at)), default=0)
        start = converted.rfind("[", floor, at)
        start = at if start == -1 or at - start > 200 or "\n" in converted[start:at] else start
        nxt = _ANY_TOKEN.search(converted, at)
        ceiling = len(converted) if nxt is None else nxt.start()
        close = converted.find("]", at, ceiling)
        end = ceiling if close == -1 else close + 1
        drops.append(Drop("mangled", converted[start:end], start))
        converted = converted[:start].rstrip(" ") + (" " if start and end < len(converted) and converted[end] != " " else "") + converted[end:]
    return converted, drops


# --------------------------------------------------------------------------------------------
# Special-token blocks

_FIELD = r"((?:(?!<\|db_).)*?)"
_BLOCK = re.compile(
    re.escape(DB_ENTITY) + _FIELD + re.escape(DB_RELATIONSHIP) + _FIELD
    + re.escape(DB_RETURN) + _FIELD + re.escape(DB_END),
    re.DOTALL,
)
_ANY_TOKEN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def render_block(triple: Triple) -> str:
    """A triple as a special-token block, with the exact spacing of training text."""
    return f"{DB_ENTITY} {triple.entity}{DB_RELATIONSHIP} {triple.relation}{DB_RETURN} {triple.value}{DB_END}"


def render_legacy(triple: Triple) -> str:
    """A triple as a legacy call (quotes escaped so that the parser reads it back exactly)."""

    def quote(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"[dblookup({quote(triple.entity)}, {quote(triple.relation)}) -> {triple.value}]"


def _validate_special(text: str) -> Parsed:
    """Keep complete special-token blocks; delete incomplete or empty ones and record why."""
    out = _Builder()
    lookups: list[Lookup] = []
    drops: list[Drop] = []
    pos = 0
    while (tok := _ANY_TOKEN.search(text, pos)) is not None:
        start = tok.start()
        out.add(text[pos:start])
        m = _BLOCK.match(text, start) if tok.group(0) == DB_ENTITY else None
        if m:
            pos = m.end()
            triple = Triple(*(clean_field(g) for g in m.groups()))
            reason = _empty_field(triple)
            if reason is None:
                block = render_block(triple)
                lookups.append(Lookup(triple, out.length, out.length + len(block)))
                out.add(block)
                continue
        else:
            # A broken block runs over its special tokens up to the next block's start.
            nxt = text.find(DB_ENTITY, tok.end())
            stop = len(text) if nxt == -1 else nxt
            last = [t.end() for t in _ANY_TOKEN.finditer(text, start, stop)]
            truncated = nxt == -1 and DB_END not in text[start:]
            pos = len(text) if truncated else last[-1]
            reason = "truncated" if truncated else "malformed"
        drops.append(Drop(reason, text[start:pos], start))
        if not out.delete_preceding_space() and text[pos : pos + 1] == " ":
            pos += 1
    out.add(text[pos:])
    return Parsed(out.text(), lookups, drops)


def to_special(text: str) -> Parsed:
    """Validate and convert a document in either syntax (or both) to special-token form."""
    converted, drops = _convert_legacy(text) if "dblookup" in text else (text, [])
    parsed = _validate_special(converted)
    parsed.drops = drops + parsed.drops
    return parsed


def extract_triples(text: str) -> list[Triple]:
    """Every valid triple of a document, in order (duplicates kept), in either syntax."""
    return to_special(text).triples


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
