"""The running batch's KV cache: a transformers `DynamicCache` whose layers grow in place, and the
row and column surgery continuous batching needs (keys/values are [batch, heads, time, dim]).

transformers' `DynamicLayer` appends each step's keys with `torch.cat`, which allocates and copies
the whole cache of every layer at every step: at 16 rows × 170 columns that was 54% of a decode
step on CPU. `GrowingLayer` writes into a buffer with spare columns (capacity doubles when full)
and hands attention a view of the filled part, so a step copies only its own new columns.

Continuous batching adds rows to a running cache (their past is all padding, masked out) and drops
the leading columns no live row uses any more. Only full-attention layers are supported.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 64  # columns of a fresh buffer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that keeps its keys and values in buffers with spare columns.

    `keys`/`values` read as views of the filled columns; assigning them (row selection, column drops,
    transformers' own bookkeeping) adopts the tensor as the new buffer, full to capacity."""

    _k: torch.Tensor | None = None
    _v: torch.Tensor | None = None
    _n: int = 0

    def _filled(self, buf):
        return buf if buf is None or buf.dim() < 4 else buf[:, :, : self._n]

    @property
    def keys(self):
        return self._filled(self._k)

    @keys.setter
    def keys(self, t):
        self._k = t
        self._n = t.shape[-2] if t is not None and t.dim() == 4 else 0

    @property
    def values(self):
        return self._filled(self._v)

    @values.setter
    def values(self, t):
        self._v = t

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self._n, key_states.shape[-2]
        if self._k.dim() < 4 or self._k.shape[0] != key_states.shape[0] or n + new > self._k.shape[-2]:
            cap = max(MIN_CAPACITY, 2 * (n + new))
            self._k, self._v = (self._grown(old, like, n, cap) for old, like in ((self._k, key_states),
                                                                                 (self._v, value_states)))
        self._k[:, :, n : n + new] = key_states
        self._v[:, :, n : n + new] = value_states
        self._n = n + new
        return self.keys, self.values

    @staticmethod
    def _grown(old: torch.Tensor, like: torch.Tensor, n: int, cap: int) -> torch.Tensor:
        b, h, _, d = like.shape
        buf = like.new_empty((b, h, cap, d))
        if n:
            buf[:, :, :n] = old[:, :, :n]
        return buf


def _full_attention(layer) -> None:
    if not isinstance(layer, DynamicLayer) or layer.is_sliding:
        raise TypeError(f"cache: {type(layer).__name__} layers are not supported (full attention only)")


def new_cache(config) -> DynamicCache:
    """An empty cache for `config`'s model whose layers grow in place (full attention only)."""
    cache = DynamicCache(config=config)
    for layer in cache.layers:
        _full_attention(layer)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def _layers(cache: DynamicCache):
    for layer in cache.layers:
        _full_attention(layer)
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            yield layer


def add_rows(cache: DynamicCache, n: int) -> None:
    """Append `n` rows of zeros (callers mask them out) after the existing ones."""
    for layer in _layers(cache):
        k, v = layer.keys, layer.values
        layer.keys = torch.cat([k, k.new_zeros((n, *k.shape[1:]))], dim=0)
        layer.values = torch.cat([v, v.new_zeros((n, *v.shape[1:]))], dim=0)


def keep_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    cache.batch_select_indices(rows)


def drop_columns(cache: DynamicCache, n: int) -> None:
    """Forget the first `n` time steps of every row."""
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]
