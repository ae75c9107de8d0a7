"""End to end: the whole evaluation on a tiny world, tiny briefly-trained models and a real FactStore.

Numbers are not held to the paper's goals here (the models are tiny); the test checks that every
required number is computed, finite and consistent, that deletion goes through the store, and
that the report files exist.
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lmlm.format import to_special

pytestmark = pytest.mark.slow


def _train(model, tokenizer, texts: list[str], variant: str, steps: int, seed: int):
    """A few AdamW steps with the §4 loss mask: enough for world-like text, not for good facts."""
    from lmlm.train.data import encode_and_pack
    from lmlm.train.masks import labels_from_kinds

    packed = encode_and_pack(texts, tokenizer, variant, 128)
    ids = torch.as_tensor(packed.input_ids).long()
    labels = labels_from_kinds(ids, torch.as_tensor(packed.kinds), variant)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(ids), (8,), generator=g)
        loss = model(input_ids=ids[b], labels=labels[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


WORLD = dict(people=12, seed=1, forget_fraction=0.25)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lmlm.testing.tiny import tiny_model, tiny_tokenizer
    from lmlm.world import WorldConfig, generate_world

    # One intra-op thread: on a shared 2-core machine extra torch threads make tiny models ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    world = generate_world(WorldConfig(**WORLD))
    docs = {p.name: f"{q} {to_special(d.annotated_text).text}"
            for p, (_, q), d in zip(world.people, world.bio_prompts(), world.documents)}
    tok = tiny_tokenizer(docs.values(), 600)
    dirs = {}
    retain_docs = [docs[n] for n in world.retain_names]
    for seed, (name, variant, texts) in enumerate((("lmlm", "lmlm", list(docs.values())),
                                                   ("standard", "standard", list(docs.values())),
                                                   ("retain", "lmlm", retain_docs))):
        model = tiny_model(len(tok), hidden=64, layers=2, heads=4, seed=seed)
        with torch.no_grad():
            model.lm_head.weight.div_(8.0)  # undo tiny_model's sharpening: we train it instead
        _train(model, tok, texts, variant, steps=80, seed=seed)
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    yield world, dirs, root
    torch.set_num_threads(threads)


def test_run_evaluation_end_to_end(setup):
    from lmlm.eval.results import read_results
    from lmlm.eval.suite import REQUIRED_KEYS, EvalConfig, _sample_people, run_evaluation
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.world import unseen_world

    world, dirs, root = setup
    inserted = unseen_world(world, 3, seed=99, out_of_pool=2)  # 3 in-pool people, then 2 out-of-pool ones
    cfg = EvalConfig(max_forget_people=3, max_retain_people=4, max_inserted_people=2, bio_max_new_tokens=32,
                     cloze_max_new_tokens=10, max_lookups=2, n_perturbed=3, batch_size=32, ppl_max_docs=8,
                     wiki_max_docs=4)
    out = root / "run"
    with FactStore.open(FactStoreConfig()) as store:
        n_triples = store.add_triples(world.triples(), annotator="world-gold")
        # an operator deletes a person (one the evaluation does not ask about) before it runs
        evaluated = set().union(*_sample_people(world, cfg))
        operator_deleted = next(p.name for p in world.people if p.name not in evaluated)
        assert store.delete_entity(operator_deleted) == 8
        counts = lambda: {k: v for k, v in store.stats().items() if "memory" not in k}  # noqa: E731
        stats, records = counts(), sorted((k.entity, k.relation, v.value) for k, v in store.iter_records())
        assert store.get(inserted.people[0].name, "Birth City") is None
        res = run_evaluation(cfg, str(dirs["lmlm"]), str(dirs["standard"]), store, world, out, inserted)
        forget = res.details["details_after"]["people"]["forget"]
        # the evaluation deleted and inserted in its own copy: the store it was given is as it was
        # (the operator's deletion too), and the copy is gone
        assert counts() == stats and not store.get(operator_deleted, "Birth City")
        assert sorted((k.entity, k.relation, v.value) for k, v in store.iter_records()) == records
        assert all(store.get(n, "Birth City") is not None for n in forget)
        assert store.get(inserted.people[0].name, "Birth City") is None
        assert store.get(inserted.people[-1].name, "Birth City") is None
        assert not list(store.r.scan_iter(match="{lmlm.eval*"))  # the copies (and the out-of-pool one) are gone
    assert res.complete
    saved = read_results(out)
    for k in REQUIRED_KEYS:
        assert isinstance(getattr(saved, k), float) and math.isfinite(getattr(saved, k)), k
    for k in ("precision_lmlm", "precision_standard", "forget_precision_after", "completion_em_lmlm",
              "precision_inserted_lmlm", "precision_inserted_standard", "own_entity_lookup_rate",
              "own_entity_lookup_rate_inserted", "completion_em_inserted_lmlm"):
        assert 0.0 <= getattr(saved, k) <= 1.0, k
    assert saved.details["inserted"]["triples_added"] == 8 * 2 and saved.details["inserted"]["people"] == 2
    # out-of-pool inserted people: evaluated apart (LMLM, lookups on), the in-pool figures without them
    oop = saved.details["inserted_out_of_pool"]
    assert oop["triples_added"] == 8 * 2 and oop["people"] == 2 and list(oop)[2:] == ["lmlm"]
    for k in ("precision_inserted_out_of_pool", "completion_em_inserted_out_of_pool",
              "own_entity_lookup_rate_out_of_pool"):
        assert 0.0 <= getattr(saved, k) <= 1.0, k
    hits = saved.details["wrong_entity_hits"]
    assert set(hits) == {"trained", "inserted", "inserted_out_of_pool"}
    n = sum(h["lookups"] for h in hits.values())
    assert saved.wrong_entity_hit_rate == (pytest.approx(sum(h["hits"] for h in hits.values()) / n) if n else None)
    assert isinstance(saved.cpu_capability, str) and saved.cpu_features["cpu_capability"] == saved.cpu_capability
    assert 0.0 <= saved.forget_quality_p <= 1.0
    assert saved.config["max_forget_people"] == 3
    # deletion went through the store: 8 rows per forget person, gold lookups no longer exact
    assert saved.details["deleted_rows"] == 8 * len(forget) and n_triples >= saved.details["deleted_rows"]
    chk = saved.details["store_check"]
    assert chk["forget_exact_before"] == chk["forget_queries"] > 0
    assert chk["forget_exact_after"] == 0
    assert chk["retain_exact_after"] == chk["retain_exact_before"] == chk["retain_queries"]
    # deleting facts never raises forget-set precision; the retain split's store answers are unchanged
    assert saved.forget_precision_after <= saved.forget_precision_before + 1e-9
    assert saved.forget_quality_reference == "same_weights" and saved.forget_quality_p == pytest.approx(1.0)
    # the headline numbers are the "all" aggregates of the per-split details
    d = saved.details["before"]["lmlm"]["precision"]
    assert saved.precision_lmlm == d["all"]["precision"]
    assert saved.forget_precision_before == d["forget"]["precision"]
    for name in ("report.md", "precision.png", "unlearning.png"):
        assert (out / name).is_file()
    assert "factual precision, inserted people" in (out / "report.md").read_text()


def test_own_entity_rate_counts_bios_whose_every_lookup_names_the_person():
    from types import SimpleNamespace as NS

    from lmlm.eval.suite import own_entity_rate

    lk = lambda e: NS(entity=e)  # noqa: E731
    results = [NS(lookups=[lk("Mara Quell"), lk(" mara quell ")]), NS(lookups=[lk("Mara Quell"), lk("Other One")]),
               NS(lookups=[])]
    assert own_entity_rate(["Mara Quell"] * 3, results) == pytest.approx(1 / 3)


def _eval_command(argv: list[str]) -> int:
    """`lmlm eval ARGS` through this module's own `register` (the lead wires it into lmlm.cli)."""
    import argparse

    from lmlm.eval.cli import register

    parser = argparse.ArgumentParser(prog="lmlm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def test_lmlm_eval_command_with_a_retain_model(setup, capsys):
    _, dirs, root = setup
    out = root / "cli"
    rc = _eval_command([ "--set", f"lmlm_model={dirs['lmlm']}", "--set", f"standard_model={dirs['standard']}",
               "--set", f"world_people={WORLD['people']}", "--set", f"world_seed={WORLD['seed']}",
               "--set", f"world_forget_fraction={WORLD['forget_fraction']}",
               "--set", f"out_dir={out}", "--set", f"eval.retain_model_dir={dirs['retain']}",
               "--set", "eval.max_forget_people=2", "--set", "eval.max_retain_people=2",
               "--set", "eval.bio_max_new_tokens=16", "--set", "eval.cloze_max_new_tokens=8",
               "--set", "eval.ppl_max_docs=4", "--set", "eval.wiki_max_docs=2"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    assert saved["forget_quality_reference"] == "retain_model"
    assert printed["forget_quality_p"] == saved["forget_quality_p"] and 0.0 <= saved["forget_quality_p"] <= 1.0
    assert saved["config"]["retain_model_dir"] == str(dirs["retain"])


def test_lmlm_eval_command_rejects_missing_models():
    with pytest.raises(ValueError, match="lmlm_model"):
        _eval_command(["--set", "standard_model=x"])


def test_evaluation_in_ray_workers_matches_the_driver(setup, ray_cluster):
    """eval.workers > 0: generation and perplexity run in Ray actors that load the model directories
    and open the (copied) store by URL; the numbers are the in-process ones. With copy_entities the
    out-of-pool people are also measured without it."""
    from lmlm.eval.remote import attach_workers
    from lmlm.eval.scoring import load_model
    from lmlm.eval.suite import EvalConfig, run_evaluation
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.world import unseen_world

    world, dirs, root = setup
    inserted = unseen_world(world, 2, seed=99, out_of_pool=2)
    cfg = EvalConfig(max_forget_people=2, max_retain_people=2, max_inserted_people=2, bio_max_new_tokens=24,
                     cloze_max_new_tokens=8, max_lookups=2, n_perturbed=2, batch_size=3, ppl_max_docs=6,
                     wiki_max_docs=2, copy_entities=True)
    keys = ("precision_lmlm", "precision_standard", "completion_em_lmlm", "own_entity_lookup_rate",
            "own_entity_lookup_rate_inserted", "own_entity_lookup_rate_out_of_pool",
            "own_entity_lookup_rate_out_of_pool_uncopied", "precision_inserted_out_of_pool_uncopied",
            "forget_precision_after", "wrong_entity_hit_rate")
    got = {}
    with FactStore.open(FactStoreConfig()) as store:
        store.add_triples(world.triples(), annotator="world-gold")
        for workers in (0, 2):
            res = run_evaluation(dataclasses.replace(cfg, workers=workers), str(dirs["lmlm"]), str(dirs["standard"]),
                                 store, world, root / f"workers-{workers}", inserted)
            got[workers] = res
        assert not list(store.r.scan_iter(match="{lmlm.eval*"))
    for k in keys:
        assert getattr(got[2], k) == getattr(got[0], k), k
    assert got[0].own_entity_lookup_rate_out_of_pool_uncopied is not None
    for k in ("ppl_normalized_lmlm", "ppl_normalized_standard", "value_loss_lmlm"):
        assert getattr(got[2], k) == pytest.approx(getattr(got[0], k), rel=1e-5), k
    # models given in memory cannot be loaded by workers: refused, naming the setting
    em = load_model(dirs["lmlm"], "lmlm")
    em.path = None
    with pytest.raises(ValueError, match="eval.workers"):
        with attach_workers(dataclasses.replace(cfg, workers=1), em):
            pass
