"""FactStore: the LMLM database on Redis 8 (keys with provenance, vector sets, audit, unlearning)."""
from __future__ import annotations

import getpass
import os
import warnings
from typing import Iterable

import numpy as np
import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from lmlm.format import Triple

from . import backend, retrieval, writes
from .config import FactStoreConfig
from .embed import DIM, MODEL_NAME, Embedder, get_embedder
from .inventory import StoreInventory, chunks as _chunks
from .layout import Fact, InvalidFact, Layout, clean_name, now_ms
from .neighbours import StoreNeighbours
from .records import AuditEntry, KeyRecord, StoreMeta, field_values
from .retrieval import Answer
from .scripts import ADD_VECTOR, DELETE, HGET_MANY, WRITE, DeleteArgs, VectorArgs
from .server import RedisServer, StoreUnavailable
from .writes import WriteResult

_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError, ConnectionError,
         TimeoutError, OSError)
FORMAT_VERSION = 2


class FactStore(StoreInventory, StoreNeighbours):
    """Open with `FactStore.open(cfg)` (a context manager); `close()` stops a private server."""

    def __init__(self, cfg: FactStoreConfig, client, server: RedisServer | None = None,
                 embedder: Embedder | None = None):
        self.cfg = cfg
        self.r = client
        self.server = server
        self.cluster = backend.is_cluster(client)
        self.layout = Layout(cfg.namespace, cfg.partitions)
        self.actor = cfg.actor or os.environ.get("USER") or _user()
        self._embedder = embedder
        self._write_script = WRITE.bind(self.r)
        self._delete = DELETE.bind(self.r)
        self._add_vector = ADD_VECTOR.bind(self.r)
        self._hget_many = self.r.register_script(HGET_MANY)
        if self.cluster:  # a cluster pipeline does not load scripts itself: load them on every primary now
            for lua in (WRITE.lua, DELETE.lua, ADD_VECTOR.lua, HGET_MANY):
                self._call(self.r.script_load, lua)
        if self.cluster and cfg.partitions < len(self.r.get_primaries()):
            warnings.warn(f"partitions={cfg.partitions} on a cluster of {len(self.r.get_primaries())} masters leaves "
                          "masters without entities: create the store with partitions >= 2 x masters", stacklevel=3)
        self._warned_not_durable = False  # a non-durable deletion warns once per store
        self._aof = any(int(i.get("aof_enabled", 0)) for i in self._read(backend.info_all, self.r, "persistence"))
        self._check_meta()

    # ---------------------------------------------------------------------------------------------
    # Lifecycle

    @classmethod
    def open(cls, cfg: FactStoreConfig | None = None, embedder: Embedder | None = None) -> "FactStore":
        cfg = cfg or FactStoreConfig()
        url = cfg.resolved_url()
        server = None
        if url is None:
            server = RedisServer(cfg.data_dir, cfg.appendfsync, maxmemory=cfg.maxmemory).start()
            url = server.url
        try:
            # a deletion's reply may wait aof_wait_ms on the server (WAITAOF): reads must outlast it
            read_timeout = cfg.timeout_s + cfg.aof_wait_ms / 1000
            return cls(cfg, backend.connect(url, cfg.timeout_s, cluster=cfg.cluster, read_timeout_s=read_timeout),
                       server, embedder)
        except BaseException:
            if server:
                server.stop()
            raise

    @property
    def url(self) -> str:
        """Where the store is, without its password: safe to print."""
        return backend.describe(self.r)

    @property
    def connection_url(self) -> str:
        """The URL another process connects with, the password included: pass it on, never print it."""
        if self.server is not None:
            return self.server.url
        return self.cfg.resolved_url() or self.url

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
        """Run a Redis call once; a dead or silent server becomes StoreUnavailable (never a hang)."""
        try:
            return fn(*args, **kw)
        except redis.ResponseError:
            raise
        except _DOWN as e:
            raise StoreUnavailable(f"fact store at {self.url} is unavailable: {e}") from e

    def _read(self, fn, *args, **kw):
        """A read: tried twice (a pooled connection gone stale). Writes are never retried here."""
        for attempt in Retrying(retry=retry_if_exception_type(StoreUnavailable), stop=stop_after_attempt(2),
                                reraise=True):
            with attempt:
                return self._call(fn, *args, **kw)

    def _check_meta(self) -> None:
        want = StoreMeta(format=FORMAT_VERSION, partitions=self.cfg.partitions, dim=DIM, model=MODEL_NAME,
                         key_index=self.cfg.key_index).to_hash()
        have = {k.decode(): v.decode() for k, v in self._read(self.r.hgetall, self.layout.meta).items()}
        if not have:
            self._call(self.r.hset, self.layout.meta, mapping=want)
            return
        if have.get("format") == "1":  # format 1 had no lexical blocks: file every entity once
            self._file_lexical_blocks()
            self._call(self.r.hset, self.layout.meta, "format", str(FORMAT_VERSION))
            have["format"] = str(FORMAT_VERSION)
        for k, v in want.items():
            if have.get(k) != v:
                raise ValueError(f"store {self.cfg.namespace!r} at {self.url} was created with {k}={have.get(k)}, "
                                 f"the config says {k}={v}: open it with the same setting")

    def _file_lexical_blocks(self) -> None:
        """Add every stored entity to its lexical blocks (a store written before they existed)."""
        for ks in self.layout.parts:
            names = self._read(lambda: list(self.r.scan_iter(match=f"{ks.tag}:e:*", count=1000)))
            for batch in _chunks([n.decode().split(":e:", 1)[1] for n in names], 1000):
                self._call(backend.pipelined, self.r, [
                    (ks.stats, lambda p, E=E: [p.sadd(k, E) for k in field_values(ks.entity_keys(E))[1:]])
                    for E in batch])

    # ---------------------------------------------------------------------------------------------
    # Writes

    def load(self, triples: Iterable[Triple], doc_ids: Iterable[str | None] | None = None, *,
             annotator: str = "unknown", batch_id: str | None = None, force: bool = False, op: str = "load",
             on_invalid: str = "raise") -> WriteResult:
        """The bulk load every loader goes through (`cfg.write_batch` triples per round trip).

        `doc_ids`, when given, runs parallel to `triples` (the document each came from). An invalid
        triple (writes.fact_rows) raises InvalidFact before anything is written, or with
        on_invalid="skip" is left out and counted in the result's `invalid`. Triples whose entity,
        key or value was deleted (a tombstone) are skipped unless `force` (audited either way).
        `batch_id` makes the load exactly once by content: each document's triples (without document
        ids: each entity's) are a unit named by a digest of `batch_id` and the unit's content, and a
        unit applied before is skipped (writes.units); a rerun with any chunk size, or a changed
        corpus that shares documents with a loaded one, writes each unit once. `batch_id` is a
        scope: the same triples under another id are another load. The whole input is grouped
        before writing: pass a bulk load block by block.
        """
        if batch_id is not None and not batch_id:
            raise ValueError("batch_id must be non-empty (or None: not exactly-once)")
        rows, invalid = writes.fact_rows(triples, doc_ids, on_invalid)
        total = WriteResult(invalid=invalid)
        if batch_id is None:  # no units to keep whole: plain chunks
            for chunk in _chunks(rows, self.cfg.write_batch):
                total += self._write(writes.units(chunk, None), annotator, op, force=force)
            return total
        for batch in writes.rounds(writes.units(rows, batch_id), self.cfg.write_batch):
            total += self._write(batch, annotator, op, force=force)
        return total

    def add_triples(self, triples: Iterable[Triple], doc_ids: Iterable[str | None] | None = None,
                    annotator: str = "unknown", **kw) -> int:
        """`load(...).written`: the triples written now."""
        return self.load(triples, doc_ids, annotator=annotator, **kw).written

    def put(self, triple: Triple, *, replace: bool = True, doc_id: str | None = None,
            annotator: str = "manual") -> None:
        """Set a value: with `replace` the key keeps only this value (others removed), else it is added.
        An explicit edit: written even where a tombstone says deleted (the audit entry says forced)."""
        self._write(writes.units([(Fact.of(triple), doc_id)], None), annotator, "put" if replace else "add",
                    replace=replace, force=True, single=True)

    def _write(self, batch: list[writes.Unit], annotator: str, op: str, *, replace: bool = False,
               force: bool = False, single: bool = False) -> WriteResult:
        # vectors for what looks new (the script adds them only if it is still new, else asks again)
        ents = list(dict.fromkeys(k[0] for _, agg in batch for k in agg))
        keys = list(dict.fromkeys((k[0], k[1]) for _, agg in batch for k in agg)) if self.cfg.key_index else []
        hashes = {E: self.layout.of(E).entity(E) for E in ents}
        found = self._pipe_read([(hashes[E], lambda p, h=hashes[E]: p.exists(h)) for E in ents] +
                                [(hashes[E], lambda p, h=hashes[E], R=R: p.hexists(h, R)) for E, R in keys])
        evec = self._vectors([E for E, x in zip(ents, found) if not x])
        new_keys = [k for k, x in zip(keys, found[len(ents):]) if not x]
        kvec = dict(zip(new_keys, self._vectors([f"{E} {R}" for E, R in new_keys]).values()))
        calls = writes.pack(self.layout, batch, evec, kvec, self._eid, annotator=annotator,
                            now_ms=now_ms(), max_docs=self.cfg.max_docs_per_value, replace=replace, force=force,
                            actor=self.actor, audit_maxlen=self.cfg.audit_maxlen, op=op, single=single)
        raw = self._call(backend.pipelined, self.r, [
            (c.keys.stats, lambda p, c=c: self._write_script(c.part_keys, c.args, more_keys=c.more_keys,
                                                             more_args=c.vectors, client=p)) for c in calls])
        res, need_ents, need_keys = WriteResult(), [], []
        for c, rep in zip(calls, map(WRITE.parse, raw)):
            res += WriteResult.of(rep)
            for j, want_e, want_k in rep.need:
                E, R, _ = c.rows[j]
                if want_e:
                    need_ents.append(E)
                if want_k:
                    need_keys.append((E, R))
        if need_ents or need_keys:  # new when written, not when checked: add their vectors now
            self._repair_vectors(need_ents, need_keys)
        return res

    def _vectors(self, texts: list[str]) -> dict[str, bytes]:
        if not texts:
            return {}
        vecs = self.embedder.encode(texts)
        return {t: v.astype(np.float32).tobytes() for t, v in zip(texts, vecs)}

    def _eid(self, E: str) -> str:
        return str(self.layout.eid(E)) if self.cfg.key_index else ""

    def _repair_vectors(self, ents: list[str], keys: list[tuple[str, str]]) -> None:
        ev = self._vectors(ents)
        kv = self._vectors([f"{E} {R}" for E, R in keys])
        args = [(E, VectorArgs(E=E, R="", vector=ev[E], eid="")) for E in ents] + \
               [(E, VectorArgs(E=E, R=R, vector=kv[f"{E} {R}"], eid=self._eid(E))) for E, R in keys]
        self._call(backend.pipelined, self.r, [
            (self.layout.of(E).stats, lambda p, E=E, a=a: self._add_vector(self.layout.of(E).part_keys(), a,
                                                                           self.layout.of(E).entity_keys(E), client=p))
            for E, a in args])

    def delete(self, entity: str, relation: str | None = None, value: str | None = None) -> int:
        """Delete a triple, a key (entity, relation) or a whole entity, with its vector elements, in
        one atomic script that leaves a tombstone (later loads skip what it names); returns the
        number of (entity, relation, value) triples removed. The audit stream records who deleted
        which key and how many triples, never the deleted values (a value's tombstone keeps a hash).

        On a server with AOF on, the reply waits (WAITAOF, up to `cfg.aof_wait_ms`) until the
        deletion is on disk. Otherwise (AOF off, or aof_wait_ms 0) a crash may undo an acknowledged
        deletion: the store's first such deletion warns, and with `cfg.require_durable_deletes` every
        one is refused (StoreUnavailable) before anything is deleted."""
        ent, E = clean_name(entity, "entity")
        R = clean_name(relation, "relation")[1] if relation is not None else ""
        if value is not None and relation is None:
            raise InvalidFact("delete: a value needs a relation")
        args = DeleteArgs(E=E, R=R, value=value.strip() if value is not None else "", has_value=value is not None,
                          actor=self.actor, audit_maxlen=self.cfg.audit_maxlen, entity=ent, now_ms=now_ms())
        ks = self.layout.of(E)
        durable = self._aof and self.cfg.aof_wait_ms > 0
        if not durable:
            why = "AOF is off (appendonly no)" if not self._aof else "aof_wait_ms is 0"
            if self.cfg.require_durable_deletes:
                raise StoreUnavailable(f"deletion of {ent!r} refused: {why} at {self.url}, so it could be undone by "
                                       "a crash, and require_durable_deletes is set; nothing was deleted")
            if not self._warned_not_durable:
                self._warned_not_durable = True
                warnings.warn(f"deletions at {self.url} are not durable: {why}, so a crash may undo an acknowledged "
                              "deletion (set require_durable_deletes to refuse them instead)", stacklevel=2)

        def queue(pipe):  # one connection: WAITAOF waits for this connection's writes
            self._delete(ks.part_keys(), args, ks.entity_keys(E), client=pipe)
            if durable:
                pipe.execute_command("WAITAOF", 1, 0, self.cfg.aof_wait_ms)

        raw, *waited = self._call(backend.on_key_node, self.r, ks.stats, queue)
        if waited and int(waited[0][0]) < 1:
            raise StoreUnavailable(f"deletion of {ent!r} applied at {self.url} but not on disk after "
                                   f"{self.cfg.aof_wait_ms} ms (WAITAOF): it may not survive a crash")
        return DELETE.parse(raw).triples

    def delete_entity(self, entity: str) -> int:
        return self.delete(entity)

    def flush(self) -> None:
        """Remove every key of this namespace (tests, rebuilds), tombstones too; audited."""
        for ks in self.layout.parts:
            names = self._read(lambda: list(self.r.scan_iter(match=f"{ks.tag}:*", count=1000)))
            for batch in _chunks(names, 1000):
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
                     fallback: str | None = None, timings: dict | None = None) -> list[Answer | None]:
        """Many lookups: one pipelined round trip for the exact keys; the misses share one embedding
        call and a fixed number of pipelined round trips (not one per query).

        Thresholds, each None for the config's: `entity_threshold` (two_stage: entity similarity),
        `relation_threshold` (two_stage: relation-label cosine), `cosine_threshold` (reference: cosine of
        "{entity} {relation}" to a key). Giving one the mode does not use raises ValueError.
        `timings`: a dict that gets the seconds spent per stage added (see retrieval.lookup_batch)."""
        mode = mode or self.cfg.fuzzy_mode
        given = {"entity_threshold": entity_threshold, "relation_threshold": relation_threshold,
                 "cosine_threshold": cosine_threshold}
        return retrieval.lookup_batch(self, queries, mode=mode, top_k=top_k, fallback=fallback or self.cfg.fallback,
                                      timings=timings, **{k: v for k, v in given.items() if v is not None})

    def search(self, text: str, k: int = 5, entity: str | None = None) -> list[Answer]:
        """Nearest keys to free text ("{entity} {relation}"), optionally only among one entity's keys."""
        return retrieval.search(self, text, k, entity)

    # Reads by normalised names, for retrieval: parsed records and vector-set neighbours

    def _pipe_read(self, items: list[tuple[str, object]]) -> list:
        """A pipelined read (backend.pipelined: (routing key, queue(pipe)) items), tried twice."""
        return self._read(backend.pipelined, self.r, items)

    def records(self, keys: list[tuple[str, str]]) -> list[KeyRecord | None]:
        """The record under each (entity, relation) key, None where absent: one HGET for a single key,
        else one script call per partition (a partition's keys share its hash tag), pipelined."""
        if len(keys) == 1:
            (E, R), = keys
            blobs = [self._read(self.r.hget, self.layout.of(E).entity(E), R)]
        elif self.cluster:  # per-node pipelines of plain HGETs beat a script per partition there
            hashes = [(self.layout.of(E).entity(E), R) for E, R in keys]
            blobs = self._pipe_read([(h, lambda p, h=h, R=R: p.hget(h, R)) for h, R in hashes])
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
                res = [self._read(self._hget_many, keys=hashes, args=rels)]
            else:
                res = self._pipe_read([(h[0], lambda p, h=h, r=r: self._hget_many(keys=h, args=r, client=p))
                                       for _, h, r in groups.values()])
            for (idx, _, _), got in zip(groups.values(), res):
                for i, b in zip(idx, got):
                    blobs[i] = b
        return [KeyRecord.decode(b) if b is not None else None for b in blobs]

    def entity_records(self, entities: list[str]) -> list[dict[str, KeyRecord]]:
        """Every record of each entity by relation ({} where the entity is absent), in one round trip."""
        names = [self.layout.of(E).entity(E) for E in entities]
        res = self._pipe_read([(k, lambda p, k=k: p.hgetall(k)) for k in names])
        return [{R.decode(): KeyRecord.decode(b) for R, b in h.items()} for h in res]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no passwd entry in some containers
        return f"uid{os.getuid()}"
