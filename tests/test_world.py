"""The synthetic world: facts, biographies with gold lookups, split, prompts, save/load, CLI."""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import pytest

from lmlm import corpus_cli
from lmlm.format import Triple, strip_lookups, to_special
from lmlm.world import (
    ALMA_MATERS,
    AWARDS,
    CITIES,
    EMPLOYERS,
    NATIONALITIES,
    OCCUPATIONS,
    PHRASINGS,
    RELATION_SYNONYMS,
    RELATIONS,
    World,
    WorldConfig,
    generate_world,
)


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig(people=300, seed=7))


def test_relations_and_pools():
    assert RELATIONS == ("Birth Date", "Birth City", "Nationality", "Occupation", "Employer", "Alma Mater",
                         "Spouse", "Award")
    for pool, least in ((CITIES, 150), (EMPLOYERS, 100), (ALMA_MATERS, 100), (AWARDS, 100),
                        (NATIONALITIES, 50), (OCCUPATIONS, 50)):
        assert len(pool) >= least and len(set(pool)) == len(pool)
    for rel in RELATIONS:
        assert len(PHRASINGS[rel]) >= 4
        assert len(RELATION_SYNONYMS[rel]) >= 3 and rel not in RELATION_SYNONYMS[rel]


def test_people_names_unique_and_unambiguous(world):
    names = [p.name for p in world.people]
    spouses = [p.attributes["Spouse"] for p in world.people]
    assert len(set(names)) == len(names) == 300
    assert not set(names) & set(spouses)
    everyone = names + spouses
    # No full name occurs inside another (so finding a name in text is exact).
    joined = "\n".join(everyone)
    assert all(joined.count(n) == 1 for n in names)


def test_each_person_has_all_facts(world):
    for p in world.people:
        assert list(p.attributes) == list(RELATIONS)
        assert all(v.strip() == v and v for v in p.attributes.values())
        assert re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}", p.attributes["Birth Date"])
    triples = world.triples()
    assert len(triples) == 8 * 300 and len(set(triples)) == len(triples)
    assert triples[0] == Triple(world.people[0].name, "Birth Date", world.people[0].attributes["Birth Date"])


def test_documents_carry_gold_lookups_before_values(world):
    words = []
    for person, doc in zip(world.people, world.documents):
        assert doc.source == "world" and doc.meta == {"person": person.name}
        parsed = to_special(doc.annotated_text)
        assert parsed.drops == []
        assert sorted(parsed.triples, key=lambda t: t.relation) == sorted(
            (Triple(person.name, r, v) for r, v in person.attributes.items()), key=lambda t: t.relation)
        # Removing the calls gives exactly the plain text, and each value follows its call.
        assert strip_lookups(doc.annotated_text) == doc.text
        for lk in parsed.lookups:
            assert parsed.text[lk.end:].startswith(" " + lk.triple.value)
        assert person.name in doc.text
        words.append(len(doc.text.split()))
    assert 120 <= sum(words) / len(words) <= 200 and min(words) >= 90


def test_phrasing_and_order_vary(world):
    first_relation = Counter(to_special(d.annotated_text).triples[0].relation for d in world.documents)
    assert len(first_relation) == 8 and max(first_relation.values()) < 0.3 * len(world.documents)
    used = Counter()
    for d in world.documents:
        for rel, tpls in PHRASINGS.items():
            for i, t in enumerate(tpls):
                anchor = max(re.split(r"\{[^}]+\}", t), key=len)
                used[(rel, i)] += anchor in d.text
    assert all(used[(rel, i)] > 0 for rel, tpls in PHRASINGS.items() for i in range(len(tpls)))
    # Some sentences hold no fact at all.
    assert all(d.text.count(".") > 8 for d in world.documents)


def test_forget_split_deterministic(world):
    assert len(world.forget_names) == 30 and len(world.retain_names) == 270
    assert set(world.forget_names) | set(world.retain_names) == {p.name for p in world.people}
    assert not set(world.forget_names) & set(world.retain_names)
    again = generate_world(WorldConfig(people=300, seed=7))
    assert again.forget_names == world.forget_names


def test_prompts(world):
    bios = world.bio_prompts()
    assert bios[0] == (world.people[0].name, f"Tell me a bio of {world.people[0].name}. {world.people[0].name} is")
    cloze = world.cloze()
    assert len(cloze) == 8 * 300
    by_person = {p.name: p for p in world.people}
    for c in cloze:
        assert c.answer == by_person[c.name].attributes[c.relation]
        assert c.prompt.startswith(c.name + " ") and not c.prompt.endswith(" ")
        assert c.answer not in c.prompt[len(c.name):]
        assert not c.prompt.endswith((" a", " an"))


