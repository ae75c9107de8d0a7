"""Retrieval-interleaved generation: the batched KV-cache engine and the re-prefill reference."""
from .engine import Engine, QueueFull, Request
from .params import GenerationParams, ParamsError
from .reference import reference_generate
from .state import GenerationResult, LookupRecord

__all__ = ["Engine", "GenerationParams", "GenerationResult", "LookupRecord", "ParamsError", "QueueFull",
           "Request", "reference_generate"]
