"""Retrieval-interleaved generation: the batched KV-cache engine and the re-prefill reference."""
from .engine import Engine
from .params import GenerationParams, ParamsError
from .reference import reference_generate
from .state import GenerationResult, LookupRecord, lookup_token_ids

__all__ = ["Engine", "GenerationParams", "GenerationResult", "LookupRecord", "ParamsError",
           "lookup_token_ids", "reference_generate"]
