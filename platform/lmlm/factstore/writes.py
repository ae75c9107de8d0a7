"""Packing a write: input rows -> aggregated triples -> one WRITE script call per partition.

Pure functions (no Redis): the store checks what is new, embeds it, packs with `pack`, sends the
calls pipelined (backend.pipelined) and sums the replies into a `WriteResult`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Callable

from .layout import Fact, Keys, Layout, PartKeys
from .records import field_values
from .scripts import WriteArgs, WriteReply, WriteRow


@dataclass
class WriteResult:
    """What a write did: input triples written, tombstoned ones skipped or forced, batches replayed."""

    written: int = 0
    skipped: int = 0
    forced: int = 0
    replayed: int = 0   # batches already applied before (a replay: nothing written again)

    def __iadd__(self, o: "WriteResult") -> "WriteResult":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))
        return self

    @classmethod
    def of(cls, rep: WriteReply) -> "WriteResult":
        return cls(rep.triples, rep.skipped, rep.forced, int(not rep.applied))


Agg = dict[tuple[str, str, str], list]  # (E, R, value) -> [Fact, mentions, doc ids]


def aggregate(rows: list[tuple[Fact, str | None]]) -> Agg:
    """Repeated triples become one row with their mention count and distinct document ids."""
    agg: Agg = {}
    for f, doc in rows:
        a = agg.setdefault((f.E, f.R, f.value), [f, 0, []])
        a[1] += 1
        if doc is not None and str(doc) not in a[2]:
            a[2].append(str(doc))
    return agg


@dataclass
class PartWrite:
    """One WRITE call: the partition's keys, the arguments, the entities' keys and the vectors after
    them, and which (E, R, value) each row is (to read the reply's `need` back)."""

    keys: Keys
    args: WriteArgs
    more_keys: list[str]
    vectors: list[bytes]
    rows: list[tuple[str, str, str]]

    @property
    def part_keys(self) -> PartKeys:
        return self.keys.part_keys()


def pack(layout: Layout, agg: Agg, evec: dict[str, bytes], kvec: dict[tuple[str, str], bytes],
         eid: Callable[[str], str], **args) -> list[PartWrite]:
    """Group the rows by partition; each entity's keys are sent once, each vector once (to its first
    row); `args` are the WriteArgs fields other than `rows`."""
    by_part: dict[str, list] = defaultdict(list)
    for k, a in agg.items():
        by_part[layout.of(k[0]).tag].append((k, a))
    n_part = len(fields(PartKeys))
    evec, kvec = dict(evec), dict(kvec)
    out = []
    for tag, items in by_part.items():
        ks = layout.of(items[0][0][0])
        more_keys, pos, vecs, rows = [], {}, [], []
        for (E, R, value), (f, n, ds) in items:
            if E not in pos:
                pos[E] = n_part + len(more_keys) + 1
                more_keys += field_values(ks.entity_keys(E))
            ev = kv = 0
            if E in evec:
                vecs.append(evec.pop(E))
                ev = len(vecs)
            if (E, R) in kvec:
                vecs.append(kvec.pop((E, R)))
                kv = len(vecs)
            rows.append(field_values(WriteRow(pos[E], E, R, f.entity, f.relation, value, n, ds, ev, kv, eid(E))))
        out.append(PartWrite(ks, WriteArgs(rows=rows, **args), more_keys, vecs, [k for k, _ in items]))
    return out
