"""What a store holds as a whole: every record, the counts, the audit trail, and the reference
database JSON (export and import). A mixin of `FactStore` (store.py), kept apart from the edits and
lookups; its methods use the store's connection, layout and `load`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from lmlm.format import Triple

from . import backend, jsonio
from .records import AuditEntry, KeyRecord, PartitionStats, ValueRecord


def chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


class StoreInventory:
    def iter_records(self) -> Iterator[tuple[KeyRecord, ValueRecord]]:
        """(key record, value record) of every stored triple, entities in sorted order per partition."""
        for ks in self.layout.parts:
            names = sorted(self._read(lambda: list(self.r.scan_iter(match=f"{ks.tag}:e:*", count=1000))))
            for batch in chunks(names, 500):
                for h in self._pipe_read([(n, lambda p, n=n: p.hgetall(n)) for n in batch]):
                    for R in sorted(h):
                        rec = KeyRecord.decode(h[R])
                        for v in rec.values:
                            yield rec, v

    def triples(self) -> list[Triple]:
        return [Triple(rec.entity, rec.relation, v.value) for rec, v in self.iter_records()]

    def stats(self) -> dict:
        """Counts (triples, keys, entities, mentions, tombstones), memory (bytes) and vector-set sizes."""
        totals = PartitionStats()
        out = {**asdict(totals), "entity_vectors": 0, "key_vectors": 0, "vector_bytes": 0, "tombstones": 0,
               "partitions": self.layout.partitions, "namespace": self.cfg.namespace, "key_index": self.cfg.key_index}
        res = self._pipe_read([(ks.stats, lambda p, ks=ks: (p.hgetall(ks.stats), p.exists(ks.entity_vectors),
                                                            p.exists(ks.key_vectors), p.hlen(ks.tombstones)))
                               for ks in self.layout.parts])
        sizes = []
        for i, ks in enumerate(self.layout.parts):
            totals += PartitionStats.from_hash(res[4 * i])
            out["tombstones"] += int(res[4 * i + 3])
            for j, (vs, name) in enumerate(((ks.entity_vectors, "entity_vectors"), (ks.key_vectors, "key_vectors"))):
                if res[4 * i + 1 + j]:
                    sizes.append((vs, name))
        out.update(asdict(totals))
        res = self._pipe_read([(vs, lambda p, vs=vs: (p.execute_command("VCARD", vs), p.memory_usage(vs, samples=0)))
                               for vs, _ in sizes])
        for j, (_, name) in enumerate(sizes):
            out[name] += int(res[2 * j])
            out["vector_bytes"] += int(res[2 * j + 1] or 0)
        mem = self._read(backend.info_all, self.r, "memory")
        out["used_memory"] = sum(int(m["used_memory"]) for m in mem)
        out["used_memory_dataset"] = sum(int(m.get("used_memory_dataset", 0)) for m in mem)
        return out

    def audit(self, count: int = 100) -> list[dict]:
        """The latest audit entries of all partitions, newest first."""
        rows = [AuditEntry.from_stream(sid, raw) for ks in self.layout.parts
                for sid, raw in self._read(self.r.xrevrange, ks.audit, count=count)]
        rows.sort(key=AuditEntry.sort_key, reverse=True)
        return [e.as_dict() for e in rows[:count]]

    # ---------------------------------------------------------------------------------------------
    # Reference database JSON (jsonio.py)

    def export_json(self, path: str | os.PathLike, provenance_too: bool = False) -> int:
        """Write the reference layout {"entities", "relationships", "return_values", "triplets"};
        `provenance_too` adds a "provenance" list parallel to "triplets". Returns triples written."""
        return jsonio.export_json(self.iter_records(), path, provenance_too)

    def import_json(self, path: str | os.PathLike, annotator: str = "import", force: bool = False) -> int:
        """Load a database in the reference layout (a "provenance" list, if present, restores counts,
        annotators and document ids), exactly once per file content (its hash is the batch id: an
        interrupted import run again, or the same file again, counts each triple once); tombstoned
        facts are skipped unless `force`. Returns the triples of the file."""
        data = Path(path).read_bytes() if Path(path).is_file() else b""
        batch = "import:" + hashlib.blake2b(data, digest_size=12).hexdigest()
        groups, n = jsonio.read_database(path, annotator)
        for ann, (ts, ds) in groups.items():
            tag = hashlib.blake2b(ann.encode(), digest_size=6).hexdigest()  # annotator names may hold '#'
            self.load(ts, ds, annotator=ann, batch_id=f"{batch}:{tag}", force=force, op="import")
        return n
