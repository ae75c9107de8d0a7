"""The synthetic world's pipeline: every stage in order, each skipped when its output exists.

    world -> train_annotator -> annotate (Ray Data) -> build_factstore (Redis 8)
          -> pretrain LMLM + standard (Ray Train + DeepSpeed) -> evaluate -> serve_demo (Ray Serve)

Evaluation measures what training never saw: texts in held-out phrasings, and "inserted" people
absent from every training document whose facts are put into the store after training.

Everything a run writes lives under `run_dir` (the private Redis's AOF included), so a second run
resumes where the first stopped; with `storage` set, what Ray workers on other nodes read and write
(the world's documents, the annotator, the annotated shards, pretraining) lives there instead.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from lmlm.config import save_config
from lmlm.eval.results import EvalResults
from lmlm.pipeline.config import (PipelineConfig, annotate_config, annotator_config, eval_config, pretrain_config,
                                  store_config)
from lmlm.pipeline.runtime import StageTimer, banner, ensure_ray, finished_models, model_location, open_store
from lmlm.storage import Storage

def stage_world(cfg: PipelineConfig):
    """Generate (or load) the world and the people never trained on; write the evaluation texts and
    the annotator's seed documents. Returns (world, inserted).

    The inserted people: `inserted_people` new combinations of the world's first names and surnames
    (in-pool), then as many named from lmlm.world_names' held-out distribution (out-of-pool)."""
    from lmlm.corpus import Record, write_corpus
    from lmlm.world import World, generate_world, rewrite_biographies, unseen_world
    from lmlm.world_names import is_out_of_pool

    world_dir, inserted_dir = cfg.path("world"), cfg.path("inserted")
    if (world_dir / "documents.parquet").is_file():
        world = World.load(world_dir)
        print(f"world: loaded {len(world.people)} people from {world_dir}")
    else:
        world = generate_world(cfg.world)
        world.save(world_dir)
        print(f"world: {len(world.people)} people, {len(world.documents)} documents, "
              f"{len(world.triples())} triples, forget split {len(world.forget_names)} -> {world_dir}")
    shared = Storage(cfg.storage) if cfg.storage else None
    if shared and not shared.is_file("world/documents.parquet"):  # what the annotators read
        shared.upload_file(world_dir / "documents.parquet", "world/documents.parquet")
    inserted = World.load(inserted_dir) if (inserted_dir / "documents.parquet").is_file() else None
    if inserted is None or not any(is_out_of_pool(p.name) for p in inserted.people):
        # (an inserted world saved before the out-of-pool people existed is remade: same in-pool people)
        inserted = unseen_world(world, cfg.inserted_people, seed=cfg.world.seed + 7919,
                                out_of_pool=cfg.inserted_people)
        inserted.save(inserted_dir)
        print(f"world: {len(inserted.people)} people in no training document (facts inserted after "
              f"training) -> {inserted_dir}")
    texts = {
        # new biographies of trained people in phrasings no training document uses
        "heldout.jsonl": lambda: rewrite_biographies(world, seed=1, people=cfg.heldout_people),
        # ... and in the training phrasings (new order and combination of sentences)
        "train_phrasing.jsonl": lambda: rewrite_biographies(world, seed=2, people=cfg.heldout_people,
                                                            phrasings="train"),
        # ... and in novel sentences (only the relation cues are familiar)
        "novel.jsonl": lambda: rewrite_biographies(world, seed=3, people=cfg.heldout_people, phrasings="novel"),
        # biographies of the in-pool inserted people, in held-out phrasings
        "unseen.jsonl": lambda: [d for d in inserted.documents if not is_out_of_pool(d.meta["person"])],
        "seeds.jsonl": lambda: [Record(d.id, d.text, d.annotated_text, "world-seed", d.meta)
                                for d in world.documents[: cfg.seed_docs]],
    }
    for name, make in texts.items():
        if not cfg.path(name).is_file():
            docs = make()
            write_corpus(docs, cfg.path(name))
            print(f"world: {len(docs)} documents -> {cfg.path(name)}")
    return world, inserted


def stage_train_annotator(cfg: PipelineConfig) -> Path:
    from lmlm.annotate.train_job import train_annotator

    acfg = annotator_config(cfg)
    if (Path(acfg.out_dir) / "annotator.json").is_file():
        print(f"train_annotator: using the annotator in {acfg.out_dir}")
        out = Path(acfg.out_dir)
    else:
        out = train_annotator(acfg)
    shared = Storage(cfg.storage) if cfg.storage else None
    if shared and not shared.is_file("annotator/annotator.json"):
        # the annotator's files, then its annotator.json: whole once that is there
        for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "annotator.json"):
            shared.upload_file(f, f"annotator/{f.relative_to(out).as_posix()}")
        shared.upload_file(out / "annotator.json", "annotator/annotator.json")
        print(f"train_annotator: copied to {cfg.shared('annotator')}")
    return out


