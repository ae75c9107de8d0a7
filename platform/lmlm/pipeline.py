"""The end-to-end pipeline: one config, every stage in order, each skipped when its output exists.

    world -> train_annotator -> annotate (Ray Data) -> build_factstore (Redis 8)
          -> pretrain LMLM + standard (Ray Train + DeepSpeed) -> evaluate -> serve_demo (Ray Serve)

`jobs/<stage>.py` and `lmlm pipeline|<stage>` are thin wrappers over the functions here; all of them
read the same `PipelineConfig` file, so a stage run alone sees exactly what the pipeline would pass it.
Everything a run writes lives under `run_dir` (the private Redis's AOF included), so a second run
resumes where the first stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lmlm.annotate.config import AnnotateConfig, TrainAnnotatorConfig
from lmlm.config import load_config, parse_args, save_config
from lmlm.eval.suite import EvalConfig
from lmlm.factstore.config import FactStoreConfig
from lmlm.train.config import PretrainConfig
from lmlm.world import WorldConfig

STAGES = ("world", "train_annotator", "annotate", "build_factstore", "pretrain", "evaluate", "serve_demo")


@dataclass
class ServeDemoConfig:
    port: int = 0  # HTTP port of the Serve proxy on 127.0.0.1 (0: a free one)
    max_tokens: int = 64  # text tokens of the sample answer
    admin_token: str = "demo-admin-token"  # bearer token of /v1/facts in the demo app
    repetition_penalty: float = 1.0  # the reference's 1.2 also penalises copying the name into a query
    candidates: int = 5  # retain-split people tried for the sample request


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"  # everything the run writes; rerunning the same dir resumes
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # stages to run, in pipeline order
    ray_address: Optional[str] = None  # None: env RAY_ADDRESS, else a local cluster
    ray_num_cpus: int = 8  # logical CPUs of a local cluster (more than cores: no actor-pool deadlock)
    world: WorldConfig = field(default_factory=lambda: WorldConfig(people=400, seed=0))
    seed_docs: int = 100  # world documents whose gold annotations train the annotator
    heldout_people: int = 100  # held-out biographies (of known, and of unseen people) for perplexity
    vocab_size: int = 4096  # BPE vocabulary shared by both models
    train_annotator: TrainAnnotatorConfig = field(default_factory=TrainAnnotatorConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    factstore: FactStoreConfig = field(default_factory=FactStoreConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeDemoConfig = field(default_factory=ServeDemoConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")

    # Paths of the run directory, in one place.
    def path(self, *parts: str) -> Path:
        return Path(self.run_dir).resolve().joinpath(*parts)


def _banner(name: str) -> None:
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {name} ===", flush=True)


# ----------------------------------------------------------------------------------------------
# Resolved stage configs: the section of the file, with paths placed inside run_dir.


def store_config(cfg: PipelineConfig) -> FactStoreConfig:
    if cfg.factstore.resolved_url() or cfg.factstore.data_dir:
        return cfg.factstore
    return dataclasses.replace(cfg.factstore, data_dir=str(cfg.path("redis")))


def annotator_config(cfg: PipelineConfig) -> TrainAnnotatorConfig:
    return dataclasses.replace(cfg.train_annotator, seeds=cfg.train_annotator.seeds or str(cfg.path("seeds.jsonl")),
                               out_dir=str(cfg.path("annotator")))


def annotate_config(cfg: PipelineConfig) -> AnnotateConfig:
    return dataclasses.replace(cfg.annotate, input=cfg.annotate.input or str(cfg.path("world", "documents.parquet")),
                               output_dir=str(cfg.path("annotated")), trained_path=str(cfg.path("annotator")),
                               store=store_config(cfg), ray_address=cfg.ray_address)


def pretrain_config(cfg: PipelineConfig, variant: str) -> PretrainConfig:
    return dataclasses.replace(cfg.pretrain, variant=variant, run_dir=str(cfg.path(f"pretrain-{variant}")),
                               tokenizer_path=str(cfg.path("tokenizer")), ray_address=cfg.ray_address or "")


def eval_config(cfg: PipelineConfig) -> EvalConfig:
    return dataclasses.replace(cfg.eval, lmlm_run_dir=str(cfg.path("pretrain-lmlm")),
                               standard_run_dir=str(cfg.path("pretrain-standard")),
                               ppl_docs=cfg.eval.ppl_docs or str(cfg.path("heldout.jsonl")),
                               unseen_ppl_docs=cfg.eval.unseen_ppl_docs or str(cfg.path("unseen.jsonl")))


# ----------------------------------------------------------------------------------------------
# Stages


def ensure_ray(cfg: PipelineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cfg.ray_num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")


def stage_world(cfg: PipelineConfig):
    """Generate (or load) the synthetic world; write the annotator's seed documents."""
    from lmlm.corpus import Record, write_corpus
    from lmlm.world import World, generate_world, rewrite_biographies

    world_dir = cfg.path("world")
    if (world_dir / "documents.parquet").is_file():
        world = World.load(world_dir)
        print(f"world: loaded {len(world.people)} people from {world_dir}")
    else:
        world = generate_world(cfg.world)
        world.save(world_dir)
        print(f"world: {len(world.people)} people, {len(world.documents)} documents, "
              f"{len(world.triples())} triples, forget split {len(world.forget_names)} -> {world_dir}")
    heldout, unseen = cfg.path("heldout.jsonl"), cfg.path("unseen.jsonl")
    if not heldout.is_file():
        # Held-out text about known people: new biographies of them, which no model trained on.
        docs = rewrite_biographies(world, seed=1, people=cfg.heldout_people)
        write_corpus(docs, heldout)
        print(f"world: {len(docs)} held-out biographies (new texts, known people) -> {heldout}")
    if not unseen.is_file():
        # And about people absent from training and from the database: a second world's.
        other = generate_world(dataclasses.replace(cfg.world, people=cfg.heldout_people, seed=cfg.world.seed + 7919))
        known = {p.name for p in world.people}
        docs = [d for d in other.documents if d.meta.get("person") not in known]
        write_corpus(docs, unseen)
        print(f"world: {len(docs)} biographies of unseen people -> {unseen}")
    seeds = cfg.path("seeds.jsonl")
    if not seeds.is_file():
        docs = world.documents[: cfg.seed_docs]
        write_corpus([Record(d.id, d.text, d.annotated_text, "world-seed", d.meta) for d in docs], seeds)
        print(f"world: {len(docs)} gold-annotated seed documents -> {seeds}")
    return world


