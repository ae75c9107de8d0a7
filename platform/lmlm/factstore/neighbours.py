"""The candidates fuzzy retrieval reads from the store (retrieval.py): the stored names that share a
lexical block with a query name, and each partition's vector-set neighbours of query vectors. A mixin
of `FactStore` (store.py), using its layout and pipelined reads.
"""
from __future__ import annotations

import numpy as np

from .layout import SEP, query_blocks

LEXICAL_FETCH = 200  # names read per lexical block (a bigger block is sampled)


class StoreNeighbours:
    def lexical_candidates(self, names: list[str]) -> list[list[str]]:
        """Per normalised query name, the stored entity names that share a lexical block with it
        (every stored name one edit away does; layout.query_blocks), read from every partition in one
        pipelined round; a block of more than LEXICAL_FETCH names is sampled."""
        blocks = [query_blocks(n) for n in names]
        parts = self.layout.parts
        res = iter(self._pipe_read([(k, lambda p, k=k: p.srandmember(k, LEXICAL_FETCH))
                                    for bs in blocks for b in bs for k in (ks.lexical(b) for ks in parts)]))
        return [list({m.decode() for _ in bs for _ in parts for m in next(res)}) for bs in blocks]

    def nearest_entities(self, vectors, k: int) -> list[list[tuple[str, float]]]:
        """Per query vector, the `k` nearest entities of each partition's entity vector set: (E, cosine)."""
        return self._nearest(vectors, k, [ks.entity_vectors for ks in self.layout.parts])

    def nearest_keys(self, vectors, k: int, entity: str | None = None) -> list[list[tuple[str, str, float]]]:
        """Per query vector, the `k` nearest keys of each partition's key vector set (the key index):
        (E, R, cosine). With `entity`, only that entity's keys: the VSIM FILTER compares a numeric id
        computed here, so no user string ever enters a filter expression."""
        if entity is None:
            sets, flt = [ks.key_vectors for ks in self.layout.parts], None
        else:
            sets, flt = [self.layout.of(entity).key_vectors], f".eid == {self.layout.eid(entity)}"
        return [[(*name.split(SEP, 1), cos) for name, cos in cands] for cands in self._nearest(vectors, k, sets, flt)]

    def _nearest(self, vectors, k: int, sets: list[str], flt: str | None = None) -> list[list[tuple[str, float]]]:
        """VSIM on every set (on a cluster: each node's sets in one pipelined round, nodes in parallel)."""
        extra = ["FILTER", flt] if flt else []
        blobs = [np.asarray(v, dtype=np.float32).tobytes() for v in vectors]
        res = iter(self._pipe_read([(key, lambda p, key=key, b=b: p.execute_command(
            "VSIM", key, "FP32", b, "WITHSCORES", "COUNT", k, *extra)) for b in blobs for key in sets]))
        return [[c for _ in sets for c in _pairs(next(res))] for _ in vectors]


def _pairs(res) -> list[tuple[str, float]]:
    """VSIM WITHSCORES reply (RESP2 flat list) -> [(element, cosine)]."""
    if not res:
        return []
    return [(res[i].decode(), 2.0 * float(res[i + 1]) - 1.0) for i in range(0, len(res), 2)]
