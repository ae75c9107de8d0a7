"""The pipeline's config (`PipelineConfig`, one YAML file for every stage) and the stage configs
resolved from it, with their paths placed inside the run directory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lmlm.annotate.config import AnnotateConfig, TrainAnnotatorConfig
from lmlm.config import load_config
from lmlm.eval.realtext import RealTextEvalConfig
from lmlm.eval.suite import EvalConfig
from lmlm.factstore.config import FactStoreConfig
from lmlm.storage import Storage
from lmlm.train.config import PretrainConfig
from lmlm.world import WorldConfig


@dataclass
class CorpusSplits:
    """The annotated files of a corpus run (lmlm.pipeline.corpus)."""

    dataset: str = ""  # data set of the registry holding the files (lmlm data list); "": files are paths
    train: list[str] = field(default_factory=list)  # annotated files the models train on
    eval: list[str] = field(default_factory=list)  # annotated files held out for evaluation
    train_max_docs: int = 0  # use the first N training documents (0: all)

    @property
    def enabled(self) -> bool:
        return bool(self.train)

    def __post_init__(self) -> None:
        if self.train and not self.eval:
            raise ValueError("corpus.eval: a corpus run needs at least one evaluation file")


STAGES = ("world", "train_annotator", "annotate", "build_factstore", "pretrain", "evaluate", "serve_demo")


@dataclass
class ServeDemoConfig:
    port: int = 0  # HTTP port of the Serve proxy on 127.0.0.1 (0: a free one)
    max_tokens: int = 64  # text tokens of the sample answer
    admin_token: str = "demo-admin-token"  # bearer token of /v1/facts in the demo app
    repetition_penalty: float = 1.0  # the reference's 1.2 also penalises copying the name into a query
    copy_entities: bool = False  # lookup entities spelled as the prompt spells them (lmlm.generate.copying)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"  # everything the run writes; rerunning the same dir resumes
    # "": run_dir is on a disk every node mounts. A folder or URI (s3://, gs://, file://): what Ray
    # workers on other nodes read and write goes there (the world's documents, the annotator, the
    # annotated shards, pretraining), and run_dir keeps the driver's own files
    storage: str = ""
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # stages to run, in pipeline order
    ray_address: Optional[str] = None  # None: env RAY_ADDRESS, else a local cluster
    ray_num_cpus: int = 8  # logical CPUs of a local cluster (more than cores: no actor-pool deadlock)
    world: WorldConfig = field(default_factory=lambda: WorldConfig(people=400, seed=0))
    seed_docs: int = 100  # world documents whose gold annotations train the annotator
    heldout_people: int = 100  # held-out biographies of trained people (held-out phrasings) for perplexity
    inserted_people: int = 100  # people in no training document: their facts go into the store after training
    vocab_size: int = 1024  # BPE vocabulary shared by both models (small: names split into common pieces)
    retain_model: bool = False  # also train an LMLM without the forget split (forget-quality reference)
    train_annotator: TrainAnnotatorConfig = field(default_factory=TrainAnnotatorConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    factstore: FactStoreConfig = field(default_factory=FactStoreConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeDemoConfig = field(default_factory=ServeDemoConfig)
    # an annotated corpus instead of the world: then world, train_annotator, annotate and serve_demo
    # do not run (lmlm.pipeline.corpus), and `realtext` configures the evaluation
    corpus: CorpusSplits = field(default_factory=CorpusSplits)
    realtext: RealTextEvalConfig = field(default_factory=RealTextEvalConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")

    # Paths of the run directory, in one place.
    def path(self, *parts: str) -> Path:
        return Path(self.run_dir).resolve().joinpath(*parts)

    def shared(self, *parts: str) -> str:
        """Where a file every node reads lives: in `storage` when set, else in run_dir."""
        if not self.storage:
            return str(self.path(*parts))
        return "/".join([Storage(self.storage).uri, *parts])


# ----------------------------------------------------------------------------------------------
# Resolved stage configs: the section of the file, with paths placed inside run_dir.


def store_config(cfg: PipelineConfig) -> FactStoreConfig:
    if cfg.factstore.resolved_url() or cfg.factstore.data_dir:
        return cfg.factstore
    return dataclasses.replace(cfg.factstore, data_dir=str(cfg.path("redis")))


def annotator_config(cfg: PipelineConfig) -> TrainAnnotatorConfig:
    return dataclasses.replace(cfg.train_annotator, seeds=cfg.train_annotator.seeds or str(cfg.path("seeds.jsonl")),
                               out_dir=str(cfg.path("annotator")))


def annotate_config(cfg: PipelineConfig) -> AnnotateConfig:
    return dataclasses.replace(cfg.annotate, input=cfg.annotate.input or cfg.shared("world", "documents.parquet"),
                               output_dir=cfg.shared("annotated"), trained_path=cfg.shared("annotator"),
                               store=store_config(cfg), ray_address=cfg.ray_address)


def pretrain_config(cfg: PipelineConfig) -> PretrainConfig:
    storage = cfg.pretrain.storage or (cfg.shared("pretrain") if cfg.storage else "")
    return dataclasses.replace(cfg.pretrain, vocab_size=cfg.vocab_size, ray_address=cfg.ray_address or "",
                               storage=storage)


def eval_config(cfg: PipelineConfig) -> EvalConfig:
    from lmlm.train.compare import RETAIN

    retain = cfg.path("pretrain", RETAIN)
    return dataclasses.replace(cfg.eval, lmlm_run_dir=str(cfg.path("pretrain", "lmlm")),
                               standard_run_dir=str(cfg.path("pretrain", "standard")),
                               ppl_docs=cfg.eval.ppl_docs or str(cfg.path("heldout.jsonl")),
                               unseen_ppl_docs=cfg.eval.unseen_ppl_docs or str(cfg.path("unseen.jsonl")),
                               train_phrasing_ppl_docs=cfg.eval.train_phrasing_ppl_docs
                               or str(cfg.path("train_phrasing.jsonl")),
                               novel_ppl_docs=cfg.eval.novel_ppl_docs or str(cfg.path("novel.jsonl")),
                               retain_model_dir=cfg.eval.retain_model_dir or (
                                   str(retain / "final") if cfg.retain_model else None))


def load(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides or [])
