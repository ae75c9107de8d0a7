"""Exported checkpoints work with plain transformers: bos/eos/pad are the tokenizer's, lookup tokens
are ordinary tokens to `generate`."""
from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmlm.format import SPECIAL_TOKENS
from lmlm.tokenizer import lookup_token_ids
from lmlm.train.models import build_model


def test_exported_model_generates_to_the_real_eos(tmp_path, tiny_tokenizer):
    ids = lookup_token_ids(tiny_tokenizer)
    torch.manual_seed(0)
    model = build_model("tiny", len(tiny_tokenizer), 64, seed=0, tokenizer=tiny_tokenizer)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((tmp_path / name).read_text())
        assert (cfg["eos_token_id"], cfg["pad_token_id"]) == (ids.eos, ids.pad), name
        assert cfg["bos_token_id"] not in ids.markers and cfg["eos_token_id"] not in ids.markers

    m = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    x = tok("Tell me a bio of", return_tensors="pt")
    # Every lookup token, pushed to the top in turn, is generated as an ordinary token: no early stop.
    for marker in SPECIAL_TOKENS:
        mid = tok.convert_tokens_to_ids(marker)
        out = m.generate(**x, max_new_tokens=6, do_sample=False, sequence_bias={(mid,): 100.0})
        assert out[0, x["input_ids"].shape[1]:].tolist() == [mid] * 6
    # The real EOS ends generation at once.
    out = m.generate(**x, max_new_tokens=6, do_sample=False, sequence_bias={(ids.eos,): 100.0})
    assert out[0, x["input_ids"].shape[1]:].tolist() == [ids.eos]
