"""Every kind of annotator in one table: how to train it, load it, and name it without loading it.

    KINDS[kind] -> AnnotatorKind(load, describe, train)
    build_annotator(cfg: AnnotateConfig, num_threads=None) -> Annotator   # what `lmlm annotate` runs
    annotator_id_for(cfg: AnnotateConfig) -> str                          # its provenance label, no model loaded
    load_trained(dir, num_threads=None, kind=None) -> Annotator           # a directory `train-annotator` saved

Kinds trained here (tagger, minilm, generative) are saved in a directory whose annotator.json names
the kind (saved.py); `annotator: trained` loads whichever kind it holds, `annotator: <kind>` refuses
any other. `trained_path` may be a storage URI: each process that loads it takes a node copy
(lmlm.storage.node_copy). Adding a kind: its module in kinds/ and a row in KINDS (and its name in the `Literal`s
of config.py, which the config loader checks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmlm.annotate.base import Annotator
from lmlm.annotate.config import AnnotateConfig, TrainAnnotatorConfig
from lmlm.annotate.kinds.generative import GenerativeAnnotator, fit_generative
from lmlm.annotate.kinds.hf import HFAnnotator, hf_annotator_id
from lmlm.annotate.kinds.minilm import MiniLMAnnotator, fit_minilm
from lmlm.annotate.kinds.openai import OpenAIAnnotator, openai_annotator_id
from lmlm.annotate.kinds.tagger import TaggerAnnotator, fit_tagger
from lmlm.annotate.saved import SavedAnnotator, read_meta
from lmlm.annotate.threads import use_threads
from lmlm.storage import is_uri, local_dir

Train = Callable[[list[str], TrainAnnotatorConfig, Callable[[str], None]], SavedAnnotator]


@dataclass(frozen=True)
class AnnotatorKind:
    load: Callable[[AnnotateConfig], Annotator]  # ready to call (a trained kind: from cfg.trained_path)
    describe: Callable[[AnnotateConfig], str]  # the provenance label, without loading a model
    train: Train | None = None  # (seed documents, config, log) -> an unsaved annotator; None: not trained here

    @property
    def saved(self) -> bool:
        """Trained here, so loaded from (and checked against) a saved directory."""
        return self.train is not None


def _saved_kind(cls: type[SavedAnnotator], train: Train) -> AnnotatorKind:
    return AnnotatorKind(load=lambda cfg: cls.load(cfg.trained_path),
                         describe=lambda cfg: cls.id_of(read_meta(cfg.trained_path, cls.kind)), train=train)


def _train_tagger(seeds: list[str], cfg: TrainAnnotatorConfig, log) -> TaggerAnnotator:
    return fit_tagger(seeds, threads=cfg.threads or None, buckets=cfg.buckets, dim=cfg.dim, epochs=cfg.epochs,
                      lr=cfg.lr, batch_tokens=cfg.batch_tokens, min_relation_count=cfg.min_relation_count,
                      max_relations=cfg.max_relations, span_weight=cfg.span_weight, seed=cfg.seed, log=log)


KINDS: dict[str, AnnotatorKind] = {
    "tagger": _saved_kind(TaggerAnnotator, _train_tagger),
    "minilm": _saved_kind(MiniLMAnnotator, lambda seeds, cfg, log: fit_minilm(
        seeds, cfg.minilm, threads=cfg.threads or None, log=log)),
    "generative": _saved_kind(GenerativeAnnotator, lambda seeds, cfg, log: fit_generative(
        seeds, cfg.generative, threads=cfg.threads or None, log=log)),
    "hf": AnnotatorKind(load=lambda cfg: HFAnnotator(cfg.hf), describe=lambda cfg: hf_annotator_id(cfg.hf)),
    "openai": AnnotatorKind(load=lambda cfg: OpenAIAnnotator(cfg.openai),
                            describe=lambda cfg: openai_annotator_id(cfg.openai)),
}


def trainable_kind(name: str) -> AnnotatorKind:
    kind = KINDS.get(name)
    if kind is None or not kind.saved:
        known = ", ".join(k for k, v in KINDS.items() if v.saved)
        raise ValueError(f"train-annotator: unknown kind {name!r} (known: {known})")
    return kind


def kind_of(cfg: AnnotateConfig) -> str:
    """The kind `cfg.annotator` names: "trained" is whichever kind cfg.trained_path holds; a trained
    kind named must be the one there."""
    if cfg.annotator not in ("trained", *KINDS):
        raise ValueError(f"unknown annotator {cfg.annotator!r} (known: trained, {', '.join(KINDS)})")
    if cfg.annotator != "trained" and not KINDS[cfg.annotator].saved:
        return cfg.annotator
    found = read_meta(_on_this_node(cfg).trained_path)["kind"]
    if cfg.annotator not in ("trained", found):
        raise ValueError(f"{cfg.trained_path} holds a {found!r} annotator, not {cfg.annotator!r}")
    return found


def _on_this_node(cfg: AnnotateConfig) -> AnnotateConfig:
    """`cfg` with a `trained_path` URI replaced by this node's copy of it."""
    return dataclasses.replace(cfg, trained_path=local_dir(cfg.trained_path)) if is_uri(cfg.trained_path) else cfg


def build_annotator(cfg: AnnotateConfig, num_threads: int | None = None) -> Annotator:
    """The annotator `cfg.annotator` names, ready to call, with `num_threads` torch threads."""
    cfg = _on_this_node(cfg)
    kind = kind_of(cfg)
    use_threads(num_threads)
    return KINDS[kind].load(cfg)


def annotator_id_for(cfg: AnnotateConfig) -> str:
    """The provenance label of `cfg`'s annotator (cfg.annotator_id, else the kind's), without loading it."""
    if cfg.annotator_id:
        return cfg.annotator_id
    cfg = _on_this_node(cfg)
    return KINDS[kind_of(cfg)].describe(cfg)


def load_trained(path: str | Path, num_threads: int | None = None, kind: str | None = None) -> Annotator:
    """The annotator `lmlm train-annotator` saved in `path` (given `kind`: refuse any other)."""
    return build_annotator(AnnotateConfig(annotator=kind or "trained", trained_path=str(path)), num_threads)
