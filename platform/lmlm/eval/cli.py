"""`lmlm eval`: the evaluation suite on saved models, a world and a fact store (lmlm.eval.suite), and
`lmlm eval perplexity`: perplexity and completion of both models on any annotated corpus."""
from __future__ import annotations

import argparse
import json

from lmlm.config import add_config_command, load_config


def _run(args: argparse.Namespace) -> int:
    from lmlm.eval.suite import REQUIRED_KEYS, EvalJobConfig, run_job

    job = load_config(EvalJobConfig, args.config, args.overrides)
    results = run_job(job)
    print(json.dumps({k: getattr(results, k) for k in REQUIRED_KEYS} | {"out_dir": job.out_dir}))
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from lmlm.eval.realtext import CorpusEvalJob, run_corpus_eval, summary_line

    job = CorpusEvalJob(lmlm=args.lmlm, standard=args.standard, corpus=args.corpus, store_url=args.store,
                        out=args.out, max_docs=args.max_docs, completion=args.completion,
                        batch_size=args.batch_size)
    print(summary_line(run_corpus_eval(job)))
    return 0


def register(subparsers) -> None:
    parser = add_config_command(
        subparsers, "eval", _run,
        "evaluate an LMLM against its standard baseline (precision, completion, unlearning, ppl)",
        "Evaluate an LMLM against its standard baseline, e.g. lmlm eval "
        "--set lmlm_model=runs/lmlm/final --set standard_model=runs/std/final --set world_dir=runs/world",
        config="lmlm.eval.suite:EvalJobConfig")
    sub = parser.add_subparsers(dest="eval_command", required=False)
    p = sub.add_parser("perplexity", help="perplexity and completion of both models on an annotated corpus",
                       description="Normalized and static perplexity (and per-kind losses) of an LMLM and "
                       "its standard baseline on any annotated corpus, and knowledge completion on its values. "
                       "The last line printed is one JSON object.")
    p.add_argument("--lmlm", required=True, help="the LMLM: an HF directory or a pretraining run directory")
    p.add_argument("--standard", required=True, help="the standard model: an HF or pretraining run directory")
    p.add_argument("--corpus", required=True, help="annotated corpus: reference JSON layout, JSONL or Parquet")
    p.add_argument("--store", default=None, help="redis:// URL of a fact store holding the corpus's facts; "
                   "default: a private store loaded from the corpus's own lookups")
    p.add_argument("--out", default=None, help="also write the full result (reports included) to this JSON file")
    p.add_argument("--max-docs", type=int, default=0, help="evaluate the first N documents (0: all)")
    p.add_argument("--completion", type=int, default=200, help="completion questions (0: perplexity only)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.set_defaults(func=_perplexity)
