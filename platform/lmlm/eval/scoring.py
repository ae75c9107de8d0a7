"""Model-side helpers shared by the evaluations: loading a model directory, answer log-likelihoods,
and the lookup context an LMLM sees before it states a fact.

`answer_nll` is teacher forcing: the mean negative log-likelihood per answer token of `" " + answer`
after a context. Context and answer are tokenized separately and concatenated, so the answer's
tokens are exactly those of `" " + answer`, whatever the context ends with.
"""
from __future__ import annotations

import time

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from lmlm.eval.completion import completion_prompt, display_continuation, lookup_values, score_completion
from lmlm.eval.factcheck import KnowledgeBase
from lmlm.eval.unlearning import perturbations, truth_ratios
from lmlm.format import Triple, render_block
from lmlm.train.data import pad_rows


@dataclass
class EvalModel:
    """A causal LM under evaluation; `kind` says whether it was trained with lookups."""

    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    kind: str  # "lmlm" | "standard"
    path: Optional[str] = None  # the directory it was loaded from (what Ray workers load)
    workers: Any = None  # an eval.remote.EvalWorkers that generates and scores for it (None: here)

    def __post_init__(self) -> None:
        if self.kind not in ("lmlm", "standard"):
            raise ValueError(f"EvalModel {self.name}: kind must be 'lmlm' or 'standard', got {self.kind!r}")


PROGRESS_EVERY_S = 15.0  # seconds between progress lines of a long generation


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory, or a pretraining run (its latest complete checkpoint's `hf/`), by
    local path or storage URI (`lmlm.train.runstore.model_dir`)."""
    from lmlm.train.runstore import model_dir

    return model_dir(path)


def load_model(path: str | Path, kind: str, name: str | None = None, device: str = "auto") -> EvalModel:
    """A model directory written by `save_pretrained` (with its tokenizer in the same directory), or
    a run, by path or storage URI (`resolve_model_dir`), on
    `device` (auto: the GPU when there is one) in the inference precision of lmlm.precision
    (bfloat16 on a bf16 GPU, float32 on a CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlm.precision import device_of, inference_dtype
    from lmlm.storage import is_uri

    p = resolve_model_dir(path)
    where = device_of(device)
    tokenizer = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=inference_dtype("auto", where)).to(where)
    model.eval()
    # a URI stays the model's name: Ray workers on other nodes take their own copies of it
    return EvalModel(name or kind, model, tokenizer, kind, str(path) if is_uri(str(path)) else str(p))


def lookup_context(prompt: str, entity: str, relation: str, value: str | None) -> str:
    """`prompt` followed by the completed lookup block the LMLM would write before stating the fact.

    `value=None` (the store abstained) means no block: the model continues from the bare prompt.
    """
    if value is None:
        return prompt
    return prompt.rstrip() + " " + render_block(Triple(entity, relation, value))


@torch.no_grad()
def answer_nll(em: EvalModel, contexts: Sequence[str], answers: Sequence[str], batch_size: int = 16) -> list[float]:
    """Mean per-token NLL of `" " + answer` after each context (teacher forcing)."""
    if len(contexts) != len(answers):
        raise ValueError(f"answer_nll: {len(contexts)} contexts but {len(answers)} answers")
    tok, model = em.tokenizer, em.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    out: list[float] = []
    for i in range(0, len(contexts), batch_size):
        rows, spans = [], []
        for ctx, ans in zip(contexts[i:i + batch_size], answers[i:i + batch_size]):
            c = tok(ctx, add_special_tokens=False)["input_ids"]
            a = tok(" " + ans.strip(), add_special_tokens=False)["input_ids"]
            if not a:
                raise ValueError(f"answer_nll: answer {ans!r} tokenizes to nothing")
            ids = (c + a)[-max_len:]
            rows.append(ids)
            spans.append(len(a))
        device = next(model.parameters()).device
        input_ids, mask = (t.to(device) for t in pad_rows(rows, pad))
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:]
        tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for j, (r, n) in enumerate(zip(rows, spans)):
            end = len(r) - 1  # position of the last target in the shifted view
            out.append(float(-tok_lp[j, end - n:end].mean()))
    return out


