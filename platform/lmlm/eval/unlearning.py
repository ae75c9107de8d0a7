"""TOFU-style unlearning metrics: truth ratio, forget quality (KS test) and model utility.

Truth ratio (our definition, the one of locuslab/open-unlearning `truth_ratio`):
    TR = exp(-mean_k L_wrong_k) / exp(-L_correct)
where L is the mean per-token NLL of an answer after the question (`scoring.answer_nll`) and k runs
over perturbed wrong answers (other values of the same relation from the world's pool). So TR is the
length-normalised probability of the wrong answers (their geometric mean) divided by that of the
correct one: low TR = the model prefers the truth; TR near 1 = it cannot tell truth from plausible
lies. Its summary score is mean(max(0, 1 - TR)) ("true_better", higher is better).

Forget quality = p-value of scipy.stats.ks_2samp between the truth ratios of the unlearned model on
the forget set and those of a reference model never trained on the forget set. Reference models:
  - "retain_model": an LMLM trained on retain-only documents, queried through the same store after
    deletion (its store holds exactly the retain triples). The honest comparison.
  - "same_weights": the LMLM's own weights with the forget triples deleted. In an LMLM the facts live
    in the store, so the model "never trained on the forget set" is the same model without those
    rows; after deletion its TRs equal the unlearned model's and p = 1 by construction. Reported
    only as a fallback, with `forget_quality_reference` naming it.

Model utility (on the retain set only; we have no real-author / world-fact sets): harmonic mean of
the mean probability of the correct answer (exp(-L_correct)), the ROUGE-L recall of the generated
cloze answer against the gold answer, and the truth-ratio score mean(max(0, 1 - TR)).
"""
from __future__ import annotations

import random
import re
from typing import Iterable, Sequence

import numpy as np
from scipy import stats


