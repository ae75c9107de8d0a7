"""The reference database JSON: {"entities", "relationships", "return_values", "triplets"} and an
optional "provenance" list parallel to "triplets" (counts, annotators, document ids)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from lmlm.atomicfile import write_json

from lmlm.format import Triple

from .layout import InvalidFact
from .records import KeyRecord, ValueRecord


def export_json(rows: Iterable[tuple[KeyRecord, ValueRecord]], path: str | os.PathLike, provenance_too: bool) -> int:
    rows = list(rows)
    db = {
        "entities": list(dict.fromkeys(rec.entity for rec, _ in rows)),
        "relationships": list(dict.fromkeys(rec.relation for rec, _ in rows)),
        "return_values": list(dict.fromkeys(v.value for _, v in rows)),
        "triplets": [[rec.entity, rec.relation, v.value] for rec, v in rows],
    }
    if provenance_too:
        db["provenance"] = [rec.provenance(v) for rec, v in rows]
    write_json(path, db)
    return len(rows)


def read_database(path: str | os.PathLike, annotator: str) -> tuple[dict[str, tuple[list, list]], int]:
    """{annotator: (triples, doc ids)} to write (a triple repeated `count` times), and the number of
    triplets in the file. Raises InvalidFact naming the file and the row."""
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
        return {annotator: (triples, [None] * len(triples))}, len(triples)
    if len(prov) != len(triples):
        raise InvalidFact(f"{p}: provenance has {len(prov)} rows for {len(triples)} triplets")
    by_annotator: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for t, pv in zip(triples, prov):
        docs = list(pv.get("doc_ids") or [])
        ann = (pv.get("annotators") or [annotator])[0]
        for i in range(max(int(pv.get("count", 1)), 1)):
            by_annotator[ann][0].append(t)
            by_annotator[ann][1].append(docs[i] if i < len(docs) else None)
    return dict(by_annotator), len(triples)
