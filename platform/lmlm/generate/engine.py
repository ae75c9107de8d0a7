"""The batched, KV-cache-preserving generation engine with interleaved fact lookups (docs/method.md §6).

The engine owns its requests, as vLLM's EngineCore: `add_request` queues one (FIFO; `QueueFull`
beyond `max_waiting`), `abort` ends one, and each `step()` first drops the aborted requests, then
admits waiting ones while the batch has fewer than `max_batch_size` rows, then runs one
`DecodeBatch` step (batch.py) and returns the rows that progressed and those that finished (an
aborted request finishes with reason "abort"). `generate` is a loop over these. A row whose lookup
was answered feeds the whole injected value in the same forward pass as the other rows' next token;
rows that emit <|db_return|> in the same step are answered by one `store.lookup_batch` call. No
context is ever re-prefilled.

Threads: `add_request(s)`, `abort` and the counts may be called from any thread (a server's event
loop) while one thread calls `step`; everything else belongs to the stepping thread.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import deque
from typing import Callable, Hashable, NamedTuple, Optional, Sequence, Union

import torch

from lmlm.factstore import StoreUnavailable
from lmlm.tokenizer import lookup_token_ids

from .batch import DecodeBatch, Row, StepResult
from .copying import EntityCopier
from .params import GenerationParams, ParamsError
from .state import GenerationResult, SequenceState

Prompt = Union[str, Sequence[int]]
# on_token(prompt_index, state) after each step in which a sequence took tokens (for streaming).
OnToken = Callable[[int, SequenceState], None]


class QueueFull(Exception):
    """More requests would wait than the engine's `max_waiting`."""


class Request(NamedTuple):
    prompt: Prompt                       # text, or token ids
    params: GenerationParams
    key: Hashable                        # the caller's handle, unique among unfinished requests
    ids: Optional[Sequence[int]] = None  # the text's ids, when the caller has them (tokenised once)