def stage_train_annotator(cfg: PipelineConfig) -> Path:
    from lmlm.annotate.seeds import train_annotator

    acfg = annotator_config(cfg)
    if (Path(acfg.out_dir) / "annotator.json").is_file():
        print(f"train_annotator: using the annotator in {acfg.out_dir}")
        return Path(acfg.out_dir)
    return train_annotator(acfg)


def stage_annotate(cfg: PipelineConfig, store) -> dict:
    from lmlm.annotate.pipeline import run_annotation

    ensure_ray(cfg)
    return run_annotation(annotate_config(cfg), store=store)


def stage_build_factstore(cfg: PipelineConfig, store) -> dict:
    """Load every annotated shard not yet in the store (a no-op after `annotate` loaded them)."""
    from lmlm.annotate.pipeline import annotator_id_for, load_pending

    acfg = annotate_config(cfg)
    loaded, invalid = load_pending(Path(acfg.output_dir), store, annotator_id_for(acfg))
    stats = store.stats()
    print(f"build_factstore: {loaded} triples loaded now ({invalid} invalid); store: {json.dumps(stats)}")
    return stats


def annotated_texts(cfg: PipelineConfig) -> list[str]:
    """The annotated corpus in special-token form, in a deterministic (id) order."""
    import pyarrow.dataset as ds

    table = ds.dataset(cfg.path("annotated", "annotated"), format="parquet").to_table(columns=["id", "special_text"])
    rows = sorted(zip(table.column("id").to_pylist(), table.column("special_text").to_pylist()))
    return [text for _, text in rows if text]


def _finished(pcfg: PretrainConfig) -> Optional[str]:
    from lmlm.train.loop import STATE_FILE, latest_checkpoint

    ckpt = latest_checkpoint(pcfg.run_dir)
    if ckpt is None or not pcfg.max_steps:
        return None
    step = json.loads((ckpt / STATE_FILE).read_text())["step"]
    return str(ckpt / "hf") if step >= pcfg.max_steps else None


def finished_models(cfg: PipelineConfig) -> dict[str, str]:
    """HF dirs of the finished pretraining runs (both variants), or {} when either is missing."""
    dirs = {v: _finished(pretrain_config(cfg, v)) for v in ("lmlm", "standard")}
    return dirs if all(dirs.values()) else {}


