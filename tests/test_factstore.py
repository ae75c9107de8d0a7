"""Fact store on a real Redis 8: keys, provenance, exact and fuzzy lookups, edits, audit, JSON."""
from __future__ import annotations

import json
from dataclasses import astuple

import pytest

from lmlm.factstore import Answer, FactStore, FactStoreConfig, InvalidFact
from lmlm.format import Triple

PEOPLE = {
    "Ivo Jorgrove": {"Birth Date": "26 March 1962", "Birth City": "Baku", "Occupation": "film director",
                     "Employer": "Cobalt Foods", "Spouse": "Kjell Rosridge"},
    "Leona Northorne": {"Birth Date": "3 May 1971", "Birth City": "Lyon", "Occupation": "chemist",
                        "Employer": "Halden Labs", "Spouse": "Elio Belmere"},
    "Magnus Pelquist": {"Birth Date": "9 June 1955", "Birth City": "Oslo", "Occupation": "architect",
                        "Employer": "Fjord Works", "Spouse": "Greta Nordell"},
}
TRIPLES = [Triple(e, r, v) for e, attrs in PEOPLE.items() for r, v in attrs.items()]


@pytest.fixture
def loaded(fact_store):
    fact_store.add_triples(TRIPLES, doc_ids=[f"doc{i}" for i in range(len(TRIPLES))], annotator="gold")
    return fact_store


def test_exact_lookup_normalises_keys_and_carries_provenance(loaded):
    a = loaded.lookup("ivo_jorgrove", "  BIRTH   city ")
    assert isinstance(a, Answer) and a.value == "Baku" and a.stage == "exact" and a.score == 1.0
    assert a.triple == Triple("Ivo Jorgrove", "Birth City", "Baku")
    assert a.provenance["annotators"] == ["gold"] and a.provenance["doc_ids"] == ["doc1"]
    assert a.provenance["count"] == 1 and a.provenance["first_seen"] <= a.provenance["last_seen"]
    s = loaded.stats()
    assert (s["triples"], s["keys"], s["entities"], s["entity_vectors"], s["key_vectors"]) == (15, 15, 3, 3, 15)
    assert s["used_memory"] > 0 and s["vector_bytes"] > 0


def test_several_values_choice_is_most_frequent_then_most_recent(fact_store):
    fact_store.add_triples([Triple("A", "Color", "red")], doc_ids=["d1"], annotator="x")
    fact_store.add_triples([Triple("A", "Color", "blue")], doc_ids=["d2"], annotator="y")
    assert fact_store.lookup("a", "color").value == "blue"  # tie on count: most recent wins
    fact_store.add_triples([Triple("A", "Color", "red")], doc_ids=["d3"], annotator="y")
    a = fact_store.lookup("a", "color")
    assert a.value == "red" and a.provenance["count"] == 2 and a.provenance["doc_ids"] == ["d1", "d3"]
    assert a.provenance["annotators"] == ["x", "y"] and a.provenance["n_values"] == 2
    got = fact_store.get("A", "Color")
    assert [v["value"] for v in got["values"]] == ["red", "blue"] and got["chosen"] == "red"
    assert fact_store.stats()["triples"] == 2 and fact_store.stats()["mentions"] == 3


def test_lookup_batch_is_one_round_trip_and_one_embedding_call(loaded):
    emb = loaded.embedder
    calls = emb.calls
    qs = [("Ivo Jorgrove", "Birth City"), ("Leona Northorne", "Place of Birth"),
          ("Magnus Pelqvist", "Employer"), ("Nobody Atall", "Spouse")]
    out = loaded.lookup_batch(qs, fallback="unknown")
    assert [a.stage for a in out] == ["exact", "relation", "entity", "fallback"]
    assert [a.value for a in out] == ["Baku", "Lyon", "Fjord Works", "unknown"]
    assert out[3].triple is None
    assert emb.calls - calls <= 2  # queries + labels of exactly found entities, then unseen labels
    calls = emb.calls
    out = loaded.lookup_batch([("Ivo Jorgrove", "City of Birth"), ("Leona Northorn", "Employer")])
    assert [a.value for a in out] == ["Baku", "Halden Labs"] and emb.calls - calls <= 1  # 0: cached (shared cache)
    # exact-only batches need no model at all
    calls = emb.calls
    assert [a.value for a in loaded.lookup_batch([(t.entity, t.relation) for t in TRIPLES])] == [t.value for t in TRIPLES]
    assert emb.calls == calls


