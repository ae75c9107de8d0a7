"""Cutting documents at word boundaries: the pipeline's chunks (`chunk_words`) and the `hf`
annotator's prompt-sized pieces (`word_cut`). Pieces keep their separators, so joining them gives
the document back."""
from __future__ import annotations

import re

WORD = re.compile(r"\S+")


def word_cut(text: str, n_words: int) -> int:
    """Character offset just after the n-th word (0 -> 0)."""
    if n_words <= 0:
        return 0
    for k, m in enumerate(WORD.finditer(text), 1):
        if k == n_words:
            return m.end()
    return len(text)


def chunk_words(text: str, max_words: int) -> list[str]:
    """Split at word boundaries into pieces of at most max_words words; pieces keep their separators."""
    bounds = [m.start() for m in WORD.finditer(text)][::max_words][1:]
    cuts = [0, *bounds, len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]
