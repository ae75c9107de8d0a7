"""Model presets, the `lmlm pretrain` command's config handling, and the value-loss plot."""
from __future__ import annotations

import argparse

import pytest

from lmlm.config import ConfigError, load_config
from lmlm.train.config import PretrainConfig
from lmlm.train.models import build_model, preset_config


def test_presets_follow_the_reference_shapes():
    c = preset_config("llama2-176m", 32004)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (8, 512, 8, 11008)
    c = preset_config("llama2-382m", 32004)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (12, 768, 12, 11008)
    g = preset_config("gpt2-124m", 50261)
    assert (g.n_layer, g.n_embd, g.vocab_size, g.tie_word_embeddings) == (12, 768, 50261, False)
    with pytest.raises(ValueError, match="model"):
        preset_config("huge", 10)


def test_tiny_model_untied_and_sized_to_tokenizer(tiny_tokenizer, tmp_path):
    model = build_model("tiny", len(tiny_tokenizer), 64, seed=0)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == len(tiny_tokenizer)
    assert emb.data_ptr() != head.data_ptr()
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    model.save_pretrained(tmp_path / "m")
    again = build_model(str(tmp_path / "m"), len(tiny_tokenizer) + 3)  # a local checkpoint, resized
    assert again.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer) + 3
    with pytest.raises(ValueError, match="does not exist"):
        build_model(str(tmp_path / "missing"), 10)


def test_pretrain_command_config(tmp_path):
    from lmlm.train.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("variant: standard\nmax_steps: 7\n")
    args = parser.parse_args(["pretrain", "--config", str(cfg_file), "--set", "zero_stage=3", "--set", "lr=0.001"])
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    assert (cfg.variant, cfg.max_steps, cfg.zero_stage, cfg.lr) == ("standard", 7, 3, 0.001)
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(PretrainConfig, None, ["zero_stage=4"])
    with pytest.raises(ConfigError, match="variant"):
        load_config(PretrainConfig, None, ["variant=other"])


def test_value_loss_plot(tmp_path):
    from lmlm.train.compare import plot_value_loss

    rows = lambda v: [{"step": s, "value_loss": v(s), "text_loss": 5 - s / 10} for s in range(1, 11)]
    png = plot_value_loss({"lmlm": rows(lambda s: 6.0), "standard": rows(lambda s: 6 - s / 3)}, tmp_path / "v.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="metrics"):
        plot_value_loss({"lmlm": []}, tmp_path / "x.png")
