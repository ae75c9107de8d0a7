"""Annotation benchmark: quality of the trained annotators (tagger, minilm, generative) and speed of the pipeline.

Quality (both annotators trained on the same seeds; F1 under two matching rules, see lmlm.annotate.evaluation:
`exact` = entity, relation and value equal after normalize_key; `entity_value` = relation ignored)
- in-world: trained on the gold documents of one synthetic world, scored on the documents of another
  world (other people, the same sentence templates);
- held-out phrasing: scored on lmlm.testing.annotator_heldout documents (evaluation-only sentences about people
  named from a name pool the world never uses);
- generative (`--generative` only, about an hour on 2 cores): SmolLM2-135M fine-tuned with LoRA on the
  first 100 gold documents of the same world (2 passes), scored on 40 documents of each synthetic set;
  its loop and 1- and 2-actor runs on 16 documents, 1 thread per worker (`generative_` + the speed keys
  below: the annotator whose cost per document dominates Ray's overheads); then trained on 300
  squad-train1k paragraphs (1 pass) and scored on squad-eval100 as below;
- SQuAD (full run only): trained on squad-train1k (GPT-4o annotations), run on the plain `text` of
  squad-eval100, compared with GPT-4o's triples (tagger with span_weight=3, as before; minilm with a
  frozen encoder; minilm_ft with the encoder fine-tuned and one value tag). `--squad-only`: just these.
Keys `<kind>_f1_<set>[_exact]`; the headline `f1_synthetic` (exact) and `f1_heldout_phrasing`
(entity+value) are the default annotator's (the tagger: AnnotateConfig/TrainAnnotatorConfig default).
Speed (same documents, torch 1 thread per worker)
- docs_per_s_loop: the tagger in a plain single-process loop (annotate + validate), the baseline;
- docs_per_s_1_actor / _2_actors: run_annotation with a 1- and 2-actor pool (shards of 50 documents, the
  pool's unit of work, written by the actors; fact-store loading off), measured from dataset creation to
  the last shard written;
- speedup_2_actors = 2 actors / 1 actor; overhead_vs_loop = 1-actor time / loop time - 1.
  `*_steady` figures leave out the time to the first result (actor start-up: process, imports, model);
- minilm_docs_per_s_loop: the minilm annotator in the same loop (and in the full run all the
  figures above for it, prefixed minilm_, on minilm_speed_docs documents); minilm_train_s / tagger_train_s:
  training time on the in-world seeds (minilm: encoder states + head).

    python bench/annotate.py --quick     # < 60 s; last line: one JSON object
    python bench/annotate.py --generative   # the generative rows (about an hour)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from lmlm.annotate import (AnnotateConfig, MiniLMTrainConfig, evaluate_annotator, fit_minilm, fit_tagger,  # noqa: E402
                           run_annotation)
from lmlm.testing.annotator_heldout import heldout_documents  # noqa: E402
from lmlm.annotate.threads import torch_threads  # noqa: E402
from lmlm.annotate.pipeline import annotate_loop  # noqa: E402
from lmlm.corpus import Record, read_corpus, write_jsonl  # noqa: E402
from lmlm.world import WorldConfig, generate_world  # noqa: E402

SQUAD_TRAIN, SQUAD_EVAL = "squad-train1k_chatgpt_gpt4o-v7.1_cleaned.json", "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _scores(res: dict, kind: str, name: str, m: dict) -> None:
    res[f"{kind}_f1_{name}"] = m["entity_value"]["f1"]
    res[f"{kind}_f1_{name}_exact"] = m["exact"]["f1"]
    res[f"{kind}_precision_{name}_exact"] = m["exact"]["precision"]
    res[f"{kind}_recall_{name}_exact"] = m["exact"]["recall"]


def _squad_files() -> tuple[Path, Path] | None:
    """The two SQuAD files of lmlm-wiki when they are here and verified (nothing is downloaded)."""
    from lmlm.datasets import dataset_file, status

    try:
        if any(status("lmlm-wiki").get(f) != "ok" for f in (SQUAD_TRAIN, SQUAD_EVAL)):
            return None
        return dataset_file("lmlm-wiki", SQUAD_TRAIN), dataset_file("lmlm-wiki", SQUAD_EVAL)
    except (KeyError, ValueError, OSError):
        return None


def _squad_scores(res: dict, kind: str, m: dict) -> None:
    ev_m, ex_m = m["entity_value"], m["exact"]
    res.update({f"{kind}_squad_eval100_entity_value_f1": ev_m["f1"],
                f"{kind}_squad_eval100_entity_value_precision": ev_m["precision"],
                f"{kind}_squad_eval100_entity_value_recall": ev_m["recall"],
                f"{kind}_squad_eval100_exact_triple_f1": ex_m["f1"],
                f"{kind}_squad_predicted_triples": ex_m["predicted"], "squad_gold_triples": ex_m["gold"]})
    log(f"squad {kind}: {m}")


def _synthetic_sets(args) -> tuple[list[str], list[str], list[str]]:
    """Seeds (gold documents of one world), and the in-world and held-out-phrasing evaluation documents."""
    return ([d.annotated_text for d in generate_world(WorldConfig(people=args.train_people, seed=0)).documents],
            [d.annotated_text for d in generate_world(WorldConfig(people=args.eval_people, seed=1)).documents],
            [d.annotated_text for d in heldout_documents(args.eval_people, seed=1)])


def squad(args, res: dict) -> None:
    files = _squad_files() if args.squad else None
    if not files:
        log("squad: left out (--quick, or lmlm-wiki not fetched: lmlm data fetch lmlm-wiki)")
        return
    train = [r.annotated_text for r in read_corpus(files[0])]
    ev = read_corpus(files[1])
    gold, texts = [r.annotated_text for r in ev], [r.text for r in ev]
    # minilm_ft: the encoder fine-tuned with the head, one value tag for all relations (GPT-4o's relations
    # are free text: 32 relation tags read values at half the F1 of one)
    ft = MiniLMTrainConfig(finetune_epochs=3, span_weight=4.0, max_relations=1)
    trainers = {"tagger": lambda: fit_tagger(train, epochs=args.squad_epochs, span_weight=3.0, log=lambda s: None),
                "minilm": lambda: fit_minilm(train, MiniLMTrainConfig(epochs=args.minilm_epochs), log=log),
                "minilm_ft": lambda: fit_minilm(train, ft, threads=2, log=log)}
    for kind, train_fn in trainers.items():
        t = time.time()
        _squad_scores(res, kind, evaluate_annotator(train_fn(), gold, texts=texts))
        res[f"{kind}_squad_seconds"] = time.time() - t
    res["f1_squad_eval100_entity_value"] = res["tagger_squad_eval100_entity_value_f1"]
    res["exact_triple_f1"] = res["tagger_squad_eval100_exact_triple_f1"]


def generative_scaling(model_dir: Path, work: Path, n_docs: int) -> dict:
    """Actor scaling where a document's cost dominates: the generative annotator, 1 thread per worker."""
    import ray

    world = generate_world(WorldConfig(people=n_docs, seed=2))
    src = write_jsonl([Record(d.id, d.text, "", "world", {}) for d in world.documents], work / "gen-speed.jsonl")
    cfg = AnnotateConfig(input=str(src), trained_path=str(model_dir), batch_size=4, load_store=False, progress=False,
                         threads_per_actor=1, num_cpus_per_actor=0.5)
    with torch_threads(1):
        loop_s = _loop_s(cfg, [d.text for d in world.documents])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        res = _scaling(cfg, n_docs, loop_s, work, prefix="generative_")
    finally:
        ray.shutdown()
    log(f"generative scaling: {res}")
    return res


