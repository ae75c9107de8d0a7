"""`lmlm annotate-text --annotator DIR IN.jsonl OUT.jsonl`: annotate a plain JSONL file in-process.

Each input line `{"id", "text"}` gives one output line `{"id", "annotated_text", "dropped"}`, in
input order: `annotated_text` is the annotator's output after the pipeline's validation (invalid
calls removed, legacy syntax), `dropped` counts the removed calls by reason. A line that cannot be
annotated (the reader's invalid_utf8, broken_json, bad_record; inputs.py's empty, too_large; an
annotator failure) still gives a line: `annotated_text` null and `error` "<reason>: <detail>".
Blank lines are skipped. The input is read and checked as the pipeline's (lmlm.corpus, inputs.py);
documents longer than chunk_words words are annotated in pieces and joined, as the pipeline does.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmlm.annotate.chunks import chunk_words
from lmlm.annotate.inputs import document_problem, plain_text
from lmlm.annotate.shards import annotate_rows
from lmlm.annotate.registry import load_trained
from lmlm.atomicfile import replacing
from lmlm.corpus import SkippedLine, iter_corpus
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


def _line(item, max_doc_bytes: int) -> tuple[str, str | None, str | None]:
    """(id, text, None) or (id, None, "reason: detail") for one item of the corpus reader."""
    if isinstance(item, SkippedLine):
        return item.id, None, f"{item.reason}: {item.error}"
    text = plain_text(item)
    problem = document_problem(text, max_doc_bytes)
    return (item.id, None, ": ".join(problem)) if problem else (item.id, text, None)


def annotate_text_file(annotator_dir: str | Path, src: str | Path, dst: str | Path,
                       cfg: TextFileConfig | None = None) -> dict:
    """Annotate `src` into `dst` with the trained annotator in `annotator_dir`; returns a summary."""
    cfg = cfg or TextFileConfig()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"annotate-text: input {src} does not exist")
    annotator = load_trained(annotator_dir, num_threads=cfg.threads)
    rows = [_line(item, cfg.max_doc_bytes) for item in iter_corpus(src)]
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
