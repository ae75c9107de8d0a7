"""`lmlm annotate` and `lmlm train-annotator` (configs through lmlm.config: --config FILE --set k=v)."""
from __future__ import annotations

import argparse
import json

from lmlm.config import add_config_command, load_config


def _annotate(args: argparse.Namespace) -> int:
    from lmlm.annotate.config import AnnotateConfig
    from lmlm.annotate.pipeline import run_annotation

    summary = run_annotation(load_config(AnnotateConfig, args.config, args.overrides))
    print(json.dumps(summary))
    return 0


def _train(args: argparse.Namespace) -> int:
    from lmlm.annotate.config import TrainAnnotatorConfig
    from lmlm.annotate.seeds import train_annotator

    print(train_annotator(load_config(TrainAnnotatorConfig, args.config, args.overrides)))
    return 0


def register(subparsers) -> None:
    add_config_command(subparsers, "annotate", _annotate,
                       "annotate a corpus with lookup calls (Ray Data) and load the fact store",
                       "Annotate a corpus with lookup calls (Ray Data) and load the fact store, e.g. "
                       "--set input=corpus.jsonl --set output_dir=runs/ann --set num_actors=2",
                       config="lmlm.annotate.config:AnnotateConfig")
    add_config_command(subparsers, "train-annotator", _train,
                       "train the small learned annotator from seed annotations",
                       "Train the small learned annotator from seed annotations, e.g. "
                       "--set seeds=seeds.json --set out_dir=runs/annotator",
                       config="lmlm.annotate.config:TrainAnnotatorConfig")
