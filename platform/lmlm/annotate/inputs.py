"""The documents to annotate: a corpus read with lmlm.corpus (a line that is no record is rejected with
its reason: invalid_utf8, broken_json, bad_record), each document's plain text checked and cut into
chunks. The Ray pipeline (`read_inputs`) and `lmlm annotate-text` (textfile.py) take the same checks.

    read_inputs(cfg) -> (rows {id, doc_id, chunk, source, text}, rejects {id, doc_id, source, reason, detail})
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmlm.annotate.chunks import chunk_words
from lmlm.annotate.config import AnnotateConfig
from lmlm.corpus import Record, read_corpus
from lmlm.format import strip_lookups


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


def _reject(rid: str, source: str, reason: str, detail: str = "") -> dict:
    return {"id": rid, "doc_id": rid, "source": source, "reason": reason, "detail": detail[:500]}


def read_inputs(cfg: AnnotateConfig) -> tuple[list[dict], list[dict]]:
    """(rows to annotate, rejected inputs): validated, chunked rows {id, doc_id, chunk, source, text}."""
    path = Path(cfg.input)
    if not cfg.input or not path.exists():
        raise FileNotFoundError(f"annotate: input {cfg.input!r} does not exist")
    records = read_corpus(path, on_error="skip", limit=cfg.limit)
    # a rejected line's id is its place, never its own id: it must not mark a document of that id finished
    rejects = [_reject(f"{Path(s.path).stem}:{s.line}", Path(s.path).stem, s.reason, str(s)) for s in records.skipped]
    rows, seen = [], Counter()
    for r in records:
        seen[r.id] += 1
        rid = r.id if seen[r.id] == 1 else f"{r.id}~{seen[r.id]}"  # duplicate ids stay distinct
        text = plain_text(r)
        problem = document_problem(text, cfg.max_doc_bytes)
        if problem:
            rejects.append(_reject(rid, r.source, *problem))
            continue
        pieces = chunk_words(text, cfg.chunk_words)
        for k, piece in enumerate(pieces):
            cid = rid if len(pieces) == 1 else f"{rid}#c{k}"
            rows.append({"id": cid, "doc_id": rid, "chunk": k, "source": r.source, "text": piece})
    return rows, rejects
