"""HTTP request bodies: strict pydantic models that hold every request limit.

Wrong types and unknown fields are errors naming the field. Validated with a `Caps` context
(`Model.model_validate_json(body, context=caps)`), a body is also held to the server's limits;
without one, only its types are checked. A validator's message follows the field's name in the
400 (or stands alone when it names the field itself). The ranges of the generation settings
themselves are `GenerationParams`'s (`to_params`, ParamsError naming the field).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from lmlm.factstore.config import Fallback, check_thresholds
from lmlm.generate.params import GenerationParams

from .config import RequestLimits

# Fields passed to GenerationParams under the same name when a request sets them.
PASSED = ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "use_lookups", "copy_entities",
          "max_lookups", "max_query_tokens", "fallback", "entity_threshold", "relation_threshold", "cosine_threshold")


@dataclass(frozen=True)
class Caps:
    """What a body is held to beyond its types: the server's limits, its model and its store."""

    limits: RequestLimits
    max_tokens: int                   # the largest max_tokens (ServeConfig.max_tokens_limit)
    vocab_size: int                   # logit_bias token ids lie below it
    fuzzy_mode: Optional[str] = None  # the store's: a threshold it does not compare against is refused


def _caps(info: ValidationInfo) -> Optional[Caps]:
    return info.context if isinstance(info.context, Caps) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerationFields(_Strict):
    max_tokens: Optional[int] = None          # text tokens (lookup blocks not counted)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None   # a list once validated
    repetition_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None   # OpenAI style: token id (as a string) -> bias
    use_lookups: Optional[bool] = None
    copy_entities: Optional[bool] = None      # lookup entities spelled as in the text (lmlm.generate.copying)
    max_lookups: Optional[int] = None
    max_query_tokens: Optional[int] = None
    fallback: Optional[Fallback] = None
    entity_threshold: Optional[float] = None     # two_stage fuzzy lookups (see lmlm.factstore.config)
    relation_threshold: Optional[float] = None
    cosine_threshold: Optional[float] = None     # reference (single-stage) fuzzy lookups
    allow_lookups_disabled: Optional[bool] = None   # store unreachable: answer without lookups, not 503

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v, info: ValidationInfo):
        caps = _caps(info)
        if v is not None and caps is not None and not 0 < v <= caps.max_tokens:
            raise ValueError(f"must be between 1 and {caps.max_tokens} (got {v})")
        return v

    @field_validator("max_lookups", "max_query_tokens")
    @classmethod
    def _server_cap(cls, v, info: ValidationInfo):
        caps = _caps(info)
        cap = None if caps is None else getattr(caps.limits, info.field_name)
        if v is not None and cap is not None and v > cap:
            raise ValueError(f"at most {cap} on this server (got {v})")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v, info: ValidationInfo):
        if v is None:
            return v
        stop = [v] if isinstance(v, str) else list(v)
        lim = getattr(_caps(info), "limits", None)
        if lim is not None and len(stop) > lim.max_stop_strings:
            raise ValueError(f"at most {lim.max_stop_strings} stop strings (got {len(stop)})")
        if lim is not None and any(len(s) > lim.max_stop_chars for s in stop):
            raise ValueError(f"each stop string has at most {lim.max_stop_chars} characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v, info: ValidationInfo):
        caps = _caps(info)
        if not v:
            return v
        if caps is not None and len(v) > caps.limits.max_logit_bias:
            raise ValueError(f"at most {caps.limits.max_logit_bias} entries (got {len(v)})")
        try:
            ids = [int(k) for k in v]
        except ValueError:
            raise ValueError("keys must be token ids") from None
        if caps is not None and any(not 0 <= k < caps.vocab_size for k in ids):
            raise ValueError(f"token ids must lie in [0, {caps.vocab_size})")
        return v

    @field_validator("entity_threshold", "relation_threshold", "cosine_threshold")
    @classmethod
    def _threshold(cls, v, info: ValidationInfo):
        mode = getattr(_caps(info), "fuzzy_mode", None)
        if v is not None and mode is not None:
            check_thresholds(mode, {info.field_name: v})  # its message names the field
        return v

    def to_params(self, defaults: dict) -> GenerationParams:
        """The request's settings over the server's `defaults` (ParamsError names a bad value's field)."""
        d = dict(defaults)
        d.update({name: getattr(self, name) for name in PASSED if getattr(self, name) is not None})
        if self.max_tokens is not None:
            d["max_new_tokens"] = self.max_tokens
        if self.stop is not None:
            d["stop"] = list(self.stop)
        if self.allow_lookups_disabled:
            d["on_store_error"] = "disable_lookups"
        if self.logit_bias:
            d["logit_bias"] = {int(k): b for k, b in self.logit_bias.items()}
        return GenerationParams(**d)


def _nonempty(prompt: str) -> str:
    if not prompt:
        raise ValueError("must not be empty")
    return prompt


class CompletionRequest(GenerationFields):
    stream: bool = False                      # before `prompt`: its validator reads it
    prompt: Union[str, list[str]]
    model: Optional[str] = None
    user: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v, info: ValidationInfo):
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("must not be an empty list")
        caps = _caps(info)
        if caps is not None and len(prompts) > caps.limits.max_prompts:
            raise ValueError(f"at most {caps.limits.max_prompts} prompts per request (got {len(prompts)})")
        if info.data.get("stream") and len(prompts) != 1:
            raise ValueError("streaming takes one prompt")
        for p in prompts:
            _nonempty(p)
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class GenerateRequest(GenerationFields):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        return _nonempty(v)


class Fact(_Strict):
    entity: str
    relation: str
    value: str


class FactsPut(_Strict):
    facts: list[Fact]
    doc_id: Optional[str] = None
    annotator: str = "api"


class FactsDelete(_Strict):
    entity: str
    relation: Optional[str] = None
    value: Optional[str] = None
