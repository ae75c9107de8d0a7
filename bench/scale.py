"""How the data path's cost grows with the corpus: the driver's memory and the throughput of packing
pretraining data, and of the parallel fact-store load, each against its baseline in the same run.

    python bench/scale.py --quick     # pack and annotate, under 60 s on 2 cores; last line: one JSON object
    python bench/scale.py             # the full sizes of all three parts (tens of minutes)

pack: synthetic annotated documents in Parquet shards, packed into training rows at 1x and then 10x
  the corpus in one fresh driver process per mode, whose peak RSS is read after each (ru_maxrss):
  - current: what the trainer did before streaming: every document read into the driver, then
    tokenized and packed there (encode_and_pack) and put into the object store;
  - stream: Ray Data reads the shards and packs them in workers, rows stay in the object store
    (train.data.packed_dataset); the driver holds block references and counts.
  `driver_peak_rss_growth` = stream's peak RSS at 10x over 1x (goal <= 1.2); docs/s of both at 1x
  (each the first run of its process; the 10x runs start warm).
annotate: plain synthetic documents (JSONL) annotated by a trained tagger through run_annotation with
  one actor (shards written by the actor, store loading off), at 1x and then 10x in one fresh driver
  (after a 20-document run that warms it):
  `annotate_driver_peak_rss_growth` = its peak RSS at 10x over 1x (the driver holds counts, never
  documents; goal <= 1.2); steady: the documents the 10x run adds over the seconds it adds, so the
  fixed costs (actor start, model load) cancel. `steady_overhead_vs_loop` (goal <= 0.10) = those
  seconds over the seconds the actor spent, within them, in the plain loop's work (annotate_rows, the
  annotator and validation, over the same batches), minus 1: what reading and writing shards and Ray
  Data's scheduling add, both sides timed in the same seconds. Measured apart, a 2-core machine's speed
  drifts by tens of percent within minutes (five back-to-back runs of the loop: 166 to 275 docs/s), more
  than the margin; so the loop in its own process (pipeline.annotate_loop on the 1x documents once
  and twice, right before and right after the pipeline, their mean) is reported beside it:
  `in_actor_vs_separate_loop` (the actor's annotator against the plain process's, about 1 when the
  actor costs nothing) and `steady_overhead_vs_separate_loop`.
load: triples of synthetic documents loaded through factstore.bulk.load_dataset with 1 and 2 loader
  actors into a private Redis 8 (`load_speedup_2_workers`), and the projected time of the
  reference's 54.6M triples on 32 workers from the measured per-worker rate (linear: each worker
  has its own connection and embedder; Redis Cluster spreads the partitions).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_TRIPLES = 54_600_000


def write_corpus(out: Path, docs: int, per_shard: int = 500) -> Path:
    """`docs` annotated biographies (a small synthetic world's, repeated under new ids) in Parquet
    shards of `per_shard`, the annotation's default shard size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmlm.world import WorldConfig, generate_world

    texts = [d.annotated_text for d in generate_world(WorldConfig(people=300, seed=5)).documents]
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, docs, per_shard):
        n = min(per_shard, docs - start)
        pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(start, start + n)],
                                 "annotated_text": [texts[i % len(texts)] for i in range(start, start + n)]}),
                       out / f"shard-{start // per_shard:05d}.parquet")
    return out


