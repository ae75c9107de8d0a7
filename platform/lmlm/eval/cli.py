"""`lmlm eval`: the evaluation suite on saved models, a world and a fact store (lmlm.eval.suite)."""
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


def register(subparsers) -> None:
    add_config_command(
        subparsers, "eval", _run,
        "evaluate an LMLM against its standard baseline (precision, completion, unlearning, ppl)",
        "Evaluate an LMLM against its standard baseline, e.g. lmlm eval "
        "--set lmlm_model=runs/lmlm/final --set standard_model=runs/std/final --set world_dir=runs/world",
        config="lmlm.eval.suite:EvalJobConfig")