def test_deterministic_for_a_seed():
    a = generate_world(WorldConfig(people=50, seed=3))
    b = generate_world(WorldConfig(people=50, seed=3))
    c = generate_world(WorldConfig(people=50, seed=4))
    assert a == b
    assert a.documents != c.documents and a.people != c.people


def test_default_size_generates(tmp_path):
    w = generate_world()
    assert len(w.people) == 2000 and len(w.forget_names) == 200
    assert len({p.name for p in w.people}) == 2000


def test_bad_config():
    with pytest.raises(ValueError, match="people"):
        generate_world(WorldConfig(people=0))
    with pytest.raises(ValueError, match="too many"):
        generate_world(WorldConfig(people=10**6))
    with pytest.raises(ValueError, match="forget_fraction"):
        generate_world(WorldConfig(people=5, forget_fraction=1.5))


def test_save_load_round_trip(world, tmp_path):
    world.save(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "documents.parquet", "prompts.json", "split.json", "triples.json"]
    db = json.loads((tmp_path / "w" / "triples.json").read_text())
    assert set(db) == {"entities", "relationships", "return_values", "triplets"}
    assert len(db["triplets"]) == 2400 and db["relationships"] == list(RELATIONS)
    loaded = World.load(tmp_path / "w")
    assert loaded == world
    with pytest.raises(FileNotFoundError, match="missing"):
        World.load(tmp_path)


def test_cli_world(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lmlm")
    corpus_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["world", "--people", "20", "--seed", "1", "--out", str(tmp_path / "w")])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["people"] == 20 and summary["triples"] == 160 and summary["lookups"] == 160
    assert summary["forget"] == 2 and summary["cloze"] == 160
    assert World.load(tmp_path / "w") == generate_world(WorldConfig(people=20, seed=1))


