"""Held-out names (lmlm.world_names): no training document uses them, the inserted world puts them
after unchanged in-pool people, and the evaluation's name metrics count what they say."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from types import SimpleNamespace as NS

import pytest

from lmlm.format import Triple
from lmlm.world import FIRST_NAMES, SURNAMES, World, WorldConfig, generate_world, unseen_world
from lmlm.world_names import (
    CULTURES,
    INITIALS,
    MONONYMS,
    PARTICLE_CULTURES,
    TRAINING_WORDS,
    VIETNAMESE_MIDDLE,
    HELDOUT_PARTS,
    clashes,
    draw_heldout_names,
    draw_training_names,
    near_heldout,
    fold,
    is_out_of_pool,
    name_parts,
    words,
)

DEMO_LIKE = dict(seed=0, name_mention_rate=0.6, unknown_fact_rate=0.04)
# unseen_world(world(people=2000, **DEMO_LIKE), 20, seed=7919) as the code gave it before the held-out
# names existed: the in-pool inserted people must stay exactly these
EXPECTED_IN_POOL = [
    "Solveig Thornhart", "Malak Isthorne", "Dragana Radworth", "Vasco Thornlowe", "Saskia Stowby",
    "Benedikt Grimhurst", "Joaquin Crestgarth", "Magnus Corford", "Carys Langgrove", "Bronwen Dorrook",
    "Hiroko Harlstone", "Diederik Humpmont", "Wren Blakgarth", "Zoltan Jorbury", "Achille Varmore",
    "Emrys Grimrook", "Yevgenia Varwell", "Odile Fairmarsh", "Yrsa Presford", "Dmitri Jorquist"]
EXPECTED_IN_POOL_SHA256 = "c11a888dd0dff5d91342f037a97678790bff51ad296f038b879f1551fa1d2596"


def _digest(w: World) -> str:
    blob = json.dumps({"people": [asdict(p) for p in w.people],
                       "docs": [(d.id, d.text, d.annotated_text, d.meta) for d in w.documents],
                       "cloze": [asdict(c) for c in w.cloze_items]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig(people=2000, **DEMO_LIKE))


def _pool_parts() -> set[str]:
    """Every part of the held-out pools (lmlm.world_names.HELDOUT_PARTS), checked against entries of each kind."""
    parts = set(HELDOUT_PARTS)
    assert {"nguyen", "thi", "van", "der", "bin", "ramasamy", "sukarni", "b", "ji", "woo"} <= parts
    assert all(name_parts(e)[0] in parts for pool in (MONONYMS, VIETNAMESE_MIDDLE, INITIALS) for e in pool)
    assert all(set(name_parts(e)) <= parts for g, f, _ in CULTURES.values() for e in (*g, *f))
    assert all(set(name_parts(e)) <= parts for t in PARTICLE_CULTURES.values() for pool in t for e in pool)
    return parts


def test_no_heldout_name_part_in_any_training_document(world):
    seen = set()
    for d in world.documents:
        seen.update(words(d.text), words(d.annotated_text))
    # the vocabulary the held-out names are kept clear of covers every word of every training document
    assert seen <= TRAINING_WORDS | {"dblookup"}
    assert all(set(name_parts(n)) <= TRAINING_WORDS for p in world.people for n in (p.name, p.attributes.get("Spouse", p.name)))
    held = _pool_parts() | {p for n in draw_heldout_names(random.Random(1), 2000) for p in name_parts(n)}
    assert len(held) > 500
    assert not held & seen
    assert not any(clashes(p) for p in held)


def test_generated_training_names_share_no_part_with_the_heldout_names():
    """With generated names (the demo's recipe) the training documents hold words outside the pools,
    and still no held-out name part: checked on the documents themselves."""
    world = generate_world(WorldConfig(people=3000, generated_name_rate=0.5, **DEMO_LIKE))
    seen = set()
    for d in world.documents:
        seen.update(words(d.text), words(d.annotated_text))
    generated = [p.name for p in world.people if not set(name_parts(p.name)) <= TRAINING_WORDS]
    assert 0.4 < len(generated) / len(world.people) < 0.6
    assert not seen <= TRAINING_WORDS | {"dblookup"}  # the generated names are in the text
    held = _pool_parts() | {p for n in draw_heldout_names(random.Random(1), 3000) for p in name_parts(n)}
    assert not held & seen
    # nor does a held-out part begin a generated name part of 4+ letters, or the reverse
    long_seen = {w for n in generated for w in name_parts(n) if len(w) >= 4}
    assert not any(h[:k] in long_seen for h in held for k in range(4, len(h) + 1))
    assert not any(w[:k] in held for w in long_seen for k in range(4, len(w) + 1))
    # the held-out names of the inserted people stay out of pool, the in-pool ones in it
    both = unseen_world(world, 20, seed=7919, out_of_pool=20)
    assert [is_out_of_pool(p.name) for p in both.people] == [False] * 20 + [True] * 20


def test_generated_training_names_are_new_unambiguous_and_of_every_shape():
    names = draw_training_names(random.Random(0), 4000)
    assert names == draw_training_names(random.Random(0), 4000)  # a pure function of the RNG's state
    parts = [fold(w) for n in names for w in n.replace("-", " ").split() if w[0].isupper() and not w.endswith(".")]
    assert len(parts) == len(set(parts))  # no two names share a part (particles and initials aside)
    unique = set(parts)
    assert not any(p[:k] in unique for p in parts for k in range(1, len(p)))  # nor does one begin another
    assert not any(near_heldout(p) for p in parts)
    assert not set(parts) & {n.casefold() for n in (*FIRST_NAMES, *SURNAMES)}
    assert any(" " not in n for n in names) and any("-" in n for n in names) and any("." in n for n in names)
    assert any(len(n.split()) == 3 for n in names) and any(any(w.islower() for w in n.split()) for n in names)
    assert 0.2 < sum(not n.isascii() for n in names) / len(names) < 0.8  # diacritics in many, not all
    lengths = [len(p) for p in parts]
    assert 4 <= sum(lengths) / len(lengths) <= 9  # name-like lengths
    assert near_heldout("nguyen") and near_heldout("vokute") and near_heldout("zhangwei") and near_heldout("quis")
    assert not near_heldout("flauxen")


def test_drawn_names_are_distinct_unambiguous_and_of_every_shape():
    names = draw_heldout_names(random.Random(0), 600)
    assert names == draw_heldout_names(random.Random(0), 600)  # a pure function of the RNG's state
    assert len({fold(n) for n in names}) == 600
    joined = "\n".join(fold(n) for n in names)
    assert all(joined.count(fold(n)) == 1 for n in names)  # no name inside another
    assert all(is_out_of_pool(n) for n in names)
    assert any(" " not in n for n in names)  # single-token names
    assert any("-" in n for n in names)  # hyphenated
    assert any(" van " in n or " bin " in n or " dos " in n for n in names)  # particles
    assert any("." in n for n in names)  # initials
    assert any(not n.isascii() for n in names)  # diacritics
    assert any(n.split()[0] in CULTURES["chinese"][1] for n in names)  # family name first


def test_out_of_pool_means_every_part_absent():
    assert not is_out_of_pool("Mara Quell")  # a trained first name
    assert not is_out_of_pool("Nguyễn Mara")  # one trained part is enough
    assert not is_out_of_pool("Zhou Lisbon")  # ... any word of a training document, not only names
    assert not is_out_of_pool("")
    assert is_out_of_pool("Çağrı Yıldız") and is_out_of_pool("Joost van der Dijk") and is_out_of_pool("T. K. Ramasamy")
    assert name_parts("T. K. Ramasamy-Öztürk") == ["t", "k", "ramasamy", "ozturk"]
    assert clashes("anselmo")  # begins with the trained first name "Anselm"


def test_in_pool_inserted_people_are_unchanged(world):
    before = unseen_world(world, 20, seed=7919)
    assert [p.name for p in before.people] == EXPECTED_IN_POOL and _digest(before) == EXPECTED_IN_POOL_SHA256
    both = unseen_world(world, 20, seed=7919, out_of_pool=15)
    in_pool = both.only(p.name for p in both.people if not is_out_of_pool(p.name))
    assert [p.name for p in in_pool.people] == EXPECTED_IN_POOL and _digest(in_pool) == EXPECTED_IN_POOL_SHA256


def test_out_of_pool_inserted_people_follow_and_are_out_of_pool(world, tmp_path):
    both = unseen_world(world, 20, seed=7919, out_of_pool=15)
    assert len(both.people) == 35 and len(both.documents) == 35 and both.forget_names == []
    assert not any(is_out_of_pool(p.name) for p in both.people[:20])
    held = both.people[20:]
    assert all(is_out_of_pool(n) for p in held for n in (p.name, p.attributes.get("Spouse", p.name)))
    assert is_out_of_pool(both.people[-1].name)  # the Serve demo's person
    trained = {p.name for p in world.people} | {p.attributes.get("Spouse") for p in world.people}
    assert not {p.name for p in held} & trained
    for p in held:
        doc = next(d for d in both.documents if d.meta["person"] == p.name)
        assert p.name in doc.text and f"dblookup('{p.name}'," in doc.annotated_text
        assert sum(c.name == p.name for c in both.cloze()) == len(p.attributes)
    back = World.load(both.save(tmp_path / "inserted"))  # names with diacritics survive, in order
    assert [p.name for p in back.people] == [p.name for p in both.people]
    assert unseen_world(world, 20, seed=7919, out_of_pool=15).people[20:] == held  # deterministic


# --------------------------------------------------------------------------------------------
# The evaluation's name metrics, on constructed generations


def _lookup(entity: str, answered_by: str | None) -> NS:
    triple = None if answered_by is None else Triple(answered_by, "Birth City", "Lisbon")
    return NS(entity=entity, triple=triple)


def test_wrong_entity_hits_count_answers_from_another_stored_person():
    from lmlm.eval.suite import own_entity_rate, wrong_entity_hits

    results = [
        NS(lookups=[_lookup("Mara Quell", "Mara Quell"), _lookup("mara  quell", " MARA QUELL"),  # own: no hit
                    _lookup("Mara Quel", "Mara Quell")]),  # a fuzzy match onto the own facts: no hit
        NS(lookups=[_lookup("Zhou Zihan", "Zhao Zihan"), _lookup("Zhou Zihan", None)]),  # another person; unknown
        NS(lookups=[]),
    ]
    assert wrong_entity_hits(["Mara Quell", "Zhou Zihan", "Ebru Korkmaz"], results) == (1, 5)
    assert wrong_entity_hits([], []) == (0, 0)
    # the own-entity rate looks at the queries, the hit count at the store's answers
    assert own_entity_rate(["Mara Quell", "Zhou Zihan", "Ebru Korkmaz"], results) == pytest.approx(1 / 3)


def test_new_rows_and_throughput(tmp_path):
    from lmlm.eval.report import pretrain_tokens_per_s
    from lmlm.eval.results import EvalResults, read_results, table_rows, write_results

    r = EvalResults(own_entity_lookup_rate_inserted=0.95, own_entity_lookup_rate_out_of_pool=0.0,
                    precision_inserted_out_of_pool=0.25, wrong_entity_hit_rate=0.125, cpu_capability="AVX2",
                    cpu_features={"cpu_capability": "AVX2", "amx_bf16": False, "avx512_bf16": False})
    rows = {title: (a, b, c) for title, a, b, c in table_rows(r)}
    assert rows["own-entity lookup rate, inserted people, in-pool / out-of-pool names"] == ("0.95", "0", "-")
    assert rows["wrong-entity hit rate (lookups answered with another person's fact)"] == ("0.125", "-", "-")
    assert rows["factual precision / completion exact match, inserted people, out-of-pool names"] == ("0.25", "-", "-")
    back = read_results(write_results(r, tmp_path))
    assert back.cpu_capability == "AVX2" and back.wrong_entity_hit_rate == 0.125 and back.cpu_features["amx_bf16"] is False
    run = tmp_path / "run"
    run.mkdir()
    rows_ = [{"step": 50 * i, "tokens_per_s": v} for i, v in enumerate((3000.0, 11000.0, 11200.0, 10800.0), 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows_))
    assert pretrain_tokens_per_s(run) == 10900  # median: the slow first window does not count
    assert pretrain_tokens_per_s(tmp_path / "absent") is None and pretrain_tokens_per_s(None) is None