def generative(args, res: dict, work: Path) -> None:
    """The generative annotator (SmolLM2 + LoRA, 2 threads throughout): trained on the first `gen_seeds` gold documents
    of the same world as the others, scored on `gen_eval` documents of each synthetic set, and on
    squad-eval100 after training on `gen_squad_seeds` squad-train1k paragraphs."""
    from lmlm.annotate.config import GenerativeTrainConfig
    from lmlm.annotate.kinds.generative import fit_generative

    seeds, in_world, heldout = _synthetic_sets(args)
    sets = {"synthetic": in_world, "heldout_phrasing": heldout}
    cfg = GenerativeTrainConfig(epochs=args.gen_epochs)
    torch.set_num_threads(2)  # training and decoding both use the 2 cores
    t = time.time()
    ann = fit_generative(seeds[:args.gen_seeds], cfg, threads=2, log=log)
    res.update(generative_seed_docs=args.gen_seeds, generative_train_s=time.time() - t,
               generative_final_loss=ann.meta["final_loss"])
    for name, docs in sets.items():
        t = time.time()
        _scores(res, "generative", name, evaluate_annotator(ann, docs[:args.gen_eval]))
        res[f"generative_{name}_docs_per_s"] = args.gen_eval / (time.time() - t)
    log(f"generative synthetic: {res}")
    res.update(generative_scaling(ann.save(work / "generative"), work, args.gen_speed_docs))
    files = _squad_files() if args.squad else None
    if files:
        train = [r.annotated_text for r in read_corpus(files[0])][:args.gen_squad_seeds]
        ev = read_corpus(files[1])
        t = time.time()
        ann = fit_generative(train, replace(cfg, epochs=args.gen_squad_epochs), threads=2, log=log)
        res["generative_squad_train_s"] = time.time() - t
        t = time.time()
        _squad_scores(res, "generative", evaluate_annotator(ann, [r.annotated_text for r in ev], texts=[r.text for r in ev]))
        res.update(generative_squad_seed_docs=len(train), generative_squad_eval_s=time.time() - t)