class Engine:
    """`Engine(model, tokenizer, store)`; `store` is anything with `lookup_batch(queries, **policy)`."""

    def __init__(self, model, tokenizer, store=None, *, max_batch_size: int = 32, prefill_chunk: int = 256,
                 max_waiting: Optional[int] = None):
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size: must be > 0 (got {max_batch_size})")
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting: must be >= 0 or None (got {max_waiting})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.store = store
        self.max_batch_size, self.prefill_chunk, self.max_waiting = max_batch_size, prefill_chunk, max_waiting
        self.token_ids = lookup_token_ids(tokenizer)
        self.eos_id = self.token_ids.eos
        self.pad_id = self.token_ids.pad
        self.max_len = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.device = next(model.parameters()).device
        self.lookup_ids = torch.tensor(self.token_ids.markers, device=self.device)
        self.lookup_listener: Optional[Callable[[int, float], None]] = None  # (queries, seconds) per store call
        self.batch = DecodeBatch(self, prefill_chunk)
        self._lock = threading.Lock()  # guards the three below
        self._waiting: deque[Row] = deque()
        self._unfinished: dict[Hashable, SequenceState] = {}  # waiting or running
        self._aborts: set = set()      # unfinished keys to end at the next step

    # ---------------------------------------------------------------- helpers shared with the reference
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of a prompt a server accepts: ParamsError (naming `prompt`) when they fill the
        context (`generate` instead ends such a prompt at once, finish reason "context")."""
        ids = self.encode(text)
        if len(ids) >= self.max_len:
            raise ParamsError(f"prompt: {len(ids)} tokens, longer than the context ({self.max_len - 1} at most)")
        return ids

    def new_state(self, prompt: Prompt, params: GenerationParams, ids: Optional[Sequence[int]] = None) -> SequenceState:
        """A sequence for `prompt` (text or ids); `ids`, given with a text, are its ids (not computed again)."""
        if isinstance(prompt, str):
            text, ids = prompt, list(ids) if ids is not None else self.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            text = self.decode(ids)
        if not ids:
            raise ParamsError("prompt: must not be empty")
        if params.use_lookups and self.store is None:
            raise ParamsError("use_lookups: this engine has no fact store; pass use_lookups=False")
        return SequenceState(text, ids, params, self.token_ids, self.max_len, self.decode, self.encode, self.device,
                             self.copier if params.copy_entities else None)

    @functools.cached_property
    def copier(self) -> EntityCopier:
        """The tokenizer's byte tables for copied entities, built on the first request that asks."""
        return EntityCopier(self.tokenizer)

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

    # ---------------------------------------------------------------- requests and steps
    def add_request(self, prompt: Prompt, params: GenerationParams, key: Hashable,
                    ids: Optional[Sequence[int]] = None) -> SequenceState:
        """Queue one request; it joins the batch at a later `step` (see `add_requests`)."""
        return self.add_requests([Request(prompt, params, key, ids)])[0]

    def add_requests(self, requests: Sequence[Request]) -> list[SequenceState]:
        """Queue all of `requests` (in order) or none: ParamsError for a bad prompt, QueueFull when
        more than `max_waiting` would wait, ValueError for a key already unfinished."""
        states = [self.new_state(r.prompt, r.params, r.ids) for r in requests]
        with self._lock:
            if self.max_waiting is not None and len(self._waiting) + len(requests) > self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (at most {self.max_waiting})")
            keys = [r.key for r in requests]
            if len(set(keys)) < len(keys) or any(k in self._unfinished for k in keys):
                raise ValueError("key: each unfinished request needs its own key")
            for r, s in zip(requests, states):
                self._waiting.append(Row(s, r.key))
                self._unfinished[r.key] = s
        return states

    def abort(self, key: Hashable) -> None:
        """End the request `key` at the next step, waiting or running (an unknown key: nothing)."""
        with self._lock:
            if key in self._unfinished:
                self._aborts.add(key)

    def has_unfinished(self) -> bool:
        return bool(self._unfinished)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.batch)

    def waiting_keys(self) -> set:
        with self._lock:
            return {r.key for r in self._waiting}

    def step(self) -> StepResult:
        """Drop aborted requests, admit waiting ones (FIFO) while the batch has room, run one batch
        step. `finished` holds the aborted requests too; `stepped` the rows of this step's pass."""
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            dropped = [r for r in self._waiting if r.key in aborts]
            if dropped:
                self._waiting = deque(r for r in self._waiting if r.key not in aborts)
            gone = [r for r in self.batch.rows if r.key in aborts]
            room = self.max_batch_size - len(self.batch) + len(gone)
            admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self.batch.remove(gone)
        for r in dropped + gone:
            if not r.state.done:  # one failed since its last step keeps its own reason
                r.state.fail("aborted", "abort")
        for r in admit:
            self.batch.add(r.state, r.key)
        out = self.batch.step()
        out.finished[:0] = dropped + gone
        with self._lock:
            for r in out.finished:
                self._unfinished.pop(r.key, None)
                self._aborts.discard(r.key)
        return out

    def reset(self, waiting: bool = False) -> None:
        """Forget every running request (with `waiting`, every waiting one too) without finishing it:
        for a caller that recovers from an error that may have left the batch half-updated and
        answers those requests itself."""
        with self._lock:
            if waiting:
                self._waiting.clear()
            kept = {r.key for r in self._waiting}
            self._unfinished = {k: s for k, s in self._unfinished.items() if k in kept}
            self._aborts &= kept
        self.batch.remove(list(self.batch.rows))

    # ---------------------------------------------------------------- offline generation
    def generate(self, prompts: Sequence[Prompt], params: Union[GenerationParams, Sequence[GenerationParams], None] = None,
                 on_token: Optional[OnToken] = None) -> list[GenerationResult]:
        """Generate for every prompt; `params` is one for all or one per prompt. Needs the engine to
        itself (no unfinished requests); `max_waiting` bounds it too."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompts, got one string")
        plist = list(params) if isinstance(params, (list, tuple)) else [params or GenerationParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"params: {len(plist)} given for {len(prompts)} prompts")
        if self.has_unfinished():
            raise RuntimeError("generate: the engine has unfinished requests (another caller steps it)")
        states = self.add_requests([Request(p, pp, i) for i, (p, pp) in enumerate(zip(prompts, plist))])
        try:
            while self.has_unfinished():
                step = self.step()
                if on_token is not None:
                    for r in step.progressed:
                        on_token(r.key, r.state)
        except BaseException:
            self.reset(waiting=True)
            raise
        return [s.result() for s in states]
