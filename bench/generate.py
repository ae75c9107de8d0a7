"""Benchmark: batched KV-cache engine vs the re-prefill reference loop (LMLM.md §6).

    python bench/generate.py [--quick]

1. One prompt, >= 5 lookups, N new text tokens, greedy: engine vs reference on the same model.
2. 16 concurrent requests through a local Ray Serve app vs the same 16 one by one through the reference.
3. Lookup overhead: engine tokens/s with lookups vs the same model generating as many tokens without.
The model is a randomly initialised LLaMA-style model (the lookup-token bias makes it look things
up); the store is a real FactStore (private Redis 8). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from lmlm.factstore import FactStore, FactStoreConfig  # noqa: E402
from lmlm.generate import Engine, GenerationParams, reference_generate  # noqa: E402
from lmlm.generate.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer  # noqa: E402
from lmlm.netutil import free_port  # noqa: E402

PROMPTS = [f"Tell me a bio of {p}. {p} is" for p in
           ["Ada Varen", "Bo Lindqvist", "Cyra Moss", "Dario Fenn", "Elin Sato", "Farid Oyelaran", "Greta Holm",
            "Hugo Marsh", "Ines Calder", "Jonas Pike", "Kira Dunn", "Lev Arno", "Mara Quist", "Nils Brant",
            "Oona Reyes", "Pavel Stroud"]]


def build(model_dir: Path, hidden: int, layers: int):
    tok = tiny_tokenizer(synthetic_texts(), vocab_size=2000, out_dir=model_dir)
    model = tiny_model(len(tok), hidden=hidden, layers=layers, heads=max(1, hidden // 64), max_len=2048)
    model.save_pretrained(model_dir)
    return model, tok


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def start_serve(model_dir: Path, store_url: str, max_batch_size: int = 16):
    """A local Serve app on 127.0.0.1 (returns its base URL); the caller calls serve.shutdown()."""
    import ray
    from ray import serve

    from lmlm.serve.app import ServeConfig, build_app, model_from_dir, store_at, tokenizer_from_dir

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(model_path=str(model_dir), max_batch_size=max_batch_size, batch_wait_timeout_s=0.2,
                      max_tokens_limit=2048, torch_threads=1)
    serve.run(build_app(cfg, model_loader=partial(model_from_dir, str(model_dir)),
                        tokenizer_loader=partial(tokenizer_from_dir, str(model_dir)),
                        store_loader=partial(store_at, store_url)), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def concurrent_posts(url: str, bodies: list[dict], clients: int) -> list[tuple[float, dict]]:
    import httpx

    def one(client, body):
        t = time.perf_counter()
        r = client.post(f"{url}/v1/generate", json=body)
        r.raise_for_status()
        return time.perf_counter() - t, r.json()

    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client, \
            concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(partial(one, client), bodies))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine spin-wait: 10x slower per token
    n_new, n_conc, conc_lookups, hidden, layers = (48, 16, 2, 256, 4) if args.quick else (256, 128, 5, 512, 8)
    res: dict = {"quick": args.quick, "model": f"llama random h{hidden} l{layers}", "device": "cpu", "torch_threads": 1,
                 "embedding_cache": "warm for both loops"}
    with tempfile.TemporaryDirectory() as tmp, FactStore.open(FactStoreConfig()) as store:
        store.add_triples(synthetic_triples(), annotator="bench")
        model, tok = build(Path(tmp), hidden, layers)
        engine = Engine(model, tok, store)
        p = GenerationParams(max_new_tokens=n_new, max_lookups=6, max_query_tokens=8, ignore_eos=True,
                             fallback="top1_anyway")
        # Every timed workload first runs once untimed with the same inputs. Besides warming up, this
        # fills the store's embedding cache with exactly the (fuzzy, random-model) queries that workload
        # makes, so both sides pay the same warm lookup cost; otherwise whichever loop ran first would
        # pay the query embeddings (about 0.2-0.5 s each on a loaded 2-core machine) and the other not.
        engine.generate(PROMPTS[:1], p)  # at greedy the reference makes the same queries (parity)

        # 1. batch 1: engine vs reference
        [e1], t_eng = timed(lambda: engine.generate(PROMPTS[:1], p))
        [r1], t_ref = timed(lambda: reference_generate(engine, PROMPTS[:1], p))
        res.update(lookups_per_prompt=len(e1.lookups), batch1_engine_s=round(t_eng, 3), batch1_reference_s=round(t_ref, 3),
                   speedup_vs_reference_batch1=round(t_ref / t_eng, 2), parity_batch1=e1.token_ids == r1.token_ids,
                   batch1_tokens=e1.n_generated_tokens)

        # 3. lookup overhead: same number of generated tokens without lookups
        n_all = e1.n_generated_tokens
        [e0], t_off = timed(lambda: engine.generate(PROMPTS[:1], GenerationParams(max_new_tokens=n_all, use_lookups=False,
                                                                                    ignore_eos=True)))
        res.update(lookup_overhead_ratio=round((n_all / t_eng) / (e0.n_generated_tokens / t_off), 3),
                   tokens_per_s_with_lookups=round(n_all / t_eng, 1), tokens_per_s_without=round(e0.n_generated_tokens / t_off, 1))

        # 2. 16 concurrent requests through Serve vs 16 sequential reference runs
        pc = GenerationParams(max_new_tokens=n_conc, max_lookups=conc_lookups, max_query_tokens=8, ignore_eos=True,
                              fallback="top1_anyway")
        reference_generate(engine, PROMPTS, pc)
        refs, t_seq = timed(lambda: reference_generate(engine, PROMPTS, pc))
        from ray import serve

        url = start_serve(Path(tmp), store.url)
        try:
            body = {"max_tokens": n_conc, "max_lookups": conc_lookups, "max_query_tokens": 8, "fallback": "top1_anyway"}
            concurrent_posts(url, [{"prompt": q, **body} for q in PROMPTS], 16)
            # ignore_eos is not an HTTP field: the random model rarely emits EOS; count real tokens.
            outs, t_conc = timed(lambda: concurrent_posts(url, [{"prompt": q, **body} for q in PROMPTS], 16))
        finally:
            serve.shutdown()
        tok_conc = sum(o[1]["usage"]["completion_tokens"] for o in outs)
        tok_seq = sum(r.n_generated_tokens for r in refs)
        res.update(concurrent16_tokens_per_s=round(tok_conc / t_conc, 1), sequential16_reference_tokens_per_s=round(tok_seq / t_seq, 1),
                   speedup_concurrent16=round((tok_conc / t_conc) / (tok_seq / t_seq), 2),
                   concurrent16_wall_s=round(t_conc, 2), sequential16_wall_s=round(t_seq, 2),
                   concurrent16_max_batch=max(o[1]["batch_size"] for o in outs))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
