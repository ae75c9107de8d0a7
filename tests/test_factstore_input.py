"""Bad input: stored verbatim or refused with a clear error, never corrupting or shadowing other keys."""
from __future__ import annotations

import pytest

from lmlm.factstore import InvalidFact
from lmlm.format import Triple


@pytest.mark.parametrize("triple, match", [
    (Triple("", "R", "v"), "entity is empty"),
    (Triple("E", "   ", "v"), "relation is empty"),
    (Triple("E", "R", ""), "value is empty"),
    (Triple("E", "R", "x" * (64 * 1024 + 1)), "value .* bytes long"),
    (Triple("E\x00vil", "R", "v"), "entity .* control character U\\+0000"),
    (Triple("E", "R\x07", "v"), "relation .* control character U\\+0007"),
    (Triple("E", "R", b"\xff\xfe"), "value is not valid UTF-8"),
    (Triple("E\udcff", "R", "v"), "entity is not valid UTF-8"),
    (Triple("___", "R", "v"), "empty once normalised"),
])
def test_refused_with_a_clear_error(fact_store, triple, match):
    fact_store.add_triples([Triple("Keep", "Me", "safe")])
    with pytest.raises(InvalidFact, match=match):
        fact_store.add_triples([Triple("Other", "Rel", "ok"), triple])
    assert fact_store.stats()["triples"] == 1  # the batch with a bad triple wrote nothing
    assert fact_store.lookup("Keep", "Me").value == "safe"


def test_a_load_can_leave_invalid_triples_out_and_count_them(fact_store):
    res = fact_store.load([Triple("Keep", "Me", "safe"), Triple("", "R", "v"), Triple("Also", "Me", "ok")],
                          ["d1", "d2", "d3"], annotator="gold", batch_id="skip", on_invalid="skip")
    assert (res.written, res.invalid) == (2, 1)
    assert fact_store.get("Also", "Me")["values"][0]["doc_ids"] == ["d3"]  # document ids stay with their triples


def test_special_characters_stored_verbatim(fact_store):
    odd = [
        Triple('Quote " and \\ back', "rel * ? [x]", "v1"),
        Triple("{lmlm:0}:e:keep", "me", "not shadowed"),
        Triple("Ünïcödé 名前", "Birth Date", "1 Jan 2000, maybe"),
        Triple("Keep", "Me", "x" * (64 * 1024 - 10) + "\n\ttail"),
        Triple("Line\nbreak\tname", "R", "multi\nline value"),
    ]
    fact_store.add_triples(odd)
    fact_store.add_triples([Triple("Keep", "Me", "safe")])
    for t in odd[:3]:
        a = fact_store.lookup(t.entity, t.relation)
        assert a.value == t.value and a.stage == "exact"
    assert fact_store.lookup("line break name", "r").value == "multi\nline value"
    assert fact_store.get("Keep", "Me")["values"][0]["value"].endswith("\n\ttail")
    assert fact_store.stats()["triples"] == 6


def test_filter_expression_injection_cannot_reach_other_entities(fact_store):
    fact_store.add_triples([Triple("Victim Person", "Secret", "launch code 1234"),
                            Triple("Victim Person", "Birth City", "Oslo")])
    for evil in ['x" || .eid > 0 || "', "x' or 1 or '", ".eid", "1 || 1", '") || (1', "*"]:
        fact_store.add_triples([Triple(evil, "Note", "harmless")])
        hits = fact_store.search("secret launch code", k=10, entity=evil)
        assert [a.triple.entity for a in hits] == [evil]
        assert fact_store.lookup(evil, "Secret", fallback="abstain") is None or \
            fact_store.lookup(evil, "Secret", fallback="abstain").value == "harmless"
        assert fact_store.delete(evil, "Secret") == 0
    assert fact_store.lookup("Victim Person", "Secret").value == "launch code 1234"
    assert [a.triple.entity for a in fact_store.search("secret launch code", k=2, entity="Victim Person")] == \
        ["Victim Person", "Victim Person"]


def test_invalid_queries_fall_back_instead_of_raising(fact_store):
    fact_store.add_triples([Triple("Keep", "Me", "safe")])
    out = fact_store.lookup_batch([("", "Me"), ("Keep", "Me"), ("Keep\x00", "Me")], fallback="unknown")
    assert [a.value for a in out] == ["unknown", "safe", "unknown"]
    assert "invalid query" in out[0].provenance["reason"]


def test_fast_query_normaliser_agrees_with_clean_name():
    from lmlm.factstore.layout import clean_name, norm_name

    for s in ["Birth City", "  BIRTH   city ", "ivo_jorgrove", "O\\'Brien", "Zoë Ångström", "a\tb", "x" * 1024]:
        assert norm_name(s, "entity") == clean_name(s, "entity")[1]
    for bad in ["", "   ", "a\x00b", "x" * 1025, 7]:
        with pytest.raises((InvalidFact, TypeError)):
            norm_name(bad, "entity")


def test_lexical_bonus_reads_stems_and_acronyms():
    from lmlm.factstore.retrieval import lexical_bonus

    assert lexical_bonus("dob", "birth date") == 0.5 and lexical_bonus("dob", "spouse") == 0.0
    assert lexical_bonus("employed by", "employer") == 0.2
    assert lexical_bonus("works for", "employer") == 0.0


def test_edit_distance_counts_adjacent_swaps_once_and_stops_at_the_limit():
    from lmlm.factstore.retrieval import entity_similarity, osa_distance

    assert osa_distance("ivo jorgrove", "ivo jorgrove") == 0
    assert osa_distance("ivo jorgrove", "ivo jorgorve") == 1  # one transposition
    assert osa_distance("ca", "abc") == 3  # optimal string alignment, not full Damerau-Levenshtein (2)
    assert osa_distance("leona", "magnus pelquist") == 4 and osa_distance("ab", "xyz", limit=1) == 2
    assert entity_similarity("ivo jorgorve", "ivo jorgrove", 0.8) > 0.87 > entity_similarity("ivo", "leona", 1.0)
