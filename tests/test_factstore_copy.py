"""A private copy of a namespace (factstore.namespace_copy): what an experiment that deletes runs on.
Real stores, single server and cluster (the copy's keys live in other slots, on other nodes)."""
from __future__ import annotations

from lmlm.factstore.namespace_copy import copy_namespace, drop_namespace, scratch_copy
from lmlm.format import Triple

PEOPLE = [f"Copy Person {c}" for c in "ABCDEFGH"]
TRIPLES = [Triple(p, r, f"{r} of {p}") for p in PEOPLE for r in ("Birth City", "Employer")]


def keys_of(store) -> list[bytes]:
    return list(store.r.scan_iter(match=f"{{{store.cfg.namespace}*", count=1000))


def test_copy_holds_everything_and_is_independent(fact_store):
    fact_store.add_triples(TRIPLES, ["doc"] * len(TRIPLES), annotator="gold", batch_id="load")
    fact_store.delete_entity("Copy Person A")  # an operator's deletion: stays deleted in the copy
    before = fact_store.stats()
    copy = copy_namespace(fact_store, fact_store.cfg.namespace + ".exp")
    try:
        counts = lambda st: {k: v for k, v in st.items() if k.endswith("s") and "bytes" not in k}  # noqa: E731
        assert counts(copy.stats()) == counts(before) and before["tombstones"] == 1
        assert copy.get("Copy Person A", "Employer") is None
        assert copy.add_triples([Triple("Copy Person A", "Employer", "Employer of Copy Person A")]) == 0  # tombstone
        assert copy.load(TRIPLES, ["doc"] * len(TRIPLES), batch_id="load").written == 0  # units too
        assert copy.lookup("Copy Persn B", "Employer").value == "Employer of Copy Person B"  # vectors, blocks
        copy.delete_entity("Copy Person B")
        copy.put(Triple("Copy Person C", "Spouse", "Someone"))
        assert fact_store.get("Copy Person B", "Employer") is not None  # the source is only read
        assert fact_store.get("Copy Person C", "Spouse") is None
        assert fact_store.stats()["triples"] == before["triples"]
    finally:
        drop_namespace(copy)
    assert keys_of(copy) == [] and keys_of(fact_store)


def test_scratch_copy_is_dropped_even_when_the_experiment_fails(fact_store):
    fact_store.add_triples(TRIPLES)
    try:
        with scratch_copy(fact_store, "eval") as copy:
            assert copy.cfg.namespace == fact_store.cfg.namespace + ".eval"
            copy.delete_entity("Copy Person D")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert keys_of(copy) == []
    assert fact_store.get("Copy Person D", "Employer") is not None
