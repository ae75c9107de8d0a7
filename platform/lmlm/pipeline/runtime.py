"""What every pipeline run shares at run time: Ray, the fact store, the stage timer, and which
models a run has finished (config.py resolves the stage configs; world.py and corpus.py are the runs).
"""
from __future__ import annotations

import time
from typing import Callable

from lmlm.pipeline.config import PipelineConfig, pretrain_config, store_config
from lmlm.rayinit import init_ray


def banner(name: str) -> None:
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {name} ===", flush=True)


class StageTimer:
    """Runs a stage under a banner and records its wall time in `timings`."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.timings = log, {}

    def __call__(self, name: str, fn: Callable, *args):
        banner(name)
        t = time.perf_counter()
        out = fn(*args)
        self.timings[name] = round(time.perf_counter() - t, 1)
        self.log(f"{name}: {self.timings[name]} s")
        return out


def ensure_ray(cfg: PipelineConfig) -> None:
    init_ray(cfg.ray_address, cfg.ray_num_cpus)


def finished_models(cfg: PipelineConfig) -> dict[str, str]:
    """HF dirs of the finished pretraining runs (LMLM and standard), or {} when either is missing."""
    from lmlm.train.compare import finished_run, run_config

    dirs = {}
    for variant in ("lmlm", "standard"):
        done = finished_run(run_config(pretrain_config(cfg), variant, cfg.path("pretrain")))
        if done is None:
            return {}
        dirs[variant] = model_location(cfg, variant, done.hf_dir)
    return dirs


def model_location(cfg: PipelineConfig, run: str, hf_dir: str) -> str:
    """What evaluation workers and serve replicas open for pretraining run `run`: with `storage`,
    the run by URI (its newest export, on any node); else its HF dir `hf_dir`."""
    from lmlm.train.compare import run_config

    return run_config(pretrain_config(cfg), run, cfg.path("pretrain")).storage or hf_dir


def open_store(cfg: PipelineConfig):
    from lmlm.factstore import FactStore

    return FactStore.open(store_config(cfg))


