"""`ServeConfig`: the settings of the LMLM Serve app (the `args` of serve/config.yaml, `lmlm serve --set`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmlm.factstore.config import FactStoreConfig


@dataclass
class ServeConfig:
    model_path: str = "runs/demo/model"   # HF checkpoint dir (model + tokenizer) written by training
    tokenizer_path: str = ""              # "" = model_path
    model_name: str = "lmlm"              # the id /v1/models lists and completions echo
    dtype: str = "float32"                # float32 | bfloat16 | float64
    store: FactStoreConfig = field(default_factory=FactStoreConfig)  # url None: a private Redis 8
    admin_token: str = ""                 # bearer token for /v1/facts; "" = env LMLM_ADMIN_TOKEN
    default_max_tokens: int = 64          # max_tokens when a request gives none
    max_tokens_limit: int = 1024          # largest max_tokens accepted
    max_batch_size: int = 16              # requests decoded together (@serve.batch)
    batch_wait_timeout_s: float = 0.02    # how long a batch waits to fill
    request_timeout_s: float = 120.0      # bound on one request's generation (504 after)
    torch_threads: int = 1                # intra-op threads per replica (more only with free cores)
    defaults: dict[str, Any] = field(default_factory=dict)  # GenerationParams defaults (e.g. max_lookups)
