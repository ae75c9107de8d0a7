"""Bulk loads as a Ray Data pipeline: documents stream through a pool of loader actors, each with its
own connection and embedder (on its GPU when it has one), which write block after block through
`FactStore.load`; the driver only sums counts.

A row is one document: {"id", "triples" (JSON [[entity, relation, value], ...] or a list),
"annotator"}, the layout of the annotated Parquet shards. A batch holds whole documents and loads are
exactly once per document's content (factstore.writes.units), so the same documents load once
whatever the block boundaries, the number of actors, or a rerun after a kill.
"""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

from .config import FactStoreConfig

COUNTS = ("documents", "triples", "written", "skipped", "forced", "replayed", "invalid")


class _Loader:
    """One actor of the pool: a store connection (and its embedder) reused for every batch."""

    def __init__(self, store: dict, batch_id: str, force: bool):
        from lmlm.config import from_dict

        from .store import FactStore

        self.store = FactStore.open(from_dict(FactStoreConfig, store))
        self.batch_id, self.force = batch_id, force

    def __call__(self, batch: dict) -> dict:
        from lmlm.format import Triple

        groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        n = 0
        for doc_id, triples, annotator in zip(batch["id"], batch["triples"], batch["annotator"]):
            rows = json.loads(triples) if isinstance(triples, str) else triples
            ts, ds = groups[str(annotator or "unknown")]
            for e, r, v in rows:
                ts.append(Triple(str(e), str(r), str(v)))
                ds.append(str(doc_id))
            n += len(rows)
        out = dict.fromkeys(COUNTS, 0)
        for annotator, (ts, ds) in groups.items():
            res = self.store.load(ts, ds, annotator=annotator, batch_id=self.batch_id, force=self.force,
                                  on_invalid="skip")
            for k in ("written", "skipped", "forced", "replayed", "invalid"):
                out[k] += getattr(res, k)
        out.update(documents=len(batch["id"]), triples=n)
        return {k: [v] for k, v in out.items()}


def load_dataset(ds, store: FactStoreConfig, *, batch_id: str = "annotated", workers: int = 2,
                 batch_docs: int = 256, force: bool = False, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0) -> dict:
    """Load every document of Ray Dataset `ds` into the store at `store.url` with `workers` loader
    actors; returns the summed counts {documents, triples, written, skipped, forced, replayed, invalid}."""
    from lmlm.config import to_dict

    if not store.resolved_url():
        raise ValueError("factstore: a bulk load needs the store's URL (its actors connect to it), not a private server")
    if workers < 1 or batch_docs < 1:
        raise ValueError(f"workers and batch_docs must be >= 1 (got {workers}, {batch_docs})")
    missing = {"id", "triples", "annotator"} - set(ds.schema().names)
    if missing:
        raise ValueError(f"dataset: the columns {sorted(missing)} are missing (has {ds.schema().names})")
    counts = ds.map_batches(_Loader, batch_size=batch_docs, batch_format="numpy", concurrency=workers,
                            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                            fn_constructor_kwargs={"store": to_dict(dataclasses.replace(store, data_dir=None)),
                                                   "batch_id": batch_id, "force": force})
    total = dict.fromkeys(COUNTS, 0)
    for b in counts.iter_batches(batch_size=None, batch_format="numpy"):
        for k in COUNTS:
            total[k] += int(b[k].sum())
    return total
