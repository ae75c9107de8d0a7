"""`lmlm generate`: prompts in, display text or JSON results out (`lmlm serve` is in lmlm.serve.cli)."""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lmlm.factstore import FactStoreConfig

from .params import GenerationParams


@dataclass
class GenerateConfig:
    model_path: str = "runs/demo/model"   # HF checkpoint dir (model and tokenizer)
    tokenizer_path: str = ""              # "" = model_path
    dtype: str = "float32"                # float32 | bfloat16 | float64
    store: FactStoreConfig = field(default_factory=FactStoreConfig)  # url None: env LMLM_REDIS_URL or a private Redis
    params: GenerationParams = field(default_factory=GenerationParams)
    batch_size: int = 16                  # prompts decoded together
    prompts_file: Optional[str] = None    # one prompt per line (in addition to the positional prompts)


def register(subparsers) -> None:
    from lmlm.config import add_config_command

    p = add_config_command(subparsers, "generate", _generate, "generate with interleaved fact lookups",
                           config=GenerateConfig)
    p.add_argument("prompts", nargs="*", help="prompts (or --set prompts_file=FILE)")
    p.add_argument("--json", action="store_true", help="one JSON result per line (raw text, lookups, counts)")


def _generate(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlm.config import load_config
    from lmlm.factstore import FactStore

    from .engine import Engine

    cfg = load_config(GenerateConfig, args.config, args.overrides)
    prompts = list(args.prompts)
    if cfg.prompts_file:
        prompts += [ln for ln in Path(cfg.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("prompts: give at least one prompt (positional or prompts_file)")
    if not Path(cfg.model_path).is_dir():
        raise ValueError(f"model_path: {cfg.model_path} is not a checkpoint directory")
    # Library chatter while loading goes to stderr: stdout carries the results (--json: one per line).
    # (transformers imports accelerate, which imports DeepSpeed, whose logger prints to stdout.)
    with contextlib.redirect_stdout(sys.stderr):
        model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer_path or cfg.model_path)
    store = FactStore.open(cfg.store) if cfg.params.use_lookups else None
    try:
        results = Engine(model, tok, store, max_batch_size=cfg.batch_size).generate(prompts, cfg.params)
    finally:
        if store is not None:
            store.close()
    for r in results:
        print(json.dumps(r.to_dict()) if args.json else r.prompt + r.display_text)
    return 0

