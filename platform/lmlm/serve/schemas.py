"""HTTP request bodies (strict: wrong types and unknown fields are 400s naming the field)."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict

from lmlm.factstore.config import Fallback


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerationFields(_Strict):
    max_tokens: Optional[int] = None          # text tokens (lookup blocks not counted)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    repetition_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None   # OpenAI style: token id (as a string) -> bias
    use_lookups: Optional[bool] = None
    max_lookups: Optional[int] = None
    max_query_tokens: Optional[int] = None
    fallback: Optional[Fallback] = None
    entity_threshold: Optional[float] = None     # two_stage fuzzy lookups (see lmlm.factstore.config)
    relation_threshold: Optional[float] = None
    cosine_threshold: Optional[float] = None     # reference (single-stage) fuzzy lookups
    allow_lookups_disabled: Optional[bool] = None   # store unreachable: answer without lookups, not 503


class CompletionRequest(GenerationFields):
    prompt: Union[str, list[str]]
    model: Optional[str] = None
    stream: bool = False
    user: Optional[str] = None


class GenerateRequest(GenerationFields):
    prompt: str


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