def stage_pretrain(cfg: PipelineConfig) -> dict[str, str]:
    """Train the LMLM and the standard baseline on the same annotated documents; returns HF dirs."""
    from lmlm.tokenizer import load_tokenizer, train_tokenizer
    from lmlm.train.loop import run_pretraining

    texts = annotated_texts(cfg)
    tok_dir = cfg.path("tokenizer")
    tokenizer = load_tokenizer(tok_dir) if tok_dir.is_dir() else None
    out = {}
    for variant in ("lmlm", "standard"):
        pcfg = pretrain_config(cfg, variant)
        done = _finished(pcfg)
        if done:
            print(f"pretrain[{variant}]: finished run in {pcfg.run_dir}")
            out[variant] = done
            continue
        if tokenizer is None:
            from lmlm.format import to_special

            tokenizer = train_tokenizer([to_special(t).text for t in texts], cfg.vocab_size, tok_dir)
            print(f"pretrain: trained a {len(tokenizer)}-token BPE tokenizer -> {tok_dir}")
        ensure_ray(cfg)
        print(f"pretrain[{variant}]: {len(texts)} documents, model {pcfg.model}, {pcfg.max_steps} steps, "
              f"{pcfg.num_workers} worker(s), ZeRO-{pcfg.zero_stage}")
        res = run_pretraining(pcfg, documents=texts, tokenizer=tokenizer)
        last = res.metrics[-1] if res.metrics else {}
        print(f"pretrain[{variant}]: step {res.final_step}, last metrics "
              f"{json.dumps({k: last[k] for k in sorted(last) if 'loss' in k})} -> {res.hf_dir}")
        out[variant] = res.hf_dir
    for variant, hf_dir in out.items():
        _publish(Path(hf_dir), cfg.path("model" if variant == "lmlm" else f"model-{variant}"))
    return out


def _publish(hf_dir: Path, link: Path) -> None:
    """Point run_dir/model (what `serve` loads by default) at the latest HF export."""
    if link.is_symlink() or link.exists():
        if link.resolve() == hf_dir.resolve():
            return
        link.unlink()
    link.symlink_to(os.path.relpath(hf_dir, link.parent))


def restore_deleted_entities(cfg: PipelineConfig, store) -> int:
    """Re-add the annotated facts of entities that have none left in the store.

    Evaluation deletes the forget split and the serve demo one person; a rerun must measure
    "before deletion" on the database the annotation built, not on what the last run left.
    """
    from lmlm.annotate.pipeline import shard_triples

    by_entity: dict[str, list] = {}
    for shard in sorted(cfg.path("annotated", "annotated").glob("*.parquet")):
        for fact in shard_triples(shard)[0]:
            by_entity.setdefault(fact[0].entity, []).append(fact)
    restored = 0
    for entity, facts in by_entity.items():
        if all(store.get(t.entity, t.relation) is None for t, _, _ in facts):
            restored += store.add_triples([t for t, _, _ in facts], doc_ids=[d for _, d, _ in facts],
                                          annotator=facts[0][2])
    if restored:
        print(f"evaluate: restored {restored} deleted triples from the annotated corpus")
    return restored


def stage_evaluate(cfg: PipelineConfig, models: dict[str, str], store, world) -> dict:
    from lmlm.eval.suite import run_evaluation

    results = cfg.path("results.json")
    if results.is_file() and "forget_quality_p" in json.loads(results.read_text()):
        print(f"evaluate: results exist in {results}")
        return json.loads(results.read_text())
    restore_deleted_entities(cfg, store)
    return run_evaluation(eval_config(cfg), models["lmlm"], models["standard"], store, world, cfg.run_dir)


