"""Training the encoder annotator (encoder.py) from seed annotations.

Word tags come from the same alignment as the tagger's (seeds.align). Relations with fewer than
`min_relation_count` seed calls are trained under the frequent label whose all-MiniLM-L6-v2 sentence
embedding is nearest (cosine), so every tag is a label the seeds use often.

Frozen (finetune_epochs 0): the encoder runs once per seed window (the slow part on CPU) and only
the head is trained, on the cached word states. Fine-tuned: encoder and head are trained together
over the seed windows (a linear warm-up and decay of the learning rates); the head then reads each
window's words only, where inference reads the whole document's.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict

import numpy as np
import torch

from lmlm.annotate.config import EncoderTrainConfig
from lmlm.annotate.encoder import KIND, EncoderAnnotator, Head, base_model_path, windows, word_states
from lmlm.annotate.seeds import align, relation_counts, seed_fingerprint, select_entity_rules, torch_threads
from lmlm.annotate.trained import ENT
from lmlm.train.data import pad_rows


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


def train_head(head: Head, states: list[torch.Tensor], y: torch.Tensor, cfg: EncoderTrainConfig, log=print) -> int:
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


def _tag_weights(n_tags: int, span_weight: float) -> torch.Tensor:
    weight = torch.full((n_tags,), float(span_weight))
    weight[0] = 1.0  # "O"
    return weight


def finetune(encoder, head: Head, tok, words: list[list[str]], tag_ids: list[list[int]], cfg: EncoderTrainConfig,
             log=print) -> int:
    """Train `encoder` and `head` together on the seed documents' windows; returns the steps."""
    wins = [(ids, first, y[a:b]) for ws, y in zip(words, tag_ids)
            for a, b, ids, first in windows(tok, ws, cfg.max_tokens)]
    rng = random.Random(cfg.seed)
    order = sorted(range(len(wins)), key=lambda k: len(wins[k][0]))  # similar lengths share a batch
    batches = [order[i:i + cfg.finetune_windows] for i in range(0, len(order), cfg.finetune_windows)]
    total_steps = max(1, cfg.finetune_epochs * len(batches))
    warmup = max(1, total_steps // 20)
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": cfg.encoder_lr},
                             {"params": head.parameters(), "lr": cfg.lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / total_steps))
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


def fit_encoder(annotated: list[str], cfg: EncoderTrainConfig | None = None, *, threads: int | None = 1,
                log=print) -> EncoderAnnotator:
    """Train the encoder annotator from seed documents in legacy (or special-token) annotated form."""
    with torch_threads(threads):
        return _fit(annotated, cfg or EncoderTrainConfig(), log)


def _fit(annotated: list[str], cfg: EncoderTrainConfig, log) -> EncoderAnnotator:
    from transformers import AutoModel, AutoTokenizer

    if not annotated:
        raise ValueError("train-annotator: no seed documents with annotations")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rel_tag, names = relation_tags(annotated, cfg.min_relation_count, cfg.max_relations)
    docs = [align(a, rel_tag) for a in annotated]
    n_calls = sum(len(d.calls) for d in docs)
    if n_calls == 0:
        raise ValueError("train-annotator: no seed call could be aligned to its value in the text")
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

    fingerprint = seed_fingerprint(annotated, asdict(cfg))
    meta = {"kind": KIND, "tags": tags, "relation_names": names, "relation_map": rel_tag,
            "entity_rules": select_entity_rules(docs, rel_tag), "max_tokens": cfg.max_tokens,
            "head_hidden": cfg.hidden, "head_context": cfg.context,
            "fingerprint": fingerprint, "seed_docs": len(annotated), "seed_calls_aligned": n_calls,
            "seed_calls_unaligned": sum(d.unaligned for d in docs), "train": asdict(cfg),
            "train_steps": steps, "train_seconds": round(time.time() - t0, 1), "cache_seconds": round(t_cache, 1)}
    return EncoderAnnotator(encoder, tok, head, meta)

