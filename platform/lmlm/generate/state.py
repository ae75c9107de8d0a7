"""One sequence's lookup state machine, shared by the batched engine and the re-prefill reference.

Modes: TEXT (ordinary text), ENTITY (after <|db_entity|>), RELATION (after <|db_relationship|>).
Lookup tokens are constrained by mode (a block is always well formed), <|db_return|> yields a
pending query, and the answer is queued as forced tokens `" " + value + "<|db_end|>"` that the
caller takes at once (`take_injected`). A block needs a non-empty entity and relation; a query
longer than `max_entity_chars` (or empty once cleaned) is answered unknown without a store call.
Both decoders differ only in how they run the model.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from lmlm.format import SPECIAL_TOKENS, UNKNOWN, Triple, clean_field, strip_lookups
from lmlm.tokenizer import LookupTokenIds

from .params import GenerationParams

TEXT, ENTITY, RELATION, AWAIT = "text", "entity", "relation", "await"
NEG_INF = float("-inf")


@dataclass
class LookupRecord:
    """One lookup made during generation: the query and what the store answered."""

    entity: str
    relation: str
    value: str                      # the text injected after <|db_return|>
    triple: Optional[Triple]        # the stored triple that answered (None: fallback / no answer)
    score: Optional[float]
    stage: str                      # exact | entity | relation | fallback | none | unavailable | skipped
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["triple"] = asdict(self.triple) if self.triple is not None else None
        return d


@dataclass
class GenerationResult:
    """One prompt's output. Texts cover the generated part only (not the prompt)."""

    prompt: str
    display_text: str               # lookups removed (lmlm.format.strip_lookups), stop string cut
    raw_text: str                   # with the lookup blocks, as generated
    lookups: list[LookupRecord]
    token_ids: list[int]            # every new id: generated, forced and injected
    n_prompt_tokens: int
    n_text_tokens: int              # counted against max_new_tokens
    n_lookup_tokens: int            # ids inside lookup blocks (query, markers, injected value)
    finish_reason: str              # eos | length | stop | context | store_unavailable | error | abort
    lookups_disabled: bool = False  # the store failed and the request allowed going on without it
    error: Optional[str] = None

    @property
    def n_generated_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "lookups"}
        d["lookups"] = [lk.to_dict() for lk in self.lookups]
        d["n_generated_tokens"] = self.n_generated_tokens
        return d


def sanitize_value(value: str) -> str:
    """A stored value as injected text: no lookup tokens inside, whitespace collapsed."""
    for tok in SPECIAL_TOKENS:
        value = value.replace(tok, " ")
    return " ".join(value.split())


