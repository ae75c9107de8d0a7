"""Legacy calls, `[dblookup('E', 'R') -> V]`: rendered, and converted to special-token blocks
(invalid calls deleted, with the reason)."""
from __future__ import annotations

import re

from lmlm.format.fields import LEGACY_OPEN, _ANY_TOKEN, Drop, Triple, _Builder, _empty_field, clean_field, render_block

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


def render_legacy(triple: Triple) -> str:
    """A triple as a legacy call (quotes escaped so that the parser reads it back exactly)."""

    def quote(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"[dblookup({quote(triple.entity)}, {quote(triple.relation)}) -> {triple.value}]"
