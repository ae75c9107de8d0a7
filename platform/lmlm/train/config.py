"""`PretrainConfig`: everything one pretraining run needs (loaded with lmlm.config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class PretrainConfig:
    variant: Literal["lmlm", "standard"] = "lmlm"  # lmlm: value tokens out of the loss; standard: lookups stripped
    run_dir: str = "runs/pretrain"  # checkpoints, metrics.jsonl/.csv, tensorboard/, tokenizer; a rerun resumes here
    # "" : every node reads and writes run_dir (one machine or a shared mount). A folder or URI
    # (file:///..., s3://bucket/run, gs://...): the run's checkpoints, logs, tokenizer and start
    # weights live there, and run_dir only holds the driver's own files (lmlm.train.runstore)
    storage: str = ""
    # --- data (documents may also be passed to run_pretraining directly)
    data_path: str = ""  # corpus file/dir read by lmlm.corpus.read_corpus (annotated_text, else text)
    world_people: int = 0  # > 0: train on the documents of a synthetic world of this many people
    world_seed: int = 0  # seed of that world
    tokenizer_path: str = ""  # tokenizer directory; "" trains one on the documents into run_dir/tokenizer
    vocab_size: int = 8192  # vocabulary of a tokenizer trained here
    # --- model
    model: str = "tiny"  # preset (tiny, llama2-176m, llama2-382m, gpt2-124m), a pretrained name (smollm2-135m) or a local directory
    seq_len: int = 256  # packed sequence length (reference: 1024)
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory)
    # --- optimisation
    micro_batch_size: int = 8  # sequences per worker per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 100  # optimizer steps; 0: epochs x steps per epoch
    epochs: int = 1  # passes over the data when max_steps is 0
    lr: float = 5e-4  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr x this at the last step
    warmup_steps: int = 10  # linear warmup steps (from 0)
    weight_decay: float = 0.1  # AdamW weight decay
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    seed: int = 0  # model init and data order
    # --- distribution
    num_workers: int = 1  # Ray Train workers (data-parallel ranks)
    use_gpu: bool = False  # GPU workers: NCCL + bf16; CPU: gloo
    cpus_per_worker: float = 1.0  # Ray CPU reservation per worker (fractional on small machines)
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a bf16 GPU, fp32 on CPU (lmlm.precision)
    peak_tflops: float = 0.0  # one device's peak for MFU (0: the GPU's dense bf16 peak by name; CPU: no MFU)
    ray_address: str = ""  # Ray cluster to join ("" : the running one, else a new local one)
    # --- logging, checkpoints, faults
    log_every: int = 10  # steps between metrics lines, progress lines, TensorBoard points
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 or 1: the newest only (no fallback if it is corrupt)
    max_failures: int = 2  # worker failures Ray Train recovers from (restart from last checkpoint)

    def __post_init__(self) -> None:
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero_stage: {self.zero_stage} is not 0, 1, 2 or 3")
        for name in ("micro_batch_size", "grad_accum", "num_workers", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.seq_len < 2:
            raise ValueError(f"seq_len: {self.seq_len} must be at least 2")
        if self.max_steps < 0 or self.epochs < 1:
            raise ValueError("max_steps must be >= 0 and epochs >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker: {self.cpus_per_worker} must be positive")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints: {self.keep_checkpoints} must be >= 0 (0 keeps only the newest)")


# Fields a resumed run may change: they do not change the trained model or the data order.
# Every other field must equal the one saved with the checkpoint (lmlm.train.loop.check_resume_config).
# max_steps/epochs continue a run further; the cosine schedule then stretches to the new last step.
RESUMABLE = frozenset({"run_dir", "storage", "max_steps", "epochs", "gradient_checkpointing", "cpus_per_worker", "ray_address",
                       "log_every", "checkpoint_every", "keep_checkpoints", "max_failures", "peak_tflops"})