def test_same_world_in_another_process():
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib; from lmlm.world import WorldConfig, generate_world; "
            "w = generate_world(WorldConfig(people=200, seed=5)); "
            "print(hashlib.sha256(repr((w.documents, w.forget_names, w.cloze_items)).encode()).hexdigest())")
    w = generate_world(WorldConfig(people=200, seed=5))
    here = hashlib.sha256(repr((w.documents, w.forget_names, w.cloze_items)).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def _template_regex(template: str) -> re.Pattern:
    """A sentence template as a regex over rendered text (placeholders match any short run)."""
    parts = re.split(r"(\{[^}]*\})", template)
    return re.compile("".join(".{1,60}?" if p.startswith("{") else re.escape(p) for p in parts))


def _pair_template(rel: str, i: int, j: int) -> str:
    from lmlm.world import OPENERS

    core = PHRASINGS[rel][j]
    return OPENERS[i] + (core if core.startswith("{") else core[0].lower() + core[1:])


def _pairs(heldout: bool) -> list[re.Pattern]:
    from lmlm.world import OPENERS, heldout_pair

    return [_template_regex(_pair_template(r, i, j)) for r in RELATIONS for j in range(len(PHRASINGS[r]))
            for i in range(len(OPENERS)) if heldout_pair(r, i, j) == heldout]


def _sentences(docs) -> list[str]:
    return [s for d in docs for s in re.split(r"(?<=\.) (?=[A-Z])", d.text)]


def test_heldout_pairs_are_never_used_in_training_documents():
    from lmlm.world import OPENERS, heldout_pair

    # every phrasing keeps training openers and has held-out ones, and every opener is used in training
    for r in RELATIONS:
        for j in range(len(PHRASINGS[r])):
            sides = [heldout_pair(r, i, j) for i in range(len(OPENERS))]
            assert any(sides) and not all(sides)
    train = _sentences(generate_world(WorldConfig(people=200, seed=3)).documents)
    held = _sentences(generate_world(WorldConfig(people=60, seed=4, phrasings="heldout")).documents)
    heldout_re = _pairs(heldout=True)
    assert not [s for s in train if any(r.fullmatch(s) for r in heldout_re)]
    used = [s for s in held if any(r.fullmatch(s) for r in heldout_re)]
    assert len(used) == 8 * 60  # every fact sentence of a held-out document is a held-out pair
    train_re = _pairs(heldout=False)
    assert not [s for s in used if any(r.fullmatch(s) for r in train_re)]


def test_novel_sentences_are_never_used_in_training_documents():
    from lmlm.world import GENERAL, NOVEL_GENERAL, NOVEL_PHRASINGS

    train = generate_world(WorldConfig(people=400, seed=3))
    novel = generate_world(WorldConfig(people=40, seed=4, phrasings="novel"))
    assert set(NOVEL_PHRASINGS) == set(RELATIONS)
    for rel, templates in NOVEL_PHRASINGS.items():
        assert not set(templates) & set(PHRASINGS[rel])
    assert not set(NOVEL_GENERAL) & set(GENERAL)

    # a novel sentence's longest fixed run of words never appears in a training document
    def longest(t: str) -> str:
        return max((p.strip(" ,.") for p in re.split(r"\{[^}]*\}", t)), key=len)

    probes = [longest(t) for ts in NOVEL_PHRASINGS.values() for t in ts] + [longest(t) for t in NOVEL_GENERAL]
    probes = [p for p in probes if len(p) > 12]
    assert len(probes) >= 8
    train_text = "\n".join(d.text for d in train.documents)
    assert not [p for p in probes if p in train_text]
    novel_text = "\n".join(d.text for d in novel.documents)
    assert sum(p in novel_text for p in probes) >= len(probes) // 2
    # every novel document states all eight facts, each with its gold lookup
    for doc in novel.documents:
        assert len(re.findall(r"\[dblookup\(", doc.annotated_text)) == 8
        assert strip_lookups(doc.annotated_text) == doc.text


def test_rewrites_use_heldout_pairs_by_default(world):
    from lmlm.world import rewrite_biographies

    held = rewrite_biographies(world, seed=1, people=30)
    same = rewrite_biographies(world, seed=1, people=30, phrasings="train")
    heldout_re = _pairs(heldout=True)
    assert all(sum(any(r.fullmatch(s) for r in heldout_re) for s in _sentences([d])) == 8 for d in held)
    assert not any(r.fullmatch(s) for s in _sentences(same) for r in heldout_re)
    assert [d.meta["person"] for d in held] == [p.name for p in world.people[:30]]


def test_unseen_world_shares_no_name_with_the_world(world):
    from lmlm.world import unseen_world

    other = unseen_world(world, 50, seed=123)
    taken = {p.name for p in world.people} | {p.attributes["Spouse"] for p in world.people}
    assert len(other.people) == 50 and len(other.documents) == 50 and len(other.cloze()) == 8 * 50
    assert not {p.name for p in other.people} & taken
    assert other.config.phrasings == "heldout" and other.forget_names == []


def test_name_mention_rate_controls_how_often_the_name_recurs():
    def mentions(rate: float) -> float:
        w = generate_world(WorldConfig(people=200, seed=5, name_mention_rate=rate))
        return sum(d.text.count(p.name) for p, d in zip(w.people, w.documents)) / len(w.people)

    assert mentions(0.0) < mentions(0.6) < mentions(1.0)
    with pytest.raises(ValueError, match="name_mention_rate"):
        generate_world(WorldConfig(people=5, name_mention_rate=1.5))
    with pytest.raises(ValueError, match="phrasings"):
        generate_world(WorldConfig(people=5, phrasings="other"))


def test_unknown_facts_are_said_unknown_and_have_no_triple(tmp_path):
    from lmlm.world import UNKNOWN

    w = generate_world(WorldConfig(people=300, seed=8, unknown_fact_rate=0.1))
    people = [p for p in w.people if p.unknown]
    assert people and all(1 <= len(p.unknown) <= 4 for p in people)
    by_name = {d.meta["person"]: d for d in w.documents}
    for p in people:
        assert not set(p.unknown) & set(p.attributes) and len(p.unknown) + len(p.attributes) == len(RELATIONS)
        doc = by_name[p.name]
        for rel in p.unknown:
            assert f"{render_call(p.name, rel, UNKNOWN)} {UNKNOWN}" in doc.annotated_text
        assert strip_lookups(doc.annotated_text) == doc.text
    triples = w.triples()
    assert UNKNOWN not in {t.value for t in triples} and len(triples) == sum(len(p.attributes) for p in w.people)
    assert all(c.relation in next(p for p in w.people if p.name == c.name).attributes for c in w.cloze())
    loaded = World.load(w.save(tmp_path / "w"))
    assert {p.name: p.unknown for p in loaded.people} == {p.name: p.unknown for p in w.people}
    # rate 0 (the default) draws nothing from the main stream: the same world as before
    assert generate_world(WorldConfig(people=20, seed=8)).documents == generate_world(
        WorldConfig(people=20, seed=8, unknown_fact_rate=0.0)).documents
    with pytest.raises(ValueError, match="unknown_fact_rate"):
        generate_world(WorldConfig(people=5, unknown_fact_rate=0.9))


def render_call(entity: str, relation: str, value: str) -> str:
    from lmlm.format import render_legacy

    return render_legacy(Triple(entity, relation, value))
