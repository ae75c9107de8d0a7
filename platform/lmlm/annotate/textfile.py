"""`lmlm annotate-text --annotator DIR IN.jsonl OUT.jsonl`: annotate a plain JSONL file in-process.

Each input line `{"id", "text"}` gives one output line `{"id", "annotated_text", "dropped"}`, in
input order: `annotated_text` is the annotator's output after the pipeline's validation (invalid
calls removed, legacy syntax), `dropped` counts the removed calls by reason. A line that cannot be
annotated (invalid UTF-8, broken JSON, no text, empty, over max_doc_bytes, annotator failure) still
gives a line: `annotated_text` null and `error` "<reason>: <detail>". Blank lines are skipped.
Documents longer than chunk_words words are annotated in pieces and joined, as the pipeline does.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmlm.annotate.annotators import load_trained
from lmlm.annotate.chunks import chunk_words
from lmlm.annotate.pipeline import annotate_rows
from lmlm.atomicfile import replacing
from lmlm.format import Parsed, render_legacy, to_special


@dataclass
class TextFileConfig:
    max_doc_bytes: int = 1_000_000  # larger documents are refused ("too_large")
    chunk_words: int = 750  # documents are annotated in pieces of at most this many words
    batch_size: int = 16  # pieces per annotator call
    threads: int = 1  # torch threads


def legacy_text(parsed: Parsed) -> str:
    """The validated document in legacy syntax: each valid call rendered back, invalid ones gone."""
    parts, pos = [], 0
    for lk in parsed.lookups:
        parts += [parsed.text[pos:lk.start], render_legacy(lk.triple)]
        pos = lk.end
    parts.append(parsed.text[pos:])
    return "".join(parts)


def _parse_line(raw: bytes, rid: str, cfg: TextFileConfig) -> tuple[str, str | None, str | None]:
    """(id, text, None) or (id, None, "reason: detail")."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return rid, None, f"invalid_utf8: {e}"
    try:
        d = json.loads(line)
    except ValueError as e:
        return rid, None, f"broken_json: {e}"
    if not isinstance(d, dict):
        return rid, None, f"bad_record: expected a JSON object, got {type(d).__name__}"
    rid = str(d["id"]) if d.get("id") is not None else rid
    text = d.get("text")
    if not isinstance(text, str):
        return rid, None, f"bad_record: 'text' must be a string, got {type(text).__name__}"
    if not text.strip():
        return rid, None, "empty: the text is empty"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # a lone surrogate escaped in the JSON
        return rid, None, f"invalid_utf8: {e}"
    if size > cfg.max_doc_bytes:
        return rid, None, f"too_large: {size} bytes > max_doc_bytes {cfg.max_doc_bytes}"
    return rid, text, None


def annotate_text_file(annotator_dir: str | Path, src: str | Path, dst: str | Path,
                       cfg: TextFileConfig | None = None) -> dict:
    """Annotate `src` into `dst` with the trained annotator in `annotator_dir`; returns a summary."""
    cfg = cfg or TextFileConfig()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"annotate-text: input {src} does not exist")
    annotator = load_trained(annotator_dir, num_threads=cfg.threads)
    rows: list[tuple[str, str | None, str | None]] = []
    with src.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                rows.append(_parse_line(raw.rstrip(b"\r\n"), f"{src.stem}:{lineno}", cfg))
    pieces = [(r, k, p) for r, (_, text, _) in enumerate(rows) if text is not None
              for k, p in enumerate(chunk_words(text, cfg.chunk_words))]
    results: dict[int, list[dict]] = {}
    for b in range(0, len(pieces), cfg.batch_size):
        batch = pieces[b:b + cfg.batch_size]
        for (r, _, _), res in zip(batch, annotate_rows(annotator, [f"{r}" for r, _, _ in batch],
                                                       [p for _, _, p in batch])):
            results.setdefault(r, []).append(res)
    reasons: Counter = Counter()
    dropped_total: Counter = Counter()
    with replacing(dst) as tmp, tmp.open("w", encoding="utf-8") as out:
        for r, (rid, text, error) in enumerate(rows):
            line = {"id": rid, "annotated_text": None, "dropped": {}}
            parts = results.get(r, [])
            bad = next((p for p in parts if p["status"] != "ok"), None)
            if error is None and bad is not None:
                error = f"{bad['reason']}: {bad.get('detail', '')}".rstrip(": ")
            if error is None:
                dropped: Counter = Counter()
                for p in parts:
                    dropped.update(json.loads(p["dropped"]))
                line.update(annotated_text="".join(legacy_text(to_special(p["annotated_text"])) for p in parts),
                            dropped=dict(dropped))
                dropped_total.update(dropped)
            else:
                line["error"] = error
                reasons[error.split(":", 1)[0]] += 1
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {"input": str(src), "output": str(dst), "annotator": annotator.annotator_id, "lines": len(rows),
            "annotated": len(rows) - sum(reasons.values()), "errors_by_reason": dict(sorted(reasons.items())),
            "dropped_calls_by_reason": dict(sorted(dropped_total.items()))}
