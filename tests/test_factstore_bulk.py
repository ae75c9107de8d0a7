"""Bulk loads through Ray Data (factstore.bulk): documents stream through loader actors into a real
store (single server and cluster); the same documents load once whatever the block size, the number
of actors, or a rerun, and the counts add up."""
from __future__ import annotations

import dataclasses
import json

import pytest


def documents(n: int) -> list[dict]:
    return [{"id": f"bulk-doc-{d}", "annotator": "gold",
             "triples": json.dumps([[f"Bulk Person {d // 2}", r, f"{r} {d // 2}"] for r in ("Birth City", "Employer")])}
            for d in range(n)]


@pytest.mark.slow
def test_documents_load_once_whatever_the_blocks_and_actors(ray_cluster, fact_store):
    import ray

    from lmlm.factstore.bulk import load_dataset

    cfg = dataclasses.replace(fact_store.cfg, url=fact_store.connection_url)
    ds = ray.data.from_items(documents(40) + [{"id": "bad", "annotator": "gold", "triples": json.dumps([["", "R", "v"]])}])
    first = load_dataset(ds, cfg, workers=2, batch_docs=7, cpus_per_worker=0.25)
    assert first == {"documents": 41, "triples": 81, "written": 80, "skipped": 0, "forced": 0, "replayed": 0, "invalid": 1}
    s = fact_store.stats()
    assert (s["triples"], s["mentions"], s["entities"]) == (40, 80, 20)  # each value from its two documents
    again = load_dataset(ds.repartition(3), cfg, workers=1, batch_docs=16, cpus_per_worker=0.25)
    assert again["written"] == 0 and again["replayed"] >= 40 and fact_store.stats()["mentions"] == 80
    more = load_dataset(ray.data.from_items(documents(50)), cfg, workers=2, batch_docs=10, cpus_per_worker=0.25)
    assert more["written"] == 20 and fact_store.stats()["mentions"] == 100  # only the 10 new documents


def test_a_bulk_load_needs_a_url_and_the_columns(ray_cluster):
    import ray

    from lmlm.factstore import FactStoreConfig
    from lmlm.factstore.bulk import load_dataset

    with pytest.raises(ValueError, match="needs the store's URL"):
        load_dataset(ray.data.from_items(documents(1)), FactStoreConfig())
    with pytest.raises(ValueError, match=r"columns \['annotator'\] are missing"):
        load_dataset(ray.data.from_items([{"id": "x", "triples": "[]"}]), FactStoreConfig(url="redis://127.0.0.1:1"))
