"""The documents to annotate, read by the workers that annotate them. The driver only names the files
and has Ray tasks cut them into shards (offsets and counts); each actor reads its own shard where
the corpus is, checks it and cuts long documents into chunks.

    input_files(spec) -> (filesystem, [(path, rel)])     # a file, directory or glob: local, file://, s3://, gs://
    plan_shards(cfg, shard_docs) -> (filesystem, [shard])  # in path order, cut at cfg.limit items
    read_shard(filesystem, shard, max_doc_bytes, max_words) -> (rows {id, doc_id, chunk, source, text},
                                                               rejects {id, doc_id, source, reason, detail})

A shard is `shard_docs` consecutive items of one file: JSONL lines that are not blank, examples of a
reference JSON file (`{"examples": [...]}` or a list), Parquet rows; records or not. Its name,
`{file stem}-{digest of the file's path under the input}-{k:05d}`, depends only on where it is, so
every run cuts the same shards. An item is read as lmlm.corpus reads it: what is not a record is
rejected with the reader's reason (invalid_utf8, broken_json, bad_record) under its place
(`{stem}:{line or index}`), and a record without an id is named by its place; then the checks of
`document_problem` (empty, too_large, invalid_utf8) and chunking, which `lmlm annotate-text`
(textfile.py) shares. A repeated id is made distinct within its shard (`{id}~2`).

Why not ray.data.read_json: pyarrow's JSON reader fails a whole file at one broken line and infers
column types file by file; this reader keeps the per-line reasons and each item's place. A reference
JSON file is parsed whole by each of its shards: fine for the reference sets (megabytes); a large
corpus belongs in JSONL or Parquet.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import PurePosixPath
from typing import Iterator

from lmlm.annotate.chunks import chunk_words
from lmlm.corpus import (BAD_RECORD, BROKEN_JSON, INVALID_UTF8, CorpusError, Record, SkippedLine,
                         json_examples, record_from_dict)
from lmlm.format import strip_lookups

FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def plain_text(record: Record) -> str:
    """What an annotator reads: the text, else the annotated text without its calls."""
    return record.text if record.text.strip() or not record.annotated_text else strip_lookups(record.annotated_text)


def document_problem(text: str, max_doc_bytes: int) -> tuple[str, str] | None:
    """(reason, detail) when `text` cannot be annotated: empty, too_large, or invalid_utf8 (a lone
    surrogate escaped in the JSON); None when it can."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        return "invalid_utf8", str(e)
    if not text.strip():
        return "empty", "the text is empty"
    if size > max_doc_bytes:
        return "too_large", f"{size} bytes > max_doc_bytes {max_doc_bytes}"
    return None


# --------------------------------------------------------------------------------------------
# Files and shards (what the driver sees)


def input_files(spec: str):
    """(pyarrow filesystem, [(path, rel)]): the corpus files `spec` names, in path order; `rel` is a
    file's path under the directory or glob, its name for a single file. Hidden files are left out."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(spec) if "://" in spec else (fs.LocalFileSystem(), os.path.abspath(spec))
    parts = path.split("/")
    wild = next((i for i, p in enumerate(parts) if set(p) & set("*?[")), None)
    if wild is None:
        kind = filesystem.get_file_info(path).type if spec else fs.FileType.NotFound
        if kind == fs.FileType.File:
            if PurePosixPath(path).suffix not in FORMATS:
                raise CorpusError(f"{spec}: unknown corpus format (expected .json, .jsonl, .parquet or a directory)")
            return filesystem, [(path, PurePosixPath(path).name)]
        if kind != fs.FileType.Directory:
            raise FileNotFoundError(f"annotate: input {spec!r} does not exist")
        base = path
    else:
        base = "/".join(parts[:wild])
    found = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    files = sorted(f.path for f in found if f.type == fs.FileType.File and PurePosixPath(f.path).suffix in FORMATS
                   and not PurePosixPath(f.path).name.startswith((".", "_"))
                   and (wild is None or fnmatch.fnmatchcase(f.path, path)))
    if not files:
        raise FileNotFoundError(f"annotate: input {spec!r} names no .json, .jsonl or .parquet file")
    return filesystem, [(p, p[len(base):].lstrip("/")) for p in files]


def shard_name(rel: str, k: int) -> str:
    return f"{PurePosixPath(rel).stem}-{hashlib.blake2b(rel.encode(), digest_size=4).hexdigest()}-{k:05d}"


def scan_file(filesystem, path: str, rel: str, shard_docs: int) -> list[dict]:
    """The shards of one file: {path, format, shard, start, line, count}; `start` is the byte offset
    of the first line (JSONL) or the index of the first example or row, `line` the first line's number."""
    fmt = FORMATS[PurePosixPath(path).suffix]
    spans: list[list[int]] = []  # [start, line, count]
    if fmt == "jsonl":
        with filesystem.open_input_stream(path) as f:
            pos = 0
            for lineno, raw in enumerate(io.BufferedReader(f, 1 << 20), 1):
                if raw.strip():
                    if not spans or spans[-1][2] == shard_docs:
                        spans.append([pos, lineno, 0])
                    spans[-1][2] += 1
                pos += len(raw)
    else:
        n = _parquet_rows(filesystem, path, 0, None)[1] if fmt == "parquet" else len(_json_examples(filesystem, path))
        spans = [[i, i, min(shard_docs, n - i)] for i in range(0, n, shard_docs)]
    return [{"path": path, "format": fmt, "shard": shard_name(rel, k), "start": start, "line": line, "count": count}
            for k, (start, line, count) in enumerate(spans)]


