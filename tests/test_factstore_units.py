"""Exactly-once loads by content: a unit (one document's triples, or one entity's without documents)
is named by what it holds, so a rerun with another chunk size or order writes nothing twice and
skips nothing, and a changed corpus on the same store loads exactly its new documents (a real store,
single server and cluster)."""
from __future__ import annotations

import dataclasses
import random

from lmlm.factstore import FactStore
from lmlm.factstore.layout import Fact
from lmlm.factstore.writes import units
from lmlm.format import Triple


def corpus(docs: range) -> tuple[list[Triple], list[str]]:
    """Each document names one person with three facts; the person of doc d is d // 2 (two documents
    per person, so a value is mentioned by two documents and its count is 2)."""
    ts, ds = [], []
    for d in docs:
        p = f"Unit Person {d // 2}"
        for r in ("Birth City", "Employer", "Spouse"):
            ts.append(Triple(p, r, f"{r} {d // 2}"))
            ds.append(f"doc-{d}")
    return ts, ds


def mentions(store) -> dict[tuple[str, str, str], int]:
    return {(k.entity, k.relation, v.value): v.count for k, v in store.iter_records()}


def test_unit_ids_do_not_depend_on_order_or_company():
    ts, ds = corpus(range(6))
    rows = [(Fact.of(t), d) for t, d in zip(ts, ds)]
    ids = {uid for uid, _ in units(rows, "scope")}
    assert len(ids) == 6  # one unit per document
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert {uid for uid, _ in units(shuffled, "scope")} == ids
    assert {uid for uid, _ in units(rows[:9], "scope")} < ids  # a document's id without the others
    assert not ({uid for uid, _ in units(rows, "other")} & ids)  # another scope is another load
    changed = rows[:-1] + [(Fact.of(Triple("Unit Person 2", "Spouse", "someone else")), "doc-5")]
    assert {uid for uid, _ in units(changed, "scope")} ^ ids == {units(rows[-3:], "scope")[0][0],
                                                              units(changed[-3:], "scope")[0][0]}


def test_rerun_with_another_chunk_size_and_order_writes_nothing_twice(fact_store_factory):
    ts, ds = corpus(range(40))
    first = fact_store_factory(write_batch=7)
    res = first.load(ts, ds, annotator="gold", batch_id="corpus")
    assert (res.written, res.replayed) == (120, 0)
    before = mentions(first)
    assert set(before.values()) == {2}
    for batch, seed in ((1, 1), (50, 2), (1000, 3)):
        with FactStore.open(dataclasses.replace(first.cfg, write_batch=batch)) as again:
            order = list(range(len(ts)))
            random.Random(seed).shuffle(order)
            res = again.load([ts[i] for i in order], [ds[i] for i in order], annotator="gold", batch_id="corpus")
            assert (res.written, res.replayed) == (0, 40)  # a document's facts are one entity's: one partition
            assert mentions(again) == before


def test_changed_corpus_loads_exactly_its_new_documents(fact_store_factory):
    store = fact_store_factory(write_batch=10)
    ts, ds = corpus(range(20))
    assert store.add_triples(ts, ds, batch_id="corpus") == 60
    more_ts, more_ds = corpus(range(30))  # the same 20 documents and 10 new ones
    res = store.load(more_ts, more_ds, batch_id="corpus")
    assert res.written == 30 and res.replayed >= 20
    counts = mentions(store)
    assert len(counts) == 45 and set(counts.values()) == {2}


def test_a_document_larger_than_a_round_is_written_whole(fact_store_factory):
    store = fact_store_factory(write_batch=2)
    ts = [Triple("Big Doc Person", f"Rel {i}", f"value {i}") for i in range(9)]
    assert store.load(ts, ["big"] * 9, batch_id="corpus").written == 9
    res = store.load(ts, ["big"] * 9, batch_id="corpus")
    assert res.written == 0 and res.replayed == 1


def test_without_a_batch_id_every_write_counts():
    ts, ds = corpus(range(2))
    (uid, agg), = units([(Fact.of(t), d) for t, d in zip(ts, ds)], None)
    assert uid == "" and len(agg) == 3 and all(a[1] == 2 for a in agg.values())
