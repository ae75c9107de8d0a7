"""One running batch over one KV cache; sequences join and leave between steps (continuous batching).

Each row feeds, per step, the ids of its sequence that the cache does not hold yet: a new row its
prompt (at most `prefill_chunk` ids a step), a decoding row its last token, a row whose lookup was
just answered its last token plus the whole `" " + value + "<|db_end|>"`. Rows are right-padded
to the step's width; pads are masked out of the cache, so every row sees exactly its own ids at
positions 0..n-1, as the re-prefill reference does. Rows are isolated: a failure while choosing,
recording or looking up a row's token ends that row only (`SequenceState.fail`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from .kvcache import add_rows, drop_columns, keep_rows, new_cache
from .sampling import choose_tokens
from .state import SequenceState


class Decoder(Protocol):
    """What a batch needs of its engine (`lmlm.generate.engine.Engine`)."""

    model: Any               # a transformers causal LM (its config sizes the cache)
    pad_id: int
    eos_id: int
    lookup_ids: torch.Tensor  # the four lookup tokens

    device: torch.device     # where the logits stay (the batch's `seen` lives there too)

    def forward(self, input_ids, mask, positions, cache, last: torch.Tensor) -> torch.Tensor: ...

    def answer_pending(self, states: Sequence[SequenceState]) -> None: ...


@dataclass
class Row:
    state: SequenceState
    key: Any                 # the caller's handle (prompt index, request)
    fed: int = 0             # ids of state.ids already in the cache
    marked: int = 0          # ids of state.ids already marked in the batch's `seen`
    new_tokens: list[int] = field(default_factory=list)  # taken in the last step


@dataclass
class StepResult:
    progressed: list[Row]    # rows that took tokens this step (finished ones included)
    finished: list[Row]      # rows that left the batch (done, failed or removed)
    fed_tokens: int = 0      # ids fed to the model this step (padding not counted)
    stepped: list[Row] = field(default_factory=list)  # the rows of this step's forward pass


class DecodeBatch:
    def __init__(self, engine: Decoder, prefill_chunk: int = 256):
        if prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk: must be > 0 (got {prefill_chunk})")
        self.engine, self.prefill_chunk = engine, prefill_chunk
        self.vocab = engine.model.config.vocab_size
        self.rows: list[Row] = []
        self._reset()

    def _reset(self) -> None:
        self.rows = []
        self.cache = new_cache(self.engine.model.config)
        self.mask = torch.zeros((0, 0), dtype=torch.long)     # [rows, cache columns]: 1 = a real id of the row
        self.seen = torch.zeros((0, self.vocab), dtype=torch.bool, device=self.engine.device)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, state: SequenceState, key: Any) -> Row:
        """A new row; its prompt is prefilled by the next steps, beside the other rows' tokens."""
        row = Row(state, key)
        if not self.rows:
            self._reset()
        add_rows(self.cache, 1)
        self.mask = torch.cat([self.mask, self.mask.new_zeros((1, self.mask.shape[1]))])
        self.seen = torch.cat([self.seen, self.seen.new_zeros((1, self.vocab))])
        self.rows.append(row)
        return row

    def remove(self, rows: list[Row]) -> None:
        gone = {id(r) for r in rows}
        self._keep([i for i, r in enumerate(self.rows) if id(r) not in gone])

    def _keep(self, idx: list[int]) -> None:
        if len(idx) == len(self.rows):
            return
        if not idx:
            self._reset()
            return
        sel = torch.tensor(idx)
        keep_rows(self.cache, sel)
        self.rows = [self.rows[i] for i in idx]
        self.mask, self.seen = self.mask[sel], self.seen[sel]
        used = self.mask.any(0).nonzero()
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:  # columns no live row uses any more (padding, retired rows' ids)
            drop_columns(self.cache, first)
            self.mask = self.mask[:, first:]

    # ---------------------------------------------------------------- one step
    @torch.inference_mode()
    def step(self) -> StepResult:
        for r in self.rows:
            r.new_tokens = []
        self._settle(self.rows)  # rows added with a pending lookup (a prompt ending in <|db_return|>)
        out = StepResult([], [])
        self._retire(out)
        if not self.rows:
            return out
        out.stepped = list(self.rows)
        try:
            logits, out.fed_tokens = self._forward()
        except Exception as e:  # noqa: BLE001 — the model failed for the whole batch: end its rows, keep serving
            for r in self.rows:
                r.state.fail(f"generation failed: {type(e).__name__}: {e}")
            out.finished += self.rows
            self._reset()
            return out
        ready = [i for i, r in enumerate(self.rows) if r.fed == len(r.state.ids)]
        if ready:
            self._choose(ready, logits[torch.tensor(ready, device=logits.device)])
            self._settle([self.rows[i] for i in ready])
        out.progressed = [r for r in self.rows if r.new_tokens]
        self._retire(out)
        return out

    def _forward(self) -> tuple[torch.Tensor, int]:
        feeds = [r.state.ids[r.fed : r.fed + self.prefill_chunk] for r in self.rows]
        width = max(len(f) for f in feeds)
        ids = torch.full((len(feeds), width), self.engine.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(feeds), width), dtype=torch.long)
        pos = torch.zeros((len(feeds), width), dtype=torch.long)
        last = torch.zeros(len(feeds), dtype=torch.long)
        for i, (r, f) in enumerate(zip(self.rows, feeds)):
            n = len(f)
            ids[i, :n] = torch.tensor(f)
            new_mask[i, :n] = 1
            # Pads sit after the row's ids at its last position (masked out; their outputs unused).
            pos[i] = torch.arange(r.fed, r.fed + width).clamp(max=r.fed + max(n, 1) - 1)
            last[i] = max(n, 1) - 1
            r.fed += n
        mask = torch.cat([self.mask, new_mask], dim=1)
        logits = self.engine.forward(ids, mask, pos, self.cache, last)
        self.mask = mask
        return logits, int(new_mask.sum())

    def _choose(self, idx: list[int], logits: torch.Tensor) -> None:
        rows = [self.rows[i] for i in idx]
        for i, r in zip(idx, rows):
            self.seen[i, r.state.ids[r.marked :]] = True
            r.marked = len(r.state.ids)
        seen = self.seen[torch.tensor(idx, device=self.seen.device)]
        eng = self.engine
        states = [r.state for r in rows]
        try:
            toks = choose_tokens(logits, seen, states, eng.lookup_ids, eng.eos_id).tolist()  # the step's one host copy
        except Exception:  # noqa: BLE001 — find the row(s) at fault, one at a time
            toks = []
            for i, s in enumerate(states):
                try:
                    toks.append(int(choose_tokens(logits[i : i + 1], seen[i : i + 1], [s], eng.lookup_ids, eng.eos_id)[0]))
                except Exception as e:  # noqa: BLE001
                    s.fail(f"sampling failed: {type(e).__name__}: {e}")
                    toks.append(None)
        for r, t in zip(rows, toks):
            if t is None:
                continue
            try:
                r.state.push(t)
                r.new_tokens.append(t)
            except Exception as e:  # noqa: BLE001
                r.state.fail(f"generation failed: {type(e).__name__}: {e}")

    def _settle(self, rows: list[Row]) -> None:
        """Answer the rows' pending lookups (one store call) and take the injected values at once."""
        self.engine.answer_pending([r.state for r in rows if r.state.pending is not None and not r.state.done])
        for r in rows:
            if r.state.done:
                continue
            try:
                r.new_tokens += r.state.take_injected()
            except Exception as e:  # noqa: BLE001
                r.state.fail(f"generation failed: {type(e).__name__}: {e}")

    def _retire(self, out: StepResult) -> None:
        done = [r for r in self.rows if r.state.done]
        if done:
            out.finished += done
            self.remove(done)
