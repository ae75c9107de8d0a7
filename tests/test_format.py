"""The lookup format: round trips (hypothesis), hand-written quirks, and the reference data."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmlm.format import (
    DB_END,
    DB_ENTITY,
    DB_RELATIONSHIP,
    DB_RETURN,
    SPECIAL_TOKENS,
    Triple,
    clean_field,
    extract_triples,
    normalize_key,
    render_block,
    render_legacy,
    strip_lookups,
    strip_with_spans,
    to_special,
    unescape,
)

# --------------------------------------------------------------------------------------------
# Strategies. A field is what the lmlm.format docstring allows: printable, single-spaced,
# stripped, no backslash, no special-token prefix, not wrapped in one pair of quotes; values also
# hold no `]` (it closes a legacy call).

_ALPHABET = st.characters(
    min_codepoint=32, max_codepoint=0x2FFF,
    blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"),
    blacklist_characters="\\]",
) | st.just(" ")


def _valid_field(s: str) -> bool:
    return (
        s == " ".join(s.split())
        and s != ""
        and "<|db_" not in s
        and "dblookup" not in s
        and clean_field(s) == s
    )


fields = st.text(_ALPHABET, min_size=1, max_size=30).filter(_valid_field)
triples = st.builds(Triple, fields, fields, fields)
prose = st.text(st.characters(min_codepoint=32, max_codepoint=0x24F, blacklist_characters="[]\\<"),
                max_size=40)

# Fragments that stress the parser: pieces of calls and blocks glued in any order.
_PIECES = ["[dblookup(", "'", '"', "\\'", ", ", ")", "->", " -> ", "]", "[", "\n", " ", "x",
           *SPECIAL_TOKENS, "<|db_", "dblookup(", "[x](dblookup('a', 'b')) -> c]"]
noise = st.lists(st.sampled_from(_PIECES) | st.text(max_size=5), max_size=40).map("".join)

_MALFORMED = [
    "[dblookup('E', 'R')]",            # missing_arrow
    "[dblookup('E', 'R') -> ]",        # missing_value
    "[dblookup('E') -> v]",            # missing_relation
    "[dblookup(E, R) -> v]",           # missing_quotes
    "[dblookup('', 'R') -> v]",        # empty_entity
    "[x](dblookup('E', 'R')) -> v]",   # mangled
]


def _legacy_call(t: Triple, q: str, arrow: str) -> str:
    def quote(s: str) -> str:
        return q + s.replace("\\", "\\\\").replace(q, "\\" + q) + q

    return f"[dblookup({quote(t.entity)}, {quote(t.relation)}){arrow}{t.value}]"


@st.composite
def legacy_docs(draw):
    """Prose with valid calls (any quoting / arrow spacing) and malformed calls interleaved."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        parts.append(draw(prose))
        if draw(st.booleans()):
            parts.append(_legacy_call(draw(triples), draw(st.sampled_from("'\"")),
                                      draw(st.sampled_from(["->", " -> ", "  ->", "-> "]))))
        else:
            parts.append(draw(st.sampled_from(_MALFORMED)))
    parts.append(draw(prose))
    sep = draw(st.sampled_from([" ", "", "\n"]))
    return sep.join(parts)


# --------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(triples)
def test_block_round_trip(t):
    block = render_block(t)
    parsed = to_special(f"Before {block} after.")
    assert parsed.triples == [t]
    assert parsed.drops == []
    assert parsed.text == f"Before {block} after."


@settings(max_examples=300, deadline=None)
@given(triples)
def test_legacy_round_trip(t):
    parsed = to_special(f"Before {render_legacy(t)} after.")
    assert parsed.triples == [t]
    assert parsed.text == f"Before {render_block(t)} after."


@settings(max_examples=400, deadline=None)
@given(noise)
def test_parsing_arbitrary_text_never_raises(text):
    parsed = to_special(text)
    stripped = strip_lookups(text)
    assert all(tok not in stripped for tok in SPECIAL_TOKENS)
    # Every lookup span points at its rendered block in the output text.
    for lk in parsed.lookups:
        assert parsed.text[lk.start : lk.end] == render_block(lk.triple)