def plan_shards(cfg, shard_docs: int):
    """(filesystem, shards) of `cfg.input` (an AnnotateConfig): the files scanned by Ray tasks, the
    shards in path order, the first `cfg.limit` items only."""
    import ray

    filesystem, files = input_files(cfg.input)
    scan = ray.remote(scan_file)
    shards = [s for part in ray.get([scan.remote(filesystem, p, rel, shard_docs) for p, rel in files]) for s in part]
    if cfg.limit is not None:
        kept, left = [], cfg.limit
        for s in shards:
            if left <= 0:
                break
            kept.append({**s, "count": min(s["count"], left)})
            left -= s["count"]
        shards = kept
    return filesystem, shards


# --------------------------------------------------------------------------------------------
# Reading a shard (in the worker)


def _json_examples(filesystem, path: str) -> list:
    with filesystem.open_input_stream(path) as f:
        return json_examples(f.read(), path)


def _parquet_rows(filesystem, path: str, start: int, count: int | None) -> tuple[list[dict], int]:
    """(rows start .. start + count, reading only their row groups; the file's row count)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    try:
        with filesystem.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            first = 0
            for g in range(pf.num_row_groups if count else 0):
                n = pf.metadata.row_group(g).num_rows
                lo, hi = max(start - first, 0), min(start + count - first, n)
                if lo < hi:
                    rows += pf.read_row_group(g).slice(lo, hi - lo).to_pylist()
                first += n
            return rows, pf.metadata.num_rows
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CorpusError(f"{path}: cannot read Parquet: {e}") from e


def _item(path: str, n: int, item) -> Record | SkippedLine:
    stem = PurePosixPath(path).stem
    try:
        return record_from_dict(item, f"{stem}:{n}", stem)
    except ValueError as e:
        return SkippedLine(path, n, str(e), BAD_RECORD)


def _jsonl_item(path: str, lineno: int, raw: bytes) -> Record | SkippedLine:
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return SkippedLine(path, lineno, str(e), INVALID_UTF8)
    except ValueError as e:  # json.JSONDecodeError
        return SkippedLine(path, lineno, str(e), BROKEN_JSON)
    return _item(path, lineno, item)


def shard_items(filesystem, shard: dict) -> Iterator[Record | SkippedLine]:
    """The shard's items in file order, each a Record or the SkippedLine in its place."""
    path, start, count = shard["path"], shard["start"], shard["count"]
    if shard["format"] == "jsonl":
        with filesystem.open_input_file(path) as f:
            f.seek(start)
            lineno, n = shard["line"], 0
            for raw in io.BufferedReader(f, 1 << 20):
                if n == count:
                    break
                if raw.strip():
                    n += 1
                    yield _jsonl_item(path, lineno, raw)
                lineno += 1
        return
    if shard["format"] == "parquet":
        items = _parquet_rows(filesystem, path, start, count)[0]
    else:
        items = _json_examples(filesystem, path)[start:start + count]
    for i, item in enumerate(items, start):
        yield _item(path, i, item)


def _reject(rid: str, source: str, reason: str, detail: str = "") -> dict:
    return {"id": rid, "doc_id": rid, "source": source, "reason": reason, "detail": detail[:500]}


def read_shard(filesystem, shard: dict, max_doc_bytes: int, max_words: int) -> tuple[list[dict], list[dict]]:
    """(rows to annotate, rejected inputs) of one shard: validated, chunked rows {id, doc_id, chunk,
    source, text}."""
    rows, rejects, seen = [], [], Counter()
    for item in shard_items(filesystem, shard):
        if isinstance(item, SkippedLine):
            # a rejected line's id is its place, never its own id: it must not mark a document of that id finished
            stem = PurePosixPath(item.path).stem
            rejects.append(_reject(f"{stem}:{item.line}", stem, item.reason, str(item)))
            continue
        seen[item.id] += 1
        rid = item.id if seen[item.id] == 1 else f"{item.id}~{seen[item.id]}"
        text = plain_text(item)
        problem = document_problem(text, max_doc_bytes)
        if problem:
            rejects.append(_reject(rid, item.source, *problem))
            continue
        pieces = chunk_words(text, max_words)
        for k, piece in enumerate(pieces):
            cid = rid if len(pieces) == 1 else f"{rid}#c{k}"
            rows.append({"id": cid, "doc_id": rid, "chunk": k, "source": item.source, "text": piece})
    return rows, rejects
