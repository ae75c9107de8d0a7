"""The annotator interface: `Annotator.annotate(texts) -> legacy-annotated texts`.

`annotate_safe` is what the pipeline calls: per document either the annotated text or a short
failure reason, so one bad document (or a dead endpoint) never fails or hangs a whole batch.
"""
from __future__ import annotations

import abc


class AnnotatorError(RuntimeError):
    """An annotator call that failed for good; `reason` is a short label for the reject report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Annotator(abc.ABC):
    """Turns plain documents into legacy-annotated ones: `[dblookup('E', 'R') -> V] V ...`."""

    kind = "base"  # its key in registry.KINDS
    annotator_id = "base"  # the provenance label stored with every triple it finds

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