# ----------------------------------------------------------------------------------------------
# Generation through lmlm.generate; `cfg` is an EvalConfig (lmlm.eval.suite)


def _generate(em: EvalModel, store: Any, prompts: list[str], cfg: Any, max_new_tokens: int,
              use_lookups: bool) -> list[Any]:
    from lmlm.generate import Engine, GenerationParams

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0,
                              repetition_penalty=cfg.repetition_penalty, max_lookups=cfg.max_lookups,
                              use_lookups=use_lookups, copy_entities=getattr(cfg, "copy_entities", False))
    if em.workers is not None:  # Ray actors (lmlm.eval.remote): batches round-robin, merged in order
        return em.workers.generate(em.kind, prompts, params, store if use_lookups else None, cfg.batch_size)
    engine = Engine(em.model, em.tokenizer, store if use_lookups else None)
    out: list[Any] = []
    label = f"evaluate: generating ({em.kind}, lookups {'on' if use_lookups else 'off'}, {max_new_tokens} tokens)"
    t0 = last = time.perf_counter()
    for i in range(0, len(prompts), cfg.batch_size):
        out.extend(engine.generate(prompts[i:i + cfg.batch_size], params))
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S or len(out) == len(prompts):
            eta = (now - t0) / len(out) * (len(prompts) - len(out))
            print(f"{label}: {len(out)}/{len(prompts)} prompts, {now - t0:.0f} s, eta {eta:.0f} s", flush=True)
            last = now
    return out


def bio_answers(em: EvalModel, store: Any, kb: KnowledgeBase, bios: list[tuple[str, str]], cfg: Any,
                use_lookups: bool) -> dict:
    """Generate a bio per (name, prompt); returns the (name, display continuation) answers."""
    prompts = [p for _, p in bios]
    results = _generate(em, store, prompts, cfg, cfg.bio_max_new_tokens, use_lookups and em.kind == "lmlm")
    answers = [(name, display_continuation(r)) for (name, p), r in zip(bios, results)]
    return {"answers": answers, "results": results, "n_lookups": sum(len(lookup_values(r)) for r in results)}


def cloze_em(em: EvalModel, store: Any, clozes: list[Any], cfg: Any, use_lookups: bool) -> tuple[dict, list]:
    force = use_lookups and em.kind == "lmlm"
    prompts = [completion_prompt(c.prompt, force) for c in clozes]
    results = _generate(em, store, prompts, cfg, cfg.cloze_max_new_tokens, force)
    return score_completion(clozes, results, prompts, cfg.completion_words)


# ----------------------------------------------------------------------------------------------
# Truth ratios


def truth_ratio_inputs(clozes: list[Any], kb: KnowledgeBase, cfg: Any) -> list[list[str]]:
    return [perturbations(c.answer, kb.pools[c.relation], cfg.n_perturbed, seed=cfg.seed * 100003 + i)
            for i, c in enumerate(clozes)]


def cloze_truth_ratios(em: EvalModel, store: Any, clozes: list[Any], wrong: list[list[str]],
                       cfg: Any) -> dict:
    """TRs of clozes; an LMLM sees the store's answer to the gold query as a completed lookup block."""
    stages: list[str] = []
    if em.kind == "lmlm":
        answers = store.lookup_batch([(c.name, c.relation) for c in clozes]) if clozes else []
        contexts = [lookup_context(c.prompt, c.name, c.relation, a.value if a is not None else None)
                    for c, a in zip(clozes, answers)]
        stages = ["none" if a is None else a.stage for a in answers]
    else:
        contexts = [c.prompt for c in clozes]
    correct = answer_nll(em, contexts, [c.answer for c in clozes], cfg.batch_size)
    flat_ctx = [ctx for ctx, ws in zip(contexts, wrong) for _ in ws]
    flat = answer_nll(em, flat_ctx, [w for ws in wrong for w in ws], cfg.batch_size) if flat_ctx else []
    it = iter(flat)
    wrong_nll = [[next(it) for _ in ws] for ws in wrong]
    keep = [i for i, ws in enumerate(wrong) if ws]
    tr = truth_ratios([correct[i] for i in keep], [wrong_nll[i] for i in keep]) if keep else []
    return {"truth_ratios": [float(x) for x in tr], "correct_nll": correct, "lookup_stages": stages}
