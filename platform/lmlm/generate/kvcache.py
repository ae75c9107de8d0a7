"""Row and column surgery on a transformers `DynamicCache` (keys/values [batch, heads, time, dim]).

Continuous batching adds rows to a running cache (their past is all padding, masked out) and drops
the leading columns no live row uses any more. Only full-attention dynamic layers are supported.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _layers(cache: DynamicCache):
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise TypeError(f"cache: {type(layer).__name__} layers are not supported (full attention only)")
        if layer.is_initialized and layer.keys.numel():
            yield layer


def add_rows(cache: DynamicCache, n: int) -> None:
    """Append `n` rows of zeros (callers mask them out) after the existing ones."""
    for layer in _layers(cache):
        for name in ("keys", "values"):
            t = getattr(layer, name)
            setattr(layer, name, torch.cat([t, t.new_zeros((n, *t.shape[1:]))], dim=0))


def keep_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    cache.batch_select_indices(rows)


def drop_columns(cache: DynamicCache, n: int) -> None:
    """Forget the first `n` time steps of every row."""
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]
