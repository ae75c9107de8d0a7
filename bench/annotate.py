"""Annotation benchmark: quality of the trained annotator and speed of the Ray Data pipeline.

Quality
- f1_synthetic: tagger trained on the gold documents of one synthetic world, scored on the documents
  of another world (other people) against their ground-truth triples (exact normalised triples).
- SQuAD: tagger trained on squad-train1k (GPT-4o annotations), run on the plain `text` of
  squad-eval100, compared with GPT-4o's triples of the same paragraphs under two matching rules:
  `exact` (entity, relation, value all equal after normalize_key) and `entity_value` (relation
  ignored). The headline precision/recall keys use `exact`; `*_entity_value` keys the other rule.
  (span_weight=3: value tags weigh 3x "O" in the loss, which roughly doubles recall on these sparse seeds.)
Speed (same annotator, same documents, torch 1 thread per worker)
- docs_per_s_loop: a plain single-process loop (annotate + validate), the baseline;
- docs_per_s_1_actor / _2_actors: run_annotation with a 1- and 2-actor pool (Parquet shards written,
  fact-store loading off), measured from dataset creation to the last shard written;
- speedup_2_actors = 2 actors / 1 actor; overhead_vs_loop = loop docs/s / 1-actor docs/s - 1.
  `*_steady` figures leave out the time to the first result (actor start-up: process, imports, model).

    python bench/annotate.py --quick     # < 60 s; last line: one JSON object
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from lmlm.annotate import AnnotateConfig, evaluate, fit, run_annotation  # noqa: E402
from lmlm.annotate.pipeline import annotate_loop  # noqa: E402
from lmlm.corpus import Record, read_corpus, write_jsonl  # noqa: E402
from lmlm.world import WorldConfig, generate_world  # noqa: E402

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lmlm-wiki"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quality(args, work: Path) -> tuple[dict, Path]:
    seeds = [d.annotated_text for d in generate_world(WorldConfig(people=args.train_people, seed=0)).documents]
    held = [d.annotated_text for d in generate_world(WorldConfig(people=args.eval_people, seed=1)).documents]
    t = time.time()
    tagger = fit(seeds, epochs=args.epochs, log=lambda s: None)
    syn = evaluate(tagger, held)["exact"]
    res = {"f1_synthetic": syn["f1"], "precision_synthetic": syn["precision"], "recall_synthetic": syn["recall"],
           "synthetic_train_docs": len(seeds), "synthetic_eval_docs": len(held),
           "synthetic_seconds": round(time.time() - t, 2)}
    log(f"synthetic: {res}")
    model_dir = tagger.save(work / "synthetic-annotator")
    if WIKI.is_dir():
        t = time.time()
        train = [r.annotated_text for r in read_corpus(WIKI / "squad-train1k_chatgpt_gpt4o-v7.1_cleaned.json")]
        ev = read_corpus(WIKI / "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json")
        squad = fit(train, epochs=args.squad_epochs, span_weight=3.0, log=lambda s: None)
        m = evaluate(squad, [r.annotated_text for r in ev], texts=[r.text for r in ev])
        res.update({"precision_squad_eval100": m["exact"]["precision"], "recall_squad_eval100": m["exact"]["recall"],
                    "precision_squad_eval100_entity_value": m["entity_value"]["precision"],
                    "recall_squad_eval100_entity_value": m["entity_value"]["recall"],
                    "squad_predicted_triples": m["exact"]["predicted"], "squad_gold_triples": m["exact"]["gold"],
                    "squad_seconds": round(time.time() - t, 2)})
        log(f"squad: {m}")
    else:
        log(f"squad: {WIKI} not found, SQuAD figures left out")
    return res, model_dir


def speed(args, work: Path, model_dir: Path) -> dict:
    import ray

    world = generate_world(WorldConfig(people=args.speed_docs, seed=2))
    texts = [d.text for d in world.documents]
    src = write_jsonl([Record(d.id, d.text, "", "world", {}) for d in world.documents], work / "speed.jsonl")
    base = AnnotateConfig(input=str(src), trained_path=str(model_dir), batch_size=16, shard_docs=500,
                          load_store=False, progress=False, threads_per_actor=1, num_cpus_per_actor=0.5)
    annotate_loop(base, texts[:20])  # warm caches once, as the actors' first batch does
    t = time.time()
    annotate_loop(base, texts)
    loop_s = time.time() - t
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        runs, workers = {}, {}
        for n in (1, 2):
            cfg = AnnotateConfig(**{**base.__dict__, "num_actors": n, "output_dir": str(work / f"out{n}")})
            s = run_annotation(cfg, log=log)
            runs[n] = (s["annotate_seconds"], s["annotate_seconds"] - s["first_result_s"])
            workers[n] = s["docs_per_worker"]
    finally:
        ray.shutdown()
    n_docs = len(texts)
    res = {"speed_docs": n_docs, "docs_per_s_loop": n_docs / loop_s,
           "docs_per_s_1_actor": n_docs / runs[1][0], "docs_per_s_2_actors": n_docs / runs[2][0]}
    res["speedup_2_actors"] = runs[1][0] / runs[2][0]
    res["overhead_vs_loop"] = runs[1][0] / loop_s - 1
    res["speedup_2_actors_steady"] = runs[1][1] / runs[2][1]
    res["overhead_vs_loop_steady"] = runs[1][1] / loop_s - 1
    res["first_result_s_1_actor"] = runs[1][0] - runs[1][1]
    res["docs_per_worker_2_actors"] = workers[2]
    log(f"speed: {res}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    args = ap.parse_args()
    sizes = dict(train_people=120, eval_people=100, epochs=3, squad_epochs=3, speed_docs=800) if args.quick else \
        dict(train_people=500, eval_people=500, epochs=5, squad_epochs=6, speed_docs=4000)
    for k, v in sizes.items():
        setattr(args, k, v)
    t0 = time.time()
    torch.set_num_threads(1)  # one worker = one thread, for the loop, the actors and training alike
    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp:
        res, model_dir = quality(args, Path(tmp))
        res.update(speed(args, Path(tmp), model_dir))
    res = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    res.update(quick=args.quick, cpu_count=os.cpu_count(), load_avg_1m=round(os.getloadavg()[0], 2),
               seconds=round(time.time() - t0, 1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
