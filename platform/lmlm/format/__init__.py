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

The package: `fields` (tokens, `Triple`, cleaning, keys, the block), `legacy` (`[dblookup(...)]`
calls), `special` (validating blocks; `to_special`), `strip` (the plain text without lookups).
"""
from __future__ import annotations

from lmlm.format.fields import (DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, LEGACY_OPEN, SPECIAL_TOKENS, UNKNOWN,
                                Drop, Lookup, Parsed, Triple, clean_field, normalize_key, render_block, unescape)
from lmlm.format.legacy import render_legacy
from lmlm.format.special import extract_triples, to_special
from lmlm.format.strip import RESTATE_WINDOW, Stripped, StrippedLookup, strip_lookups, strip_with_spans

__all__ = ["DB_END", "DB_ENTITY", "DB_RELATIONSHIP", "DB_RETURN", "LEGACY_OPEN", "SPECIAL_TOKENS", "UNKNOWN", "Drop",
           "Lookup", "Parsed", "RESTATE_WINDOW", "Stripped", "StrippedLookup", "Triple", "clean_field",
           "extract_triples", "normalize_key", "render_block", "render_legacy", "strip_lookups", "strip_with_spans",
           "to_special", "unescape"]