def child_pack(corpus: Path, mode: str, tok_dir: str) -> dict:
    """One measured driver: pack `corpus` the `mode` way; returns docs/s and the peak RSS. Joining
    Ray and loading the tokenizer come first in both modes (the trainer does both either way) and
    are not timed."""
    import pyarrow.parquet as pq
    import ray

    from lmlm.rayinit import init_ray
    from lmlm.tokenizer import load_tokenizer

    init_ray(num_cpus=4)
    tokenizer = load_tokenizer(tok_dir)  # the trainer decides its tokenizer before it packs, either way
    files = sorted(corpus.glob("*.parquet"))
    docs = sum(pq.ParquetFile(p).metadata.num_rows for p in files)  # from the footers: the trainer never counts
    t = time.perf_counter()
    if mode == "current":
        from lmlm.corpus import read_corpus
        from lmlm.train.data import encode_and_pack

        texts = [r.annotated_text for p in files for r in read_corpus(p)]
        packed = encode_and_pack(texts, tokenizer, "lmlm", 256)
        ray.get([ray.put(packed.input_ids), ray.put(packed.kinds)])  # what the trainer then handed its workers
        rows = len(packed)
        assert len(texts) == docs
    else:
        from lmlm.storage import read_parquet
        from lmlm.train.data import packed_dataset

        rows = packed_dataset(read_parquet(str(corpus)), tok_dir, "lmlm", 256).count()
    seconds = time.perf_counter() - t
    return {"docs": docs, "rows": rows, "seconds": round(seconds, 2), "docs_per_s": round(docs / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def write_plain_corpus(out: Path, docs: int) -> Path:
    """`docs` plain biographies in one JSONL file: a 50-person synthetic world's, repeated under new
    ids, so every run of a multiple of 50 documents has the same mix (the loop's and the pipeline's)."""
    from lmlm.world import WorldConfig, generate_world

    texts = [d.text for d in generate_world(WorldConfig(people=50, seed=7)).documents]
    with out.open("w") as f:
        for i in range(docs):
            f.write(json.dumps({"id": f"doc-{i}", "text": texts[i % len(texts)]}) + "\n")
    return out


def _annotate_cfg(corpus: Path, tagger_dir: str):
    from lmlm.annotate import AnnotateConfig

    return AnnotateConfig(input=str(corpus), output_dir=str(corpus.with_suffix(".out")), trained_path=tagger_dir,
                          num_actors=1, num_cpus_per_actor=1.0, shard_docs=1000, load_store=False, progress=False)


def child_annotate(corpus: Path, mode: str, tagger_dir: str) -> dict:
    """One measured driver: annotate `corpus` through run_annotation (one actor); returns the
    annotation's seconds and the peak RSS."""
    from lmlm.annotate.pipeline import run_annotation
    from lmlm.rayinit import init_ray

    init_ray()
    s = run_annotation(_annotate_cfg(corpus, tagger_dir), log=lambda line: None)
    return {"docs": s["annotated"], "seconds": s["annotate_seconds"], "docs_per_s": s["docs_per_s"],
            "annotator_seconds": s["annotator_seconds"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def loop_docs_per_s(corpus: Path, tagger_dir: str) -> float:
    """The same annotator and validation in a plain loop in this process (pipeline.annotate_loop), over
    the corpus once and twice: the documents the second run adds over the seconds it adds, so loading
    the model cancels as the pipeline's fixed costs do."""
    from lmlm.annotate.pipeline import annotate_loop

    cfg = _annotate_cfg(corpus, tagger_dir)
    texts = [json.loads(line)["text"] for line in corpus.open()]
    annotate_loop(cfg, texts[:4])  # warm caches once, as an actor's first shard does
    seconds = []
    for copies in (1, 2):
        t = time.perf_counter()
        annotate_loop(cfg, texts * copies)
        seconds.append(time.perf_counter() - t)
    return round(len(texts) / (seconds[1] - seconds[0]), 1)


def bench_annotate(tmp: Path, small: int) -> dict:
    from lmlm.annotate import fit_tagger
    from lmlm.world import WorldConfig, generate_world

    seeds = [d.annotated_text for d in generate_world(WorldConfig(people=100, seed=6)).documents]
    tagger = str(fit_tagger(seeds, epochs=2, log=lambda line: None).save(tmp / "tagger"))
    out = {"annotate_docs_small": small, "annotate_docs_large": 10 * small}
    sizes = (20, small, 10 * small)  # the first only warms the driver, so both measured runs pay the same fixed costs
    corpora = [write_plain_corpus(tmp / f"plain-{n}.jsonl", n) for n in sizes]
    # the loop right before and right after the pipeline, their mean the baseline: a 2-core machine's
    # speed drifts by tens of percent over minutes, more than the goal's margin
    before = loop_docs_per_s(corpora[1], tagger)
    results = run_child("annotate", "stream", tagger, *corpora)
    after = loop_docs_per_s(corpora[1], tagger)
    runs = dict(zip(sizes[1:], results[1:]))
    for size, r in runs.items():
        print(f"annotate stream {size} docs: {r}", flush=True)
        out[f"annotate_stream_{size}_peak_rss_mb"] = r["peak_rss_mb"]
        out[f"annotate_stream_{size}_docs_per_s"] = r["docs_per_s"]
    print(f"annotate loop: {before} docs/s before the pipeline, {after} after", flush=True)
    out["annotate_loop_docs_per_s_before"], out["annotate_loop_docs_per_s_after"] = before, after
    out["annotate_loop_docs_per_s"] = round((before + after) / 2, 1)
    out["annotate_driver_peak_rss_growth"] = round(out[f"annotate_stream_{10 * small}_peak_rss_mb"]
                                                   / out[f"annotate_stream_{small}_peak_rss_mb"], 3)
    # the cost of the documents the 10x run adds: fixed costs (actor start, model load, first shard) cancel
    big, little = runs[10 * small], runs[small]
    docs, seconds = big["docs"] - little["docs"], big["seconds"] - little["seconds"]
    in_annotator = big["annotator_seconds"] - little["annotator_seconds"]
    out["annotate_stream_steady_docs_per_s"] = round(docs / seconds, 1)
    # the plain loop's work (annotate_rows over the same batches), timed inside the actor during those
    # same seconds: the machine's drift is common to both sides
    out["annotate_in_actor_loop_docs_per_s"] = round(docs / in_annotator, 1)
    out["steady_overhead_vs_loop"] = round(seconds / in_annotator - 1, 3)
    # the loop in its own process, minutes apart: the actor annotates as fast as a plain process does
    out["in_actor_vs_separate_loop"] = round(out["annotate_in_actor_loop_docs_per_s"] / out["annotate_loop_docs_per_s"], 3)
    out["steady_overhead_vs_separate_loop"] = round(
        out["annotate_loop_docs_per_s"] / out["annotate_stream_steady_docs_per_s"] - 1, 3)
    return out


def run_child(what: str, mode: str, model_dir: str, *corpora: Path) -> list[dict]:
    """A measured driver in its own process, joining the parent's Ray cluster (started once): `what`
    (pack or annotate) the `mode` way over each corpus in turn; one result each, with the peak RSS so
    far, so a later, larger corpus shows how much more the driver needed."""
    import ray

    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "OMP_NUM_THREADS": "1",
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    args = [what, mode, model_dir, *map(str, corpora)]
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"bench/scale.py child {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_pack(tmp: Path, small: int, current_large: bool = True) -> dict:
    from lmlm.tokenizer import train_tokenizer
    from lmlm.world import WorldConfig, generate_world

    tok_dir = tmp / "tokenizer"
    train_tokenizer([d.annotated_text for d in generate_world(WorldConfig(people=300, seed=5)).documents], 1024, tok_dir)
    out = {"pack_docs_small": small, "pack_docs_large": 10 * small}
    corpora = {size: write_corpus(tmp / f"corpus-{size}", size) for size in (small, 10 * small)}
    for mode in ("current", "stream"):
        sizes = (small, 10 * small) if mode == "stream" or current_large else (small,)
        for size, r in zip(sizes, run_child("pack", mode, str(tok_dir), *(corpora[n] for n in sizes))):
            out[f"pack_{mode}_{size}_peak_rss_mb"] = r["peak_rss_mb"]
            out[f"pack_{mode}_{size}_docs_per_s"] = r["docs_per_s"]
            print(f"pack {mode} {size} docs: {r}", flush=True)
    s, l = out[f"pack_stream_{small}_peak_rss_mb"], out[f"pack_stream_{10 * small}_peak_rss_mb"]
    out["driver_peak_rss_growth"] = round(l / s, 3)
    if current_large:
        out["driver_peak_rss_growth_current"] = round(out[f"pack_current_{10 * small}_peak_rss_mb"]
                                                      / out[f"pack_current_{small}_peak_rss_mb"], 3)
    out["stream_vs_current_docs_per_s"] = round(out[f"pack_stream_{small}_docs_per_s"]
                                                / out[f"pack_current_{small}_docs_per_s"], 3)
    return out


def bench_load(triples: int) -> dict:
    import ray

    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.factstore.bulk import load_dataset
    from lmlm.rayinit import init_ray

    init_ray(num_cpus=4)
    docs = [{"id": f"d{d}", "annotator": "bench",
             "triples": json.dumps([[f"Scale Person {d}", r, f"{r} {d}"] for r in ("Birth City", "Employer", "Spouse", "Alma Mater")])}
            for d in range(triples // 4)]
    ds = ray.data.from_items(docs).materialize()
    out = {"load_triples": triples}
    with FactStore.open(FactStoreConfig(namespace="scale")) as store:
        cfg = FactStoreConfig(url=store.connection_url, namespace="scale")
        store.embedder.encode(["warm up"])
        for workers in (1, 2):
            store.flush()
            t = time.perf_counter()
            res = load_dataset(ds, cfg, workers=workers, batch_docs=500, cpus_per_worker=1.0)
            dt = time.perf_counter() - t
            if res["written"] != triples:
                raise RuntimeError(f"load with {workers} workers wrote {res['written']} of {triples} triples")
            out[f"factstore_load_triples_per_s_{workers}w"] = round(triples / dt, 1)
            print(f"load {triples} triples, {workers} worker(s): {dt:.1f} s", flush=True)
        store.flush()
    out["factstore_load_triples_per_s"] = out["factstore_load_triples_per_s_2w"]
    out["load_speedup_2_workers"] = round(out["factstore_load_triples_per_s_2w"] / out["factstore_load_triples_per_s_1w"], 3)
    per_worker = out["factstore_load_triples_per_s_1w"]
    out["projected_load_hours_54_6m_32_workers"] = round(REFERENCE_TRIPLES / (per_worker * 32) / 3600, 2)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, mode, model_dir, *corpora = sys.argv[2:]
        child = child_pack if what == "pack" else child_annotate
        print(json.dumps([child(Path(c), mode, model_dir) for c in corpora]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: under 60 s on 2 cores")
    ap.add_argument("--parts", default="", help="comma-separated of pack, annotate, load (default: all three; "
                    "--quick: pack,annotate, since the loader actors' start alone takes 15 s here: "
                    "`--quick --parts load` runs it on its own)")
    ap.add_argument("--triples", type=int, default=0, help="triples of the load part (default 1,000,000; quick 1,000)")
    args = ap.parse_args()
    args.parts = args.parts or ("pack,annotate" if args.quick else "pack,annotate,load")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    result = {"quick": args.quick, "cpus": os.cpu_count()}
    from lmlm.rayinit import init_ray

    import ray

    init_ray(num_cpus=4)  # one cluster: the measured drivers join it (each start would cost ~8 s)
    # warm: worker processes up, as on a cluster that has run a job, so neither mode pays their start
    ray.data.range(64, override_num_blocks=8).map_batches(lambda b: b, num_cpus=0.5).materialize()
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        if "pack" in args.parts:
            # --quick skips the old path at 10x (one driver less): its growth is the full run's
            result.update(bench_pack(Path(tmp), 200 if args.quick else 10_000, current_large=not args.quick))
        if "annotate" in args.parts:
            result.update(bench_annotate(Path(tmp), 50 if args.quick else 10_000))
        if "load" in args.parts:
            result.update(bench_load(args.triples or (1_000 if args.quick else 1_000_000)))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
