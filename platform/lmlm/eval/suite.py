"""The whole evaluation (docs/method.md §7) of an LMLM against its standard baseline on a synthetic world:
perplexity and value-token loss, factual precision, knowledge completion, the database-off ablation
and unlearning, written to one run directory (results.json, report.md, PNG plots).

Order matters: everything "before" runs on the intact store; then the world's forget split is
deleted through the store's API (`store.delete_entity`). All of it runs on a private copy of the
caller's store, dropped at the end: the caller's store is only read.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lmlm.config import to_dict
from lmlm.eval import completion as comp
from lmlm.eval.factcheck import KnowledgeBase, score_answers
from lmlm.eval.results import EvalResults
from lmlm.eval.scoring import EvalModel, bio_answers, cloze_em, load_model
from lmlm.eval.unlearning_run import run_unlearning
from lmlm.factstore.namespace_copy import scratch_copy
from lmlm.world_names import is_out_of_pool

# The fields a finished evaluation always sets (the rest depend on the inputs given).
REQUIRED_KEYS = (
    "ppl_normalized_lmlm", "ppl_normalized_standard", "value_loss_lmlm", "value_loss_standard",
    "precision_lmlm", "precision_lmlm_db_off", "precision_standard",
    "completion_em_lmlm", "completion_em_lmlm_db_off", "completion_em_standard", "own_entity_lookup_rate",
    "forget_precision_before", "forget_precision_after", "retain_precision_before", "retain_precision_after",
    "forget_quality_p",
)
# How each headline number is defined (written into results.json next to the numbers).
DEFINITIONS = {
    "precision": "lmlm.eval.factcheck: mean over answers with >= 1 atomic fact of the supported fraction; "
                 "facts = world-pool values / template slots in the display text, checked against the person's truth",
    "completion_em": "lmlm.eval.completion: gold answer's words within the first N generated display words; "
                     "LMLM with lookups is forced to open a lookup after the cloze context",
    "own_entity_lookup_rate": "share of generated bios (LMLM, lookups on) with >= 1 lookup whose every lookup's "
                              "entity is the prompt's person (normalised key)",
    "inserted": "people absent from every training document; their triples are added to the store after "
                "training (store.add_triples, as PUT /v1/facts does), then they are evaluated like the others; "
                "*_inserted_*: in-pool people (new combinations of the training world's first names and surnames)",
    "out_of_pool": "inserted people named from lmlm.world_names (other cultures and shapes): no part of their "
                   "names (split at whitespace and hyphens, case and diacritics folded) is a word of any "
                   "training document; evaluated with the LMLM, lookups on, on a copy of the store that also "
                   "holds the in-pool inserted facts; with copy_entities every setting generates with the "
                   "entity constrained to spellings in the text (lmlm.generate.copying), and *_uncopied the "
                   "same out-of-pool people without it",
    "wrong_entity_hit_rate": "share of lookups (LMLM, lookups on, generated bios of trained, in-pool and "
                             "out-of-pool inserted people) that the store answered with a triple whose entity "
                             "is not the prompt's person (normalised key); unanswered lookups are no hits",
    "pretrain_tokens_per_s": "median tokens_per_s over the logged windows of the run's metrics.jsonl",
    "truth_ratio": "lmlm.eval.unlearning: exp(-mean_k NLL_wrong_k) / exp(-NLL_correct), per-token NLLs; "
                   "an LMLM sees the store's answer to the gold query as a lookup block",
    "forget_quality_p": "scipy.stats.ks_2samp p-value, forget-set truth ratios after deletion vs the reference model",
    "ppl_normalized": "lmlm.eval.perplexity: exp(NLL over trained tokens / tokens of the lookup-free text); "
                      "texts in sentences no training document uses (held-out opener-phrasing pairs; "
                      "novel: new sentences around a familiar relation cue) unless the key says train_phrasing",
}
WIKI_EVAL_FILE = "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json"


@dataclass
class EvalConfig:
    max_forget_people: int = 50  # bios/clozes of at most this many forget-split people
    max_retain_people: int = 150  # ... and of this many retain-split people (sampled with `seed`)
    bio_max_new_tokens: int = 256  # new tokens per bio (FactScore: 256)
    cloze_max_new_tokens: int = 24  # new tokens per cloze completion
    completion_words: int = 5  # exact match window: the first N generated words
    length_penalty_gamma: int = 10  # FActScore length penalty exp(1 - gamma/#facts)
    repetition_penalty: float = 1.2  # generation (reference default)
    max_lookups: int = 5  # lookups per generated sequence
    copy_entities: bool = False  # lookup entities spelled as the text spells them (lmlm.generate.copying)
    workers: int = 0  # Ray actors that generate and compute perplexity (lmlm.eval.remote); 0: this process
    worker_cpus: float = 1.0  # CPUs per actor
    worker_gpus: Optional[float] = None  # GPUs per actor (None: 1 when the cluster has GPUs, else 0)
    n_perturbed: int = 4  # wrong answers per question for the truth ratio
    batch_size: int = 16  # prompts per generate call / sequences per scoring batch
    seed: int = 0  # people sampling and perturbations
    retain_model_dir: Optional[str] = None  # LMLM trained on retain-only docs (forget-quality reference)
    ppl_max_docs: int = 100  # documents for the synthetic-text perplexity
    max_inserted_people: int = 40  # bios/clozes of at most this many inserted (never trained) people
    ppl_docs: Optional[str] = None  # corpus file of held-out annotated documents; None: the evaluated people's world docs
    unseen_ppl_docs: Optional[str] = None  # also: documents about people absent from training
    train_phrasing_ppl_docs: Optional[str] = None  # also: new texts of trained people in the training phrasings
    novel_ppl_docs: Optional[str] = None  # also: new texts of trained people in novel sentences
    wiki_dir: Optional[str] = None  # lmlm-wiki folder; None: `lmlm data path lmlm-wiki` (used when fetched)
    wiki_max_docs: int = 99  # held-out real paragraphs for the real-text perplexity
    lmlm_run_dir: Optional[str] = None  # pretraining run dirs (metric logs) for the training-curve plot
    standard_run_dir: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("max_forget_people", "max_retain_people", "bio_max_new_tokens", "cloze_max_new_tokens",
                     "completion_words", "n_perturbed", "batch_size", "length_penalty_gamma"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


def _sample_people(world: Any, cfg: EvalConfig) -> tuple[list[str], list[str]]:
    rng = random.Random(cfg.seed)
    forget = sorted(world.forget_names)
    retain = sorted(world.retain_names)
    rng.shuffle(forget)
    rng.shuffle(retain)
    return forget[: cfg.max_forget_people], retain[: cfg.max_retain_people]


def _as_model(m: Any, kind: str) -> EvalModel:
    if isinstance(m, EvalModel):
        return m
    return load_model(m, kind)


def _perplexity(lmlm: EvalModel, standard: EvalModel, docs: list[str], batch_size: int) -> dict:
    from lmlm.eval.perplexity import evaluate_pair, pair_summary

    if lmlm.workers is not None:
        reports = lmlm.workers.perplexity(["lmlm", "standard"], docs, None, batch_size)
        return pair_summary(reports["lmlm"], reports["standard"])

    return evaluate_pair(lmlm.model, standard.model, lmlm.tokenizer, docs, batch_size=batch_size,
                         standard_tokenizer=standard.tokenizer)


def _docs(path: str | Path, limit: int) -> list[str]:
    from lmlm.corpus import read_corpus

    return [r.annotated_text or r.text for r in read_corpus(path) if r.annotated_text or r.text][:limit]


def _wiki_dir(cfg: EvalConfig) -> Path:
    from lmlm.datasets import dataset_dir

    return Path(cfg.wiki_dir) if cfg.wiki_dir else dataset_dir("lmlm-wiki")


def wrong_entity_hits(names: list[str], results: list[Any]) -> tuple[int, int]:
    """(lookups the store answered with a triple of another entity than `names[i]`, all lookups) over
    generations `results[i]` of prompts about `names[i]` (normalised keys). A lookup the store left
    unanswered (no triple: `unknown`) is no hit, nor is a fuzzy match onto the person's own facts."""
    from lmlm.format import normalize_key

    hits = total = 0
    for name, r in zip(names, results):
        for lk in r.lookups:
            total += 1
            triple = getattr(lk, "triple", None)
            hits += triple is not None and normalize_key(triple.entity) != normalize_key(name)
    return hits, total