@settings(max_examples=300, deadline=None)
@given(legacy_docs())
def test_convert_then_strip_equals_strip(doc):
    parsed = to_special(doc)
    assert strip_lookups(parsed.text) == strip_lookups(doc)
    # Valid calls survive, malformed ones are counted: nothing vanishes silently.
    assert len(parsed.lookups) + len(parsed.drops) == doc.count("dblookup(")
    # Converting twice changes nothing.
    again = to_special(parsed.text)
    assert again.text == parsed.text and again.triples == parsed.triples and again.drops == []


@settings(max_examples=200, deadline=None)
@given(triples, prose, prose)
def test_strip_removes_block_and_one_space(t, a, b):
    a, b = a.rstrip() or "x", b.lstrip() or "y"
    assume("dblookup(" not in a + b)  # prose only: a bare `dblookup(` is deleted as a mangled call
    assert strip_lookups(f"{a} {render_block(t)} {b}") == f"{a} {b}"
    assert strip_lookups(f"{a} {render_legacy(t)} {b}") == f"{a} {b}"


@st.composite
def restated_docs(draw):
    """Prose where each lookup (either syntax) is followed by a space and its value, verbatim."""
    parts, calls = [draw(prose)], []
    for _ in range(draw(st.integers(0, 5))):
        t = draw(triples)
        call = render_block(t) if draw(st.booleans()) else render_legacy(t)
        parts.append(f" {call} {t.value}{draw(prose)}")
        calls.append(t)
    return "".join(parts), calls


@settings(max_examples=300, deadline=None)
@given(restated_docs())
def test_strip_with_spans_round_trip(doc_calls):
    doc, calls = doc_calls
    s = strip_with_spans(doc)
    assert s.text == strip_lookups(doc)
    assert [lk.triple for lk in s.lookups] == calls == to_special(doc).triples
    # The plain text at each value span is the value.
    assert [s.text[a:b] for a, b in s.value_spans] == [t.value for t in calls]
    assert all(lk.at <= lk.value_span[0] for lk in s.lookups)
    # Re-annotating the plain text right before each value and stripping again gives it back.
    again = s.text
    for lk in reversed(s.lookups):
        start = lk.value_span[0]
        again = again[:start] + " " + render_block(lk.triple) + again[start:]
    s2 = strip_with_spans(again)
    assert s2.text == s.text
    assert s2.lookups == tuple(type(lk)(lk.triple, lk.value_span[0], lk.value_span) for lk in s.lookups)


@settings(max_examples=200, deadline=None)
@given(prose)
def test_strip_with_spans_without_lookups_is_identity(text):
    s = strip_with_spans(text)
    assert s.text == text and s.lookups == ()


@settings(max_examples=300, deadline=None)
@given(legacy_docs() | noise)
def test_strip_with_spans_agrees_with_strip_and_parse(doc):
    s = strip_with_spans(doc)
    assert s.text == strip_lookups(doc)
    assert [lk.triple for lk in s.lookups] == to_special(doc).triples
    ats = [lk.at for lk in s.lookups]
    assert ats == sorted(ats) and all(0 <= a <= len(s.text) for a in ats)
    for lk in s.lookups:
        if lk.value_span is not None:
            a, b = lk.value_span
            assert lk.at <= a and re.fullmatch(re.escape(lk.triple.value), s.text[a:b], re.IGNORECASE)


def test_strip_with_spans_whitespace_rule():
    block = render_block(Triple("Ann Lee", "Birth City", "Paris"))
    # One whitespace before a block goes with it (a newline too), as in strip_lookups.
    for before in (" ", "\n", "\t", ""):
        doc = f"She was born in{before}{block} Paris."
        s = strip_with_spans(doc)
        assert s.text == strip_lookups(doc) == "She was born in Paris."
        assert s.lookups[0].at == len("She was born in") and s.value_spans == [(16, 21)]
    # Stray tokens and a trailing open block go too; positions shift with them.
    s = strip_with_spans(f"A{DB_END} b {block} paris. Later {DB_ENTITY} A{DB_RELATIONSHIP} D")
    assert s.text == "A b paris. Later" and s.lookups[0].at == 3 and s.value_spans == [(4, 9)]
    # A value restated in another form, or only after the next block, has no span.
    s = strip_with_spans(f"In {block} the capital. {render_block(Triple('B', 'C', 'Rome'))} Paris Rome.")
    assert [lk.value_span for lk in s.lookups] == [None, (22, 26)]