def test_fallback_policies_and_thresholds_per_call(loaded):
    q = ("Zorro Unknownman", "Birth City")
    assert loaded.lookup(*q, fallback="abstain") is None
    unk = loaded.lookup(*q, fallback="unknown")
    assert unk.value == "unknown" and unk.stage == "fallback" and unk.triple is None
    top = loaded.lookup(*q, fallback="top1_anyway")
    assert top.stage == "fallback" and top.triple is not None and top.triple.relation == "Birth City"
    # an impossible relation threshold turns an accepted reworded relation into a fallback
    assert loaded.lookup("Ivo Jorgrove", "Place of Birth").value == "Baku"
    assert loaded.lookup("Ivo Jorgrove", "Place of Birth", relation_threshold=1.01, fallback="abstain") is None
    with pytest.raises(ValueError, match="fallback"):
        loaded.lookup(*q, fallback="maybe")


def test_reference_mode_single_stage(loaded):
    a = loaded.lookup("Ivo Jorgrove", "birth place", mode="reference")
    assert a.value == "Baku" and a.stage == "relation" and 0.6 <= a.score <= 1.0
    assert loaded.lookup("Ivo Jorgrove", "birth place", mode="reference", cosine_threshold=0.999,
                         fallback="abstain") is None


@pytest.mark.parametrize("mode, name", [("two_stage", "cosine_threshold"), ("reference", "entity_threshold"),
                                        ("reference", "relation_threshold")])
def test_a_threshold_of_another_mode_is_refused_by_name(loaded, mode, name):
    with pytest.raises(ValueError, match=f"{name} applies only to fuzzy mode"):
        loaded.lookup("Ivo Jorgrove", "birth place", mode=mode, **{name: 0.5})
    with pytest.raises(TypeError, match="threshold"):
        loaded.lookup("Ivo Jorgrove", "birth place", threshold=0.5)  # the old, ambiguous name is gone
    with pytest.raises(ValueError, match="entity_threshold must be a number"):
        loaded.lookup("Ivo Jorgrove", "birth place", entity_threshold=float("nan"))


def test_delete_removes_key_and_vectors_for_the_very_next_lookup(loaded):
    assert loaded.delete("Ivo Jorgrove", "Birth City", "Lyon") == 0  # wrong value: nothing
    assert loaded.delete("Ivo Jorgrove", "Birth City") == 1
    assert loaded.lookup("Ivo Jorgrove", "Birth City", fallback="abstain") is None or \
        loaded.lookup("Ivo Jorgrove", "Birth City", fallback="abstain").triple.relation != "Birth City"
    for mode in ("two_stage", "reference"):
        a = loaded.lookup("Ivo Jorgrove", "Birthplace", mode=mode, fallback="top1_anyway")
        assert a is None or a.value != "Baku"
    assert loaded.delete_entity("Leona Northorne") == 5
    for mode in ("two_stage", "reference"):
        for rel in ("Birth City", "Employer"):
            a = loaded.lookup("Leona Northorne", rel, mode=mode, fallback="top1_anyway")
            assert a is None or a.triple is None or a.triple.entity != "Leona Northorne"
    s = loaded.stats()
    assert (s["triples"], s["keys"], s["entities"], s["entity_vectors"], s["key_vectors"]) == (9, 9, 2, 2, 9)
    ops = [e["op"] for e in loaded.audit()]
    assert ops[:3] == ["delete", "delete", "delete"] and "load" in ops


def test_delete_one_value_keeps_the_others(fact_store):
    fact_store.add_triples([Triple("B", "Award", "Gold"), Triple("B", "Award", "Silver")])
    assert fact_store.delete("B", "Award", "Gold") == 1
    assert fact_store.lookup("B", "Award").value == "Silver"
    assert fact_store.delete("B", "Award", "Silver") == 1
    assert fact_store.stats()["entities"] == 0 and fact_store.stats()["entity_vectors"] == 0


def test_put_replaces_and_is_audited(loaded):
    loaded.put(Triple("Ivo Jorgrove", "Employer", "Nimbus Air"))
    a = loaded.lookup("Ivo Jorgrove", "Employer")
    assert a.value == "Nimbus Air" and a.provenance["n_values"] == 1
    loaded.put(Triple("Ivo Jorgrove", "Employer", "Cobalt Foods"), replace=False)
    assert loaded.get("Ivo Jorgrove", "Employer")["values"][1]["value"] == "Cobalt Foods"
    entry = loaded.audit(1)[0]
    assert entry["op"] == "add" and entry["entity"] == "Ivo Jorgrove" and entry["value"] == "Cobalt Foods"
    assert entry["who"] == loaded.actor


