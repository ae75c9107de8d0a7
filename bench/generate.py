"""Benchmark: the serving engine against its baselines, each measured in the same run (docs/method.md §6).

    python bench/generate.py [--quick]      # --quick: under 60 s on 2 CPU cores

1. Batch 1, >= 5 lookups, greedy: engine vs the re-prefill reference on the same model and prompt
   (`speedup_vs_reference_batch1`; the full run adds a llama2-176m-shaped model, `..._176m`).
2. 16 requests arriving over time (one every `arrival_gap_s`) streamed through a local Ray Serve app
   vs the same 16 one by one through the reference (`speedup_concurrent16`), with TTFT p50/p99;
   `speedup_engine_batch16` is the same 16 decoded together in this process, without Serve or HTTP
   (the batching ceiling on this machine: a 16-row step costs several 1-row steps on CPU).
3. `lookup_overhead_ratio`: engine tokens/s with lookups vs the same engine without lookups.
4. `engine_vs_hf_generate`: the engine without lookups vs transformers' `generate` (its KV cache,
   the same repetition penalty), the ceiling of a decoder on this model.
Models have random weights (the lookup-token bias makes them look things up); the store is a real
FactStore (private Redis 8). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

STARTED = time.perf_counter()  # bench_wall_s counts the imports too
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from lmlm.factstore import FactStore, FactStoreConfig  # noqa: E402
from lmlm.generate import Engine, GenerationParams, reference_generate  # noqa: E402
from lmlm.testing.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer  # noqa: E402
from lmlm.netutil import free_port  # noqa: E402

PROMPTS = [f"Tell me a bio of {p}. {p} is" for p in
           ["Ada Varen", "Bo Lindqvist", "Cyra Moss", "Dario Fenn", "Elin Sato", "Farid Oyelaran", "Greta Holm",
            "Hugo Marsh", "Ines Calder", "Jonas Pike", "Kira Dunn", "Lev Arno", "Mara Quist", "Nils Brant",
            "Oona Reyes", "Pavel Stroud"]]
# Batch 1 decodes after a document of context (a few hundred tokens), as retrieval-heavy prompts do:
# that context is what the reference re-prefills after every lookup.
CONTEXT = " ".join(t for t in synthetic_texts() + synthetic_texts(1) if "<|" not in t)


def build(model_dir: Path, hidden: int, layers: int, intermediate: int | None = None):
    tok = tiny_tokenizer(synthetic_texts(), vocab_size=2000, out_dir=model_dir)
    model = tiny_model(len(tok), hidden=hidden, layers=layers, heads=max(1, hidden // 64), max_len=4096,
                       intermediate=intermediate)
    model.save_pretrained(model_dir)
    return model, tok


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def start_serve(model_dir: Path, store_url: str, max_batch_size: int = 16, max_queue: int = 64):
    """A local Serve app on 127.0.0.1 (returns its base URL); the caller calls serve.shutdown()."""
    import ray
    from ray import serve

    from lmlm.serve.app import ServeConfig, build_app, model_from_dir, store_at, tokenizer_from_dir

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(model_path=str(model_dir), max_batch_size=max_batch_size, max_queue=max_queue,
                      max_tokens_limit=2048, torch_threads=1)
    serve.run(build_app(cfg, model_loader=partial(model_from_dir, str(model_dir)),
                        tokenizer_loader=partial(tokenizer_from_dir, str(model_dir)),
                        store_loader=partial(store_at, store_url)), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def streamed_arrivals(url: str, bodies: list[dict], gap_s: float) -> list[dict]:
    """Send `bodies` as streaming completions, one every `gap_s`; per request: ttft, latency, tokens."""
    import httpx

    def one(client, i, body):
        time.sleep(i * gap_s)
        t = time.perf_counter()
        ttft, last = None, None
        with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    raise RuntimeError(ev["error"])
                if ttft is None and ev["choices"][0]["text"]:
                    ttft = time.perf_counter() - t
                last = ev
        return {"visible_ttft": ttft if ttft is not None else time.perf_counter() - t, "ttft": last["ttft_s"],
                "latency": time.perf_counter() - t, "tokens": last["usage"]["completion_tokens"], "end": time.perf_counter()}

    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=len(bodies))) as client, \
            concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(partial(one, client), range(len(bodies)), bodies))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def best_of(repeats: int, *fns):
    """Run the fns in turn `repeats` times; each one's last output and its fastest time (the
    machine is shared: interleaving keeps a busy spell from landing on one side only)."""
    outs, best = [None] * len(fns), [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            outs[i], t = timed(fn)
            best[i] = min(best[i], t)
    return outs, best


def batch1(engine: Engine, p: GenerationParams, repeats: int, suffix: str = "") -> tuple[dict, float, int]:
    """Engine vs re-prefill reference on one long-context prompt. The engine runs once untimed first:
    both timed runs then pay the same warm embedding cache for the same queries (parity makes them
    identical). Returns the figures, the engine's seconds and its generated tokens."""
    prompt = [CONTEXT + " " + PROMPTS[0]]
    engine.generate(prompt, p)
    ([[e1], [r1]], [t_eng, t_ref]) = best_of(repeats, lambda: engine.generate(prompt, p),
                                             lambda: reference_generate(engine, prompt, p))
    return ({f"batch1_prompt_tokens{suffix}": e1.n_prompt_tokens, f"lookups_per_prompt{suffix}": len(e1.lookups),
             f"batch1_engine_s{suffix}": round(t_eng, 3), f"batch1_reference_s{suffix}": round(t_ref, 3),
             f"speedup_vs_reference_batch1{suffix}": round(t_ref / t_eng, 2),
             f"parity_batch1{suffix}": e1.token_ids == r1.token_ids, f"batch1_tokens{suffix}": e1.n_generated_tokens},
            t_eng, e1.n_generated_tokens)


