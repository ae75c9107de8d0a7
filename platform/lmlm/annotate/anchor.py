"""Putting a generative annotator's lookup calls back into the document it was given.

A model that rewrites a document with calls may also reword it, drop a sentence or stop early. The
annotated text must still be the input document, word for word, plus calls: `anchor_calls` keeps the
input and inserts each valid call of the output where the output had it (a character alignment of the
output without its calls against the input), moved to the start of its value when the value follows
within a few words.
"""
from __future__ import annotations

from difflib import SequenceMatcher

from lmlm.annotate.tagging import insert_calls
from lmlm.format import strip_with_spans

VALUE_WINDOW = 64  # characters past the mapped place searched for the call's value


def _mapper(source: str, target: str):
    """offset in `source` -> offset in `target`: exact inside matching runs; a place inside a
    changed run maps to where that run starts in `target`."""
    blocks = SequenceMatcher(None, source, target, autojunk=False).get_matching_blocks()

    def to_target(at: int) -> int:
        prev_end = 0
        for a, b, n in blocks:
            if at < a:
                return prev_end
            if at <= a + n:
                return b + at - a
            prev_end = b + n
        return prev_end

    return to_target


def _place(text: str, pos: int, value: str) -> int:
    """The start of `value` when it begins within VALUE_WINDOW characters (plus its length) of `pos`;
    else `pos` moved past whitespace and back to the start of its word."""
    found = text.lower().find(value.lower(), pos, pos + len(value) + VALUE_WINDOW) if value else -1
    if found >= 0:
        return found
    while pos < len(text) and text[pos].isspace():
        pos += 1
    while 0 < pos < len(text) and not text[pos - 1].isspace():
        pos -= 1
    return pos


def anchor_calls(text: str, generated: str) -> str:
    """`text` with the valid lookup calls of `generated` inserted (legacy syntax); `generated` itself
    when its text without calls already is `text`."""
    stripped = strip_with_spans(generated)
    if stripped.text == text:
        return generated
    if not stripped.lookups:
        return text
    to_text = _mapper(stripped.text, text)
    calls = [(_place(text, to_text(lk.at), lk.triple.value), lk.triple) for lk in stripped.lookups]
    calls.sort(key=lambda c: c[0])
    return insert_calls(text, [((pos, pos), triple) for pos, triple in calls])
