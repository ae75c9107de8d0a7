"""Corpora: one record schema, read from the reference JSON layout, JSONL or Parquet, written as Parquet.

    Record(id, text, annotated_text, source, meta)

`text` is the plain document, `annotated_text` the same document with lookups (legacy or
special-token form, "" when none). Reference files (`{"examples": [...]}`) carry no ids: a record
gets `"{file stem}:{index}"`, and the example's other fields (model_id, prompt_id, ...) go to
`meta`, with `meta["annotator"]` = model_id. In Parquet, `meta` is stored as a JSON string column.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lmlm.atomicfile import replacing
from lmlm.format import Triple, to_special

RECORD_FIELDS = ("id", "text", "annotated_text", "source", "meta")


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and the place."""


@dataclass
class Record:
    id: str
    text: str
    annotated_text: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class SkippedLine:
    """A line or example that `read_corpus(..., on_error="skip")` left out, and why."""

    path: str
    line: int
    error: str


class Records(list):
    """A list of Records plus `.skipped`: what was left out with on_error="skip" (empty otherwise)."""

    def __init__(self, items: Iterable[Record] = (), skipped: list[SkippedLine] | None = None):
        super().__init__(items)
        self.skipped: list[SkippedLine] = skipped or []


# --------------------------------------------------------------------------------------------
# Reading


def record_from_dict(d: Any, default_id: str, default_source: str) -> Record:
    """A Record from one JSON object; keys outside the schema go to meta. Raises ValueError."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    text, annotated = d.get("text"), d.get("annotated_text")
    if text is None and annotated is None:
        raise ValueError("record has neither 'text' nor 'annotated_text'")
    for key, val in (("text", text), ("annotated_text", annotated)):
        if val is not None and not isinstance(val, str):
            raise ValueError(f"'{key}' must be a string, got {type(val).__name__}")
    meta = d.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    if not isinstance(meta, dict):
        raise ValueError(f"'meta' must be an object, got {type(meta).__name__}")
    meta = {**{k: v for k, v in d.items() if k not in RECORD_FIELDS}, **meta}
    if "model_id" in meta:
        meta.setdefault("annotator", meta["model_id"])
    rid = d.get("id")
    return Record(
        id=str(rid) if rid is not None else default_id,
        text=text if text is not None else "",
        annotated_text=annotated or "",
        source=str(d.get("source") or default_source),
        meta=meta,
    )


def _read_json(path: Path, on_error: str) -> Records:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    examples = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(examples, list):
        raise CorpusError(f"{path}: expected {{'examples': [...]}} or a JSON list of records")
    return _records(path, enumerate(examples), on_error, "example")


def _read_jsonl(path: Path, on_error: str) -> Records:
    def rows():
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line

    return _records(path, rows(), on_error, "line", parse=json.loads)


def _records(path: Path, items, on_error: str, where: str, parse=None) -> Records:
    out = Records()
    for n, item in items:
        default_id = f"{path.stem}:{n}"
        try:
            out.append(record_from_dict(parse(item) if parse else item, default_id, path.stem))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            msg = f"{path}: {where} {n}: {e}"
            if on_error == "raise":
                raise CorpusError(msg) from e
            out.skipped.append(SkippedLine(str(path), n, str(e)))
    return out


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    if path.is_dir() and not any(path.rglob("*.parquet")):
        raise CorpusError(f"{path}: directory holds no .parquet files")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 — pyarrow raises several types for broken files
        raise CorpusError(f"{path}: cannot read Parquet: {e}") from e
    out = Records()
    for i, row in enumerate(rows):
        try:
            out.append(record_from_dict(row, f"{path.stem}:{i}", path.stem))
        except ValueError as e:
            raise CorpusError(f"{path}: row {i}: {e}") from e
    return out


def read_corpus(path: str | Path, on_error: str = "raise") -> Records:
    """Read a corpus by extension: .json (reference layout or a list), .jsonl, .parquet or a directory
    of Parquet shards. Broken records raise CorpusError naming the file and line, or with
    on_error="skip" are left out and listed in the result's `.skipped`."""
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".json":
        return _read_json(path, on_error)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, on_error)
    raise CorpusError(f"{path}: unknown corpus format (expected .json, .jsonl, .parquet or a directory)")