def _ok(resp) -> dict:
    if resp.status_code != 200:
        raise RuntimeError(f"serve_demo: {resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def stage_serve_demo(cfg: PipelineConfig, model_dir: str, store, world) -> dict:
    """Serve the LMLM, ask for a bio, delete that person's facts through the API, ask again."""
    import httpx
    from ray import serve

    from lmlm.format import normalize_key
    from lmlm.netutil import free_port
    from lmlm.serve.app import ServeConfig, build_app

    ensure_ray(cfg)
    forget = set(world.forget_names)
    candidates = [p.name for p in world.people if p.name not in forget and store.lookup(
        p.name, "Birth City", fallback="abstain") is not None][: cfg.serve.candidates]
    if not candidates:
        raise RuntimeError("serve_demo: no person of the world has facts left in the store")
    port = cfg.serve.port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(ServeConfig(model_path=model_dir, store=dataclasses.replace(store_config(cfg), url=store.url),
                                admin_token=cfg.serve.admin_token, max_batch_size=8))
    try:
        serve.run(app, name="lmlm-demo", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {cfg.serve.admin_token}"}
        with httpx.Client(timeout=120) as http:
            # The first candidate whose answer looks its own name up shows the mechanism best.
            for person in candidates:
                prompt = f"Tell me a bio of {person}. {person} is"
                body = {"prompt": prompt, "max_tokens": cfg.serve.max_tokens,
                        "repetition_penalty": cfg.serve.repetition_penalty}
                before = _ok(http.post(f"{base}/v1/generate", json=body))
                if any(normalize_key(lk["entity"]) == normalize_key(person) for lk in before["lookups"]):
                    break
            print(f"serve_demo: asked about {person} ({candidates.index(person) + 1} of {len(candidates)} "
                  f"candidates tried for an answer that looks its own name up)")
            deleted = _ok(http.request("DELETE", f"{base}/v1/facts", json={"entity": person}, headers=auth))
            after = _ok(http.post(f"{base}/v1/generate", json=body))
    finally:
        serve.shutdown()
    truth = next(p.attributes for p in world.people if p.name == person)
    for title, ans in (("before deletion", before), (f"after DELETE /v1/facts {person!r}: {deleted}", after)):
        print(f"\n--- {title}\n{prompt}{ans['text']}")
        for lk in ans["lookups"]:
            print(f"    lookup ({lk['entity']!r}, {lk['relation']!r}) -> {lk['value']!r} "
                  f"[{lk['stage']}, score {lk['score']:.3f}]")
    print(f"    (ground truth: {json.dumps(truth)})")
    return {"person": person, "before": before, "deleted": deleted, "after": after}


# ----------------------------------------------------------------------------------------------
# Orchestration


def open_store(cfg: PipelineConfig):
    from lmlm.factstore import FactStore

    return FactStore.open(store_config(cfg))


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    run_dir = cfg.path()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "pipeline_config.yaml")
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args):
        _banner(name)
        t = time.perf_counter()
        out = fn(*args)
        timings[name] = round(time.perf_counter() - t, 1)
        log(f"{name}: {timings[name]} s")
        return out

    selected = set(cfg.stages)
    world = timed("world", stage_world, cfg)
    with open_store(cfg) as store:
        log(f"fact store: {store.url}")
        if "train_annotator" in selected:
            timed("train_annotator", stage_train_annotator, cfg)
        if "annotate" in selected:
            timed("annotate", stage_annotate, cfg, store)
        if "build_factstore" in selected:
            timed("build_factstore", stage_build_factstore, cfg, store)
        models = timed("pretrain", stage_pretrain, cfg) if "pretrain" in selected else finished_models(cfg)
        results_file = run_dir / "results.json"
        results: dict = json.loads(results_file.read_text()) if results_file.is_file() else {}
        if "evaluate" in selected and models:
            results = timed("evaluate", stage_evaluate, cfg, models, store, world)
        if "serve_demo" in selected and models:
            timed("serve_demo", stage_serve_demo, cfg, models["lmlm"], store, world)
    wall = round(time.perf_counter() - t0, 1)
    summary = {**results, "demo_wall_s": wall, "stage_wall_s": timings}
    results_file.write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, run_dir)
    return summary


RESULT_ROWS = (
    ("normalized perplexity, held-out texts", "ppl_normalized_lmlm", "ppl_normalized_standard"),
    ("normalized perplexity, unseen people", "ppl_normalized_unseen_lmlm", "ppl_normalized_unseen_standard"),
    ("value-token loss", "value_loss_lmlm", "value_loss_standard"),
    ("factual precision", "precision_lmlm", "precision_standard"),
    ("factual precision, lookups off", "precision_lmlm_db_off", None),
    ("completion exact match", "completion_em_lmlm", "completion_em_standard"),
    ("completion exact match, lookups off", "completion_em_lmlm_db_off", None),
    ("forget-set precision before -> after deletion", "forget_precision_before", "forget_precision_after"),
    ("retain-set precision before -> after deletion", "retain_precision_before", "retain_precision_after"),
    ("forget quality (KS p-value)", "forget_quality_p", None),
)


def print_summary(summary: dict, run_dir: Path) -> None:
    def fmt(key: Optional[str]) -> str:
        v = summary.get(key) if key else None
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    _banner("results")
    print(f"{'metric':48s} {'LMLM / before':>14s} {'standard / after':>16s}")
    for title, a, b in RESULT_ROWS:
        if a in summary:
            print(f"{title:48s} {fmt(a):>14s} {fmt(b):>16s}")
    print(f"\nwall time {summary['demo_wall_s']} s; stages {json.dumps(summary['stage_wall_s'])}")
    print(f"report: {run_dir / 'report.md'}; all numbers: {run_dir / 'results.json'}")


def load(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides or [])


def main(argv: list[str] | None = None, stages: tuple[str, ...] | None = None) -> int:
    """Entry of `jobs/*.py`: the pipeline, or only `stages` of it (the world is always loaded)."""
    cfg = parse_args(PipelineConfig, argv, description=__doc__.splitlines()[0])
    if stages is not None:
        cfg = dataclasses.replace(cfg, stages=list(stages))
    run_pipeline(cfg)
    return 0


def register(subparsers) -> None:
    from lmlm.config import add_config_command

    add_config_command(subparsers, "pipeline", lambda a: run_pipeline(load(a.config, a.overrides)) and 0,
                       "run every stage in order (skips finished ones)", config=PipelineConfig)