def quality(args, work: Path) -> tuple[dict, Path, Path]:
    seeds, in_world, heldout = _synthetic_sets(args)
    res: dict = {"synthetic_train_docs": len(seeds), "synthetic_eval_docs": len(in_world),
                 "heldout_eval_docs": len(heldout)}
    t = time.time()
    tagger = fit_tagger(seeds, epochs=args.epochs, log=lambda s: None)
    res["tagger_train_s"] = time.time() - t
    t = time.time()
    minilm = fit_minilm(seeds, MiniLMTrainConfig(epochs=args.minilm_epochs), log=lambda s: None)
    res["minilm_train_s"] = time.time() - t
    for kind, ann in (("tagger", tagger), ("minilm", minilm)):
        t = time.time()
        _scores(res, kind, "synthetic", evaluate_annotator(ann, in_world))
        _scores(res, kind, "heldout_phrasing", evaluate_annotator(ann, heldout))
        res[f"{kind}_eval_s"] = time.time() - t
    res["f1_synthetic"] = res["tagger_f1_synthetic_exact"]
    res["f1_heldout_phrasing"] = res["tagger_f1_heldout_phrasing"]
    log(f"synthetic + held-out: {res}")
    squad(args, res)
    return res, tagger.save(work / "tagger"), minilm.save(work / "minilm")


def _loop_s(cfg: AnnotateConfig, texts: list[str]) -> float:
    annotate_loop(cfg, texts[:4])  # warm caches once, as the actors' first batch does
    t = time.time()
    annotate_loop(cfg, texts)
    return time.time() - t