# --------------------------------------------------------------------------------------------
# Writing


def records_to_table(records: Iterable[Record]):
    """An Arrow table with the schema columns (meta as a JSON string)."""
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in RECORD_FIELDS}
    for r in records:
        cols["id"].append(r.id)
        cols["text"].append(r.text)
        cols["annotated_text"].append(r.annotated_text)
        cols["source"].append(r.source)
        cols["meta"].append(json.dumps(r.meta, ensure_ascii=False, sort_keys=True))
    return pa.table({k: pa.array(v, type=pa.string()) for k, v in cols.items()})


def write_parquet(records: Iterable[Record], path: str | Path) -> Path:
    import pyarrow.parquet as pq

    with replacing(path) as tmp:
        pq.write_table(records_to_table(records), tmp)
    return Path(path)


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: getattr(r, k) for k in RECORD_FIELDS}, ensure_ascii=False) + "\n")
    return Path(path)


def write_corpus(records: Iterable[Record], path: str | Path) -> Path:
    """Write as JSONL when the path ends in .jsonl, else as Parquet."""
    return write_jsonl(records, path) if str(path).endswith(".jsonl") else write_parquet(records, path)


# --------------------------------------------------------------------------------------------
# Conversion and the database layout


def convert_records(records: Iterable[Record]) -> tuple[list[Record], list[dict], dict]:
    """Convert each record's annotated text to special-token form.

    Returns (converted records, per-document stats {"id", "lookups", "dropped": {reason: n},
    "drops": [{"reason", "text"}]}, summary {"docs", "lookups", "unique_triples", "dropped"}).
    A record without annotations passes through with 0 lookups.
    """
    out, stats = [], []
    dropped: Counter = Counter()
    n_lookups, unique = 0, set()
    for r in records:
        parsed = to_special(r.annotated_text) if r.annotated_text else None
        lookups = parsed.lookups if parsed else []
        drops = parsed.drops if parsed else []
        out.append(Record(r.id, r.text, parsed.text if parsed else "", r.source, dict(r.meta)))
        stats.append({
            "id": r.id,
            "lookups": len(lookups),
            "dropped": dict(Counter(d.reason for d in drops)),
            "drops": [{"reason": d.reason, "text": d.text} for d in drops],
        })
        n_lookups += len(lookups)
        unique.update(lk.triple for lk in lookups)
        dropped.update(d.reason for d in drops)
    summary = {"docs": len(out), "lookups": n_lookups, "unique_triples": len(unique),
               "dropped": dict(sorted(dropped.items()))}
    return out, stats, summary


def records_triples(records: Iterable[Record]) -> list[Triple]:
    """Every valid triple of the records' annotated texts, in document order (duplicates kept)."""
    return [t for r in records if r.annotated_text for t in to_special(r.annotated_text).triples]


def extract_database(triples: Iterable[Triple]) -> dict:
    """The reference database layout: exact-duplicate triples merged, first-seen order kept.

    {"entities": [...], "relationships": [...], "return_values": [...], "triplets": [[e, r, v], ...]}
    """
    seen: dict[Triple, None] = dict.fromkeys(triples)
    return {
        "entities": list(dict.fromkeys(t.entity for t in seen)),
        "relationships": list(dict.fromkeys(t.relation for t in seen)),
        "return_values": list(dict.fromkeys(t.value for t in seen)),
        "triplets": [[t.entity, t.relation, t.value] for t in seen],
    }


def read_database(path: str | Path) -> list[Triple]:
    """Triples of a database file in the reference layout."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["triplets"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorpusError(f"{path}: not a database in the reference layout ({e!r})") from e
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 3):
            raise CorpusError(f"{path}: triplets[{i}] is not an [entity, relation, value] list")
    return [Triple(*(str(x) for x in row)) for row in rows]