# --------------------------------------------------------------------------------------------
# Hand-written cases


def lookups(text):
    return [tuple(vars(t).values()) for t in extract_triples(text)]


def test_exact_spacing_of_conversion():
    doc = "Itakura was born in [dblookup('Ko Itakura', 'Birth Place') -> Yokohama] Yokohama on 27 January."
    assert to_special(doc).text == (
        "Itakura was born in <|db_entity|> Ko Itakura<|db_relationship|> Birth Place"
        "<|db_return|> Yokohama<|db_end|> Yokohama on 27 January."
    )
    assert render_block(Triple("E", "R", "V")) == f"{DB_ENTITY} E{DB_RELATIONSHIP} R{DB_RETURN} V{DB_END}"


@pytest.mark.parametrize("call, expected", [
    ("[dblookup('A', 'B') -> C]", ("A", "B", "C")),
    ('[dblookup("A", "B") -> C]', ("A", "B", "C")),
    ("[dblookup(\"Hooke\\'s Law\", 'Describes') -> forces]", ("Hooke's Law", "Describes", "forces")),
    ("[dblookup('Destiny\\'s Child', 'Members') -> 3]", ("Destiny's Child", "Members", "3")),
    ("[dblookup('Trajan's Column', 'Height') -> 30 m]", ("Trajan's Column", "Height", "30 m")),
    ("[dblookup('A', 'B')->C]", ("A", "B", "C")),
    ("[dblookup('A','B')   ->   C ]", ("A", "B", "C")),
    ("[dblookup('A', 'Members') -> Askold, Dir, Rurik]", ("A", "Members", "Askold, Dir, Rurik")),
    ("[dblookup('Song', 'Title') -> \"I Feel Love\"]", ("Song", "Title", "I Feel Love")),
    ("[dblookup('A', 'B') -> Colm O\\'Rourke]", ("A", "B", "Colm O'Rourke")),
    ("[dblookup('A_b', 'B') -> C]", ("A_b", "B", "C")),
])
def test_legacy_quirks(call, expected):
    assert lookups(f"x {call} y") == [expected]


@pytest.mark.parametrize("call, reason", [
    ("[dblookup('E', 'R')]", "missing_arrow"),
    ("[dblookup('E', 'R') -> ]", "missing_value"),
    ("[dblookup('E') -> v]", "missing_relation"),
    ("[dblookup(E, R) -> v]", "missing_quotes"),
    ("[dblookup('', 'R') -> v]", "empty_entity"),
    ("[dblookup('E', '  ') -> v]", "empty_relation"),
    ("[x](dblookup('E', 'R')) -> v]", "mangled"),
    (f"{DB_ENTITY} E{DB_RELATIONSHIP} R{DB_END}", "malformed"),
    (f"{DB_ENTITY} {DB_RELATIONSHIP} R{DB_RETURN} v{DB_END}", "empty_entity"),
])
def test_malformed_calls_are_dropped_with_reason(call, reason):
    parsed = to_special(f"Before {call} after.")
    assert parsed.lookups == []
    assert parsed.drop_counts() == {reason: 1}
    assert parsed.text == "Before after."


def test_orphaned_arrow_tail_goes_with_its_call():
    # squad-train1k's one dropped call: the bracket closes before the arrow.
    doc = "drifted [dblookup('Euramerica', 'Start')] -> near the equator] near the equator, starting"
    parsed = to_special(doc)
    assert parsed.text == "drifted near the equator, starting"
    assert parsed.drop_counts() == {"missing_arrow": 1}


def test_mangled_form_from_reference_data():
    doc = ('Members of the ["cydippid" Lampea](dblookup(\'Lampea\', \'Diet\')) -> salps] genus '
           "[dblookup('Lampea', 'Prey') -> salps] eat salps.")
    parsed = to_special(doc)
    assert parsed.drop_counts() == {"mangled": 1}
    assert lookups(doc) == [("Lampea", "Prey", "salps")]
    assert "dblookup" not in parsed.text and "cydippid" not in parsed.text
    assert strip_lookups(doc) == "Members of the genus eat salps."


