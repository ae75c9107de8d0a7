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

The experiment that deletes the forget set and measures again is `unlearning_run.run_unlearning`.
"""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generated: str, gold: str) -> float:
    """ROUGE-L recall of `generated` against `gold`, as TOFU computes it (rouge_score, Porter stemmer):
    LCS(words) / gold words, words being lower-case [a-z0-9] runs."""
    if not _words(gold):
        raise ValueError("rouge_l_recall: gold answer has no words")
    return _rouge_l().score(gold, generated)["rougeL"].recall


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
