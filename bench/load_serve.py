"""Load test: C concurrent clients send N requests to the LMLM app on 127.0.0.1.

    python bench/load_serve.py [--quick] [--url http://127.0.0.1:8000] [--clients 32] [--requests 1000]

Without --url it starts its own local app (tiny random model, real FactStore). Every 10th request
is poisoned (seed 2^70, temperature 5e-324, logit bias 1e39, max_lookups 10^9, 100,000 stop strings)
and must get its own 400/413; `errors` counts failures among the good requests only. Prints
errors, p50/p99 latency and tokens/s; last line: one JSON object (throughput also as a ratio
against one client sending the same requests one at a time, measured in the same run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from generate import PROMPTS, build, start_serve  # bench/generate.py (this script's directory is on sys.path)


# Mixed in as every POISON_EVERY-th request: each must get its own 400/413 and harm no other request.
POISONED = [({"seed": 2**70}, 400), ({"temperature": 5e-324}, 400), ({"logit_bias": {"5": 1e39}}, 400),
            ({"max_lookups": 10**9}, 400), ({"stop": [str(i) for i in range(100_000)]}, 400)]  # 413 once over max_body_bytes
POISON_EVERY = 10


def run_load(url: str, n: int, clients: int, max_tokens: int, poison: bool = True) -> dict:
    import httpx

    lat, toks, errors, poisoned_ok, poisoned_bad = [], [], [], [0], []
    lock, counter = threading.Lock(), iter(range(n))

    def worker():
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "max_lookups": 2,
                        "max_query_tokens": 8}
                if poison and i % POISON_EVERY == POISON_EVERY - 1:
                    extra, want = POISONED[(i // POISON_EVERY) % len(POISONED)]
                    r = c.post(f"{url}/v1/completions", json={**body, **extra})
                    with lock:
                        if r.status_code == want:
                            poisoned_ok[0] += 1
                        else:
                            poisoned_bad.append(f"{list(extra)[0]}: {r.status_code}")
                    continue
                t = time.perf_counter()
                try:
                    r = c.post(f"{url}/v1/completions", json=body)
                    r.raise_for_status()
                    u = r.json()["usage"]
                except Exception as e:  # noqa: BLE001 — counted and reported
                    with lock:
                        errors.append(repr(e)[:200])
                    continue
                with lock:
                    lat.append(time.perf_counter() - t)
                    toks.append(u["completion_tokens"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan"))
    return {"requests": n, "clients": clients, "good_requests": len(lat) + len(errors), "errors": len(errors),
            "first_errors": errors[:3], "poisoned": poisoned_ok[0] + len(poisoned_bad),
            "poisoned_rejected_by_name": poisoned_ok[0], "poisoned_unexpected": poisoned_bad[:3],
            "p50_s": round(q(0.5), 3), "p99_s": round(q(0.99), 3), "mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "tokens_per_s": round(sum(toks) / wall, 1), "requests_per_s": round(len(lat) / wall, 2), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200 requests, < 60 s")
    ap.add_argument("--url", default=None, help="a running app; default: start a local one")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    n = args.requests or (200 if args.quick else 1000)

    def measure(url: str) -> dict:
        run_load(url, 4, 4, args.max_tokens, poison=False)  # warm-up
        base = run_load(url, min(32, n), 1, args.max_tokens, poison=False)
        res = run_load(url, n, args.clients, args.max_tokens)
        res["baseline_one_client_tokens_per_s"] = base["tokens_per_s"]
        res["throughput_vs_one_client"] = round(res["tokens_per_s"] / base["tokens_per_s"], 2)
        return res

    if args.url:
        res = measure(args.url)
    else:
        from ray import serve

        from lmlm.factstore import FactStore, FactStoreConfig
        from lmlm.testing.tiny import synthetic_triples

        with tempfile.TemporaryDirectory() as tmp, FactStore.open(FactStoreConfig()) as store:
            store.add_triples(synthetic_triples(), annotator="bench")
            build(Path(tmp), 256, 4)
            url = start_serve(Path(tmp), store.connection_url, max_batch_size=32)
            try:
                res = measure(url)
            finally:
                serve.shutdown()
    print(f"errors {res['errors']}  p50 {res['p50_s']} s  p99 {res['p99_s']} s  {res['tokens_per_s']} tokens/s  "
          f"{res['requests_per_s']} req/s", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
