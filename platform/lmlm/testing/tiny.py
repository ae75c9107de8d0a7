"""Small real components for tests and benchmarks: the platform's byte-level BPE trained on a little
synthetic fact text, and a randomly initialised LLaMA-style model.

Random weights are enough to exercise the engine (the lookup-token bias makes lookups happen);
nothing here is downloaded.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import torch

from lmlm.format import Triple, render_block

PEOPLE = ["Ada Varen", "Bo Lindqvist", "Cyra Moss", "Dario Fenn", "Elin Sato", "Farid Oyelaran",
          "Greta Holm", "Hugo Marsh", "Ines Calder", "Jonas Pike", "Kira Dunn", "Lev Arno"]
RELATIONS = {"Birth City": ["Oslo", "Lagos", "Kyoto", "Lima", "Porto", "Quito"],
             "Occupation": ["chemist", "painter", "pilot", "architect", "violinist", "surgeon"],
             "Employer": ["Norsk Hydro", "Acme Labs", "Tata Steel", "Orbital Works"],
             "Birth Date": ["3 May 1961", "12 June 1975", "9 July 1988", "21 March 1950"]}


def synthetic_triples(seed: int = 0) -> list[Triple]:
    rng = random.Random(seed)
    return [Triple(p, r, rng.choice(vals)) for p in PEOPLE for r, vals in RELATIONS.items()]


def synthetic_texts(seed: int = 0) -> list[str]:
    """Bios with lookup blocks placed before the stated value, as in annotated training text."""
    rng = random.Random(seed)
    facts: dict[str, dict[str, Triple]] = {}
    for t in synthetic_triples(seed):
        facts.setdefault(t.entity, {})[t.relation] = t
    out = []
    for person, rels in facts.items():
        f = rels
        out.append(f"{person} is a {render_block(f['Occupation'])} {f['Occupation'].value} born in "
                   f"{render_block(f['Birth City'])} {f['Birth City'].value} on {render_block(f['Birth Date'])} "
                   f"{f['Birth Date'].value}. {person.split()[0]} works for {render_block(f['Employer'])} "
                   f"{f['Employer'].value}.")
        out.append(f"Tell me a bio of {person}. {person} is a {f['Occupation'].value} from {f['Birth City'].value}.")
    rng.shuffle(out)
    return out


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 600, out_dir: str | Path | None = None):
    """The platform's byte-level BPE (lmlm.tokenizer.train_tokenizer) with a pad token of its own:
    EOS 0, PAD 1, the four lookup tokens 2-5; trained on `texts` with every merge kept."""
    from lmlm.tokenizer import train_tokenizer

    return train_tokenizer(list(texts), vocab_size, out_dir, min_frequency=0, pad_token="<|pad|>")


def tiny_model(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 1024,
               seed: int = 0, dtype: torch.dtype = torch.float32, intermediate: int | None = None,
               logit_std: float = 1.3):
    """A randomly initialised LLaMA-style causal LM (untied embeddings, as in docs/method.md §5)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_len, tie_word_embeddings=False, bos_token_id=None,
                      eos_token_id=0, pad_token_id=1)  # tiny_tokenizer's EOS and PAD
    model = LlamaForCausalLM(cfg).to(dtype)
    # Random init gives near-uniform logits (std 0.02 * sqrt(hidden)); scaling the head to `logit_std`
    # makes greedy choices decisive (no near-ties) while the +4 lookup bias still wins now and then.
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_std / (cfg.initializer_range * hidden ** 0.5))
    return model.eval()
