"""What the store keeps in Redis, as named structures, each with the one mapping to and from Redis.

- `KeyRecord` / `ValueRecord`: the field of an entity hash named by the normalised relation holds
  JSON {"e": entity, "r": relation, "v": [value record, ...]}, a value record being a JSON array in
  `ValueRecord`'s field order: [value, count, first_ms, last_ms, [annotators], [doc ids]].
- `PartitionStats`: the fields of a partition's stats hash (running totals).
- `AuditEntry`: one entry of a partition's audit stream.
- `StoreMeta`: the namespace's meta hash (settings fixed when the store was created).

The Lua scripts (scripts.py) read and write the same structures through code generated from these
dataclasses, so a field's name and position are written down once, here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Optional


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def field_values(obj) -> list:
    """The dataclass's field values in declaration order (what a positional Redis layout holds)."""
    return [getattr(obj, f.name) for f in fields(obj)]


@dataclass(slots=True)
class ValueRecord:
    """One stored value of a key, with its provenance (times in milliseconds since the epoch)."""

    value: str
    count: int                # mentions seen (keeps counting past the caps below)
    first_ms: int
    last_ms: int
    annotators: list[str]     # the first `max_docs_per_value` annotators that produced it
    doc_ids: list[str]        # the first `max_docs_per_value` documents it came from

    @classmethod
    def from_json(cls, row: list) -> "ValueRecord":
        value, count, first_ms, last_ms, annotators, doc_ids = row
        # Lua's cjson writes an empty list as {}: normalise both to a list
        return cls(value, count, first_ms, last_ms, list(annotators or ()), list(doc_ids or ()))

    def provenance(self, n_values: int) -> dict:
        return {"count": self.count, "first_seen": self.first_ms / 1000.0, "last_seen": self.last_ms / 1000.0,
                "annotators": list(self.annotators), "doc_ids": list(self.doc_ids), "n_values": n_values}


KEY_RECORD_JSON = {"entity": "e", "relation": "r", "values": "v"}  # KeyRecord field -> stored JSON key
_E, _R, _V = KEY_RECORD_JSON.values()


@dataclass(slots=True)
class KeyRecord:
    """Everything stored under one (entity, relation) key; entity and relation in display form."""

    entity: str
    relation: str
    values: list[ValueRecord]

    @classmethod
    def decode(cls, blob: bytes | str) -> "KeyRecord":
        d = json.loads(blob)
        return cls(d[_E], d[_R], [ValueRecord.from_json(v) for v in d[_V]])

    def encode(self) -> str:
        return json.dumps({_E: self.entity, _R: self.relation, _V: [field_values(v) for v in self.values]},
                          ensure_ascii=False)

    def chosen(self) -> ValueRecord:
        """The value a lookup returns: most frequent, then most recently seen, then latest added."""
        vs = self.values
        if len(vs) == 1:
            return vs[0]
        return vs[max(range(len(vs)), key=lambda j: (vs[j].count, vs[j].last_ms, j))]

    def provenance(self, v: ValueRecord) -> dict:
        return v.provenance(len(self.values))

    def as_dict(self) -> dict:
        """The public form `FactStore.get` returns."""
        return {"entity": self.entity, "relation": self.relation, "chosen": self.chosen().value,
                "values": [{"value": v.value, **self.provenance(v)} for v in self.values]}


@dataclass
class PartitionStats:
    """Running totals of a partition (its stats hash); the scripts add to them in the same edit."""

    triples: int = 0    # distinct (entity, relation, value)
    keys: int = 0       # distinct (entity, relation)
    entities: int = 0
    mentions: int = 0   # sum of the values' counts

    @classmethod
    def from_hash(cls, h: dict) -> "PartitionStats":
        names = set(field_names(cls))
        got = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in h.items()}
        return cls(**{k: v for k, v in got.items() if k in names})

    def __add__(self, other: "PartitionStats") -> "PartitionStats":
        return PartitionStats(*(a + b for a, b in zip(field_values(self), field_values(other))))


@dataclass
class AuditEntry:
    """One entry of an audit stream. An edit (put/add/delete) names its triple and how many triples it
    removed; a bulk write (load/import) names the annotator, the partition's triple count and its units
    (and how many were replays); either says how many tombstoned rows it skipped or wrote anyway (`forced`); a flush only op and
    who. The scripts write the fields in this order (scripts.add_audit)."""

    op: str
    who: str
    entity: Optional[str] = None
    relation: Optional[str] = None
    value: Optional[str] = None
    removed: Optional[int] = None
    annotator: Optional[str] = None
    triples: Optional[int] = None
    skipped: Optional[int] = None   # rows not written: a tombstone says deleted
    forced: Optional[int] = None    # tombstoned rows written anyway (force)
    units: Optional[int] = None     # exactly-once units in the write (writes.units)
    replayed: Optional[int] = None  # ... of which applied before, so skipped
    id: Optional[str] = None  # the stream id, once read

    def to_stream(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "id"}

    @classmethod
    def from_stream(cls, sid: bytes | str, raw: dict) -> "AuditEntry":
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        known = set(field_names(cls)) - {"id"}
        for k in ("removed", "triples", "skipped", "forced", "units", "replayed"):
            if d.get(k) is not None:
                d[k] = int(d[k])
        return cls(**{k: v for k, v in d.items() if k in known},
                   id=sid.decode() if isinstance(sid, bytes) else sid)

    def as_dict(self) -> dict:
        """The public form `FactStore.audit` returns: the fields the entry holds, as strings."""
        return {"id": self.id, **{k: str(v) for k, v in self.to_stream().items()}}

    def sort_key(self) -> tuple[int, ...]:
        return tuple(int(x) for x in (self.id or "0-0").split("-"))


@dataclass
class StoreMeta:
    """Settings a store is created with and must be reopened with (its meta hash)."""

    format: int
    partitions: int
    dim: int
    model: str
    key_index: bool

    def to_hash(self) -> dict[str, str]:
        return {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in asdict(self).items()}
