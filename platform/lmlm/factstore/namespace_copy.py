"""A private copy of a store's namespace, for experiments that delete (the unlearning evaluation).

Every key of the source namespace (entity hashes, vector sets, lexical blocks, stats, tombstones,
applied units, audit stream) is DUMPed and RESTOREd under the copy's namespace, pipelined per node:
no embedding, no Lua, and on a Redis Cluster the keys land on whichever node holds the copy's slots.
The source is only read, so an experiment on the copy never touches what a served store holds, and
an operator's deletions in the source stay deleted in the copy. The copy needs as much memory as the
source; `drop_namespace` frees it.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from . import backend
from .store import FactStore, _chunks

CHUNK = 500  # keys per pipelined round trip


def copy_namespace(source: FactStore, namespace: str) -> FactStore:
    """Replace namespace `namespace` with a copy of `source`'s; returns the copy, open (same server,
    same settings)."""
    if namespace == source.cfg.namespace:
        raise ValueError(f"copy_namespace: the copy's namespace {namespace!r} is the source's")
    # the source's connection URL (password included), so another process can open the copy by its config
    copy = FactStore(dataclasses.replace(source.cfg, namespace=namespace, url=source.connection_url, data_dir=None),
                     source.r, embedder=source.embedder)
    copy.flush()
    for src, dst in zip(source.layout.parts, copy.layout.parts):
        names = source._read(lambda: list(source.r.scan_iter(match=f"{src.tag}:*", count=1000)))
        for batch in _chunks(names, CHUNK):
            dumps = source._call(backend.pipelined, source.r, [(n, lambda p, n=n: p.dump(n)) for n in batch])
            source._call(backend.pipelined, source.r, [
                (to, lambda p, to=to, d=d: p.restore(to, 0, d, replace=True))
                for to, d in ((dst.tag + n.decode()[len(src.tag):], d) for n, d in zip(batch, dumps))
                if d is not None])
    return copy


def drop_namespace(store: FactStore) -> None:
    """Remove every key of `store`'s namespace, its settings too."""
    store.flush()
    for key in [ks.audit for ks in store.layout.parts] + [store.layout.meta]:  # flush leaves its audit entry
        store._call(store.r.delete, key)


@contextlib.contextmanager
def scratch_copy(source: FactStore, suffix: str = "scratch") -> Iterator[FactStore]:
    """`copy_namespace` into "<namespace>.<suffix>" for the duration of a `with` block, then dropped."""
    copy = copy_namespace(source, f"{source.cfg.namespace}.{suffix}")
    try:
        yield copy
    finally:
        drop_namespace(copy)
