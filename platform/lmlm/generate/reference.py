"""The plain reference algorithm: one prompt at a time, and after every lookup the whole token-id
sequence is fed again from scratch (a fresh cache: the re-prefill the batched engine avoids).

It re-feeds the generated ids, not re-tokenized text (STACK-NOTES), and shares the per-sequence
state machine and logits processing with the engine, so at greedy the two must agree token for
token; it is the parity oracle and the benchmark baseline.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from transformers import DynamicCache

from .engine import Engine, Prompt
from .params import GenerationParams
from .sampling import choose_tokens
from .state import GenerationResult, SequenceState


@torch.inference_mode()
def reference_generate(engine: Engine, prompts: Sequence[Prompt],
                       params: Union[GenerationParams, Sequence[GenerationParams], None] = None) -> list[GenerationResult]:
    """Same inputs and outputs as `engine.generate`, computed sequentially with re-prefill."""
    plist = list(params) if isinstance(params, (list, tuple)) else [params or GenerationParams()] * len(prompts)
    return [_one(engine, engine.new_state(p, pp)) for p, pp in zip(prompts, plist)]


def _one(engine: Engine, state: SequenceState) -> GenerationResult:
    engine.answer_pending([state])
    vocab = engine.model.config.vocab_size
    while not state.done:
        # Prefill everything so far, including the value just injected, into a fresh cache.
        state.take_injected()
        if state.done:
            break
        ids = torch.tensor([state.ids])
        cache = DynamicCache(config=engine.model.config)
        logits = _forward(engine, ids, cache)
        while True:
            seen = torch.zeros((1, vocab), dtype=torch.bool, device=logits.device)
            seen[0, state.ids] = True
            tok = int(choose_tokens(logits, seen, [state], engine.lookup_ids, engine.eos_id)[0])
            opened = state.push(tok)
            if opened:
                engine.answer_pending([state])
                break
            if state.done:
                break
            logits = _forward(engine, torch.tensor([[tok]]), cache)
    return state.result()


def _forward(engine: Engine, ids: torch.Tensor, cache) -> torch.Tensor:
    out = engine.model(input_ids=ids.to(engine.device), cache=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