def _scaling(cfg: AnnotateConfig, n_docs: int, loop_s: float, out: Path, prefix: str = "") -> dict:
    """1- and 2-actor runs of `cfg` against the loop time of the same documents."""
    runs, workers = {}, {}
    for n in (1, 2):
        s = run_annotation(AnnotateConfig(**{**cfg.__dict__, "num_actors": n, "output_dir": str(out / f"{prefix}out{n}")}),
                           log=log)
        runs[n] = (s["annotate_seconds"], s["annotate_seconds"] - s["first_result_s"])
        workers[n] = s["docs_per_worker"]
    res = {"docs_per_s_loop": n_docs / loop_s, "docs_per_s_1_actor": n_docs / runs[1][0],
           "docs_per_s_2_actors": n_docs / runs[2][0], "speedup_2_actors": runs[1][0] / runs[2][0],
           "overhead_vs_loop": runs[1][0] / loop_s - 1, "speedup_2_actors_steady": runs[1][1] / runs[2][1],
           "overhead_vs_loop_steady": runs[1][1] / loop_s - 1, "first_result_s_1_actor": runs[1][0] - runs[1][1],
           "docs_per_worker_2_actors": workers[2]}
    return {prefix + k: v for k, v in res.items()}


def speed(args, work: Path, model_dir: Path, minilm_dir: Path) -> dict:
    """The tagger's loop and actor scaling; the minilm annotator's loop (and its scaling in the full run)."""
    import ray

    world = generate_world(WorldConfig(people=args.speed_docs, seed=2))
    texts = [d.text for d in world.documents]
    src = write_jsonl([Record(d.id, d.text, "", "world", {}) for d in world.documents], work / "speed.jsonl")
    base = AnnotateConfig(input=str(src), trained_path=str(model_dir), batch_size=16, shard_docs=50,
                          load_store=False, progress=False, threads_per_actor=1, num_cpus_per_actor=0.5)
    minilm_cfg = AnnotateConfig(**{**base.__dict__, "annotator": "minilm", "trained_path": str(minilm_dir),
                                   "limit": args.minilm_speed_docs})
    loop_s = _loop_s(base, texts)
    minilm_loop_s = _loop_s(minilm_cfg, texts[:args.minilm_speed_docs])
    res = {"speed_docs": len(texts), "minilm_speed_docs": args.minilm_speed_docs,
           "minilm_docs_per_s_loop": args.minilm_speed_docs / minilm_loop_s}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        res.update(_scaling(base, len(texts), loop_s, work))
        if args.minilm_scaling:
            res.update(_scaling(minilm_cfg, args.minilm_speed_docs, minilm_loop_s, work, prefix="minilm_"))
    finally:
        ray.shutdown()
    log(f"speed: {res}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    ap.add_argument("--squad-only", action="store_true", help="the SQuAD quality rows only (full sizes)")
    ap.add_argument("--generative", action="store_true",
                    help="the generative annotator's quality rows only (SmolLM2 + LoRA; about an hour on 2 cores)")
    args = ap.parse_args()
    sizes = dict(train_people=24, eval_people=16, epochs=3, squad_epochs=3, minilm_epochs=10, speed_docs=300,
                 minilm_speed_docs=8, squad=False, minilm_scaling=False) if args.quick else \
        dict(train_people=300, eval_people=200, epochs=5, squad_epochs=6, minilm_epochs=10, speed_docs=4000,
             minilm_speed_docs=100, squad=True, minilm_scaling=True)
    sizes.update(gen_seeds=100, gen_epochs=2.0, gen_eval=40, gen_speed_docs=16, gen_squad_seeds=300,
                 gen_squad_epochs=1.0)
    for k, v in sizes.items():
        setattr(args, k, v)
    t0 = time.time()
    torch.set_num_threads(1)  # one worker = one thread, for the loop, the actors and training alike
    if args.squad_only or args.generative:
        res: dict = {}
        if args.generative:
            with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp:
                generative(args, res, Path(tmp))
        else:
            squad(args, res)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp:
            res, model_dir, minilm_dir = quality(args, Path(tmp))
            res.update(speed(args, Path(tmp), model_dir, minilm_dir))
    res = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    res.update(quick=args.quick, cpu_count=os.cpu_count(), load_avg_1m=round(os.getloadavg()[0], 2),
               seconds=round(time.time() - t0, 1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
