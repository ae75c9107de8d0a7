"""The `hf` kind: a local transformers causal LM with a chat template, batched greedy decoding.

Documents are cut at word boundaries so that each piece's whole prompt fits `max_prompt_tokens`, and
the pieces' outputs are joined; the pipeline's validation then anchors the calls in the input
(anchor.py), so the annotated document is the input word for word whatever else the model rewrote.
"""
from __future__ import annotations

from pathlib import Path

from lmlm.annotate.base import Annotator
from lmlm.annotate.chunks import WORD, word_cut
from lmlm.annotate.config import HFAnnotatorConfig
from lmlm.annotate.prompt import build_messages, load_prompt
from lmlm.precision import device_of


def hf_annotator_id(cfg: HFAnnotatorConfig) -> str:
    return f"hf:{Path(cfg.model_path).name}"


class HFAnnotator(Annotator):
    kind = "hf"

    def __init__(self, cfg: HFAnnotatorConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not cfg.model_path or not Path(cfg.model_path).is_dir():
            raise ValueError(f"hf annotator: model_path {cfg.model_path!r} is not a local model directory")
        tok = AutoTokenizer.from_pretrained(cfg.model_path)
        model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        self.use(model, tok, cfg, load_prompt(cfg.prompt_path))
        self.annotator_id = hf_annotator_id(cfg)

    def use(self, model, tok, cfg: HFAnnotatorConfig, template: list[dict]) -> None:
        """Annotate with this loaded model and tokenizer (which must have a chat template)."""
        if not tok.chat_template:
            raise ValueError(f"hf annotator: the tokenizer of {cfg.model_path or 'the model'} has no chat template")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.cfg, self.tok, self.template = cfg, tok, template
        self.device = device_of(cfg.device)
        self.model = model.to(self.device).eval()

    def render(self, text: str) -> str:
        """The full prompt string: chat template applied around the document, generation prompt on."""
        return self.tok.apply_chat_template(build_messages(self.template, text), tokenize=False,
                                            add_generation_prompt=True)

    def n_tokens(self, text: str) -> int:
        return len(self.tok(self.render(text), add_special_tokens=False)["input_ids"])

    def pieces(self, text: str) -> list[str]:
        """The document cut at word boundaries so that each piece's whole prompt fits the budget.

        The cut is made in the document, never in the token sequence, so the chat template's
        opening and closing tokens always survive (the reference truncates tokens and loses them).
        """
        out, rest = [], text
        while rest.strip():
            n = len(WORD.findall(rest))
            if self.n_tokens(rest) <= self.cfg.max_prompt_tokens:
                out.append(rest)
                break
            lo, hi = 1, n  # largest word count that fits, by bisection (at least one word)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.n_tokens(rest[:word_cut(rest, mid)]) <= self.cfg.max_prompt_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            cut = word_cut(rest, lo)
            out.append(rest[:cut])
            rest = rest[cut:]
        return out or [text]

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        return self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def annotate(self, texts: list[str]) -> list[str]:
        pieces = [(i, p) for i, t in enumerate(texts) for p in self.pieces(t)]
        outs: list[str] = []
        bs = max(1, self.cfg.batch_size)
        for b in range(0, len(pieces), bs):
            outs += self._generate([self.render(p) for _, p in pieces[b:b + bs]])
        joined = [[] for _ in texts]
        for (i, piece), out in zip(pieces, outs):
            lead = piece[:len(piece) - len(piece.lstrip())]  # keep the separator before each piece
            joined[i].append(lead + out.strip())
        return ["".join(parts) for parts in joined]
