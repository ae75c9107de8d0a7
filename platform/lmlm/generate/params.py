"""Per-request generation settings (one dataclass, loadable through `lmlm.config`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from lmlm.factstore.config import ALL_THRESHOLDS as STORE_THRESHOLDS
from lmlm.factstore.config import FALLBACKS, Fallback


class ParamsError(ValueError):
    """A generation setting out of range; the message starts with the field's name."""


MAX_SEED = 2**63 - 1          # torch.Generator.manual_seed takes at most 64 bits; JSON clients 63
MIN_TEMPERATURE = 0.01        # below it x / T overflows to inf and sampling yields NaN
MAX_BIAS = 100.0              # |logit bias|: +-100 already forces or bans a token (OpenAI's range)


@dataclass
class GenerationParams:
    max_new_tokens: int = 256            # text tokens to generate; lookup blocks do not count
    temperature: float = 0.0             # 0 = greedy; > 0 samples
    top_p: float = 1.0                   # nucleus sampling mass (1 = off)
    top_k: int = 0                       # keep the k most likely tokens (0 = off)
    seed: Optional[int] = None           # per-sequence RNG seed: same seed, same sample
    repetition_penalty: float = 1.2      # HF-style penalty over every id already in the sequence
    entity_bias: float = 4.0             # logit bias on <|db_entity|> (reference: +4)
    lookup_bias: float = 2.0             # logit bias on the other three lookup tokens (reference: +2)
    logit_bias: dict[int, float] = field(default_factory=dict)  # extra bias by token id
    max_lookups: int = 5                 # lookups per sequence; then <|db_entity|> is banned
    max_query_tokens: int = 24           # entity (and relation) length cap; then the next marker is forced
    max_entity_chars: int = 100          # a longer entity (or relation) is answered unknown, no store call
    stop: list[str] = field(default_factory=list)  # stop strings, searched in the display text
    use_lookups: bool = True             # False bans the four lookup tokens (database-off ablation)
    copy_entities: bool = False          # a lookup's entity must be spelled as the text before it spells it
    fallback: Optional[Fallback] = None  # None: the store's default
    # fuzzy-match thresholds, each None for the store's default; the store refuses one its mode does not use
    entity_threshold: Optional[float] = None    # two_stage: least entity similarity
    relation_threshold: Optional[float] = None  # two_stage: least relation-label cosine
    cosine_threshold: Optional[float] = None    # reference: least cosine of "{entity} {relation}" to a key
    on_store_error: Literal["fail", "disable_lookups"] = "fail"  # store unreachable: fail or go on without
    ignore_eos: bool = False             # keep generating past EOS (benchmarks of fixed length)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ParamsError(f"{name}: {what} (got {getattr(self, name)!r})")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def is_bias(v) -> bool:
            return is_num(v) and abs(v) <= MAX_BIAS

        need(is_int(self.max_new_tokens) and self.max_new_tokens > 0, "max_new_tokens", "must be an integer > 0")
        need(is_num(self.temperature) and (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE), "temperature",
             f"must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}")
        need(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be a number in (0, 1]")
        need(is_int(self.top_k) and self.top_k >= 0, "top_k", "must be an integer >= 0")
        need(self.seed is None or (is_int(self.seed) and 0 <= self.seed <= MAX_SEED), "seed",
             f"must be an integer in [0, {MAX_SEED}] or null")
        need(is_num(self.repetition_penalty) and 0.01 <= self.repetition_penalty <= 100, "repetition_penalty",
             "must be a number in [0.01, 100]")
        need(is_bias(self.entity_bias), "entity_bias", f"must be a number in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        need(is_bias(self.lookup_bias), "lookup_bias", f"must be a number in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        need(isinstance(self.logit_bias, dict) and all(is_int(k) and k >= 0 and is_bias(v) for k, v in self.logit_bias.items()),
             "logit_bias", f"must map token ids (integers >= 0) to numbers in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        need(is_int(self.max_lookups) and self.max_lookups >= 0, "max_lookups", "must be an integer >= 0")
        need(is_int(self.max_query_tokens) and self.max_query_tokens > 0, "max_query_tokens", "must be an integer > 0")
        need(is_int(self.max_entity_chars) and self.max_entity_chars > 0, "max_entity_chars", "must be an integer > 0")
        need(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop), "stop",
             "must be a list of non-empty strings")
        need(isinstance(self.use_lookups, bool), "use_lookups", "must be true or false")
        need(isinstance(self.copy_entities, bool), "copy_entities", "must be true or false")
        need(self.fallback is None or self.fallback in FALLBACKS, "fallback", f"must be one of {list(FALLBACKS)} or null")
        for name in STORE_THRESHOLDS:
            v = getattr(self, name)
            need(v is None or (is_num(v) and 0 <= v <= 1), name, "must be a number in [0, 1] or null")
        need(self.on_store_error in ("fail", "disable_lookups"), "on_store_error", "must be 'fail' or 'disable_lookups'")
        need(isinstance(self.ignore_eos, bool), "ignore_eos", "must be true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def store_policy(self) -> dict:
        """Keyword arguments for `store.lookup_batch`: only the ones the request sets."""
        policy = {}
        if self.fallback is not None:
            policy["fallback"] = self.fallback
        for name in STORE_THRESHOLDS:
            if getattr(self, name) is not None:
                policy[name] = float(getattr(self, name))
        return policy
