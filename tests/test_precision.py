"""The one precision rule (lmlm.precision) and the models it places: the served model on its device,
the generative annotator's training and inference dtype."""
from __future__ import annotations

import warnings

import pytest
import torch

from lmlm.precision import cpu_features, device_of, inference_dtype, native_bf16, training_dtype


def test_auto_follows_what_the_cpu_computes_natively():
    f = cpu_features()
    assert f["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    native = f["amx_bf16"] or f["avx512_bf16"]
    assert native_bf16("cpu") == native
    assert training_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert training_dtype("fp32", "cpu") == torch.float32
    # inference on a CPU stays float32 on every CPU: generated annotations never depend on the machine
    assert inference_dtype("auto", "cpu") == torch.float32
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert training_dtype("bf16", "cpu") == torch.bfloat16
    assert bool(w) == (not native)  # an emulated bfloat16 is said so
    with pytest.raises(ValueError, match="generative.precision: precision must be one of"):
        training_dtype("fp16", "cpu", "generative.precision")


def test_device_auto_is_the_gpu_when_there_is_one():
    assert device_of("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_of("cpu") == torch.device("cpu")


def test_served_model_is_placed_on_the_configured_device(tmp_path):
    from lmlm.generate import Engine
    from lmlm.testing.tiny import synthetic_texts, tiny_model, tiny_tokenizer
    from lmlm.serve.config import ServeConfig
    from lmlm.serve.loaders import default_model_loader, default_tokenizer_loader

    tok = tiny_tokenizer(synthetic_texts(), out_dir=tmp_path)
    tiny_model(len(tok)).save_pretrained(tmp_path)
    cfg = ServeConfig(model_path=str(tmp_path), device="cpu")
    model = default_model_loader(cfg)
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    assert Engine(model, default_tokenizer_loader(cfg)).device.type == "cpu"
    auto = default_model_loader(ServeConfig(model_path=str(tmp_path)))
    assert next(auto.parameters()).device.type == device_of("auto").type
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' asked for, but this replica sees no CUDA GPU"):
            default_model_loader(ServeConfig(model_path=str(tmp_path), device="cuda"))
    with pytest.raises(ValueError, match="dtype: must be one of"):
        ServeConfig(dtype="half")