def own_entity_rate(names: list[str], results: list[Any]) -> float:
    """Share of generations with >= 1 lookup whose every lookup names `names[i]` (normalised keys)."""
    from lmlm.format import normalize_key

    if not names:
        return float("nan")
    hits = sum(bool(r.lookups) and all(normalize_key(lk.entity) == normalize_key(n) for lk in r.lookups)
               for n, r in zip(names, results))
    return hits / len(names)


def _generation(em: EvalModel, store: Any, kb: KnowledgeBase, bios: list, clozes: list, cfg: EvalConfig,
                lookups: bool, split_of) -> dict:
    """Precision of bios and completion EM of clozes in one setting, with per-split summaries."""
    gen = bio_answers(em, store, kb, bios, cfg, lookups)
    c_summary, outcomes = cloze_em(em, store, clozes, cfg, lookups)
    hits, n_lookups = wrong_entity_hits([name for name, _ in bios], gen["results"])
    return {"precision": split_of(lambda a: score_answers(kb, a, cfg.length_penalty_gamma), gen["answers"],
                                  lambda a: a[0]),
            "completion": split_of(comp.summarize, outcomes, lambda o: o.name), "completion_summary": c_summary,
            "outcomes": outcomes, "own_entity_lookup_rate": own_entity_rate([n for n, _ in bios], gen["results"]),
            "n_lookups_bios": gen["n_lookups"], "wrong_entity_hits": {"hits": hits, "lookups": n_lookups},
            "examples": [{"name": n, "text": t} for n, t in gen["answers"][:5]]}


