"""Pretraining throughput: the Ray Train + DeepSpeed loop (1 worker) vs a bare single-process
PyTorch loop on the same model, batches, threads and loss; and the cost of the loss mask.

    python bench/train.py --quick      # < 60 s on 2 cores; last line: one JSON object

tokens_per_s_ray_deepspeed is the median of the loop's own reports after the first (which holds
the first step's warm-up); the bare loop is timed after two warm-up steps, once before and once
after the fit, and the better run counts (the machine is shared). mask_overhead_frac is
the time to compute kinds + the counted mask of one micro-batch (lmlm.train.masks), as a fraction
of one bare training step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def bare_loop(cfg, packed, vocab: int, steps: int, threads: int) -> tuple[float, float]:
    """(tokens/s, seconds per step) of the single-device loop (lmlm.train.single: the same rows,
    loss, optimizer and schedule as lmlm.train.loop, no Ray or DeepSpeed), after two warm-up steps."""
    import torch

    from lmlm.train.models import build_model
    from lmlm.train.single import train_single

    torch.set_num_threads(threads)
    model = build_model(cfg.model, vocab, cfg.seq_len, seed=cfg.seed)
    rows = train_single(model, packed, cfg, "cpu", steps=steps + 2)[2:]
    dt = sum(r["seconds"] for r in rows)
    return sum(r["tokens"] for r in rows) / dt, dt / len(rows)


def mask_cost(packed, tokenizer, cfg, reps: int = 20) -> float:
    """Seconds to compute kinds + counted mask for one micro-batch from raw ids."""
    import torch

    from lmlm.tokenizer import lookup_token_ids
    from lmlm.train.masks import counted_mask, token_kinds

    ids = torch.from_numpy(packed.input_ids[:cfg.micro_batch_size]).long()
    token_ids = lookup_token_ids(tokenizer)
    t0 = time.perf_counter()
    for _ in range(reps):
        counted_mask(token_kinds(ids, token_ids), "lmlm")
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small world and few steps (< 60 s)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--zero", type=int, default=2, help="DeepSpeed ZeRO stage of the Ray loop")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both loops (1 resists a busy machine)")
    args = ap.parse_args()
    steps = args.steps or (12 if args.quick else 60)

    import ray

    from lmlm.format import to_special
    from lmlm.tokenizer import train_tokenizer
    from lmlm.train.config import PretrainConfig
    from lmlm.train.data import encode_and_pack
    from lmlm.train.loop import run_pretraining
    from lmlm.world import WorldConfig, generate_world

    docs = [d.annotated_text for d in generate_world(WorldConfig(people=60 if args.quick else 400, seed=0)).documents]
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    tok = train_tokenizer([to_special(d).text for d in docs], 2048, os.path.join(tmp, "tok"))
    cfg = PretrainConfig(run_dir=os.path.join(tmp, "run"), model="tiny", seq_len=128 if args.quick else 256, micro_batch_size=8,
                         max_steps=steps + 4, warmup_steps=2, log_every=4, checkpoint_every=10**6,
                         num_workers=1, cpus_per_worker=float(args.threads), zero_stage=args.zero)
    packed = encode_and_pack(docs, tok, "lmlm", cfg.seq_len)

    bare_tps, bare_step_s = bare_loop(cfg, packed, len(tok), steps, args.threads)
    mask_s = mask_cost(packed, tok, cfg)

    ray.init(num_cpus=max(4, args.threads), include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    res = run_pretraining(cfg, documents=docs, tokenizer=tok)
    fit_s = time.perf_counter() - t0
    ray.shutdown()
    # the bare loop again after the fit; the better of the two (other load on the machine varies)
    bare2_tps, bare2_step_s = bare_loop(cfg, packed, len(tok), steps, args.threads)
    if bare2_tps > bare_tps:
        bare_tps, bare_step_s = bare2_tps, bare2_step_s
    reports = [m["tokens_per_s"] for m in res.metrics[1:]] or [res.metrics[-1]["tokens_per_s"]]
    ray_tps = statistics.median(reports)
    print(f"bare {bare_tps:.0f} tok/s ({bare_step_s * 1000:.0f} ms/step); ray+deepspeed {ray_tps:.0f} tok/s "
          f"(reports {[round(r) for r in reports]}); fit {fit_s:.1f} s; mask {mask_s * 1000:.2f} ms/micro-batch",
          file=sys.stderr)
    print(json.dumps({
        "tokens_per_s_bare": round(bare_tps, 1),
        "tokens_per_s_ray_deepspeed": round(ray_tps, 1),
        "ratio_vs_bare": round(ray_tps / bare_tps, 3),
        "mask_overhead_frac": round(mask_s / bare_step_s, 5),
        "mask_ms_per_micro_batch": round(mask_s * 1000, 3),
        "bare_ms_per_step": round(bare_step_s * 1000, 1),
        "fit_wall_s": round(fit_s, 1),
        "model": cfg.model, "seq_len": cfg.seq_len, "micro_batch_size": cfg.micro_batch_size,
        "threads": args.threads, "zero_stage": cfg.zero_stage, "steps": steps, "device": "cpu",
    }))


if __name__ == "__main__":
    main()