class SequenceState:
    def __init__(self, prompt: str, prompt_ids: list[int], params: GenerationParams, token_ids: LookupTokenIds,
                 max_len: int, decode: Callable[[list[int]], str], encode: Callable[[str], list[int]],
                 device: str | torch.device = "cpu", copier: Optional[Any] = None):
        self.prompt, self.params, self.max_len = prompt, params, max_len
        self.decode, self.encode = decode, encode
        self.ent, self.rel, self.ret, self.end = token_ids.markers
        self.eos_id = token_ids.eos
        self.ids = list(prompt_ids)
        self.n_prompt = len(prompt_ids)
        self.forced: deque[int] = deque()
        self.mode = TEXT
        self.query_start = -1           # index in ids of the open block's <|db_entity|>
        self.rel_pos = -1               # index of its <|db_relationship|>
        self.n_text = self.n_lookup_tokens = self.n_lookups = 0
        self.lookups: list[LookupRecord] = []
        self.done = False
        self.finish_reason = ""
        self.error: Optional[str] = None
        self.lookups_disabled = False
        self.pending: Optional[tuple[str, str]] = None
        self.copier = copier if params.copy_entities and params.use_lookups else None  # an EntityCopier
        self.copy_source = None         # what an entity may copy (copying.CopySource of the prompt)
        self.generator: Optional[torch.Generator] = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)  # on the logits' device: draws stay there
            self.generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ()).item()))
        self._init_mode_from_prompt()
        self.prompt_block_start = self.query_start  # the prompt's own open block, if it ends in one
        if len(self.ids) >= max_len:
            self._finish("context")

    def _init_mode_from_prompt(self) -> None:
        """A prompt may end inside a block (cloze prompts end with <|db_entity|>): resume there."""
        marks = [i for i, t in enumerate(self.ids) if t in (self.ent, self.rel, self.ret, self.end)]
        tail = []  # the markers of the prompt's last block, if it is still open
        for i in reversed(marks):
            tail.insert(0, i)
            if self.ids[i] in (self.ent, self.end):
                break
        kinds = [self.ids[i] for i in tail]
        if kinds == [self.ent]:
            self.mode, self.query_start = ENTITY, tail[0]
            self._fix_copy_context()
        elif kinds == [self.ent, self.rel]:
            self.mode, self.query_start, self.rel_pos = RELATION, tail[0], tail[1]
        elif kinds == [self.ent, self.rel, self.ret] and tail[2] == len(self.ids) - 1:
            self.query_start, self.rel_pos = tail[0], tail[1]
            self._open_lookup()

    # ---------------------------------------------------------------- logits constraints
    def lookup_bias(self) -> list[float]:
        """Additive bias on [entity, relationship, return, end] for this step."""
        p = self.params
        if not p.use_lookups or self.lookups_disabled:
            return [NEG_INF] * 4
        if self.mode == TEXT:
            ent = p.entity_bias if self.n_lookups < p.max_lookups else NEG_INF
            return [ent, NEG_INF, NEG_INF, NEG_INF]
        # The next marker only once the entity (relation) has a token: no empty fields reach the store.
        if self.mode == ENTITY:
            return [NEG_INF, p.lookup_bias if len(self.ids) - 1 > self.query_start else NEG_INF, NEG_INF, NEG_INF]
        return [NEG_INF, NEG_INF, p.lookup_bias if len(self.ids) - 1 > self.rel_pos else NEG_INF, NEG_INF]

    def _fix_copy_context(self) -> None:
        """The prompt: what the user wrote, never the model's own prose (a name it misspelt there is
        not copied) nor a value the store returned (a spouse's name is no subject of the prompt)."""
        if self.copier is not None:
            from .copying import copy_source

            self.copy_source = copy_source(self.copier.text(self.ids[: min(self.query_start, self.n_prompt)]))

    def entity_constraint(self) -> Optional[tuple[list[int], bool]]:
        """With copy_entities, inside an entity: (the ids that keep it a copy of a name in the prompt,
        whether the block may close here); None: no constraint this step."""
        if self.copier is None or self.mode != ENTITY or self.forced:
            return None
        ids, may_end = self.copier.allowed(self.copy_source, self.copier.text(self.ids[self.query_start + 1:]))
        return (ids, may_end) if ids or may_end else None  # nothing in the text fits: the model decides

    def next_forced(self) -> Optional[int]:
        return self.forced[0] if self.forced else None

    # ---------------------------------------------------------------- transitions
    def push(self, tok: int) -> bool:
        """Record the next token; True when it opened a lookup (`self.pending` holds the query)."""
        assert not self.done and self.pending is None
        injected = self.mode == TEXT and bool(self.forced)  # value tokens and the closing <|db_end|>
        if self.forced:
            assert tok == self.forced[0], "a forced token was not taken"
            self.forced.popleft()
        self.ids.append(tok)
        if tok == self.eos_id and not self.params.ignore_eos:
            self._finish("eos")
            return False
        opened = False
        if self.mode == TEXT:
            if tok == self.ent:
                self.mode, self.query_start = ENTITY, len(self.ids) - 1
                self._fix_copy_context()
                self.n_lookups += 1
                self.n_lookup_tokens += 1
            elif injected:
                self.n_lookup_tokens += 1
            else:
                self.n_text += 1
                if self.params.stop and self._stop_hit():
                    self._finish("stop")
                elif self.n_text >= self.params.max_new_tokens:
                    self._finish("length")
        else:
            self.n_lookup_tokens += 1
            if self.mode == ENTITY and tok == self.rel:
                self.mode, self.rel_pos = RELATION, len(self.ids) - 1
            elif self.mode == RELATION and tok == self.ret:
                self._open_lookup()
                opened = True
            elif len(self.ids) - 1 - (self.query_start if self.mode == ENTITY else self.rel_pos) >= self.params.max_query_tokens:
                self.forced.append(self.rel if self.mode == ENTITY else self.ret)
        if not self.done and len(self.ids) >= self.max_len:
            self._finish("context")
        return opened

    def _open_lookup(self) -> None:
        q = self.ids
        entity = clean_field(self.decode(q[self.query_start + 1 : self.rel_pos]))
        relation = clean_field(self.decode(q[self.rel_pos + 1 : len(q) - 1]))
        self.mode, self.pending = AWAIT, (entity, relation)
        limit = self.params.max_entity_chars
        if not entity or not relation or len(entity) > limit or len(relation) > limit:
            self._inject(LookupRecord(entity, relation, UNKNOWN, None, None, "skipped", {}))

    def take_injected(self) -> list[int]:
        """Push the queued `" " + value + "<|db_end|>"` tokens at once; returns them."""
        out = []
        while self.forced and self.mode == TEXT and not self.done:
            out.append(self.forced[0])
            self.push(self.forced[0])
        return out

    def answer(self, answer: Any) -> None:
        """Queue the answer (an `Answer` or None) as forced tokens; the block closes with <|db_end|>."""
        entity, relation = self.pending
        if answer is None:
            rec = LookupRecord(entity, relation, UNKNOWN, None, None, "none", {})
        else:
            rec = LookupRecord(entity, relation, sanitize_value(answer.value) or UNKNOWN, answer.triple,
                               None if answer.score is None else float(answer.score), answer.stage,
                               dict(answer.provenance or {}))
        self._inject(rec)

    def store_failed(self, message: str) -> None:
        """The store is unreachable: stop with an error, or close the block and go on without lookups."""
        if self.params.on_store_error == "fail":
            self.fail(message, "store_unavailable")
            return
        self.lookups_disabled = True
        entity, relation = self.pending
        self._inject(LookupRecord(entity, relation, UNKNOWN, None, None, "unavailable", {}))

    def fail(self, message: str, reason: str = "error") -> None:
        """End this sequence only, with its own error (the rest of its batch goes on)."""
        self.pending = None
        self.error = message
        self._finish(reason)

    def _inject(self, rec: LookupRecord) -> None:
        self.lookups.append(rec)
        self.forced.extend(self.encode(" " + rec.value) + [self.end])
        self.pending = None
        self.mode = TEXT

    def _stop_hit(self) -> bool:
        text = self.display_text(cut=False)
        return any(s in text for s in self.params.stop)

    def _finish(self, reason: str) -> None:
        self.done, self.finish_reason = True, reason
        self.forced.clear()

    # ---------------------------------------------------------------- output
    def _block_prefix(self) -> str:
        """The prompt's open block (from its <|db_entity|>), so that display stripping sees it whole."""
        if self.prompt_block_start >= 0:
            return self.decode(self.ids[self.prompt_block_start : self.n_prompt])
        return ""

    def display_text(self, cut: bool = True) -> str:
        new = self.ids[self.n_prompt :]
        if new and new[-1] == self.eos_id and not self.params.ignore_eos:
            new = new[:-1]
        prefix = self._block_prefix()
        text = strip_lookups(prefix + self.decode(new))
        hits = [text.find(s) for s in self.params.stop if s in text] if cut else []
        if hits:
            text = text[: min(hits)]
        return text

    def result(self) -> GenerationResult:
        new = self.ids[self.n_prompt :]
        raw_ids = new[:-1] if new and new[-1] == self.eos_id and self.finish_reason == "eos" else new
        raw = self.decode(raw_ids)
        if self.finish_reason == "stop":
            hits = [raw.rfind(s) for s in self.params.stop if s in raw]
            if hits:
                raw = raw[: max(hits)]
        return GenerationResult(self.prompt, self.display_text(), raw, list(self.lookups), new, self.n_prompt,
                                self.n_text, self.n_lookup_tokens, self.finish_reason, self.lookups_disabled,
                                self.error)


__all__ = ["GenerationResult", "LookupRecord", "SequenceState", "sanitize_value"]