def truth_ratios(correct_nll: Sequence[float], wrong_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-question TR from the correct answer's mean NLL and the wrong answers' mean NLLs."""
    c = np.asarray(correct_nll, dtype=float)
    if len(wrong_nll) != len(c):
        raise ValueError(f"truth_ratios: {len(c)} correct answers but {len(wrong_nll)} wrong-answer lists")
    if any(len(w) == 0 for w in wrong_nll):
        raise ValueError("truth_ratios: every question needs at least one perturbed wrong answer")
    w = np.array([np.mean(x) for x in wrong_nll], dtype=float)
    return np.exp(c - w)  # = exp(-w) / exp(-c)


def truth_ratio_score(tr: Iterable[float]) -> float:
    """mean(max(0, 1 - TR)): 1 when the truth is always far likelier, 0 when never preferred."""
    a = np.asarray(list(tr), dtype=float)
    return float(np.mean(np.maximum(0.0, 1.0 - a))) if a.size else 0.0


def forget_quality(unlearned_tr: Sequence[float], reference_tr: Sequence[float]) -> float:
    """KS two-sample p-value: high (> 0.05) = indistinguishable from the never-trained reference."""
    if len(unlearned_tr) == 0 or len(reference_tr) == 0:
        raise ValueError("forget_quality: both truth-ratio samples must be non-empty")
    return float(stats.ks_2samp(np.asarray(unlearned_tr, float), np.asarray(reference_tr, float)).pvalue)


def perturbations(answer: str, pool: Iterable[str], k: int, seed: int) -> list[str]:
    """Up to k distinct pool values different from `answer`, chosen deterministically from `seed`."""
    norm = answer.strip().lower()
    others = sorted({v for v in pool if v.strip().lower() != norm})
    random.Random(seed).shuffle(others)
    return others[:k]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l_recall(generated: str, gold: str) -> float:
    """LCS(generated words, gold words) / len(gold words)."""
    g, r = _words(generated), _words(gold)
    if not r:
        raise ValueError("rouge_l_recall: gold answer has no words")
    prev = [0] * (len(r) + 1)
    for a in g:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(r)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (as TOFU's model utility)."""
    if not values:
        raise ValueError("harmonic_mean: no values")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def model_utility(correct_nll: Sequence[float], rouge: Sequence[float], tr: Sequence[float]) -> dict:
    prob = float(np.mean(np.exp(-np.asarray(correct_nll, float)))) if len(correct_nll) else 0.0
    rl = float(np.mean(rouge)) if len(rouge) else 0.0
    trs = truth_ratio_score(tr)
    return {"utility": harmonic_mean([prob, rl, trs]), "utility_prob": prob,
            "utility_rouge_l": rl, "utility_truth_ratio": trs}


def run_unlearning(lmlm, store, kb, forget: list[str], retain: list[str], bios: list[tuple[str, str]],
                   clozes: list, cfg, before: dict, before_outcomes: list, retain_model_dir: str | None = None) -> dict:
    """Delete the forget people from `store` (store.delete_entity) and measure again.

    `before`: the LMLM's precision/completion details on the intact store (splits "forget"/"retain");
    `before_outcomes`: its cloze outcomes then. Returns the flat unlearning numbers and details.
    """
    from lmlm.eval.completion import summarize
    from lmlm.eval.factcheck import score_answers
    from lmlm.eval.scoring import bio_answers, cloze_em, cloze_truth_ratios, load_model, truth_ratio_inputs

    fset, rset = set(forget), set(retain)

    def split(scores_of, items, name_of) -> dict:
        return {"all": scores_of(items), "forget": scores_of([x for x in items if name_of(x) in fset]),
                "retain": scores_of([x for x in items if name_of(x) in rset])}

    def precision(answers):
        return score_answers(kb, answers, cfg.length_penalty_gamma)

    forget_clozes = [c for c in clozes if c.name in fset]
    retain_clozes = [c for c in clozes if c.name in rset]
    wrong_f = truth_ratio_inputs(forget_clozes, kb, cfg)
    wrong_r = truth_ratio_inputs(retain_clozes, kb, cfg)
    tr_before = cloze_truth_ratios(lmlm, store, forget_clozes, wrong_f, cfg)
    tr_retain_before = cloze_truth_ratios(lmlm, store, retain_clozes, wrong_r, cfg)
    deleted = {n: store.delete_entity(n) for n in forget}
    after_gen = bio_answers(lmlm, store, kb, bios, cfg, True)
    p_after = split(precision, after_gen["answers"], lambda a: a[0])
    _, outcomes_after = cloze_em(lmlm, store, clozes, cfg, True)
    c_after = split(summarize, outcomes_after, lambda o: o.name)
    tr_after = cloze_truth_ratios(lmlm, store, forget_clozes, wrong_f, cfg)
    tr_retain_after = cloze_truth_ratios(lmlm, store, retain_clozes, wrong_r, cfg)
    if retain_model_dir:
        reference = cloze_truth_ratios(load_model(retain_model_dir, "lmlm", "retain_model"), store,
                                       forget_clozes, wrong_f, cfg)
        ref_name = "retain_model"
    else:
        reference, ref_name = tr_after, "same_weights"
    out = {
        "forget_precision_before": before["precision"]["forget"]["precision"],
        "retain_precision_before": before["precision"]["retain"]["precision"],
        "forget_precision_after": p_after["forget"]["precision"],
        "retain_precision_after": p_after["retain"]["precision"],
        "forget_completion_em_before": before["completion"]["forget"]["em"],
        "retain_completion_em_before": before["completion"]["retain"]["em"],
        "forget_completion_em_after": c_after["forget"]["em"],
        "retain_completion_em_after": c_after["retain"]["em"],
        "forget_quality_p": forget_quality(tr_after["truth_ratios"], reference["truth_ratios"]),
        "forget_quality_p_before": forget_quality(tr_before["truth_ratios"], reference["truth_ratios"]),
        "forget_quality_reference": ref_name,
        "forget_truth_ratio_score_before": truth_ratio_score(tr_before["truth_ratios"]),
        "forget_truth_ratio_score_after": truth_ratio_score(tr_after["truth_ratios"]),
        "deleted_rows": sum(int(v or 0) for v in deleted.values()),
        "deleted_entities": len(deleted),
        # the gold queries of the truth-ratio contexts, answered from an exact key before/after deletion
        "store_check": {"forget_queries": len(forget_clozes), "retain_queries": len(retain_clozes),
                        **{f"{s}_exact_{w}": tr["lookup_stages"].count("exact") for s, w, tr in (
                            ("forget", "before", tr_before), ("forget", "after", tr_after),
                            ("retain", "before", tr_retain_before), ("retain", "after", tr_retain_after))}},
    }
    rouge = {k: [rouge_l_recall(o.continuation, o.answer) for o in outs if o.name in rset]
             for k, outs in (("before", before_outcomes), ("after", outcomes_after))}
    for k, tr in (("before", tr_retain_before), ("after", tr_retain_after)):
        u = model_utility(tr["correct_nll"], rouge[k], tr["truth_ratios"])
        out[f"model_utility_{k}"] = u["utility"]
        out[f"model_utility_{k}_parts"] = u
    out["details_after"] = {"people": {"forget": forget, "retain": retain}, "precision": p_after,
                            "completion": c_after, "n_lookups_bios": after_gen["n_lookups"],
                            "examples": [{"name": n, "text": t} for n, t in after_gen["answers"][:5]],
                            "truth_ratios": {"forget_before": tr_before["truth_ratios"],
                                             "forget_after": tr_after["truth_ratios"],
                                             "reference": reference["truth_ratios"]}}
    return out