def stage_annotate(cfg: PipelineConfig, store) -> dict:
    from lmlm.annotate.pipeline import run_annotation

    ensure_ray(cfg)
    return run_annotation(annotate_config(cfg), store=store)


def stage_build_factstore(cfg: PipelineConfig, store) -> dict:
    """Load the annotated shards into the store with the bulk loader's actors (Ray Data); a document
    already in it writes nothing, so this is a no-op after `annotate` loaded them."""
    from lmlm.annotate.pipeline import load_annotated

    ensure_ray(cfg)
    acfg = annotate_config(cfg)
    res = load_annotated(acfg.output_dir, store, workers=acfg.num_actors, cpus_per_worker=acfg.num_cpus_per_actor)
    stats = store.stats()
    print(f"build_factstore: {res['written']} triples loaded now from {res['documents']} documents "
          f"({res['invalid']} invalid); store: {json.dumps(stats)}")
    return stats


def annotated_documents(cfg: PipelineConfig, leave_out: set[str] = frozenset()):
    """The annotated shards as a Ray Dataset of {"id", "annotated_text"} (special-token form), in the
    shards' file order, read by Ray Data's workers (never through this process); documents in
    `leave_out` skipped. No sort: Ray's sort cuts its blocks at sampled keys, so the packed rows
    (packed per block) would differ from run to run; the same files give the same rows."""
    from lmlm.storage import read_parquet

    ds = read_parquet(cfg.shared("annotated", "annotated"), columns=["id", "special_text"])
    ds = ds.filter(lambda r: bool(r["special_text"]) and r["id"] not in leave_out)
    return ds.rename_columns({"special_text": "annotated_text"})


def stage_pretrain(cfg: PipelineConfig, world) -> dict[str, str]:
    """Train the LMLM and the standard baseline (and, with `retain_model`, an LMLM without the
    forget split) on the same annotated documents, streamed from the shards; returns the HF dirs."""
    from lmlm.train.compare import RETAIN, train_both

    ensure_ray(cfg)
    retain = None
    if cfg.retain_model:
        forget = set(world.forget_names)
        retain = annotated_documents(cfg, {d.id for d in world.documents if d.meta.get("person") in forget})
    results = train_both(pretrain_config(cfg), annotated_documents(cfg), cfg.path("pretrain"), retain_documents=retain)
    out = {v: r.hf_dir for v, r in results.items()}
    for variant, r in results.items():
        last = r.metrics[-1] if r.metrics else {}
        print(f"pretrain[{variant}]: step {r.final_step}, last metrics "
              f"{json.dumps({k: round(last[k], 4) for k in sorted(last) if 'loss' in k})} -> {r.hf_dir}")
    _publish(Path(out["lmlm"]), cfg.path("model"))
    _publish(Path(out["standard"]), cfg.path("model-standard"))
    if RETAIN in out:
        _publish(Path(out[RETAIN]), cfg.path("pretrain", RETAIN, "final"))
    return {v: model_location(cfg, v, hf_dir) for v, hf_dir in out.items()}


def _publish(hf_dir: Path, link: Path) -> None:
    """Point run_dir/model (what `serve` loads by default) at a published copy of the latest HF
    export, which outlives the pruning of its checkpoint (lmlm.train.rundir.publish_model)."""
    from lmlm.train.rundir import publish_model

    publish_model(hf_dir, link)


def stage_evaluate(cfg: PipelineConfig, models: dict[str, str], store, world, inserted) -> EvalResults:
    from lmlm.eval.results import read_results
    from lmlm.eval.suite import run_evaluation

    results = cfg.path("results.json")
    reference = "retain_model" if eval_config(cfg).retain_model_dir else "same_weights"
    if results.is_file() and (done := read_results(results)).complete and done.forget_quality_reference == reference:
        print(f"evaluate: results exist in {results}")
        return done
    return run_evaluation(eval_config(cfg), models["lmlm"], models["standard"], store, world, cfg.run_dir, inserted)


