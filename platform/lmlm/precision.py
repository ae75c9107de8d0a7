"""Precision and device, chosen from what the hardware really does: the one rule for every model the
platform trains or runs.

`precision: auto` (the default everywhere) means bfloat16 where the device computes it natively, and
float32 elsewhere:
- a CUDA GPU: bfloat16 when `torch.cuda.is_bf16_supported()` (Ampere and later);
- a CPU: bfloat16 only with AMX-BF16 or AVX512-BF16 instructions. On a CPU with AVX2 only (AMD Zen 3,
  older Intel) bfloat16 is emulated: one SmolLM2-135M training step took 51 s under autocast against
  6 s in float32, so `auto` never picks it there, and an explicit `bf16` warns.

Inference on a CPU is the exception: `auto` keeps float32 there on every CPU, so that what a model
generates (the annotations a run stores, the demo's and tests' numbers) does not depend on which
CPU ran it; training differs only in rounding across CPUs, and gains 1.5x where bfloat16 is native.
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
log = logging.getLogger(__name__)


def device_of(setting: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; anything else as torch reads it."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """What this CPU can do for bfloat16, as recorded in results: torch's dispatch level and the flags."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx_bf16": bool(caps.get("amx_bf16", False)), "avx512_bf16": bool(caps.get("avx512_bf16", False))}


def native_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        f = cpu_features()
        return f["amx_bf16"] or f["avx512_bf16"]
    return False


def _check(precision: str, what: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: precision must be one of {list(PRECISIONS)}, not {precision!r}")


def training_dtype(precision: str, device: torch.device | str, what: str = "precision") -> torch.dtype:
    """The compute dtype (autocast, DeepSpeed bf16) for training on `device`."""
    _check(precision, what)
    native = native_bf16(device)
    if precision == "bf16" and not native:
        warnings.warn(f"{what}: bf16 on {torch.device(device)} without native bfloat16 "
                      f"({cpu_features()['cpu_capability']}): emulated, several times slower than fp32", stacklevel=2)
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and native) else torch.float32
    log.info("%s: %s on %s (%s)", what, dtype, device, precision)
    return dtype


def inference_dtype(precision: str, device: torch.device | str, what: str = "precision") -> torch.dtype:
    """The dtype to load a model in for inference on `device` (auto: float32 on every CPU)."""
    _check(precision, what)
    if precision == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" and native_bf16(device) else torch.float32
    return training_dtype(precision, device, what)
