"""The unlearning experiment of the evaluation suite: measure the LMLM, delete the forget people from
its store, measure again (metrics: unlearning.py)."""
from __future__ import annotations

from lmlm.eval.completion import summarize
from lmlm.eval.factcheck import score_answers
from lmlm.eval.scoring import bio_answers, cloze_em, cloze_truth_ratios, load_model, truth_ratio_inputs
from lmlm.eval.unlearning import forget_quality, model_utility, rouge_l_recall, truth_ratio_score


def run_unlearning(lmlm, store, kb, forget: list[str], retain: list[str], bios: list[tuple[str, str]],
                   clozes: list, cfg, before: dict, before_outcomes: list, retain_model_dir: str | None = None) -> dict:
    """Delete the forget people from `store` (store.delete_entity) and measure again.

    `before`: the LMLM's precision/completion details on the intact store (splits "forget"/"retain");
    `before_outcomes`: its cloze outcomes then. Returns the flat unlearning numbers and details.
    """
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
