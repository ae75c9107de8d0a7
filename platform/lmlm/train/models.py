"""Model presets (docs/method.md §5) built from transformers configs, or a local config/checkpoint dir.

All presets use untied input/output embeddings sized to the tokenizer (the four lookup tokens
included). Models are created from scratch: nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

PRESETS = ("tiny", "llama2-176m", "llama2-382m", "gpt2-124m")


def preset_config(name: str, vocab_size: int, max_seq_len: int = 1024):
    """The transformers config of a preset."""
    llama = dict(vocab_size=vocab_size, max_position_embeddings=max_seq_len, tie_word_embeddings=False,
                 rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu")
    if name == "tiny":  # a few million parameters: CPU runs in minutes
        return LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, **llama)
    if name == "llama2-176m":
        return LlamaConfig(hidden_size=512, intermediate_size=11008, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=8, **llama)
    if name == "llama2-382m":
        return LlamaConfig(hidden_size=768, intermediate_size=11008, num_hidden_layers=12,
                           num_attention_heads=12, num_key_value_heads=12, **llama)
    if name == "gpt2-124m":
        return GPT2Config(vocab_size=vocab_size, n_positions=max_seq_len, n_embd=768, n_layer=12, n_head=12,
                          tie_word_embeddings=False)
    raise ValueError(f"model: {name!r} is neither a preset {list(PRESETS)} nor an existing directory")


def build_model(preset_or_path: str, vocab_size: int, max_seq_len: int = 1024, seed: int | None = None,
                tokenizer=None) -> PreTrainedModel:
    """A causal LM: a preset from scratch, or a local directory (config only: from scratch; with
    weights: loaded). Embeddings are resized to `vocab_size` and left untied. With `tokenizer`, the
    model's config and generation config carry its bos/eos/pad ids (`set_special_ids`)."""
    model = _build(preset_or_path, vocab_size, max_seq_len, seed)
    if tokenizer is not None:
        set_special_ids(model, tokenizer)
    return model


def set_special_ids(model: PreTrainedModel, tokenizer) -> None:
    """Write the tokenizer's bos/eos/pad ids into `model.config` and `model.generation_config`, so
    that an exported checkpoint stops where the tokenizer's EOS is (transformers' config defaults,
    bos=1 and eos=2, are lookup tokens in our tokenizers)."""
    from lmlm.tokenizer import lookup_token_ids

    ids = lookup_token_ids(tokenizer)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids.eos
    named = {"bos_token_id": bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad}
    for cfg in (model.config, model.generation_config):
        for k, v in named.items():
            setattr(cfg, k, v)


def _build(preset_or_path: str, vocab_size: int, max_seq_len: int, seed: int | None) -> PreTrainedModel:
    import torch

    if vocab_size <= 0:
        raise ValueError(f"vocab_size: {vocab_size} must be positive")
    if seed is not None:
        torch.manual_seed(seed)
    path = Path(preset_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model: directory {path} has no config.json")
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
        if has_weights:
            model = AutoModelForCausalLM.from_pretrained(path)
        else:
            config = AutoConfig.from_pretrained(path)
            config.tie_word_embeddings = False
            model = AutoModelForCausalLM.from_config(config)
        if model.get_input_embeddings().weight.shape[0] != vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    if preset_or_path not in PRESETS and ("/" in preset_or_path or preset_or_path.startswith(".")):
        raise ValueError(f"model: directory {preset_or_path} does not exist")
    return AutoModelForCausalLM.from_config(preset_config(preset_or_path, vocab_size, max_seq_len))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12 L H T (the PaLM/nanoGPT estimate), for MFU."""
    cfg = model.config
    n_layer = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return 6 * count_parameters(model) + 12 * n_layer * hidden * seq_len
