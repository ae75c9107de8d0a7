"""The order of the data and the optimisation schedule of a pretraining run, shared by the Ray
Train loop (loop.py) and the single-device loop (single.py): steps per epoch, the rows of each
micro-batch of each rank (a seeded permutation per epoch), the compute precision, AdamW and its
warm-up + cosine schedule.
"""
from __future__ import annotations

import functools

import numpy as np

from lmlm.train.config import PretrainConfig


def total_steps(cfg: PretrainConfig, n_rows: int, world: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch)."""
    rows_per_step = cfg.micro_batch_size * cfg.grad_accum * world
    per_epoch = n_rows // rows_per_step
    if per_epoch == 0:
        raise ValueError(f"data: {n_rows} packed rows are fewer than one step needs ({rows_per_step}: "
                         f"micro_batch_size x grad_accum x num_workers)")
    return (cfg.max_steps or cfg.epochs * per_epoch), per_epoch


def step_rows(step: int, micro: int, rank: int, cfg: PretrainConfig, n_rows: int, world: int) -> np.ndarray:
    """Global row indices of one micro-batch of one rank: a seeded permutation per epoch."""
    _, per_epoch = total_steps(cfg, n_rows, world)
    epoch, s = divmod(step, per_epoch)
    perm = _permutation(cfg.seed, epoch, n_rows)
    base = s * cfg.micro_batch_size * cfg.grad_accum * world + (micro * world + rank) * cfg.micro_batch_size
    return perm[base:base + cfg.micro_batch_size]


@functools.lru_cache(maxsize=1)  # every micro-step of an epoch reads the same permutation
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def uses_bf16(cfg: PretrainConfig, device) -> bool:
    """bfloat16 compute for pretraining on `device`: the rule of lmlm.precision on a GPU; on a CPU only
    when `precision: bf16` says so (DeepSpeed's CPU bf16 path is untested here, and the demo's
    numbers must not depend on which CPU ran them)."""
    import torch

    from lmlm.precision import training_dtype

    if torch.device(device).type == "cuda":
        return training_dtype(cfg.precision, device, "pretrain.precision") == torch.bfloat16
    return cfg.precision == "bf16"


def make_optimizer(model, cfg: PretrainConfig, fused: bool = False):
    """AdamW with weight decay on matrices only (embeddings and projections), not on norms and biases."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_scheduler(optimizer, cfg: PretrainConfig, steps: int):
    """Linear warmup over `warmup_steps`, then cosine decay to lr x `min_lr_ratio` at `steps`."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=cfg.warmup_steps,
                                                       num_training_steps=steps, min_lr_rate=cfg.min_lr_ratio)