def overhead_and_ceiling(engine: Engine, t_on: float, n: int, repeats: int) -> dict:
    """The batch-1 run's tokens/s (with lookups) vs the same prompt and length without lookups, and
    that vs transformers' generate (greedy, same repetition penalty, its own KV cache)."""
    prompt = CONTEXT + " " + PROMPTS[0]
    off = GenerationParams(max_new_tokens=n, use_lookups=False, ignore_eos=True)
    ids = torch.tensor([engine.encode(prompt)])
    ([[e0], out], [t_off, t_hf]) = best_of(repeats, lambda: engine.generate([prompt], off), lambda: engine.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
        repetition_penalty=off.repetition_penalty, use_cache=True, pad_token_id=engine.pad_id))
    n_off, n_hf = e0.n_generated_tokens, out.shape[1] - ids.shape[1]
    return {"tokens_per_s_with_lookups": round(n / t_on, 1), "tokens_per_s_without": round(n_off / t_off, 1),
            "lookup_overhead_ratio": round((n / t_on) / (n_off / t_off), 3),
            "hf_generate_tokens_per_s": round(n_hf / t_hf, 1),
            "engine_vs_hf_generate": round((n_off / t_off) / (n_hf / t_hf), 3)}


def concurrent16(engine: Engine, model_dir: Path, store_url: str, n_new: int, n_lookups: int, gap_s: float) -> dict:
    from ray import serve

    pc = GenerationParams(max_new_tokens=n_new, max_lookups=n_lookups, max_query_tokens=4, fallback="top1_anyway")
    engine.generate(PROMPTS, pc)  # the same queries as every timed run below: the embedding cache is warm
    refs, t_seq = timed(lambda: reference_generate(engine, PROMPTS, pc))
    together, t_batch = timed(lambda: engine.generate(PROMPTS, pc))
    print(f"sequential reference: {t_seq:.1f} s; starting Serve", file=sys.stderr, flush=True)
    url = start_serve(model_dir, store_url)
    print("Serve ready", file=sys.stderr, flush=True)
    try:
        body = {"max_tokens": n_new, "max_lookups": n_lookups, "max_query_tokens": 4, "fallback": "top1_anyway"}
        bodies = [{"prompt": q, **body} for q in PROMPTS]
        streamed_arrivals(url, bodies, 0.0)  # warm-up: the replica's embedding cache, as the reference's
        t0 = time.perf_counter()
        outs = streamed_arrivals(url, bodies, gap_s)
        wall = max(o["end"] for o in outs) - t0
    finally:
        serve.shutdown()
    tok_conc, tok_seq = sum(o["tokens"] for o in outs), sum(r.n_generated_tokens for r in refs)
    ttft, visible = [o["ttft"] for o in outs], [o["visible_ttft"] for o in outs]
    return {"concurrent16_tokens_per_s": round(tok_conc / wall, 1),
            "sequential16_reference_tokens_per_s": round(tok_seq / t_seq, 1),
            "speedup_concurrent16": round((tok_conc / wall) / (tok_seq / t_seq), 2),
            "speedup_engine_batch16": round((sum(r.n_generated_tokens for r in together) / t_batch) / (tok_seq / t_seq), 2),
            "concurrent16_wall_s": round(wall, 2), "sequential16_wall_s": round(t_seq, 2),
            "arrival_gap_s": gap_s, "ttft_p50_s": round(statistics.median(ttft), 3), "ttft_p99_s": round(pct(ttft, 0.99), 3),
            # first display text at the client: after any lookup block the answer opens with
            "visible_ttft_p50_s": round(statistics.median(visible), 3), "visible_ttft_p99_s": round(pct(visible, 0.99), 3),
            "latency_p50_s": round(statistics.median(o["latency"] for o in outs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens, one model: under 60 s")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine spin-wait: 10x slower per token
    (n_new, n_conc, conc_lookups, gap) = (16, 12, 1, 0.05) if args.quick else (24, 128, 2, 0.1)
    hidden, layers = 512, 8
    repeats = 1 if args.quick else 2
    res: dict = {"load_avg_1m_at_start": round(os.getloadavg()[0], 2), "repeats": repeats, "quick": args.quick, "model": f"llama random h{hidden} l{layers} i{4 * hidden}", "device": "cpu",
                 "torch_threads": 1, "embedding_cache": "warm for both loops"}
    # Query fields capped at 4 tokens: a random model would write them to any cap; real ones are short.
    p = GenerationParams(max_new_tokens=n_new, max_lookups=6, max_query_tokens=4, ignore_eos=True, fallback="top1_anyway")
    t0 = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp, FactStore.open(FactStoreConfig()) as store:
        store.add_triples(synthetic_triples(), annotator="bench")
        model, tok = build(Path(tmp), hidden, layers)
        engine = Engine(model, tok, store)
        progress("model built; batch 1")
        figures, t_on, n_on = batch1(engine, p, repeats)
        res.update(figures)
        progress("lookup overhead and transformers generate")
        res.update(overhead_and_ceiling(engine, t_on, n_on, repeats))
        progress("16 requests: sequential reference, then Serve")
        res.update(concurrent16(engine, Path(tmp), store.connection_url, n_conc, conc_lookups, gap))
        if not args.quick:  # the llama2-176m shape (docs/method.md §5), random weights
            big_dir = Path(tmp) / "176m"
            big, big_tok = build(big_dir, 512, 8, intermediate=11008)
            res["model_176m"] = "llama2-176m shape: h512 l8 i11008, random"
            res.update(batch1(Engine(big, big_tok, store), p, repeats, "_176m")[0])
    res["bench_wall_s"] = round(time.perf_counter() - STARTED, 1)
    res["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
