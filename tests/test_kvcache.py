"""The growing KV cache: the same keys and values as transformers' DynamicCache, without a copy of
the whole cache at every step."""
import torch
from transformers import DynamicCache, LlamaConfig

from lmlm.generate.kvcache import add_rows, drop_columns, keep_rows, new_cache


def _config(layers: int = 2) -> LlamaConfig:
    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2)


def _step(cache, rows: int, new: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(cache.layers)):
        k, v = torch.randn(rows, 2, new, 8, generator=g), torch.randn(rows, 2, new, 8, generator=g)
        out.append(cache.update(k, v, i))
    return out


def _same(a, b) -> None:
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
    assert a.get_seq_length() == b.get_seq_length()


def test_growing_cache_matches_dynamic_cache_through_steps_and_surgery():
    ours, ref = new_cache(_config()), DynamicCache(config=_config())
    seed = 0
    for rows, new in [(3, 5), (3, 1), (3, 1), (3, 7)]:
        seed += 1
        for (k1, v1), (k2, v2) in zip(_step(ours, rows, new, seed), _step(ref, rows, new, seed)):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
        _same(ours, ref)
    add_rows(ours, 2)
    for layer in ref.layers:
        layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((2, *layer.keys.shape[1:]))])
        layer.values = torch.cat([layer.values, layer.values.new_zeros((2, *layer.values.shape[1:]))])
    _same(ours, ref)
    _step(ours, 5, 70, 9), _step(ref, 5, 70, 9)  # past the first capacity
    _same(ours, ref)
    keep_rows(ours, torch.tensor([0, 3, 4]))
    ref.batch_select_indices(torch.tensor([0, 3, 4]))
    drop_columns(ours, 4)
    for layer in ref.layers:
        layer.keys, layer.values = layer.keys[:, :, 4:], layer.values[:, :, 4:]
    _same(ours, ref)
    _step(ours, 3, 1, 10), _step(ref, 3, 1, 10)
    _same(ours, ref)


def test_a_decode_step_writes_in_place_within_capacity():
    cache = new_cache(_config(1))
    _step(cache, 4, 10, 1)
    buf = cache.layers[0]._k
    for s in range(20):
        _step(cache, 4, 1, 2 + s)
        assert cache.layers[0]._k.data_ptr() == buf.data_ptr()  # no reallocation, no copy of the past
    assert cache.get_seq_length() == 30


def test_only_full_attention_layers():
    import pytest

    cfg = _config()
    cfg.layer_types = ["sliding_attention", "full_attention"]
    cfg.sliding_window = 4
    with pytest.raises(TypeError, match="not supported"):
        new_cache(cfg)