def _whole(scores_of: Callable, items: list, name_of) -> dict:
    return {"all": scores_of(items)}


def _insert_and_ask(store: Any, people: Any, cfg: EvalConfig, settings: tuple) -> dict:
    """Put the facts of the first `cfg.max_inserted_people` people of the World `people` into `store`
    (knowledge insertion, as PUT /v1/facts does), then generate and score in each setting."""
    names = [p.name for p in people.people][: cfg.max_inserted_people]
    pset = set(names)
    added = store.add_triples([x for x in people.triples() if x.entity in pset], annotator="inserted")
    kb = KnowledgeBase.from_world(people)
    bios = [(n, p) for n, p in people.bio_prompts() if n in pset]
    clozes = [c for c in people.cloze() if c.name in pset]
    out: dict[str, Any] = {"people": len(names), "triples_added": added}
    for setting, em, on in settings:
        g = _generation(em, store, kb, bios, clozes, cfg, on, _whole)
        g.pop("outcomes")
        out[setting] = g
    return out


def run_evaluation(cfg: EvalConfig, lmlm_model_dir: Any, standard_model_dir: Any, store: Any, world: Any,
                   out_dir: str | Path, inserted: Any = None) -> EvalResults:
    """Evaluate, write results.json / report.md / plots into `out_dir`, return the results.

    `lmlm_model_dir` / `standard_model_dir`: saved model directories (or `EvalModel`s). `store`: an
    open FactStore holding the LMLM's database, only read: the evaluation runs on a private copy of
    its namespace ("<namespace>.eval", factstore.namespace_copy), dropped at the end, so neither the
    forget split's deletion nor the inserted facts reach a store that serves, and a rerun measures
    the store as it is (an operator's deletions included).
    `inserted`: a World of people no model was trained on; their triples are added to the copy here
    (knowledge insertion) and they are evaluated like the trained people.
    """
    from lmlm.eval.remote import attach_workers

    lmlm, standard = _as_model(lmlm_model_dir, "lmlm"), _as_model(standard_model_dir, "standard")
    with scratch_copy(store, "eval") as scratch, attach_workers(cfg, lmlm, standard):
        return _evaluate(cfg, lmlm, standard, scratch, world, out_dir, inserted)


