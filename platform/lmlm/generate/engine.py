"""The batched, KV-cache-preserving generation engine with interleaved fact lookups (docs/method.md §6).

`generate` runs a `DecodeBatch` (batch.py): up to `max_batch_size` sequences decode together, a
waiting prompt joins as soon as a row finishes, and a row whose lookup was answered feeds the whole
injected value in the same forward pass as the other rows' next token. Rows that emit
<|db_return|> in the same step are answered by one `store.lookup_batch` call. No context is ever
re-prefilled.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Optional, Sequence, Union

import torch

from lmlm.factstore import StoreUnavailable
from lmlm.tokenizer import lookup_token_ids

from .batch import DecodeBatch
from .params import GenerationParams
from .state import GenerationResult, SequenceState

Prompt = Union[str, Sequence[int]]
# on_token(prompt_index, state) after each step in which a sequence took tokens (for streaming).
OnToken = Callable[[int, SequenceState], None]


class Engine:
    """`Engine(model, tokenizer, store)`; `store` is anything with `lookup_batch(queries, **policy)`."""

    def __init__(self, model, tokenizer, store=None, *, max_batch_size: int = 32, prefill_chunk: int = 256):
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size: must be > 0 (got {max_batch_size})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.store = store
        self.max_batch_size, self.prefill_chunk = max_batch_size, prefill_chunk
        self.token_ids = lookup_token_ids(tokenizer)
        self.eos_id = self.token_ids.eos
        self.pad_id = self.token_ids.pad
        self.max_len = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.device = next(model.parameters()).device
        self.lookup_ids = torch.tensor(self.token_ids.markers, device=self.device)
        self.lookup_listener: Optional[Callable[[int, float], None]] = None  # (queries, seconds) per store call

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
        return SequenceState(text, ids, params, self.token_ids, self.max_len, self.decode, self.encode, self.device)

    def answer_pending(self, states: Sequence[SequenceState]) -> None:
        """Answer every pending query: one `lookup_batch` call per distinct store policy (usually one).

        An unreachable store follows each request's `on_store_error`; any other store error is
        retried query by query, so that it ends only the request(s) whose query raises it.
        """
        groups: dict[tuple, list[SequenceState]] = {}
        for s in states:
            if s.pending is not None:
                groups.setdefault(tuple(sorted(s.params.store_policy().items())), []).append(s)
        for policy, group in groups.items():
            try:
                answers = self._lookup([s.pending for s in group], dict(policy))
            except StoreUnavailable as e:
                for s in group:
                    s.store_failed(f"fact store unavailable: {e}")
                continue
            except Exception as e:  # noqa: BLE001
                if len(group) > 1:
                    for s in group:
                        self.answer_pending([s])
                else:
                    group[0].fail(f"fact store error: {type(e).__name__}: {e}")
                continue
            for s, a in zip(group, answers):
                try:
                    s.answer(a)
                except Exception as e:  # noqa: BLE001
                    s.fail(f"fact store answer unusable: {type(e).__name__}: {e}")

    def _lookup(self, queries: list[tuple[str, str]], policy: dict) -> list:
        import time

        t = time.perf_counter()
        answers = self.store.lookup_batch(queries, **policy)
        if self.lookup_listener is not None:
            self.lookup_listener(len(queries), time.perf_counter() - t)
        return answers

    def forward(self, input_ids, mask, positions, cache, last: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] (float32 or wider) at each row's position `last[row]`, left on the
        model's device: sampling runs there too, and only the chosen ids come back to the host."""
        # Without padding the mask says nothing: skip building the 4D mask.
        mask = None if bool(mask.all()) else mask.to(self.device)
        keep = input_ids.shape[1] - int(last.min())  # the kept positions must reach back to the earliest `last`
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask,
                         position_ids=positions.to(self.device), cache=cache, use_cache=True,
                         logits_to_keep=keep)
        logits = out.logits[:, -keep:]
        logits = logits[torch.arange(len(last), device=self.device), last.to(self.device) - input_ids.shape[1] + keep]
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

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
        waiting = deque(range(len(states)))
        batch = DecodeBatch(self, self.prefill_chunk)
        while waiting or len(batch):
            while waiting and len(batch) < self.max_batch_size:
                i = waiting.popleft()
                batch.add(states[i], i)
            step = batch.step()
            if on_token is not None:
                for r in step.progressed:
                    on_token(r.key, r.state)
        return [s.result() for s in states]
