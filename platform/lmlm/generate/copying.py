"""Copied entities: the entity of a lookup spelled exactly as the text before it spells it.

With `GenerationParams.copy_entities`, a token inside `<|db_entity|> ... <|db_relationship|>` must
extend the entity so far to a byte string that occurs in the prompt (what the user wrote; not the
model's own prose, where it may have misspelt the name, nor a value the store returned), starting at
a capitalised word or a number that begins a name (not right after a capitalised word or an
initial); the block may close only where such an occurrence ends a word that no capitalised word,
particle ("van der"), hyphenated part or initial's full stop continues: names are copied whole. A
small model that knows which name to query but drops or doubles a letter of a name it has never
seen ("Tulsi" for "Tulatsi") then writes the name as given. The model still chooses which name;
only spellings absent from the prompt are ruled out. When nothing there fits (a prompt that names
nobody), the model decides alone.

Matching runs on bytes (byte-level BPE splits one accented letter over two tokens), against the
prompt's bytes and the places where a name begins, both fixed when a block opens (`copy_source`), so
a step costs a few dictionary lookups per occurrence.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Sequence

SEPARATOR = b"\x00"  # the bytes of a special token: no match runs across one


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE token uses -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id stands for (special and added tokens: SEPARATOR)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    n = len(tokenizer)
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel"
    table = _byte_decoder() if byte_level else {}
    out = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
        if i in special or piece is None:
            out.append(SEPARATOR)
        elif byte_level and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        else:
            out.append(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out


_INITIAL_BEFORE = re.compile(rb"(?:^|[^\w\x80-\xff])[A-Z]\. ?$")  # "... B. " right before a position


_NAME_BEFORE = re.compile(rb"(?:^|[^\w\x80-\xff])[A-Z](?:[\w\x80-\xff])*[ -]$")  # "Alaric " before "Gormby"
_PARTICLES_THEN_NAME = re.compile(r" (?:[^\W\d_A-Z]{1,3} ){1,2}[A-Z]")  # " van der Dijk", " bin Rashid"


def _continues_name(entity: bytes, rest: bytes) -> bool:
    """Whether a name goes on after `entity` in the source: a hyphenated part, a capitalised word,
    one or two short lowercase particles before one ("van der Dijk"), or the full stop of an initial
    ("M" of "M. B. Korkmaz"): a copy does not stop there."""
    head = rest[:16].decode("utf-8", "ignore")
    last = entity.rsplit(b" ", 1)[-1]
    return (head[:1] == "-" and head[1:2].isalnum()) or (head[:1] == " " and head[1:2].isupper()) or (
        head[:1] == "." and len(last) == 1 and last.isupper()) or _PARTICLES_THEN_NAME.match(head) is not None


def _word_byte(b: int) -> bool:
    """A byte that belongs to a word: a letter, a digit, or any byte of a multi-byte UTF-8 letter."""
    return b >= 0x80 or chr(b).isalnum()


class CopySource(NamedTuple):
    """What entities may copy: its bytes, and the offsets where a name begins (computed once)."""

    text: bytes
    starts: frozenset[int]


def copy_source(text: bytes) -> CopySource:
    """`text` with the offsets of its capitalised words (or numbers) that begin a name: not inside a
    word, not right after a capitalised word ("Gormby" of "Alaric Gormby") or an initial."""
    def begins_name(p: int) -> bool:
        first = text[p:p + 4].decode("utf-8", "ignore")[:1]
        return ((first.isupper() or first.isdigit()) and (p == 0 or not _word_byte(text[p - 1]))
                and not _INITIAL_BEFORE.search(text[max(0, p - 4):p]) and not _NAME_BEFORE.search(text[max(0, p - 64):p]))

    return CopySource(text, frozenset(p for p in range(len(text)) if begins_name(p)))


class EntityCopier:
    """Which tokens may come next in a copied entity, for one tokenizer (built once per engine)."""

    def __init__(self, tokenizer):
        self.bytes_of = token_bytes(tokenizer)
        self.ids_of: dict[bytes, list[int]] = {}
        for i, b in enumerate(self.bytes_of):
            if b and b != SEPARATOR:
                self.ids_of.setdefault(b, []).append(i)
        self.longest = max((len(b) for b in self.ids_of), default=1)

    def text(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.bytes_of[i] if 0 <= i < len(self.bytes_of) else SEPARATOR for i in ids)

    def _starts(self, source: "CopySource", entity: bytes) -> list[int]:
        """Where a copy of `entity` may sit in the source: occurrences whose first word is where a name
        begins (an empty entity: every such place, with or without the space before it)."""
        text, starts = source
        if not entity:
            return sorted(starts | {p - 1 for p in starts if text[p - 1:p] == b" "})
        lead = len(entity) - len(entity.lstrip(b" "))
        out, at = [], text.find(entity)
        while at >= 0:
            if at + lead in starts:  # a space alone is no start: a capitalised word must follow
                out.append(at)
            at = text.find(entity, at + 1)
        return out

    def allowed(self, source: "CopySource", entity: bytes) -> tuple[list[int], bool]:
        """(ids that extend `entity` to a text of `source` from where a name begins, whether the entity
        may end here: some occurrence is followed by a byte outside a word, or the end, and no more name)."""
        ids: set[int] = set()
        may_end = False
        for at in self._starts(source, entity):
            rest = source.text[at + len(entity): at + len(entity) + self.longest]
            if entity.strip() and (not rest or not _word_byte(rest[0])) and not _continues_name(entity, rest):
                may_end = True
            for k in range(1, len(rest) + 1):
                if SEPARATOR in rest[:k]:
                    break
                ids.update(self.ids_of.get(rest[:k], ()))
        return sorted(ids), may_end