def _evaluate(cfg: EvalConfig, lmlm_model_dir: Any, standard_model_dir: Any, store: Any, world: Any,
              out_dir: str | Path, inserted: Any) -> EvalResults:
    from lmlm.eval.report import pretrain_tokens_per_s, write_report
    from lmlm.precision import cpu_features

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lmlm = _as_model(lmlm_model_dir, "lmlm")
    standard = _as_model(standard_model_dir, "standard")
    kb = KnowledgeBase.from_world(world)
    forget, retain = _sample_people(world, cfg)
    if not forget or not retain:
        raise ValueError(f"world: need people in both splits (forget {len(forget)}, retain {len(retain)})")
    fset, rset = set(forget), set(retain)
    bios = [(n, p) for n, p in world.bio_prompts() if n in fset or n in rset]
    clozes = [c for c in world.cloze() if c.name in fset or c.name in rset]
    res = EvalResults(config=to_dict(cfg), definitions=DEFINITIONS, sources={
        "lmlm_model": str(getattr(lmlm_model_dir, "name", lmlm_model_dir)),
        "standard_model": str(getattr(standard_model_dir, "name", standard_model_dir)),
        "store_url": getattr(store, "url", None), "people": {"forget": len(forget), "retain": len(retain)},
        "bios": len(bios), "clozes": len(clozes)})

    def split(scores_of: Callable, items: list, name_of) -> dict:
        return {"all": scores_of(items), "forget": scores_of([x for x in items if name_of(x) in fset]),
                "retain": scores_of([x for x in items if name_of(x) in rset])}

    # --- perplexity and per-kind losses
    t = time.perf_counter()
    docs = (_docs(cfg.ppl_docs, cfg.ppl_max_docs) if cfg.ppl_docs else
            [d.annotated_text for d in world.documents if d.meta.get("person") in fset | rset][: cfg.ppl_max_docs])
    ppl = _perplexity(lmlm, standard, docs, cfg.batch_size)
    res.details["perplexity_world"] = ppl
    res.update({"ppl_normalized_lmlm": ppl["ppl_normalized_lmlm"], "ppl_normalized_standard": ppl["ppl_standard"],
                "ppl_static_lmlm": ppl["ppl_static_lmlm"], "value_loss_lmlm": ppl["value_loss_lmlm"],
                "value_loss_standard": ppl["value_loss_standard"], "entity_loss_lmlm": ppl["entity_loss_lmlm"]})
    if cfg.unseen_ppl_docs:
        u = _perplexity(lmlm, standard, _docs(cfg.unseen_ppl_docs, cfg.ppl_max_docs), cfg.batch_size)
        res.details["perplexity_unseen"] = u
        res.update({"ppl_normalized_unseen_lmlm": u["ppl_normalized_lmlm"],
                    "ppl_normalized_unseen_standard": u["ppl_standard"],
                    "entity_loss_unseen_lmlm": u["entity_loss_lmlm"], "value_loss_unseen_standard": u["value_loss_standard"]})
    for name, path in (("train_phrasing", cfg.train_phrasing_ppl_docs), ("novel", cfg.novel_ppl_docs)):
        if path:
            x = _perplexity(lmlm, standard, _docs(path, cfg.ppl_max_docs), cfg.batch_size)
            res.details[f"perplexity_{name}"] = x
            res.update({f"ppl_normalized_{name}_lmlm": x["ppl_normalized_lmlm"],
                        f"ppl_normalized_{name}_standard": x["ppl_standard"]})
    wiki = _wiki_dir(cfg)
    if wiki is not None and (wiki / WIKI_EVAL_FILE).is_file():
        w = _perplexity(lmlm, standard, _docs(wiki / WIKI_EVAL_FILE, cfg.wiki_max_docs), cfg.batch_size)
        res.details["perplexity_wiki"] = w
        res.update({"ppl_normalized_wiki_lmlm": w["ppl_normalized_lmlm"], "ppl_normalized_wiki_standard": w["ppl_standard"]})
    timings["perplexity"] = time.perf_counter() - t

    # --- precision and completion, three settings, intact store
    settings = (("lmlm", lmlm, True), ("lmlm_db_off", lmlm, False), ("standard", standard, False))
    details: dict[str, Any] = {}
    outcomes_of: dict[str, list] = {}
    for setting, em, on in settings:
        t = time.perf_counter()
        g = _generation(em, store, kb, bios, clozes, cfg, on, split)
        outcomes_of[setting] = g.pop("outcomes")
        details[setting] = g
        res.update({f"precision_{setting}": g["precision"]["all"]["precision"],
                    f"completion_em_{setting}": g["completion_summary"]["em"]})
        timings[f"generate_{setting}"] = time.perf_counter() - t
    res.own_entity_lookup_rate = details["lmlm"]["own_entity_lookup_rate"]
    res.details["before"] = details

    # --- knowledge insertion: facts of never-trained people put into the store, then asked for.
    # In-pool people (new combinations of the training pools' names) as ever; out-of-pool people
    # (lmlm.world_names) on a copy of the store, so what the unlearning below measures is unchanged.
    if inserted is not None and inserted.people:
        t = time.perf_counter()
        in_pool = inserted.only(p.name for p in inserted.people if not is_out_of_pool(p.name))
        held_out = inserted.only(p.name for p in inserted.people if is_out_of_pool(p.name))
        if in_pool.people:
            ins = _insert_and_ask(store, in_pool, cfg, settings)
            for setting, _, _ in settings:
                res.update({f"precision_inserted_{setting}": ins[setting]["precision"]["all"]["precision"]})
                if setting != "lmlm_db_off":
                    res.update({f"completion_em_inserted_{setting}": ins[setting]["completion_summary"]["em"]})
            res.own_entity_lookup_rate_inserted = ins["lmlm"]["own_entity_lookup_rate"]
            res.details["inserted"] = ins
        if held_out.people:
            with scratch_copy(store, "heldout") as copy:
                oop = _insert_and_ask(copy, held_out, cfg, settings[:1])
                if cfg.copy_entities:  # what the model spells on its own, for comparison
                    free = _insert_and_ask(copy, held_out, dataclasses.replace(cfg, copy_entities=False), settings[:1])
                    res.update({"precision_inserted_out_of_pool_uncopied": free["lmlm"]["precision"]["all"]["precision"],
                                "own_entity_lookup_rate_out_of_pool_uncopied": free["lmlm"]["own_entity_lookup_rate"]})
                    res.details["inserted_out_of_pool_uncopied"] = free
            res.update({"precision_inserted_out_of_pool": oop["lmlm"]["precision"]["all"]["precision"],
                        "completion_em_inserted_out_of_pool": oop["lmlm"]["completion_summary"]["em"],
                        "own_entity_lookup_rate_out_of_pool": oop["lmlm"]["own_entity_lookup_rate"]})
            res.details["inserted_out_of_pool"] = oop
        timings["inserted"] = time.perf_counter() - t
    groups = {"trained": details["lmlm"], "inserted": res.details.get("inserted", {}).get("lmlm"),
              "inserted_out_of_pool": res.details.get("inserted_out_of_pool", {}).get("lmlm")}
    wrong = {k: g["wrong_entity_hits"] for k, g in groups.items() if g}
    n_lookups = sum(w["lookups"] for w in wrong.values())
    res.wrong_entity_hit_rate = sum(w["hits"] for w in wrong.values()) / n_lookups if n_lookups else None
    res.details["wrong_entity_hits"] = wrong

    # --- unlearning: delete the forget split from the store, measure again
    t = time.perf_counter()
    res.update(run_unlearning(lmlm, store, kb, forget, retain, bios, clozes, cfg, details["lmlm"],
                                  outcomes_of["lmlm"], cfg.retain_model_dir))
    timings["unlearning"] = time.perf_counter() - t
    res.cpu_features = cpu_features()
    res.cpu_capability = res.cpu_features["cpu_capability"]  # torch.backends.cpu.get_cpu_capability()
    res.pretrain_tokens_per_s_lmlm = pretrain_tokens_per_s(cfg.lmlm_run_dir)
    res.pretrain_tokens_per_s_standard = pretrain_tokens_per_s(cfg.standard_run_dir)
    timings["total"] = time.perf_counter() - t0
    res.timings_s = timings
    missing = [k for k in REQUIRED_KEYS if getattr(res, k) is None]
    if missing:
        raise RuntimeError(f"evaluation produced no value for {missing}")
    res.complete = True
    runs = {"LMLM": cfg.lmlm_run_dir, "standard": cfg.standard_run_dir}
    res.files = write_report(res, out, runs if any(runs.values()) else None)
    return res