def test_export_import_round_trip_reference_layout(loaded, fact_store_factory, tmp_path):
    path = tmp_path / "db.json"
    assert loaded.export_json(path, provenance_too=True) == 15
    db = json.loads(path.read_text())
    assert set(db) >= {"entities", "relationships", "return_values", "triplets"}
    assert sorted(map(tuple, db["triplets"])) == sorted((t.entity, t.relation, t.value) for t in TRIPLES)
    other = fact_store_factory(key_index=False)
    assert other.import_json(path) == 15
    assert sorted(other.triples(), key=str) == sorted(TRIPLES, key=str)
    assert other.lookup("Magnus Pelquist", "Spouse").provenance["doc_ids"] == ["doc14"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"triplets": [["only two", "fields"]]}')
    with pytest.raises(InvalidFact, match=r"triplets\[0\]"):
        other.import_json(bad)


def test_reference_database_file(fact_store_factory, lmlm_wiki):
    from lmlm.corpus import read_database

    store = fact_store_factory(key_index=False)
    triples = read_database(lmlm_wiki / "dwiki-eval100-annotator_database.json")
    store.import_json(lmlm_wiki / "dwiki-eval100-annotator_database.json")
    keys = {t.key() for t in triples}
    assert store.stats()["keys"] == len(keys)
    t = triples[0]
    assert store.lookup(t.entity, t.relation).stage == "exact"


def test_partitions_share_hash_tags(fact_store_factory):
    store = fact_store_factory(partitions=4)
    store.add_triples(TRIPLES)
    for E in ("ivo jorgrove", "leona northorne"):
        ks = store.layout.of(E)
        tags = {k[: k.index("}") + 1] for k in astuple(ks.part_keys()) + astuple(ks.entity_keys(E))}
        assert len(tags) == 1
    assert store.lookup("Leona Northorne", "City of Birth").value == "Lyon"
    assert store.lookup("Magnus Pelqvist", "Birth City", mode="reference").value == "Oslo"
    assert store.stats()["entities"] == 3


def test_meta_refuses_a_different_layout(fact_store, store_url):
    fact_store.add_triples(TRIPLES[:1])
    cfg = FactStoreConfig(url=store_url, namespace=fact_store.cfg.namespace, partitions=fact_store.cfg.partitions + 1,
                          key_index=True)
    with pytest.raises(ValueError, match="partitions"):
        FactStore.open(cfg)


def test_stored_layout_is_the_documented_one(fact_store):
    from lmlm.factstore.records import KeyRecord

    fact_store.add_triples([Triple("Orla Vantreck", "Birth City", "Tromso")], doc_ids=["d1"], annotator="gold")
    ks = fact_store.layout.of("orla vantreck")
    raw = json.loads(fact_store.r.hget(ks.entity("orla vantreck"), "birth city"))
    assert raw["e"] == "Orla Vantreck" and raw["r"] == "Birth City" and len(raw["v"]) == 1
    value, count, first_ms, last_ms, annotators, docs = raw["v"][0]
    assert (value, count, annotators, docs) == ("Tromso", 1, ["gold"], ["d1"]) and first_ms == last_ms > 0
    # a record written by hand in that layout (as an older store holds it) reads back the same
    old = {"e": "Orla Vantreck", "r": "Employer", "v": [["Nimbus Air", 2, 5, 9, ["x"], {}]]}  # cjson: [] as {}
    fact_store.r.hset(ks.entity("orla vantreck"), "employer", json.dumps(old))
    rec = KeyRecord.decode(json.dumps(old))
    assert KeyRecord.decode(rec.encode()) == rec and rec.chosen().annotators == ["x"]
    a = fact_store.lookup("orla vantreck", "employer")
    assert a.value == "Nimbus Air" and a.provenance["doc_ids"] == [] and a.provenance["count"] == 2
    assert {k.decode() for k in fact_store.r.hgetall(ks.stats)} == {"triples", "keys", "entities", "mentions"}
    entry = fact_store.audit(1)[0]
    assert entry["op"] == "load" and entry["annotator"] == "gold" and entry["triples"] == "1"


