"""FactStore: the LMLM database on Redis 8 (keys with provenance, vector sets, audit, unlearning)."""
from __future__ import annotations

import getpass
import json
import os
from collections import defaultdict
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import redis

from lmlm.format import Triple

from . import retrieval
from .config import FactStoreConfig
from .embed import DIM, MODEL_NAME, Embedder, get_embedder
from .layout import SEP, Fact, InvalidFact, Layout, ScriptKeys, clean_name, now_ms
from .records import AuditEntry, KeyRecord, PartitionStats, StoreMeta, ValueRecord
from .retrieval import Answer
from .scripts import ADD, ADD_VECTOR, DELETE, HGET_MANY, AddArgs, DeleteArgs, VectorArgs
from .server import RedisServer, StoreUnavailable, connect

_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, OSError)
FORMAT_VERSION = 1


class FactStore:
    """Open with `FactStore.open(cfg)` (a context manager); `close()` stops a private server."""

    def __init__(self, cfg: FactStoreConfig, client: redis.Redis, server: RedisServer | None = None,
                 embedder: Embedder | None = None):
        self.cfg = cfg
        self.r = client
        self.server = server
        self.layout = Layout(cfg.namespace, cfg.partitions)
        self.actor = cfg.actor or os.environ.get("USER") or _user()
        self._embedder = embedder
        self._add = ADD.bind(self.r)
        self._delete = DELETE.bind(self.r)
        self._add_vector = ADD_VECTOR.bind(self.r)
        self._hget_many = self.r.register_script(HGET_MANY)
        self._check_meta()

    # ---------------------------------------------------------------------------------------------
    # Lifecycle

    @classmethod
    def open(cls, cfg: FactStoreConfig | None = None, embedder: Embedder | None = None) -> "FactStore":
        cfg = cfg or FactStoreConfig()
        url = cfg.resolved_url()
        server = None
        if url is None:
            server = RedisServer(cfg.data_dir, cfg.appendfsync).start()
            url = server.url
        try:
            return cls(cfg, connect(url, cfg.timeout_s), server, embedder)
        except BaseException:
            if server:
                server.stop()
            raise

    @property
    def url(self) -> str:
        kw = self.r.connection_pool.connection_kwargs
        return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    def close(self) -> None:
        self.r.close()
        if self.server:
            self.server.stop()
            self.server = None

    def __enter__(self) -> "FactStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, *args, **kw):
        """Run a Redis call; a dead or silent server becomes StoreUnavailable (never a hang)."""
        try:
            return fn(*args, **kw)
        except redis.ResponseError:
            raise
        except _DOWN as e:
            raise StoreUnavailable(f"fact store at {self.url} is unavailable: {e}") from e

    def _check_meta(self) -> None:
        want = StoreMeta(format=FORMAT_VERSION, partitions=self.cfg.partitions, dim=DIM, model=MODEL_NAME,
                         key_index=self.cfg.key_index).to_hash()
        have = {k.decode(): v.decode() for k, v in self._call(self.r.hgetall, self.layout.meta).items()}
        if not have:
            self._call(self.r.hset, self.layout.meta, mapping=want)
            return
        for k, v in want.items():
            if have.get(k) != v:
                raise ValueError(f"store {self.cfg.namespace!r} at {self.url} was created with {k}={have.get(k)}, "
                                 f"the config says {k}={v}: open it with the same setting")

    # ---------------------------------------------------------------------------------------------
    # Writes

    def add_triples(self, triples: Iterable[Triple], doc_ids: Iterable[str] | None = None,
                    annotator: str = "unknown") -> int:
        """Bulk load (pipelined, `cfg.write_batch` triples per round trip); returns triples written.

        `doc_ids`, when given, runs parallel to `triples` (the document each came from). Invalid
        triples raise InvalidFact before anything of their batch is written.
        """
        docs = iter(doc_ids) if doc_ids is not None else None
        total = 0
        it = iter(triples)
        while batch := list(islice(it, self.cfg.write_batch)):
            rows = []
            for t in batch:
                doc = next(docs, None) if docs is not None else None
                rows.append((Fact.of(t), doc))
            total += self._write(rows, annotator, audit_op="load")
        return total

    def put(self, triple: Triple, *, replace: bool = True, doc_id: str | None = None,
            annotator: str = "manual") -> None:
        """Set a value: with `replace` the key keeps only this value (others removed), else it is added."""
        self._write([(Fact.of(triple), doc_id)], annotator, audit_op="put" if replace else "add", replace=replace)

    def _write(self, rows: list[tuple[Fact, str | None]], annotator: str, audit_op: str,
               replace: bool = False) -> int:
        agg: dict[tuple, list] = {}
        for f, doc in rows:
            a = agg.setdefault((f.E, f.R, f.value), [f, 0, []])
            a[1] += 1
            if doc is not None and str(doc) not in a[2]:
                a[2].append(str(doc))
        ents = list(dict.fromkeys(k[0] for k in agg))
        keys = list(dict.fromkeys((k[0], k[1]) for k in agg))
        pipe = self.r.pipeline(transaction=False)
        for E in ents:
            pipe.exists(self.layout.of(E).entity(E))
        if self.cfg.key_index:
            for E, R in keys:
                pipe.hexists(self.layout.of(E).entity(E), R)
        found = self._call(pipe.execute)
        new_ents = [E for E, x in zip(ents, found[: len(ents)]) if not x]
        new_keys = [k for k, x in zip(keys, found[len(ents):]) if not x] if self.cfg.key_index else []
        evec = self._vectors(new_ents)
        kvec = self._vectors([f"{E} {R}" for E, R in new_keys])
        kvec = {k: kvec[f"{k[0]} {k[1]}"] for k in new_keys}
        audit = self.actor if len(agg) == 1 and audit_op != "load" else ""
        ms = now_ms()
        pipe = self.r.pipeline(transaction=False)
        order = []
        for (E, R, value), (f, n, ds) in agg.items():
            self._add(self._keys(E), AddArgs(
                E=E, R=R, entity=f.entity, relation=f.relation, value=value, count=n, annotator=annotator,
                docs=ds, now_ms=ms, max_docs=self.cfg.max_docs_per_value, entity_vector=evec.pop(E, b""),
                key_vector=kvec.pop((E, R), b""), eid=self._eid(E), replace=replace, actor=audit,
                audit_maxlen=self.cfg.audit_maxlen, op=audit_op), client=pipe)
            order.append((E, R))
        replies = [ADD.parse(raw) for raw in self._call(pipe.execute)]
        need_ents = [E for (E, _), a in zip(order, replies) if a.need_entity_vector]
        need_keys = [k for k, a in zip(order, replies) if a.need_key_vector]
        if need_ents or need_keys:  # an entity deleted between the check and the write: add its vectors now
            self._repair_vectors(need_ents, need_keys)
        if not audit:
            self._audit_summary(agg, annotator, audit_op)
        return len(rows)

    def _vectors(self, texts: list[str]) -> dict[str, bytes]:
        if not texts:
            return {}
        vecs = self.embedder.encode(texts)
        return {t: v.astype(np.float32).tobytes() for t, v in zip(texts, vecs)}

    def _keys(self, E: str) -> ScriptKeys:
        return self.layout.of(E).script_keys(E)

    def _eid(self, E: str) -> str:
        return str(self.layout.eid(E)) if self.cfg.key_index else ""

    def _repair_vectors(self, ents: list[str], keys: list[tuple[str, str]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        ev = self._vectors(ents)
        kv = self._vectors([f"{E} {R}" for E, R in keys])
        for E in ents:
            self._add_vector(self._keys(E), VectorArgs(E=E, R="", vector=ev[E], eid=""), client=pipe)
        for E, R in keys:
            self._add_vector(self._keys(E), VectorArgs(E=E, R=R, vector=kv[f"{E} {R}"], eid=self._eid(E)),
                             client=pipe)
        self._call(pipe.execute)

    def _audit_summary(self, agg: dict, annotator: str, op: str) -> None:
        per_part: dict[str, int] = defaultdict(int)
        for E, _, _ in agg:
            per_part[self.layout.of(E).audit] += 1
        pipe = self.r.pipeline(transaction=False)
        for key, n in per_part.items():
            pipe.xadd(key, AuditEntry(op=op, who=self.actor, annotator=annotator, triples=n).to_stream(),
                      maxlen=self.cfg.audit_maxlen, approximate=True)
        self._call(pipe.execute)

    def delete(self, entity: str, relation: str | None = None, value: str | None = None) -> int:
        """Delete a triple, a key (entity, relation) or a whole entity, with its vector elements, in
        one atomic script; returns the number of (entity, relation, value) triples removed."""
        ent, E = clean_name(entity, "entity")
        R = clean_name(relation, "relation")[1] if relation is not None else ""
        if value is not None and relation is None:
            raise InvalidFact("delete: a value needs a relation")
        args = DeleteArgs(E=E, R=R, value=value.strip() if value is not None else "", has_value=value is not None,
                          actor=self.actor, audit_maxlen=self.cfg.audit_maxlen, entity=ent)
        return DELETE.parse(self._call(self._delete, self._keys(E), args)).triples

    def delete_entity(self, entity: str) -> int:
        return self.delete(entity)

    def flush(self) -> None:
        """Remove every key of this namespace (tests, rebuilds); recorded in the audit stream."""
        for ks in self.layout.parts:
            for batch in _chunks(self._call(lambda: list(self.r.scan_iter(match=f"{ks.tag}:*", count=1000))), 1000):
                self._call(self.r.delete, *batch)
            self._call(self.r.xadd, ks.audit, AuditEntry(op="flush", who=self.actor).to_stream())

    # ---------------------------------------------------------------------------------------------
    # Reads

    def get(self, entity: str, relation: str) -> dict | None:
        """Everything stored under a key: {"entity", "relation", "values": [{value, count, ...}]}."""
        rec = self.records([(clean_name(entity, "entity")[1], clean_name(relation, "relation")[1])])[0]
        return rec.as_dict() if rec is not None else None

    def lookup(self, entity: str, relation: str, **kw) -> Answer | None:
        """Exact key first, then fuzzy (`mode`, `top_k`, `fallback` and the mode's thresholds)."""
        return self.lookup_batch([(entity, relation)], **kw)[0]

    def lookup_batch(self, queries: list[tuple[str, str]], *, mode: str | None = None,
                     entity_threshold: float | None = None, relation_threshold: float | None = None,
                     cosine_threshold: float | None = None, top_k: int | None = None,
                     fallback: str | None = None) -> list[Answer | None]:
        """Many lookups: one pipelined round trip for the exact keys; the misses share one embedding
        call and a fixed number of pipelined round trips (not one per query).

        Thresholds, each None for the config's: `entity_threshold` (two_stage: entity similarity),
        `relation_threshold` (two_stage: relation-label cosine), `cosine_threshold` (reference: cosine of
        "{entity} {relation}" to a key). Giving one the mode does not use raises ValueError."""
        mode = mode or self.cfg.fuzzy_mode
        given = {"entity_threshold": entity_threshold, "relation_threshold": relation_threshold,
                 "cosine_threshold": cosine_threshold}
        return retrieval.lookup_batch(self, queries, mode=mode, top_k=top_k, fallback=fallback or self.cfg.fallback,
                                      **{k: v for k, v in given.items() if v is not None})

    def search(self, text: str, k: int = 5, entity: str | None = None) -> list[Answer]:
        """Nearest keys to free text ("{entity} {relation}"), optionally only among one entity's keys."""
        return retrieval.search(self, text, k, entity)

    # Reads by normalised names, for retrieval: parsed records and vector-set neighbours

    def records(self, keys: list[tuple[str, str]]) -> list[KeyRecord | None]:
        """The record under each (entity, relation) key, None where absent: one HGET for a single key,
        else one script call per partition (a partition's keys share its hash tag), pipelined."""
        if len(keys) == 1:
            (E, R), = keys
            blobs = [self._call(self.r.hget, self.layout.of(E).entity(E), R)]
        else:
            groups: dict[str, tuple[list, list, list]] = {}
            for i, (E, R) in enumerate(keys):
                ks = self.layout.of(E)
                g = groups.setdefault(ks.tag, ([], [], []))
                g[0].append(i)
                g[1].append(ks.entity(E))
                g[2].append(R)
            blobs = [None] * len(keys)
            if len(groups) == 1:  # no pipeline: a pipelined script costs an extra SCRIPT EXISTS round trip
                (idx, hashes, rels), = groups.values()
                res = [self._call(self._hget_many, keys=hashes, args=rels)]
            else:
                pipe = self.r.pipeline(transaction=False)
                for _, hashes, rels in groups.values():
                    self._hget_many(keys=hashes, args=rels, client=pipe)
                res = self._call(pipe.execute)
            for (idx, _, _), got in zip(groups.values(), res):
                for i, b in zip(idx, got):
                    blobs[i] = b
        return [KeyRecord.decode(b) if b is not None else None for b in blobs]

    def entity_records(self, entities: list[str]) -> list[dict[str, KeyRecord]]:
        """Every record of each entity by relation ({} where the entity is absent), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for E in entities:
            pipe.hgetall(self.layout.of(E).entity(E))
        return [{R.decode(): KeyRecord.decode(b) for R, b in h.items()} for h in self._call(pipe.execute)]

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
        pipe = self.r.pipeline(transaction=False)
        extra = ["FILTER", flt] if flt else []
        for v in vectors:
            blob = np.asarray(v, dtype=np.float32).tobytes()
            for key in sets:
                pipe.execute_command("VSIM", key, "FP32", blob, "WITHSCORES", "COUNT", k, *extra)
        res = iter(self._call(pipe.execute))
        return [[c for _ in sets for c in _pairs(next(res))] for _ in vectors]

    def iter_records(self) -> Iterator[tuple[KeyRecord, ValueRecord]]:
        """(key record, value record) of every stored triple, entities in sorted order per partition."""
        for ks in self.layout.parts:
            names = sorted(self._call(lambda: list(self.r.scan_iter(match=f"{ks.tag}:e:*", count=1000))))
            for batch in _chunks(names, 500):
                pipe = self.r.pipeline(transaction=False)
                for n in batch:
                    pipe.hgetall(n)
                for h in self._call(pipe.execute):
                    for R in sorted(h):
                        rec = KeyRecord.decode(h[R])
                        for v in rec.values:
                            yield rec, v

    def triples(self) -> list[Triple]:
        return [Triple(rec.entity, rec.relation, v.value) for rec, v in self.iter_records()]

    def stats(self) -> dict:
        """Counts (triples, keys, entities, mentions), memory (bytes) and vector-set sizes."""
        totals = PartitionStats()
        out = {**asdict(totals), "entity_vectors": 0, "key_vectors": 0, "vector_bytes": 0,
               "partitions": self.layout.partitions, "namespace": self.cfg.namespace, "key_index": self.cfg.key_index}
        pipe = self.r.pipeline(transaction=False)
        for ks in self.layout.parts:
            pipe.hgetall(ks.stats)
            for vs in (ks.entity_vectors, ks.key_vectors):
                pipe.exists(vs)
        res = self._call(pipe.execute)
        pipe = self.r.pipeline(transaction=False)
        sizes = []
        for i, ks in enumerate(self.layout.parts):
            totals += PartitionStats.from_hash(res[3 * i])
            for j, (vs, name) in enumerate(((ks.entity_vectors, "entity_vectors"), (ks.key_vectors, "key_vectors"))):
                if res[3 * i + 1 + j]:
                    pipe.execute_command("VCARD", vs)
                    pipe.memory_usage(vs, samples=0)
                    sizes.append(name)
        out.update(asdict(totals))
        res = self._call(pipe.execute)
        for j, name in enumerate(sizes):
            out[name] += int(res[2 * j])
            out["vector_bytes"] += int(res[2 * j + 1] or 0)
        mem = self._call(self.r.info, "memory")
        out["used_memory"] = int(mem["used_memory"])
        out["used_memory_dataset"] = int(mem.get("used_memory_dataset", 0))
        return out

    def audit(self, count: int = 100) -> list[dict]:
        """The latest audit entries of all partitions, newest first."""
        rows = [AuditEntry.from_stream(sid, raw) for ks in self.layout.parts
                for sid, raw in self._call(self.r.xrevrange, ks.audit, count=count)]
        rows.sort(key=AuditEntry.sort_key, reverse=True)
        return [e.as_dict() for e in rows[:count]]

    # ---------------------------------------------------------------------------------------------
    # Reference database JSON

    def export_json(self, path: str | os.PathLike, provenance_too: bool = False) -> int:
        """Write the reference layout {"entities", "relationships", "return_values", "triplets"};
        `provenance_too` adds a "provenance" list parallel to "triplets". Returns triples written."""
        rows = list(self.iter_records())
        db = {
            "entities": list(dict.fromkeys(rec.entity for rec, _ in rows)),
            "relationships": list(dict.fromkeys(rec.relation for rec, _ in rows)),
            "return_values": list(dict.fromkeys(v.value for _, v in rows)),
            "triplets": [[rec.entity, rec.relation, v.value] for rec, v in rows],
        }
        if provenance_too:
            db["provenance"] = [rec.provenance(v) for rec, v in rows]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(db, ensure_ascii=False, indent=1), encoding="utf-8")
        return len(rows)

    def import_json(self, path: str | os.PathLike, annotator: str = "import") -> int:
        """Load a database in the reference layout (a "provenance" list, if present, restores counts,
        annotators and document ids)."""
        p = Path(path)
        try:
            db = json.loads(p.read_text(encoding="utf-8"))
            rows = db["triplets"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidFact(f"{p}: not a database in the reference layout ({e})") from e
        triples = []
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 3):
                raise InvalidFact(f"{p}: triplets[{i}] is not an [entity, relation, value] list")
            triples.append(Triple(*row))
        prov = db.get("provenance")
        if not prov:
            return self.add_triples(triples, annotator=annotator)
        if len(prov) != len(triples):
            raise InvalidFact(f"{p}: provenance has {len(prov)} rows for {len(triples)} triplets")
        by_annotator: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for t, pv in zip(triples, prov):
            docs = list(pv.get("doc_ids") or [])
            ann = (pv.get("annotators") or [annotator])[0]
            for i in range(max(int(pv.get("count", 1)), 1)):
                by_annotator[ann][0].append(t)
                by_annotator[ann][1].append(docs[i] if i < len(docs) else None)
        for ann, (ts, ds) in by_annotator.items():
            self._import_rows(ts, ds, ann)
        return len(triples)

    def _import_rows(self, ts, ds, annotator):
        for i in range(0, len(ts), self.cfg.write_batch):
            rows = [(Fact.of(t), d) for t, d in zip(ts[i:i + self.cfg.write_batch], ds[i:i + self.cfg.write_batch])]
            self._write(rows, annotator, audit_op="import")


def _pairs(res) -> list[tuple[str, float]]:
    """VSIM WITHSCORES reply (RESP2 flat list) -> [(element, cosine)]."""
    if not res:
        return []
    return [(res[i].decode(), 2.0 * float(res[i + 1]) - 1.0) for i in range(0, len(res), 2)]


def _chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no passwd entry in some containers
        return f"uid{os.getuid()}"
