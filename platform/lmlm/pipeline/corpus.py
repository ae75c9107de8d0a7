"""The pipeline on an annotated corpus (real text): what `make wiki` runs.

    corpus (data registry) -> build_factstore -> pretrain LMLM + standard -> evaluate

The corpus is already annotated (e.g. the reference's Wikipedia paragraphs annotated by GPT-4o),
so the world, annotator and annotation stages of lmlm.pipeline.world have nothing to do. The store holds
the facts of every annotated document, evaluation documents included (the evaluation database of
docs/method.md §7: the LMLM is tested on looking facts up, not on knowing them). Both models train
on the training split only, from the same start (a pretrained model or from scratch), and are
measured on the held-out split with lmlm.eval.realtext. Results go to `run_dir/results.json`.

The training split streams: the driver lists the files, Ray tasks cut them into shards, Ray Data's
workers read them (`split_dataset`), load their facts into the store (factstore.bulk) and pack them
for the trainers; the driver holds counts and the (small) evaluation split. `stage_corpus` reads
both splits in one process instead, for harnesses without Ray (bench/gpu.py).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from lmlm.config import save_config
from lmlm.corpus import Record
from lmlm.eval.results import RealTextResults
from lmlm.pipeline.config import CorpusSplits, PipelineConfig, pretrain_config
from lmlm.pipeline.runtime import StageTimer, ensure_ray, finished_models, open_store


def split_files(splits: CorpusSplits, which: str) -> list[Path]:
    """The local, verified paths of the `which` ("train" | "eval") files."""
    from lmlm.datasets import dataset_file

    names = getattr(splits, which)
    if splits.dataset:
        return [dataset_file(splits.dataset, n) for n in names]
    paths = [Path(n) for n in names]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"corpus.{which}: {p} is not a file (or name a registry data set in corpus.dataset)")
    return paths


def read_split(splits: CorpusSplits, which: str) -> list[Record]:
    from lmlm.corpus import read_corpus

    records = [r for p in split_files(splits, which) for r in read_corpus(p) if r.annotated_text.strip()]
    if not records:
        raise ValueError(f"corpus.{which}: the files hold no annotated document")
    return records


SHARD_DOCS = 500  # documents per read task of a split


def _shard_documents(shard: dict) -> list[dict]:
    """The annotated documents of one shard (in a Ray worker): {id, text, annotated_text, triples, annotator}."""
    from pyarrow import fs

    from lmlm.annotate.inputs import plain_text, shard_items
    from lmlm.format import to_special

    out = []
    for item in shard_items(fs.LocalFileSystem(), shard):
        if not isinstance(item, Record):
            raise ValueError(f"corpus: {item}")
        if item.annotated_text.strip():
            triples = to_special(item.annotated_text).triples
            out.append({"id": item.id, "text": plain_text(item), "annotated_text": item.annotated_text,
                        "triples": json.dumps([[t.entity, t.relation, t.value] for t in triples]),
                        "annotator": "corpus"})
    return out


def split_dataset(splits: CorpusSplits, which: str):
    """The `which` split's annotated documents as a Ray Dataset, in file order (`_shard_documents`'s
    columns): Ray tasks scan the files into shards of SHARD_DOCS, workers read them."""
    import ray
    from pyarrow import fs
    from ray.data import DataContext

    from lmlm.annotate.inputs import scan_file

    DataContext.get_current().execution_options.preserve_order = True  # `train_max_docs`: the first N
    scan = ray.remote(scan_file)
    local = fs.LocalFileSystem()
    shards = [s for part in ray.get([scan.remote(local, str(p), p.name, SHARD_DOCS)
                                     for p in split_files(splits, which)]) for s in part]
    return ray.data.from_items(shards, override_num_blocks=max(1, len(shards))).flat_map(_shard_documents)


def _split_counts(batch: dict, eval_texts: frozenset) -> dict:
    return {"docs": [len(batch["id"])], "lookups": [sum(len(json.loads(t)) for t in batch["triples"])],
            "overlap": [sum(str(t) in eval_texts for t in batch["text"])]}


def stage_corpus_dataset(splits: CorpusSplits):
    """(training split as a Ray Dataset, evaluation records, training documents): the evaluation
    split is read here (it is small: it is evaluated here); the training split is checked by the
    workers in one pass (documents, lookups, overlap with the evaluation split), never read here."""
    held = split_dataset(splits, "eval").take_all()
    if not held:
        raise ValueError("corpus.eval: the files hold no annotated document")
    train = split_dataset(splits, "train")
    if splits.train_max_docs:
        train = train.limit(splits.train_max_docs)
    counts = {"docs": 0, "lookups": 0, "overlap": 0}
    for b in train.map_batches(_split_counts, batch_format="numpy", batch_size=SHARD_DOCS,
                               fn_kwargs={"eval_texts": frozenset(r["text"] for r in held)}).iter_batches(
                                   batch_size=None, batch_format="numpy"):
        for k in counts:
            counts[k] += int(b[k].sum())
    if not counts["docs"]:
        raise ValueError("corpus.train: the files hold no annotated document")
    if counts["overlap"]:
        raise ValueError(f"corpus: {counts['overlap']} evaluation documents also appear in the training split")
    print(f"corpus: {counts['docs']} training documents ({counts['lookups']} lookups, read by Ray Data's "
          f"workers), {len(held)} evaluation documents", flush=True)
    return train, held, counts["docs"]


def stage_corpus(splits: CorpusSplits, out_dir: Path) -> tuple[list[Record], list[Record]]:
    """(train, eval) records; their annotated texts are also written to out_dir/{train,eval}.jsonl."""
    from lmlm.corpus import write_corpus

    train, held_out = read_split(splits, "train"), read_split(splits, "eval")
    if splits.train_max_docs:
        train = train[:splits.train_max_docs]
    overlap = {r.text for r in train} & {r.text for r in held_out}
    if overlap:
        raise ValueError(f"corpus: {len(overlap)} evaluation documents also appear in the training split")
    for name, records in (("train.jsonl", train), ("eval.jsonl", held_out)):
        if not (out_dir / name).is_file():
            write_corpus(records, out_dir / name)
    n_lookups = sum(r.annotated_text.count("dblookup(") + r.annotated_text.count("<|db_entity|>") for r in train)
    print(f"corpus: {len(train)} training documents ({n_lookups} lookups), {len(held_out)} evaluation "
          f"documents -> {out_dir}", flush=True)
    return train, held_out


def stage_load_split_facts(store, train, splits: CorpusSplits, batch_id: str, workers: int = 2) -> dict:
    """Load the facts of every document of both splits (`train`: the training split's Dataset)
    through factstore.bulk's loader actors, which read them from the workers' blocks (exactly once
    per document: a rerun writes nothing)."""
    from lmlm.factstore.bulk import load_dataset

    cols = ["id", "triples", "annotator"]
    ds = train.select_columns(cols).union(split_dataset(splits, "eval").select_columns(cols))
    counts = load_dataset(ds, dataclasses.replace(store.cfg, url=store.connection_url), batch_id=batch_id,
                          workers=workers, batch_docs=256, cpus_per_worker=0.5)
    loaded = {"loaded": counts["written"], "replayed": counts["replayed"], "invalid": counts["invalid"]}
    print(f"build_factstore: {json.dumps(loaded)} from {counts['documents']} documents; "
          f"store: {json.dumps(store.stats())}")
    return loaded


def stage_build_factstore(store, records: list[Record], batch_id: str) -> dict:
    """Load the facts of every document, exactly once (a rerun with the same `batch_id` writes nothing)."""
    from lmlm.eval.realtext import load_corpus_facts

    loaded = load_corpus_facts(store, [r.annotated_text for r in records], [r.id for r in records],
                               annotator="corpus", batch_id=batch_id)
    print(f"build_factstore: {json.dumps(loaded)} from {len(records)} documents; store: {json.dumps(store.stats())}")
    return loaded


def stage_pretrain(pretrain, train, out_dir: Path) -> dict[str, str]:
    """Train the LMLM and the standard model (PretrainConfig `pretrain`) on the training split
    (records, or a Ray Dataset with an `annotated_text` column, streamed to the trainers)."""
    from lmlm.train.compare import train_both

    docs = [r.annotated_text for r in train] if isinstance(train, list) else train.select_columns(["annotated_text"])
    results = train_both(pretrain, docs, out_dir)
    for variant, r in results.items():
        last = r.metrics[-1] if r.metrics else {}
        print(f"pretrain[{variant}]: step {r.final_step}, last metrics "
              f"{json.dumps({k: round(last[k], 4) for k in sorted(last) if 'loss' in k})} -> {r.hf_dir}")
    return {v: r.hf_dir for v, r in results.items()}


def stage_evaluate(models: dict[str, str], store, held_out: list[Record], realtext) -> dict:
    from lmlm.eval.realtext import evaluate_corpus
    from lmlm.eval.scoring import load_model

    lmlm, standard = load_model(models["lmlm"], "lmlm"), load_model(models["standard"], "standard")
    return evaluate_corpus(lmlm, standard, [r.annotated_text for r in held_out], store, realtext)


ROWS = (("normalized perplexity", "ppl_normalized"), ("static perplexity", "ppl_static"),
        ("loss on text tokens (nats)", "text_loss"), ("loss on entity tokens", "entity_loss"),
        ("loss on relation tokens", "relation_loss"), ("loss on lookup markers", "marker_loss"),
        ("loss on value tokens", "value_loss"))


def print_summary(results: RealTextResults) -> None:
    def f(v) -> str:
        return "-" if v is None or v != v else (f"{v:.4g}" if isinstance(v, float) else str(v))

    print(f"\n{'metric (' + str(results.docs) + ' evaluation documents)':48s} {'LMLM':>10s} {'standard':>10s} "
          f"{'lookups off':>11s}")
    for title, key in ROWS:
        print(f"{title:48s} {f(getattr(results, key + '_lmlm', None)):>10s} "
              f"{f(getattr(results, key + '_standard', None)):>10s}")
    if results.completion_n:
        print(f"{'completion exact match (' + str(results.completion_n) + ' values)':48s} "
              f"{f(results.completion_em_lmlm):>10s} {f(results.completion_em_standard):>10s} "
              f"{f(results.completion_em_lmlm_db_off):>11s}")
    print(f"\nwall time {results.wall_s} s; stages {json.dumps(results.stage_wall_s)}")


def run_corpus_pipeline(cfg: PipelineConfig) -> RealTextResults:
    """The pipeline on an annotated corpus: corpus -> build_factstore -> pretrain -> evaluate; results
    in run_dir/results.json."""
    from lmlm.eval.results import read_results, write_results

    t0 = time.perf_counter()
    cfg.path().mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.path("pipeline_config.yaml"))
    timed = StageTimer(print)

    selected = set(cfg.stages)
    results_file = cfg.path("results.json")
    results = read_results(results_file, RealTextResults) if results_file.is_file() else RealTextResults()
    ensure_ray(cfg)
    train, held, n_train = timed("corpus", stage_corpus_dataset, cfg.corpus)
    held_out = [Record(r["id"], r["text"], r["annotated_text"]) for r in held]
    with open_store(cfg) as store:
        if "build_factstore" in selected:
            timed("build_factstore", stage_load_split_facts, store, train, cfg.corpus, "corpus")
        models = finished_models(cfg)
        if "pretrain" in selected:
            models = timed("pretrain", stage_pretrain, pretrain_config(cfg), train, cfg.path("pretrain"))
        if "evaluate" in selected and models and results.ppl_normalized_lmlm is None:
            results = RealTextResults()
            results.update(timed("evaluate", stage_evaluate, models, store, held_out, cfg.realtext))
    results.update({"wall_s": round(time.perf_counter() - t0, 1), "stage_wall_s": timed.timings,
                    "start": cfg.pretrain.model, "train_documents": n_train})
    write_results(results, cfg.path())
    print_summary(results)
    print(f"all numbers: {results_file}")
    return results
