"""The batched, KV-cache-preserving generation engine with interleaved fact lookups (LMLM.md §6).

Prompts are left-padded and prefilled once. Every step then feeds one token per live row: the
row's sampled token, or a forced one while it is injecting `" " + value + "<|db_end|>"` after a
lookup. Rows that emit <|db_return|> in the same step are answered by one `store.lookup_batch`
call. Finished rows leave the batch (their cache rows are dropped); no context is ever re-prefilled.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from transformers import DynamicCache

from lmlm.factstore import StoreUnavailable
from lmlm.tokenizer import lookup_token_ids

from .params import GenerationParams
from .sampling import choose_tokens
from .state import GenerationResult, SequenceState

Prompt = Union[str, Sequence[int]]
# on_token(prompt_index, state) after each token a sequence takes (for streaming).
OnToken = Callable[[int, SequenceState], None]


class Engine:
    """`Engine(model, tokenizer, store)`; `store` is anything with `lookup_batch(queries, **policy)`."""

    def __init__(self, model, tokenizer, store=None, *, max_batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.store = store
        self.max_batch_size = max_batch_size
        self.token_ids = lookup_token_ids(tokenizer)
        self.eos_id = self.token_ids.eos
        self.pad_id = self.token_ids.pad
        self.max_len = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.device = next(model.parameters()).device
        self.lookup_ids = torch.tensor(self.token_ids.markers)

    # ---------------------------------------------------------------- helpers shared with the reference
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def new_state(self, prompt: Prompt, params: GenerationParams) -> SequenceState:
        if isinstance(prompt, str):
            text, ids = prompt, self.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            text = self.decode(ids)
        if not ids:
            raise ValueError("prompt: must not be empty")
        if params.use_lookups and self.store is None:
            raise ValueError("use_lookups: this engine has no fact store; pass use_lookups=False")
        return SequenceState(text, ids, params, self.token_ids, self.max_len, self.decode)

    def answer_pending(self, states: Sequence[SequenceState]) -> None:
        """Answer every pending query: one `lookup_batch` call per distinct store policy (usually one)."""
        groups: dict[tuple, list[SequenceState]] = {}
        for s in states:
            if s.pending is not None:
                groups.setdefault(tuple(sorted(s.params.store_policy().items())), []).append(s)
        for policy, group in groups.items():
            try:
                answers = self.store.lookup_batch([s.pending for s in group], **dict(policy))
            except StoreUnavailable as e:
                for s in group:
                    s.store_failed(f"fact store unavailable: {e}", self.encode)
                continue
            for s, a in zip(group, answers):
                s.answer(a, self.encode)

    # ---------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[Prompt], params: Union[GenerationParams, Sequence[GenerationParams], None] = None,
                 on_token: Optional[OnToken] = None) -> list[GenerationResult]:
        """Generate for every prompt; `params` is one for all or one per prompt."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompts, got one string")
        plist = list(params) if isinstance(params, (list, tuple)) else [params or GenerationParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"params: {len(plist)} given for {len(prompts)} prompts")
        states = [self.new_state(p, pp) for p, pp in zip(prompts, plist)]
        for start in range(0, len(states), self.max_batch_size):
            chunk = list(range(start, min(start + self.max_batch_size, len(states))))
            self._run([states[i] for i in chunk], chunk, on_token)
        return [s.result() for s in states]

    @torch.inference_mode()
    def _run(self, states: list[SequenceState], index: list[int], on_token: Optional[OnToken]) -> None:
        self.answer_pending(states)  # prompts that end with <|db_return|>
        live = [i for i, s in enumerate(states) if not s.done]
        if not live:
            return
        rows = [states[i] for i in live]
        width = max(len(s.ids) for s in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        seen = torch.zeros((len(rows), self.model.config.vocab_size), dtype=torch.bool)
        for r, s in enumerate(rows):
            input_ids[r, width - len(s.ids):] = torch.tensor(s.ids)
            mask[r, width - len(s.ids):] = 1
            seen[r, s.ids] = True
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = mask.sum(-1)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, mask, positions, cache)
        while True:
            toks = choose_tokens(logits, seen, rows, self.lookup_ids, self.eos_id)
            for r, s in enumerate(rows):
                s.push(toks[r])
                if on_token is not None:
                    on_token(index[live[r]], s)
            self.answer_pending(rows)
            keep = [r for r, s in enumerate(rows) if not s.done]
            if not keep:
                return
            tok = torch.tensor(toks)
            if len(keep) < len(rows):
                sel = torch.tensor(keep)
                cache.batch_select_indices(sel)
                rows, live = [rows[r] for r in keep], [live[r] for r in keep]
                tok, mask, seen, next_pos = tok[sel], mask[sel], seen[sel], next_pos[sel]
            seen[torch.arange(len(rows)), tok] = True
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype)], dim=1)
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        # Without padding among the live rows the mask says nothing: skip building the 4D mask.
        mask = None if bool(mask.all()) else mask.to(self.device)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask,
                         position_ids=positions.to(self.device), cache=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1].float().cpu() if out.logits.dtype in (torch.float16, torch.bfloat16) \
            else out.logits[:, -1].cpu()
