"""Corpora: one record schema, read from the reference JSON layout, JSONL or Parquet, written as Parquet.

    Record(id, text, annotated_text, source, meta)
    iter_corpus(path) -> Record | SkippedLine, in file order     # the one reader
    read_corpus(path, on_error="raise" | "skip", limit=None) -> Records (a list, plus .skipped)

`text` is the plain document, `annotated_text` the same document with lookups (legacy or
special-token form, "" when none). Reference files (`{"examples": [...]}`) carry no ids: a record
gets `"{file stem}:{index}"`, and the example's other fields (model_id, prompt_id, ...) go to
`meta`, with `meta["annotator"]` = model_id. In Parquet, `meta` is stored as a JSON string column.

A line, example or row that is not a record is a `SkippedLine` with its reason: `invalid_utf8` (a
JSONL line that is not UTF-8), `broken_json` (a JSONL line that is not JSON) or `bad_record` (JSON
that is not a record: not an object, no text, a field of the wrong type).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lmlm.atomicfile import replacing
from lmlm.format import Triple, extract_triples, to_special

RECORD_FIELDS = ("id", "text", "annotated_text", "source", "meta")
INVALID_UTF8, BROKEN_JSON, BAD_RECORD = "invalid_utf8", "broken_json", "bad_record"


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
    """A line (JSONL), example (JSON) or row (Parquet) that is not a record, and why."""

    path: str
    line: int  # JSONL: line number from 1; JSON, Parquet: index from 0
    error: str
    reason: str = BAD_RECORD
    id: str = ""  # the record's own id when it has one, else "{file stem}:{line}"

    def __str__(self) -> str:
        where = {".jsonl": "line", ".json": "example"}.get(Path(self.path).suffix, "row")
        return f"{self.path}: {where} {self.line}: {self.error}"


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


def _record_or_skip(path: Path, n: int, item: Any) -> Record | SkippedLine:
    default_id = f"{path.stem}:{n}"
    try:
        return record_from_dict(item, default_id, path.stem)
    except ValueError as e:
        own = item.get("id") if isinstance(item, dict) else None
        return SkippedLine(str(path), n, str(e), BAD_RECORD, str(own) if own is not None else default_id)


def json_examples(raw: bytes, where: str) -> list:
    """The examples of a JSON corpus file's bytes: the reference layout {"examples": [...]} or a list."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: not valid UTF-8 ({e}); a JSONL corpus rejects bad lines only") from e
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    examples = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(examples, list):
        raise CorpusError(f"{where}: expected {{'examples': [...]}} or a JSON list of records")
    return examples


def _iter_json(path: Path) -> Iterator[Record | SkippedLine]:
    for i, example in enumerate(json_examples(path.read_bytes(), str(path))):
        yield _record_or_skip(path, i, example)


def _iter_jsonl(path: Path) -> Iterator[Record | SkippedLine]:
    """Line by line, in bytes, so an undecodable or broken line is that line's problem only."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield SkippedLine(str(path), lineno, str(e), INVALID_UTF8, f"{path.stem}:{lineno}")
                continue
            except ValueError as e:  # json.JSONDecodeError
                yield SkippedLine(str(path), lineno, str(e), BROKEN_JSON, f"{path.stem}:{lineno}")
                continue
            yield _record_or_skip(path, lineno, item)


def _iter_parquet(path: Path) -> Iterator[Record | SkippedLine]:
    import pyarrow.parquet as pq

    if path.is_dir() and not any(path.rglob("*.parquet")):
        raise CorpusError(f"{path}: directory holds no .parquet files")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 — pyarrow raises several types for broken files
        raise CorpusError(f"{path}: cannot read Parquet: {e}") from e
    for i, row in enumerate(rows):
        yield _record_or_skip(path, i, row)


def iter_corpus(path: str | Path) -> Iterator[Record | SkippedLine]:
    """Each record of a corpus, or the SkippedLine in its place, in file order: .json (reference
    layout or a list), .jsonl, .parquet or a directory of Parquet shards. A file that cannot be read
    at all raises CorpusError."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".parquet":
        return _iter_parquet(path)
    if path.suffix == ".json":
        return _iter_json(path)
    if path.suffix == ".jsonl":
        return _iter_jsonl(path)
    raise CorpusError(f"{path}: unknown corpus format (expected .json, .jsonl, .parquet or a directory)")


def read_corpus(path: str | Path, on_error: str = "raise", limit: int | None = None) -> Records:
    """The records of a corpus (iter_corpus). A line that is not a record raises CorpusError naming
    the file and the line, or with on_error="skip" is left out and listed in the result's `.skipped`.
    `limit`: only the first `limit` lines, examples or rows, records or not."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out = Records()
    for n, item in enumerate(iter_corpus(path)):
        if limit is not None and n >= limit:
            break
        if isinstance(item, Record):
            out.append(item)
        elif on_error == "raise":
            raise CorpusError(str(item))
        else:
            out.skipped.append(item)
    return out


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


def document_triples(documents: Iterable[str], doc_ids: Iterable[str]) -> tuple[list[Triple], list[str]]:
    """Every valid triple of annotated `documents`, in order, and the id of the document each came
    from (parallel lists, as FactStore.load takes them)."""
    triples, ids = [], []
    for doc, doc_id in zip(documents, doc_ids):
        for t in extract_triples(doc):
            triples.append(t)
            ids.append(doc_id)
    return triples, ids


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
