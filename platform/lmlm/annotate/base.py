"""The annotator interface: `Annotator.annotate(texts) -> legacy-annotated texts`.

`annotate_safe` is what the pipeline calls: per document either the annotated text or a short
failure reason, so one bad document (or a dead endpoint) never fails or hangs a whole batch.
"""
from __future__ import annotations

import abc
import json
from pathlib import Path

from lmlm.atomicfile import fsync_tree, write_json


class AnnotatorError(RuntimeError):
    """An annotator call that failed for good; `reason` is a short label for the reject report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Annotator(abc.ABC):
    """Turns plain documents into legacy-annotated ones: `[dblookup('E', 'R') -> V] V ...`."""

    name = "base"
    annotator_id = "base"

    @abc.abstractmethod
    def annotate(self, texts: list[str]) -> list[str]:
        """One annotated text per input text, in order."""

    def annotate_safe(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        """(annotated, None) or (None, reason) per text; a failing batch is retried one by one."""
        try:
            return [(out, None) for out in self.annotate(texts)]
        except Exception:  # noqa: BLE001 — isolate the failing document(s) below
            if len(texts) == 1:
                raise
        results: list[tuple[str | None, str | None]] = []
        for t in texts:
            try:
                results.append((self.annotate([t])[0], None))
            except AnnotatorError as e:
                results.append((None, e.reason))
            except Exception as e:  # noqa: BLE001
                results.append((None, f"annotator_exception:{type(e).__name__}"))
        return results


def begin_save(out_dir: str | Path) -> Path:
    """The directory to save an annotator into, without a marker until `write_meta` writes it (an
    older annotator saved there no longer counts once its files start being replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "annotator.json").unlink(missing_ok=True)
    return out


def write_meta(out_dir: str | Path, meta: dict) -> Path:
    """Write annotator.json, the marker of a saved annotator, after every other file in `out_dir`
    is on disk: a directory with annotator.json holds a whole annotator."""
    fsync_tree(out_dir)
    return write_json(Path(out_dir) / "annotator.json", meta)


def read_meta(path: str | Path, kind: str, files: tuple[str, ...]) -> dict:
    """annotator.json of a saved annotator of `kind`, after checking that `files` are all there."""
    p = Path(path)
    if not all((p / f).is_file() for f in files):
        raise FileNotFoundError(f"{p} is not a {kind} annotator directory "
                                f"(needs {', '.join(files[:-1])} and {files[-1]})")
    meta = json.loads((p / "annotator.json").read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{p}: annotator.json says kind {meta.get('kind', 'tagger')!r}, not {kind!r}")
    return meta