# ----------------------------------------------------------------------------------------------
# One job: models + world + store from paths (used by `lmlm eval` and jobs/evaluate.py)


@dataclass
class EvalJobConfig:
    lmlm_model: str = ""  # saved LMLM directory (transformers model + tokenizer)
    standard_model: str = ""  # saved standard-model directory
    world_dir: str = ""  # a saved world (World.save); "" : generate one from world_people/world_seed
    world_people: int = 200  # people of a generated world (must match the one the models saw)
    world_seed: int = 0  # seed of a generated world
    world_forget_fraction: float = 0.1  # forget split of a generated world
    store_url: str = ""  # running fact store (redis://...); "" : a private store filled below
    store_json: str = ""  # FactStore.export_json file to load into the private store; "" : the world's triples
    out_dir: str = "runs/eval"  # results.json, report.md, plots
    eval: EvalConfig = field(default_factory=EvalConfig)


def run_job(job: EvalJobConfig) -> EvalResults:
    """Load the world, open (and if private, fill) the store, run the evaluation."""
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.world import World, WorldConfig, generate_world

    for name in ("lmlm_model", "standard_model"):
        if not getattr(job, name):
            raise ValueError(f"{name}: a saved model directory is required (--set {name}=DIR)")
    world = World.load(job.world_dir) if job.world_dir else generate_world(
        WorldConfig(people=job.world_people, seed=job.world_seed, forget_fraction=job.world_forget_fraction))
    with FactStore.open(FactStoreConfig(url=job.store_url or None)) as store:
        if not job.store_url:
            if job.store_json:
                store.import_json(job.store_json)
            else:
                store.add_triples(world.triples(), annotator="world-gold")
        return run_evaluation(job.eval, job.lmlm_model, job.standard_model, store, world, job.out_dir)
