"""`ServeConfig`: the settings of the LMLM Serve app (the `args` of serve/config.yaml, `lmlm serve --set`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmlm.factstore.config import FactStoreConfig

EXPOSURES = ("none", "citations", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
Exposure = Literal["none", "citations", "full"]


@dataclass
class RequestLimits:
    max_body_bytes: int = 1_000_000       # larger request bodies get 413
    max_prompts: int = 16                 # prompts in one completions request
    max_stop_strings: int = 4             # stop strings per request
    max_stop_chars: int = 64              # characters in one stop string
    max_logit_bias: int = 300             # logit_bias entries per request
    max_lookups: int = 16                 # largest max_lookups a request may ask for
    max_query_tokens: int = 64            # largest max_query_tokens a request may ask for
    max_entity_chars: int = 100           # a longer generated entity/relation is answered unknown, no store call

    def __post_init__(self) -> None:
        for name, v in vars(self).items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"limits.{name}: must be an integer > 0 (got {v!r})")


@dataclass
class ServeConfig:
    model_path: str = "runs/demo/model"   # HF checkpoint dir (model + tokenizer) written by training
    tokenizer_path: str = ""              # "" = model_path
    model_name: str = "lmlm"              # the id /v1/models lists and completions echo
    device: str = "auto"                  # auto: the replica's GPU when it has one, else the CPU | cpu | cuda | cuda:N
    dtype: str = "auto"                   # auto: bfloat16 on a bf16 GPU, float32 on CPUs (lmlm.precision) | float32 | bfloat16 | float64
    store: FactStoreConfig = field(default_factory=FactStoreConfig)  # url None: a private Redis 8
    admin_token: str = ""                 # bearer token for /v1/facts and full lookup traces; "" = env LMLM_ADMIN_TOKEN
    exposure: Exposure = "citations"      # lookup trace for callers without the admin token: none | citations | full
    default_max_tokens: int = 64          # max_tokens when a request gives none
    max_tokens_limit: int = 1024          # largest max_tokens accepted
    max_batch_size: int = 16              # rows the scheduler decodes together
    max_queue: int = 64                   # requests waiting for a row; beyond it 503 with Retry-After
    prefill_chunk: int = 256              # prompt ids a joining row feeds per step
    request_timeout_s: float = 120.0      # bound on one request's generation (504 after; its row leaves)
    torch_threads: int = 1                # intra-op threads per replica (more only with free cores)
    limits: RequestLimits = field(default_factory=RequestLimits)  # request caps: 400 (413 for the body) naming the field
    defaults: dict[str, Any] = field(default_factory=dict)  # GenerationParams defaults (e.g. max_lookups)

    def __post_init__(self) -> None:
        if self.exposure not in EXPOSURES:
            raise ValueError(f"exposure: must be one of {list(EXPOSURES)} (got {self.exposure!r})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {list(DTYPES)} (got {self.dtype!r})")
        for name in ("max_batch_size", "max_queue", "prefill_chunk", "default_max_tokens", "max_tokens_limit"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 (got {getattr(self, name)!r})")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens: must be at most max_tokens_limit ({self.max_tokens_limit}), "
                             f"got {self.default_max_tokens}")
