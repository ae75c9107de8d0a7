"""Shared fixtures: paths, the reference data, and one local Ray cluster per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline everywhere: a hub look-up that cannot succeed would otherwise cost ~50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep every Ray process on 127.0.0.1 (STACK-NOTES: driver and head both need it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "lmlm-wiki"
# As the Makefile does: the local data directory, when the copy beside the checkout exists.
if SHARED_DATA.is_dir():
    os.environ.setdefault("LMLM_DATA_DIR", str(SHARED_DATA.parent))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def chat_prompt(tmp_path_factory) -> str:
    """A minimal annotation prompt file (the chat annotators' tests need no reference data)."""
    path = tmp_path_factory.mktemp("prompt") / "prompt.json"
    path.write_text('[{"role": "system", "content": "Insert lookup calls before every fact."}, '
                    '{"role": "user", "content": "[INSERT_TEXT]"}]')
    return str(path)


@pytest.fixture(scope="session")
def lmlm_wiki() -> Path:
    """The lmlm-wiki data set's folder (lmlm.datasets: LMLM_DATA_DIR, else the user cache), every file
    verified; tests that need it skip with a reason when it is not there (`lmlm data fetch lmlm-wiki`)."""
    from lmlm.datasets import dataset_dir, status

    bad = {name: state for name, state in status("lmlm-wiki").items() if state != "ok"}
    if bad:
        pytest.skip(f"lmlm-wiki not fetched at {dataset_dir('lmlm-wiki')} ({len(bad)} files missing or invalid, "
                    f"e.g. {next(iter(bad))}: run `lmlm data fetch lmlm-wiki`)")
    return dataset_dir("lmlm-wiki")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (each start costs seconds and ~0.5 GB).

    Logical CPUs are more than the 2 physical cores so that actor pools, read tasks and
    Train workers never deadlock waiting for a CPU slot (STACK-NOTES).
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", ignore_reinit_error=True)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """(train helper) A 512-token byte-level BPE with the four lookup tokens, trained on a small
    synthetic world and saved in a temp dir."""
    from lmlm.format import to_special
    from lmlm.tokenizer import train_tokenizer
    from lmlm.world import WorldConfig, generate_world

    texts = [to_special(d.annotated_text).text for d in generate_world(WorldConfig(people=60, seed=1)).documents]
    return train_tokenizer(texts, 512, tmp_path_factory.mktemp("tiny_tokenizer"))

# Fact-store fixtures (`redis_server`, `fact_store`, `fact_store_factory`): see tests/fixtures_factstore.py.
pytest_plugins = ["fixtures_factstore"]


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A one-layer Llama with a chat template and a tokenizer that knows the default prompt's words."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlm.annotate.prompt import default_prompt
    from lmlm.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("chat")
    texts = [m["content"] for m in default_prompt()] * 3 + \
        ["Mara Quell was born in Lisbon and works as a potter. <|im_start|> <|im_end|> assistant user system"] * 20
    tok = train_tokenizer(texts, vocab_size=400)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out