@pytest.mark.parametrize("tail, reason", [
    ("[dblookup('E', 'R') -> val", "truncated"),
    ("[dblookup('E', 'R", "truncated"),
    (f"{DB_ENTITY} E{DB_RELATIONSHIP} R{DB_RETURN} va", "truncated"),
])
def test_truncated_trailing_call(tail, reason):
    parsed = to_special(f"Good [dblookup('A', 'B') -> C] C and {tail}")
    assert lookups(parsed.text) == [("A", "B", "C")]
    assert parsed.drop_counts() == {reason: 1}
    assert parsed.text.endswith("C and")


def test_malformed_before_valid_does_not_swallow_it():
    doc = "a [dblookup('E', 'R' b [dblookup('A', 'B') -> C] c"
    parsed = to_special(doc)
    assert lookups(doc) == [("A", "B", "C")]
    assert parsed.drop_counts() == {"missing_arrow": 1}
    assert parsed.text == f"a {render_block(Triple('A', 'B', 'C'))} c"


def test_normalize_key_and_unescape():
    assert normalize_key("  Destiny\\'s_Child  \n Records ") == "destiny's child records"
    assert unescape("a\\\\b\\'c\\\"d") == "a\\b'c\"d"
    assert Triple("Arsenal_F.C.", "Birth  Date", "x").key() == ("arsenal f.c.", "birth date")


def test_strip_display_rule():
    raw = f"He was born in {render_block(Triple('A', 'B', 'C'))} C. Later {DB_ENTITY} A{DB_RELATIONSHIP} D"
    assert strip_lookups(raw) == "He was born in C. Later"


# --------------------------------------------------------------------------------------------
# Reference data (the lmlm-wiki data set, lmlm.datasets)

# file -> (docs, valid lookups, drops by reason). Compared with the README's lookup column:
# - squad-train1k: README 6,049. 6,050 calls; one is closed before its arrow
#   (`[dblookup('Euramerica', 'Formation Starting Point')] -> near the equator]`), dropped as
#   missing_arrow with its orphaned tail, so 6,049 valid, matching the README.
# - squad-eval100: README 584. 586 calls; one is mangled (`["cydippid" Lampea](dblookup('Lampea',
#   'Diet')) -> salps]`) and dropped; one is double-quoted (`[dblookup("Hooke\'s Law", 'Describes')
#   -> ...]`), which the reference left unconverted and uncounted but our rule accepts: 585 valid.
# - dwiki-eval1k and the parity file: every call is valid; the counts equal the README.
REFERENCE_COUNTS = {
    "squad-train1k_chatgpt_gpt4o-v7.1_cleaned.json": (990, 6049, {"missing_arrow": 1}),
    "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json": (99, 585, {"mangled": 1}),
    "dwiki-eval1k_annotator_llama-v6.1_cleaned.json": (830, 7136, {}),
    "parity/squad-eval100_llama-LMLM-Annotator_llama-v6.1.json": (30, 1158, {}),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_file_counts(lmlm_wiki, name):
    examples = json.loads((lmlm_wiki / name).read_text())["examples"]
    docs, valid, dropped = REFERENCE_COUNTS[name]
    n, drops, calls = 0, Counter(), 0
    for ex in examples:
        doc = ex["annotated_text"]
        parsed = to_special(doc)
        n += len(parsed.lookups)
        drops.update(parsed.drop_counts())
        calls += doc.count("dblookup(")
        assert "dblookup" not in parsed.text
        assert strip_lookups(parsed.text) == strip_lookups(doc)
        assert all(tok not in strip_lookups(doc) for tok in SPECIAL_TOKENS)
    assert (len(examples), n, dict(drops)) == (docs, valid, dropped)
    assert calls == valid + sum(dropped.values())


def test_parity_with_reference_database(lmlm_wiki):
    out = json.loads((lmlm_wiki / "parity/squad-eval100_llama-LMLM-Annotator_llama-v6.1.json").read_text())
    db = json.loads((lmlm_wiki / "parity/squad-eval100-Annotator_database.json").read_text())

    def norm(e, r, v):
        return normalize_key(e), normalize_key(r), unescape(v)

    ours = {norm(*vars(t).values()) for ex in out["examples"] for t in extract_triples(ex["annotated_text"])}
    # The reference strips one pair of wrapping quotes from values, as clean_field does.
    ref = {norm(e, r, clean_field(v)) for e, r, v in db["triplets"]}
    assert len(db["triplets"]) == 33 and len(ref) == 33
    assert ours == ref
