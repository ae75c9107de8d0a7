"""Packing a write: input triples -> valid rows -> units of aggregated triples -> one WRITE script call
per partition.

Pure functions (no Redis): the store validates a load's triples (`fact_rows`: the one place where
invalid triples are refused or counted), groups them into `units`, checks what is new, embeds it,
packs with `pack`, sends the calls pipelined (backend.pipelined) and sums the replies into a
`WriteResult`.

Exactly once by content: a unit is the triples of one document (rows without a document id: of one
entity), named by a digest of the load's scope and the unit's content. The id does not depend on
how the load is chunked, on row order, or on which other documents the load holds, so rerunning a
load (or loading a changed corpus that shares documents with a loaded one) writes every unit once.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator

from lmlm.format import Triple

from .layout import Fact, InvalidFact, Keys, Layout, PartKeys
from .records import field_values
from .scripts import WriteArgs, WriteReply, WriteRow


@dataclass
class WriteResult:
    """What a write did: input triples written, tombstoned ones skipped or forced, batches replayed,
    invalid ones left out."""

    written: int = 0
    skipped: int = 0
    forced: int = 0
    replayed: int = 0   # units applied before (a replay: nothing written again)
    invalid: int = 0    # triples that are no valid fact, left out (fact_rows, on_invalid="skip")

    def __iadd__(self, o: "WriteResult") -> "WriteResult":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))
        return self

    @classmethod
    def of(cls, rep: WriteReply) -> "WriteResult":
        return cls(rep.triples, rep.skipped, rep.forced, rep.replayed)


def fact_rows(triples: Iterable[Triple], doc_ids: Iterable[str | None] | None,
              on_invalid: str = "raise") -> tuple[list[tuple[Fact, str | None]], int]:
    """Each triple as a Fact with its document id (`doc_ids` parallel to `triples`, or None), and how
    many were invalid: an invalid triple raises InvalidFact, or with on_invalid="skip" is left out."""
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    docs = iter(doc_ids) if doc_ids is not None else None
    rows, invalid = [], 0
    for t in triples:
        doc = next(docs, None) if docs is not None else None
        try:
            rows.append((Fact.of(t), doc))
        except InvalidFact:
            if on_invalid == "raise":
                raise
            invalid += 1
    return rows, invalid


Agg = dict[tuple[str, str, str], list]  # (E, R, value) -> [Fact, mentions, doc ids]
Unit = tuple[str, Agg]                   # (content id, or "" when not exactly-once; its triples)


def aggregate(rows: list[tuple[Fact, str | None]]) -> Agg:
    """Repeated triples become one row with their mention count and distinct document ids."""
    agg: Agg = {}
    for f, doc in rows:
        a = agg.setdefault((f.E, f.R, f.value), [f, 0, []])
        a[1] += 1
        if doc is not None and str(doc) not in a[2]:
            a[2].append(str(doc))
    return agg


def units(rows: list[tuple[Fact, str | None]], scope: str | None) -> list[Unit]:
    """The rows grouped into exactly-once units, each with its content id (`scope` keeps loads that
    must not replay each other apart); with `scope` None, one unit of everything and no id."""
    if scope is None:
        return [("", aggregate(rows))]
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for f, doc in rows:
        groups[("doc", str(doc)) if doc is not None else ("entity", f.E)].append((f, doc))
    out = []
    for group, members in groups.items():
        agg = aggregate(members)
        content = sorted([E, R, v, f.entity, f.relation, n, sorted(ds)] for (E, R, v), (f, n, ds) in agg.items())
        digest = hashlib.blake2b(json.dumps([scope, *group, content], ensure_ascii=False).encode(), digest_size=12)
        out.append((digest.hexdigest(), agg))
    return out


def rounds(us: list[Unit], rows_per_round: int) -> Iterator[list[Unit]]:
    """Whole units, about `rows_per_round` rows at a time (a unit is never split: its rows must reach
    their partition in one script call, or a replay would skip the part sent later)."""
    batch, n = [], 0
    for u in us:
        if batch and n + len(u[1]) > rows_per_round:
            yield batch
            batch, n = [], 0
        batch.append(u)
        n += len(u[1])
    if batch:
        yield batch


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


def pack(layout: Layout, batch: list[Unit], evec: dict[str, bytes], kvec: dict[tuple[str, str], bytes],
         eid: Callable[[str], str], **args) -> list[PartWrite]:
    """Group the units' rows by partition; each entity's keys are sent once, each vector once (to
    its first row); `args` are the WriteArgs fields other than `rows` and `units`."""
    by_part: dict[str, list] = defaultdict(list)
    for uid, agg in batch:
        for k, a in agg.items():
            by_part[layout.of(k[0]).tag].append((uid, k, a))
    n_part = len(fields(PartKeys))
    evec, kvec = dict(evec), dict(kvec)
    out = []
    for tag, items in by_part.items():
        ks = layout.of(items[0][1][0])
        more_keys, pos, vecs, rows, unit_pos = [], {}, [], [], {}
        for uid, (E, R, value), (f, n, ds) in items:
            if E not in pos:
                pos[E] = n_part + len(more_keys) + 1
                more_keys += field_values(ks.entity_keys(E))
            if uid and uid not in unit_pos:
                unit_pos[uid] = len(unit_pos) + 1
            ev = kv = 0
            if E in evec:
                vecs.append(evec.pop(E))
                ev = len(vecs)
            if (E, R) in kvec:
                vecs.append(kvec.pop((E, R)))
                kv = len(vecs)
            rows.append(field_values(WriteRow(pos[E], E, R, f.entity, f.relation, value, n, ds, ev, kv, eid(E),
                                              unit_pos.get(uid, 0))))
        out.append(PartWrite(ks, WriteArgs(rows=rows, units=list(unit_pos), **args), more_keys, vecs,
                             [k for _, k, _ in items]))
    return out
