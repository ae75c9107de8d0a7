"""Corpus annotation: pluggable annotators, a trainable annotator, a resumable Ray Data pipeline.

Entry points for jobs (`jobs/annotate.py`, `jobs/train_annotator.py`) and the `lmlm` command:

    run_annotation(cfg: AnnotateConfig, store: FactStore | None = None) -> dict   # summary
    train_annotator(cfg: TrainAnnotatorConfig) -> Path                          # saved annotator dir

Annotators share one interface, `Annotator.annotate(texts: list[str]) -> list[str]` (legacy-annotated
texts); `build_annotator(cfg)` picks "trained" (tagger, minilm or generative, as saved), "minilm",
"hf" or "openai"; `annotate_text_file` is `lmlm annotate-text`.
"""
from lmlm.annotate.annotators import Annotator, AnnotatorError, OpenAIAnnotator, build_annotator, load_trained
from lmlm.annotate.config import (AnnotateConfig, EncoderTrainConfig, GenerativeTrainConfig, HFAnnotatorConfig,
                                  OpenAIAnnotatorConfig, TrainAnnotatorConfig)
from lmlm.annotate.hf import HFAnnotator
from lmlm.annotate.metrics import score
from lmlm.annotate.pipeline import run_annotation
from lmlm.annotate.seeds import evaluate, fit
from lmlm.annotate.train_job import train_annotator
from lmlm.annotate.trained import TrainedAnnotator

__all__ = ["Annotator", "AnnotatorError", "HFAnnotator", "OpenAIAnnotator", "TrainedAnnotator", "build_annotator",
           "load_trained", "AnnotateConfig", "EncoderTrainConfig", "GenerativeTrainConfig", "HFAnnotatorConfig",
           "OpenAIAnnotatorConfig", "TrainAnnotatorConfig",
           "run_annotation", "train_annotator", "fit", "evaluate", "score"]