def _ok(resp) -> dict:
    if resp.status_code != 200:
        raise RuntimeError(f"serve_demo: {resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def stage_serve_demo(cfg: PipelineConfig, model_dir: str, store, inserted) -> dict:
    """Knowledge insertion through the HTTP API, on a person no model was trained on and whose name
    is out of the training pools (lmlm.world_names): ask for a bio, PUT their facts, ask again,
    DELETE them, ask a third time."""
    import httpx
    from ray import serve

    from lmlm.netutil import free_port
    from lmlm.serve.app import ServeConfig, build_app
    from lmlm.world_names import is_out_of_pool

    ensure_ray(cfg)
    # the last out-of-pool person (stage_world puts them last), beyond the evaluated ones: the store
    # has never held their facts
    person = inserted.people[-1]
    out_of_pool = is_out_of_pool(person.name)
    store.delete_entity(person.name)  # left over from an interrupted run
    facts = [{"entity": person.name, "relation": r, "value": v} for r, v in person.attributes.items()]
    port = cfg.serve.port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(ServeConfig(model_path=model_dir, store=dataclasses.replace(store_config(cfg), url=store.connection_url),
                                admin_token=cfg.serve.admin_token, max_batch_size=8))
    prompt = f"Tell me a bio of {person.name}. {person.name} is"
    body = {"prompt": prompt, "max_tokens": cfg.serve.max_tokens, "repetition_penalty": cfg.serve.repetition_penalty,
            "copy_entities": cfg.serve.copy_entities}
    steps = []
    try:
        serve.run(app, name="lmlm-demo", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {cfg.serve.admin_token}"}
        with httpx.Client(timeout=120) as http:
            steps.append(("unknown to the store", _ok(http.post(f"{base}/v1/generate", json=body))))
            put = _ok(http.put(f"{base}/v1/facts", json={"facts": facts, "annotator": "serve-demo"}, headers=auth))
            steps.append((f"after PUT /v1/facts ({len(facts)} facts): {put}",
                          _ok(http.post(f"{base}/v1/generate", json=body))))
            deleted = _ok(http.request("DELETE", f"{base}/v1/facts", json={"entity": person.name}, headers=auth))
            steps.append((f"after DELETE /v1/facts {person.name!r}: {deleted}",
                          _ok(http.post(f"{base}/v1/generate", json=body))))
    finally:
        serve.shutdown()
    name_is = "out of the training pools" if out_of_pool else "a new combination of trained names"
    print(f"serve_demo: {person.name} appears in no training document (the name is {name_is}); "
          f"ground truth {json.dumps(person.attributes)}")
    for title, ans in steps:
        print(f"\n--- {title}\n{prompt}{ans['text']}")
        for lk in ans["lookups"]:
            score = "" if lk.get("score") is None else f", score {lk['score']:.3f}"
            print(f"    lookup ({lk['entity']!r}, {lk['relation']!r}) -> {lk['value']!r} [{lk['stage']}{score}]")
    return {"person": person.name, "out_of_pool": out_of_pool, "steps": [{"title": t, "answer": a} for t, a in steps]}


# ----------------------------------------------------------------------------------------------
# Orchestration


def run_world_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> EvalResults:
    """Every selected stage of the synthetic world's run, in order; results in run_dir/results.json."""
    from lmlm.eval.results import read_results, write_results

    t0 = time.perf_counter()
    run_dir = cfg.path()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "pipeline_config.yaml")
    timed = StageTimer(log)

    selected = set(cfg.stages)
    world, inserted = timed("world", stage_world, cfg)
    with open_store(cfg) as store:
        log(f"fact store: {store.url}")
        if "train_annotator" in selected:
            timed("train_annotator", stage_train_annotator, cfg)
        if "annotate" in selected:
            timed("annotate", stage_annotate, cfg, store)
        if "build_factstore" in selected:
            timed("build_factstore", stage_build_factstore, cfg, store)
        models = timed("pretrain", stage_pretrain, cfg, world) if "pretrain" in selected else finished_models(cfg)
        results_file = run_dir / "results.json"
        results = read_results(results_file) if results_file.is_file() else EvalResults()
        if "evaluate" in selected and models:
            results = timed("evaluate", stage_evaluate, cfg, models, store, world, inserted)
        if "serve_demo" in selected and models:
            results.details["serve_demo"] = timed("serve_demo", stage_serve_demo, cfg, models["lmlm"], store, inserted)
    results.demo_wall_s = round(time.perf_counter() - t0, 1)
    results.stage_wall_s = timed.timings
    write_results(results, run_dir)
    print_summary(results, run_dir)
    return results


def print_summary(results: EvalResults, run_dir: Path) -> None:
    from lmlm.eval.results import table_rows

    banner("results")
    print(f"{'metric':62s} {'LMLM / first':>13s} {'standard / second':>17s} {'lookups off':>11s}")
    for title, a, b, c in table_rows(results):
        print(f"{title:62s} {a:>13s} {b:>17s} {c:>11s}")
    print(f"\nwall time {results.demo_wall_s} s; stages {json.dumps(results.stage_wall_s)}")
    print(f"report: {run_dir / 'report.md'}; all numbers: {run_dir / 'results.json'}; "
          f"training curves: tensorboard --logdir {run_dir / 'pretrain'}")
