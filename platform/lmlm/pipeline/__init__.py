"""The pipeline: one config file (`PipelineConfig`), every stage of a run in order, each skipped when
its output exists.

- `config`: the config and the stage configs resolved into the run directory;
- `runtime`: what every run shares at run time (Ray, the fact store, the stage timer);
- `world`: the synthetic world's run (world -> annotator -> annotate -> store -> pretrain ->
  evaluate -> serve demo);
- `corpus`: the run on an annotated corpus (real text: `make wiki`).

`jobs/<stage>.py` and `lmlm pipeline` are thin wrappers over `main` / `run_pipeline`; all of them
read the same `PipelineConfig` file, so a stage run alone sees exactly what the pipeline would pass it.
"""
from __future__ import annotations

import dataclasses

from lmlm.config import parse_args
from lmlm.pipeline.config import PipelineConfig, load

__all__ = ["PipelineConfig", "load", "main", "run_pipeline"]


def run_pipeline(cfg: PipelineConfig):
    """The corpus run when the config names a corpus, else the world's; returns its results."""
    if cfg.corpus.enabled:
        from lmlm.pipeline.corpus import run_corpus_pipeline

        return run_corpus_pipeline(cfg)
    from lmlm.pipeline.world import run_world_pipeline

    return run_world_pipeline(cfg)


def main(argv: list[str] | None = None, stages: tuple[str, ...] | None = None) -> int:
    """Entry of `jobs/*.py`: the pipeline, or only `stages` of it (the world is always loaded)."""
    cfg = parse_args(PipelineConfig, argv, description="Run the LMLM pipeline (every stage of one config, in order).")
    if stages is not None:
        cfg = dataclasses.replace(cfg, stages=list(stages))
    run_pipeline(cfg)
    return 0


def register(subparsers) -> None:
    from lmlm.config import add_config_command

    add_config_command(subparsers, "pipeline", lambda a: run_pipeline(load(a.config, a.overrides)) and 0,
                       "run every stage in order (skips finished ones)", config=PipelineConfig)
