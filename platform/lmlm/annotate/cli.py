"""`lmlm annotate`, `lmlm train-annotator` (configs through lmlm.config: --config FILE --set k=v) and
`lmlm annotate-text` (plain arguments: a trained annotator, an input and an output JSONL file)."""
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
    from lmlm.annotate.train_job import train_annotator

    print(train_annotator(load_config(TrainAnnotatorConfig, args.config, args.overrides)))
    return 0


def _annotate_text(args: argparse.Namespace) -> int:
    from lmlm.annotate.textfile import TextFileConfig, annotate_text_file

    cfg = TextFileConfig(max_doc_bytes=args.max_doc_bytes, chunk_words=args.chunk_words, batch_size=args.batch_size,
                         threads=args.threads)
    print(json.dumps(annotate_text_file(args.annotator, args.input, args.output, cfg)))
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
    p = subparsers.add_parser(
        "annotate-text", help="annotate a JSONL file of {id, text} lines with a trained annotator (in-process)",
        description="Annotate IN.jsonl ({\"id\", \"text\"} per line) into OUT.jsonl ({\"id\", \"annotated_text\", "
                    "\"dropped\"} per line, in order; lines that cannot be annotated get annotated_text null and an "
                    "\"error\" reason) with the validation of `lmlm annotate`.")
    p.add_argument("--annotator", required=True, metavar="DIR", help="a directory saved by `lmlm train-annotator`")
    p.add_argument("input", metavar="IN.jsonl")
    p.add_argument("output", metavar="OUT.jsonl")
    p.add_argument("--max-doc-bytes", type=int, default=1_000_000, help="larger documents are refused (too_large)")
    p.add_argument("--chunk-words", type=int, default=750, help="documents are annotated in pieces of this many words")
    p.add_argument("--batch-size", type=int, default=16, help="pieces per annotator call")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(func=_annotate_text)
