"""Corpus annotation: pluggable annotators, annotators trained from seeds, a resumable Ray Data pipeline.

Entry points for jobs (`jobs/annotate.py`, `jobs/train_annotator.py`) and the `lmlm` command:

    run_annotation(cfg: AnnotateConfig, store: FactStore | None = None) -> dict   # summary
    train_annotator(cfg: TrainAnnotatorConfig) -> Path                          # saved annotator dir
    build_annotator(cfg: AnnotateConfig) -> Annotator                           # the one `annotate` runs

Annotators share one interface, `Annotator.annotate(texts: list[str]) -> list[str]` (legacy-annotated
texts). Layout:

- `kinds/`: one module per kind of annotator: `tagger`, `minilm`, `generative` (trained here and
  saved in a directory), `hf`, `openai` (a local model or an endpoint, with a prompt). A kind is
  the one place that knows its model; nothing else imports a kind but the registry.
- `registry`: the table `KINDS[kind] -> AnnotatorKind(load, describe, train)`, and what dispatches
  on it (`build_annotator`, `annotator_id_for`, `load_trained`). Adding a kind touches its module
  and this table only.
- What the kinds share, each in a module named for it: `base` (the interface), `saved` (the
  directory of a trained annotator and its annotator.json), `tagging` (word tags to calls),
  `alignment` (seed calls to word tags), `threads` (torch threads), `prompt`, `chunks`.
- The jobs built on them: `pipeline` (Ray Data; reads through `inputs`, validates with `anchor`),
  `textfile` (`lmlm annotate-text`), `train_job` (`lmlm train-annotator`), `evaluation` (triple
  P/R/F1), `heldout` (evaluation documents no seed resembles), `cli`.

The kinds are a subpackage because they are the part that grows: a new annotator is a new file
there, while the modules around them stay as they are.
"""
from lmlm.annotate.base import Annotator, AnnotatorError
from lmlm.annotate.config import (AnnotateConfig, GenerativeTrainConfig, HFAnnotatorConfig, MiniLMTrainConfig,
                                  OpenAIAnnotatorConfig, TrainAnnotatorConfig)
from lmlm.annotate.evaluation import evaluate_annotator, score_triples
from lmlm.annotate.kinds.generative import GenerativeAnnotator, fit_generative
from lmlm.annotate.kinds.hf import HFAnnotator
from lmlm.annotate.kinds.minilm import MiniLMAnnotator, fit_minilm
from lmlm.annotate.kinds.openai import OpenAIAnnotator
from lmlm.annotate.kinds.tagger import TaggerAnnotator, fit_tagger
from lmlm.annotate.pipeline import run_annotation
from lmlm.annotate.registry import KINDS, AnnotatorKind, build_annotator, load_trained
from lmlm.annotate.train_job import train_annotator

__all__ = ["Annotator", "AnnotatorError", "AnnotatorKind", "KINDS", "build_annotator", "load_trained",
           "TaggerAnnotator", "MiniLMAnnotator", "GenerativeAnnotator", "HFAnnotator", "OpenAIAnnotator",
           "fit_tagger", "fit_minilm", "fit_generative", "evaluate_annotator", "score_triples",
           "AnnotateConfig", "TrainAnnotatorConfig", "MiniLMTrainConfig", "GenerativeTrainConfig",
           "HFAnnotatorConfig", "OpenAIAnnotatorConfig", "run_annotation", "train_annotator"]
