"""Configs of the annotation stage (loaded through `lmlm.config`: YAML files and `--set a.b=v`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from lmlm.factstore.config import FactStoreConfig

DEFAULT_PROMPT = "../shared/data/lmlm-wiki/prompt-annotator-v6.1.json"


@dataclass
class HFAnnotatorConfig:
    # local path of a transformers causal LM with a chat template (tokenizer in the same dir)
    model_path: str = ""
    # chat messages (JSON list of {role, content}); "[INSERT_TEXT]" in a message is replaced by the doc
    prompt_path: str = DEFAULT_PROMPT
    # generated tokens per document (greedy); a call cut by this limit is dropped by validation
    max_new_tokens: int = 512
    # prompt tokens at most: longer documents are cut at a word boundary, the chat template kept whole
    max_prompt_tokens: int = 1536
    # documents per generate() call (left padding)
    batch_size: int = 8
    # "cpu", "cuda", ...; "auto": cuda when available
    device: str = "auto"
    # torch dtype name of the weights: "float32", "bfloat16", "float16"
    dtype: str = "float32"


@dataclass
class OpenAIAnnotatorConfig:
    # base URL of an OpenAI-compatible API (".../v1"); "" -> env OPENAI_BASE_URL
    base_url: str = ""
    # API key; "" -> the environment variable named by api_key_env (may be unset for local servers)
    api_key: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o"
    prompt_path: str = DEFAULT_PROMPT
    max_tokens: int = 2048
    temperature: float = 0.0
    # requests in flight at once
    concurrency: int = 8
    # retries after the first try, for timeouts, connection errors, 429 and 5xx
    max_retries: int = 3
    # first backoff in seconds; doubles each retry, capped at backoff_max_s, then times a random 0.5-1
    # (tenacity's exponential wait plus random-exponential wait, each over half the range)
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    # per-request timeout (connect + read) in seconds
    timeout_s: float = 60.0


@dataclass
class AnnotateConfig:
    # corpus to annotate: reference JSON ({"examples": [...]}), .jsonl, .parquet or a dir of shards
    input: str = ""
    # where annotated/, rejected/, stats/ Parquet shards and loaded/ markers go (reused to resume)
    output_dir: str = "runs/annotate"
    # which annotator: "trained" (trained_path), "hf" (hf.model_path) or "openai" (openai.*)
    annotator: Literal["trained", "hf", "openai"] = "trained"
    # directory written by `lmlm train-annotator`
    trained_path: str = "runs/annotator"
    hf: HFAnnotatorConfig = field(default_factory=HFAnnotatorConfig)
    openai: OpenAIAnnotatorConfig = field(default_factory=OpenAIAnnotatorConfig)
    # provenance label stored with every triple; "" -> derived from the annotator (e.g. trained:1a2b3c4d)
    annotator_id: str = ""
    # documents above this many UTF-8 bytes are rejected ("too_large")
    max_doc_bytes: int = 1_000_000
    # documents longer than this many words are split at word boundaries into chunks ("{id}#c{k}")
    chunk_words: int = 750
    # only the first N input documents (None: all)
    limit: Optional[int] = None
    # Ray Data actor pool: actors, CPUs per actor (fractional on small machines: 1 CPU per actor on
    # 2 cores starves the other tasks and hangs), GPUs per actor, documents per batch
    num_actors: int = 2
    num_cpus_per_actor: float = 0.5
    num_gpus_per_actor: float = 0.0
    batch_size: int = 16
    # torch intra-op threads in each actor (1 keeps actors from fighting over cores)
    threads_per_actor: int = 1
    # documents per output shard (a shard is the unit of resume and of triple loading)
    shard_docs: int = 500
    # bulk-load extracted triples into the fact store
    load_store: bool = True
    store: FactStoreConfig = field(default_factory=FactStoreConfig)
    # Ray: address of a running cluster (None: the current one, else a local one with ray_num_cpus)
    ray_address: Optional[str] = None
    ray_num_cpus: Optional[int] = None
    # Ray Data progress bars
    progress: bool = True


@dataclass
class TrainAnnotatorConfig:
    # seed corpus with annotations (reference JSON, .jsonl, .parquet); "" -> a synthetic world's gold
    seeds: str = ""
    # synthetic world used when seeds is "": people, seed, and how many of its documents are seeds
    world_people: int = 300
    world_seed: int = 0
    seed_docs: Optional[int] = None
    # where the trained annotator is saved (annotator.json, model.pt, knn.npz)
    out_dir: str = "runs/annotator"
    # hashed feature buckets and hidden size of the tagger
    buckets: int = 131072
    dim: int = 32
    epochs: int = 6
    lr: float = 0.02
    # tokens per optimisation step
    batch_tokens: int = 512
    # relations with fewer seed calls than this share the OTHER tag (label from nearest neighbour)
    min_relation_count: int = 3
    max_relations: int = 64
    # loss weight of value/entity tags against "O" (above 1 trades precision for recall on sparse seeds)
    span_weight: float = 1.0
    seed: int = 0
    # torch intra-op threads while training (0: torch's default)
    threads: int = 1
    # fraction of seed documents held out to report triple P/R/F1 after training (0: none)
    eval_fraction: float = 0.1
