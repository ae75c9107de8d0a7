"""`lmlm pretrain` (one run) and `lmlm pretrain-both` (LMLM + standard on the same documents)."""
from __future__ import annotations

import argparse
import json

from lmlm.config import add_config_command, load_config


def _summary(res) -> dict:
    last = res.metrics[-1] if res.metrics else {}
    return {"variant": res.variant, "run_dir": res.run_dir, "final_step": res.final_step,
            "hf_dir": res.hf_dir, "loss": last.get("loss"), "value_loss": last.get("value_loss"),
            "restarts": max(0, len(res.attempts) - 1)}


def _pretrain(args: argparse.Namespace) -> int:
    from lmlm.train.config import PretrainConfig
    from lmlm.train.loop import run_pretraining

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    print(json.dumps(_summary(run_pretraining(cfg))))
    return 0


def _pretrain_both(args: argparse.Namespace) -> int:
    from lmlm.train.compare import train_both
    from lmlm.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    results = train_both(cfg, None, args.out)
    print(json.dumps({v: _summary(r) for v, r in results.items()} | {"plot": f"{args.out}/value_loss.png"}))
    return 0


def register(subparsers) -> None:
    add_config_command(
        subparsers, "pretrain", _pretrain, "pretrain an LMLM or its standard baseline (Ray Train + DeepSpeed)",
        "Pretrain an LMLM or its standard baseline, e.g. --set variant=standard "
        "--set world_people=300 --set max_steps=200 --set num_workers=2 --set zero_stage=2. "
        "Rerunning with the same run_dir resumes from its latest checkpoint.",
        config="lmlm.train.config:PretrainConfig")
    both = add_config_command(
        subparsers, "pretrain-both", _pretrain_both,
        "train the LMLM and the standard model on the same data; plot value-token loss",
        "Train the LMLM and the standard model on the same data (variant and run_dir are set per run "
        "under --out).", config="lmlm.train.config:PretrainConfig")
    both.add_argument("--out", required=True, help="directory for both runs, the tokenizer and value_loss.png")
