"""The evaluation's pure parts: fact checker, cloze exact match, truth ratio, KS forget quality."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lmlm.eval.completion import exact_match
from lmlm.eval.factcheck import KnowledgeBase, length_penalty, score_answers
from lmlm.eval.unlearning import (forget_quality, harmonic_mean, model_utility, perturbations,
                                  rouge_l_recall, truth_ratio_score, truth_ratios)

TRUTH = {
    "Ada Vorn": {"Birth City": "Oslo", "Occupation": "chemist", "Employer": "Oslo Dynamics",
                 "Spouse": "Ben Kale", "Birth Date": "March 3, 1950"},
    "Ben Kale": {"Birth City": "Lima", "Occupation": "pilot", "Employer": "Lima Air",
                 "Spouse": "Ada Vorn", "Award": "Golden Wing"},
    "Cy Dorr": {"Birth City": "Oslo", "Occupation": "pilot", "Employer": "Lima Air",
                "Award": "Silver Pen"},
}


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase(truth=TRUTH, slots={"Birth City": ["was born in"]})


def test_supported_contradicted_and_missing_attribute(kb):
    check = kb.check("Ada Vorn", "a chemist. She was born in Lima and works for Oslo Dynamics. She won the Golden Wing.")
    facts = {(f.relation, f.value): f.supported for f in check.facts}
    assert facts == {
        ("Occupation", "chemist"): True,
        ("Birth City", "Lima"): False,          # contradicted: she was born in Oslo
        ("Employer", "Oslo Dynamics"): True,    # longest match, not "Oslo" the city
        ("Award", "Golden Wing"): False,        # she has no award at all
    }


def test_unrelated_text_has_no_facts_and_own_name_is_not_a_spouse(kb):
    assert kb.check("Ada Vorn", "a person who likes tea. Ada Vorn is kind.").facts == []
    spouse = kb.check("Ada Vorn", "Ada Vorn married Ben Kale.").facts
    assert [(f.relation, f.value, f.supported) for f in spouse] == [("Spouse", "Ben Kale", True)]


def test_repeated_facts_count_once_and_case_is_ignored(kb):
    check = kb.check("Ben Kale", "a pilot. He is a PILOT at Lima Air, a pilot indeed, at Lima Air.")
    assert [(f.relation, f.supported) for f in check.facts] == [("Occupation", True), ("Employer", True)]


def test_ambiguous_value_uses_the_nearest_cue(kb):
    # "Lima" is Ben's birth city; "Lima Air" is an employer; "Oslo" is Cy's birth city.
    check = kb.check("Cy Dorr", "a pilot who works at Lima Air. He was born in Oslo.")
    assert all(f.supported for f in check.facts) and len(check.facts) == 3


def test_slot_phrasing_catches_values_outside_the_pools(kb):
    check = kb.check("Ben Kale", "a pilot. He was born in Zzyzx Town, and flew a lot.")
    facts = {(f.relation, f.value): f.supported for f in check.facts}
    assert facts == {("Occupation", "pilot"): True, ("Birth City", "Zzyzx Town"): False}
    # the store's fallback restated is an abstention, not a claim
    assert kb.check("Ben Kale", "He was born in unknown, and flew.").facts == []


def test_score_answers_aggregates(kb):
    answers = [
        ("Ada Vorn", "a chemist born in Lima."),             # 1 of 2 supported
        ("Ben Kale", "a pilot who won the Golden Wing."),    # 2 of 2
        ("Cy Dorr", "nice."),                                 # no fact
    ]
    s = score_answers(kb, answers)
    assert s["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["precision_micro"] == pytest.approx(3 / 4)
    assert s["facts_per_answer"] == pytest.approx(4 / 3)
    assert s["answered_share"] == pytest.approx(2 / 3)
    assert s["precision_length_penalized"] == pytest.approx((0.5 + 1.0) * math.exp(1 - 10 / 2) / 2)
    assert score_answers(kb, [("Cy Dorr", "")])["precision"] == 0.0


def test_length_penalty():
    assert length_penalty(10) == 1.0 and length_penalty(25) == 1.0
    assert length_penalty(5) == pytest.approx(math.exp(-1))
    assert length_penalty(0) == 0.0


def test_kb_rejects_empty_truth_and_bad_text(kb):
    with pytest.raises(ValueError, match="truth is empty"):
        KnowledgeBase(truth={})
    with pytest.raises(TypeError, match="Ada Vorn"):
        kb.check("Ada Vorn", None)


def test_exact_match_first_five_words():
    assert exact_match(" Oslo, a city", "Oslo")
    assert exact_match("in the town of Oslo", "oslo")
    assert not exact_match("a b c d e Oslo", "Oslo")          # sixth word
    assert exact_match("x University of Bergen", "University of Bergen")
    assert exact_match("March 3, 1950 it was", "March 3, 1950")
    assert not exact_match("Oslofjord", "Oslo")
    with pytest.raises(ValueError, match="gold answer"):
        exact_match("x", "  ")


def test_truth_ratio_by_hand():
    # correct answer: mean NLL 0.5; wrong answers: mean NLLs 1.0 and 2.0 -> geometric mean of probs.
    tr = truth_ratios([0.5], [[1.0, 2.0]])
    assert tr[0] == pytest.approx(math.exp(-1.5) / math.exp(-0.5))
    assert truth_ratio_score(tr) == pytest.approx(1 - math.exp(-1.0))
    assert truth_ratio_score([2.0, 0.25]) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="wrong answer"):
        truth_ratios([0.5], [[]])


def test_forget_quality_ks():
    rng = np.random.default_rng(0)
    a = rng.lognormal(0.0, 0.5, 200)
    assert forget_quality(a, a.copy()) == pytest.approx(1.0)
    assert forget_quality(a, rng.lognormal(2.0, 0.5, 200)) < 1e-3
    assert forget_quality(a, rng.lognormal(0.0, 0.5, 200)) > 0.01
    with pytest.raises(ValueError):
        forget_quality([], [1.0])


def test_utility_parts():
    assert rouge_l_recall("the city of Oslo in Norway", "Oslo Norway") == 1.0
    assert rouge_l_recall("Norway Oslo", "Oslo Norway") == 0.5
    # TOFU's figure on a fixed pair (rouge_score, stemmed): LCS "was born in pari" of 7 gold words
    assert rouge_l_recall("He was born in the city of Paris", "The author was born in Paris, France") == 4 / 7
    assert rouge_l_recall("two cities", "the city") == 0.5  # "cities" and "city" stem alike: the LCS is 1 of 2
    assert harmonic_mean([0.5, 0.5]) == 0.5 and harmonic_mean([1.0, 0.0]) == 0.0
    u = model_utility([0.0], [1.0], [0.0])
    assert u["utility"] == pytest.approx(1.0)
    p = perturbations("Oslo", ["Oslo", "Lima", "Rome", "Bern"], 2, seed=1)
    assert len(p) == 2 and "Oslo" not in p and p == perturbations("Oslo", ["Bern", "Rome", "Lima"], 2, seed=1)


def test_fact_checker_on_world_biographies():
    from lmlm.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(people=60, seed=3))
    kb = KnowledgeBase.from_world(world)
    own = [(d.meta["person"], d.text) for d in world.documents]
    s = score_answers(kb, own)
    # every gold biography states each of the 8 relations once, all true
    assert (s["precision"], s["facts_per_answer"], s["answered_share"]) == (1.0, 8.0, 1.0)
    swapped = [(own[i][0], own[(i + 1) % len(own)][1]) for i in range(len(own))]
    s2 = score_answers(kb, swapped)
    assert s2["facts_per_answer"] == 8.0 and s2["precision"] < 0.1


def test_completion_is_judged_on_the_engine_display_text():
    # The engine strips the block a forced-lookup prompt opens (tests/test_generate.py); the
    # completion score reads its display text, never the raw text with the query in it.
    from lmlm.eval.completion import display_continuation
    from lmlm.generate import GenerationResult

    raw = " Ada Vorn<|db_relationship|> Birth City<|db_return|> Oslo<|db_end|> Oslo, in<|db_entity|> x<|db_relationship|> y<|db_return|> z<|db_end|> z."
    r = GenerationResult("p <|db_entity|>", " Oslo, in z.", raw, [], [], 3, 4, 9, "eos")
    assert display_continuation(r) == " Oslo, in z."
    with pytest.raises(TypeError, match="display_text"):
        display_continuation(object())