def test_entity_deleted_between_check_and_write_gets_its_vectors(fact_store, monkeypatch):
    fact_store.add_triples([Triple("Orla Vantreck", "Birth City", "Tromso")])
    real = fact_store._call

    def racing(fn, *args, **kw):  # the first store call of the next write is its existence check
        out = real(fn, *args, **kw)
        monkeypatch.setattr(fact_store, "_call", real)
        fact_store.delete("Orla Vantreck")
        return out

    monkeypatch.setattr(fact_store, "_call", racing)
    fact_store.add_triples([Triple("Orla Vantreck", "Birth City", "Bergen"),  # force: past the tombstone
                            Triple("Orla Vantreck", "Employer", "Fjord Works")], force=True)
    s = fact_store.stats()
    assert (s["triples"], s["keys"], s["entities"], s["entity_vectors"], s["key_vectors"]) == (2, 2, 1, 1, 2)
    assert fact_store.lookup("Orla Vantrek", "Employer").value == "Fjord Works"


def test_retrieval_uses_only_the_stores_public_methods():
    import inspect
    import re

    from lmlm.factstore import retrieval

    assert not re.findall(r"store\._\w+|store\.r\b|store\.layout\b", inspect.getsource(retrieval))


def test_one_edit_typos_share_a_lexical_block_with_the_name():
    import random

    from lmlm.factstore.layout import lexical_blocks, query_blocks

    rng = random.Random(0)
    for name in ["ivo jorgrove", "ab", "leona", "magnus pelquist", "x" * 40, "zoë ångström"]:
        for _ in range(200):
            i = rng.randrange(len(name))
            c = rng.choice("abcxyz ")
            typo = rng.choice([name[:i] + c + name[i + 1:], name[:i] + c + name[i:], name[:i] + name[i + 1:],
                               name[:i] + name[i + 1:i + 2] + name[i] + name[i + 2:]])
            assert set(lexical_blocks(name)) & set(query_blocks(typo)), (name, typo)


def test_typos_resolve_lexically_without_the_model_and_garbage_is_never_accepted(loaded):
    emb = loaded.embedder
    loaded.lookup_batch([("Ivo Jorgrove", "Place of Birth")])  # label embeddings cached
    calls, timings = emb.calls, {}
    out = loaded.lookup_batch([("Ivo Jorgrvoe", "Birth City"), ("Leona Nortorne", "Employer"),
                               ("Magnus Pelquistt", "Spouse")], timings=timings)
    assert [a.value for a in out] == ["Baku", "Halden Labs", "Greta Nordell"] and emb.calls == calls
    assert {"exact", "entity_exact", "lexical"} <= set(timings) and "vector_search" not in timings
    assert out[0].stage == "entity" and 0.87 <= out[0].provenance["entity_score"] < 1
    garbage = " ".join(["ivo", "jorgrove", "birth", "city", "leona", "northorne", "magnus", "pelquist", "lyon",
                        "baku", "oslo", "spouse", "employer", "chemist", "architect", "film", "director",
                        "halden", "labs", "cobalt"])
    assert len(garbage.split()) == 20
    for rel in ("Birth City", "Employer", "Place of Birth"):
        assert loaded.lookup(garbage, rel, fallback="abstain") is None
    assert loaded.lookup("Ivo", "Birth City", fallback="abstain") is None  # a fragment, not a typo


def test_a_store_of_format_1_gets_its_lexical_blocks_on_open(fact_store, store_url):
    fact_store.add_triples(TRIPLES)
    ks = fact_store.layout.of("ivo jorgrove")
    lex = [k for k in fact_store.r.scan_iter(match=f"{ks.tag}:lx:*")]
    fact_store.r.delete(*lex)  # as a format-1 store: no lexical blocks
    fact_store.r.hset(fact_store.layout.meta, "format", "1")
    with FactStore.open(fact_store.cfg) as again:
        assert again.r.hget(again.layout.meta, "format") == b"2"
        calls = again.embedder.calls
        assert again.lookup("Ivo Jorgrvoe", "Birth City").value == "Baku" and again.embedder.calls == calls


def test_a_name_followed_by_more_words_is_found_unless_ambiguous(loaded):
    timings: dict = {}
    a = loaded.lookup_batch([("Leona Northorne (born 3 May 1971)", "Employer")], timings=timings)[0]
    assert a.value == "Halden Labs" and a.stage == "entity" and "vector_search" not in timings
    assert a.provenance["entity_score"] < 1
    assert loaded.lookup("the chemist Magnus Pelquist, an", "Birth City").value == "Oslo"
    # two different names, or a long run of text: not a name with words after it
    assert loaded.lookup("Leona Northorne and Magnus Pelquist", "Employer", fallback="abstain") is None
    long = "Ivo Jorgrove " + " ".join(["word"] * 12)
    assert loaded.lookup(long, "Birth City", fallback="abstain") is None
