"""Special-token blocks, `<|db_entity|> E<|db_relationship|> R<|db_return|> V<|db_end|>`: validated,
and the one entry point that reads a document in either syntax (`to_special`)."""
from __future__ import annotations

import re

from lmlm.format.fields import (DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, Drop, Lookup, Parsed,
                                Triple, _ANY_TOKEN, _Builder, _empty_field, clean_field, render_block)
from lmlm.format.legacy import _convert_legacy

_FIELD = r"((?:(?!<\|db_).)*?)"
_BLOCK = re.compile(
    re.escape(DB_ENTITY) + _FIELD + re.escape(DB_RELATIONSHIP) + _FIELD
    + re.escape(DB_RETURN) + _FIELD + re.escape(DB_END),
    re.DOTALL,
)


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
