"""Pretraining on one device without Ray or DeepSpeed: the rows, loss, optimizer, schedule and
clipping of the Ray Train loop (loop.py) in a plain PyTorch loop, read top to bottom.

It is the baseline `bench/train.py` measures the distributed loop against, and what `bench/gpu.py`
trains with on a bare GPU machine. Precision is the Ray loop's (steps.uses_bf16: bfloat16 autocast
on a bf16 GPU, float32 master weights).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from lmlm.train.config import PretrainConfig
from lmlm.train.data import Packed
from lmlm.train.masks import TRAIN_GROUPS, counted_mask, masked_nll
from lmlm.train.steps import lr_scheduler, make_optimizer, step_rows, total_steps, uses_bf16


def train_single(model, packed: Packed, cfg: PretrainConfig, device: torch.device | str,
                 steps: int | None = None, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `model` (moved to `device`) on `packed` for `steps` (default: the config's) optimizer
    steps; returns one row per step: {"step", "loss", "tokens", "seconds", "text_loss", ...}.
    `on_step(row)` is called after each step (the row's seconds include a device sync)."""
    device = torch.device(device)
    bf16 = uses_bf16(cfg, device)
    model.to(device).train()
    opt = make_optimizer(model, cfg, fused=device.type == "cuda")
    total, _ = total_steps(cfg, len(packed), 1)
    steps = steps or total
    sched = lr_scheduler(opt, cfg, total)
    rows = []
    for step in range(steps):
        t0 = time.perf_counter()
        sums = torch.zeros(2 + 2 * len(TRAIN_GROUPS), dtype=torch.float64, device=device)
        micro = [step_rows(step, m, 0, cfg, len(packed), 1) for m in range(cfg.grad_accum)]
        kinds_m = [torch.from_numpy(packed.kinds[r]) for r in micro]
        n_counted = max(sum(int(counted_mask(k[:, 1:], cfg.variant).sum()) for k in kinds_m), 1)
        for r, kinds in zip(micro, kinds_m):
            x = torch.from_numpy(packed.input_ids[r]).long().to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=x, use_cache=False).logits
            nll, counted, s = masked_nll(logits, x, kinds, cfg.variant, TRAIN_GROUPS)
            ((nll * counted).sum() / n_counted).backward()  # the mean over the step's counted tokens
            sums += s
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        s = sums.tolist()
        row = {"step": step + 1, "loss": s[0] / max(s[1], 1), "tokens": cfg.grad_accum * cfg.micro_batch_size * cfg.seq_len,
               "seconds": time.perf_counter() - t0, "lr": sched.get_last_lr()[0]}
        for i, name in enumerate(TRAIN_GROUPS):
            row[f"{name}_loss"] = s[2 + 2 * i] / s[3 + 2 * i] if s[3 + 2 * i] else float("nan")
        rows.append(row)
        if on_step is not None:
            on_step(row)
    return rows
