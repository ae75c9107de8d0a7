"""The `tagger` kind: a small learned span tagger that inserts lookup calls (fast on CPU).

    fit_tagger(seed_docs, epochs=..., ...) -> TaggerAnnotator     # from legacy or special-token seeds
    TaggerAnnotator.load(dir) / .save(dir)                        # model.pt, knn.npz, annotator.json

Model: every word gets hashed sparse features (the word, its shape and affixes, a window of three
words each side, left bigrams). An EmbeddingBag sums their vectors, a tanh hidden layer and a linear
layer give per-tag emission scores, and a learned transition matrix scores the tag given the
previous tag (a maximum-entropy Markov tagger, decoded exactly with Viterbi under BIO constraints).
Tags (tagging.py): `O`, `B-/I-ENT` and `B-/I-<relation>` for each relation seen at least
`min_relation_count` times; rarer relations share one `OTHER` tag whose label comes from the nearest
seed value in the tagger's hidden space (cosine kNN).

Training data is derived from seed annotations only (alignment.py). The entity of a predicted value
is chosen by a rule *selected from the seeds*: for each relation, whether the call's entity was the
document's subject or the nearest entity mention to the left, whichever was right more often.
"""
from __future__ import annotations

import re
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmlm.annotate.alignment import align_seeds, relation_counts, select_entity_rules
from lmlm.annotate.saved import SavedAnnotator, seed_fingerprint
from lmlm.annotate.tagging import (ENT, OTHER, bio_mask, calls_from_tags, insert_calls, spans, tokenize,
                                   viterbi)
from lmlm.annotate.threads import torch_threads
from lmlm.format import Triple, normalize_key

_SHAPE = str.maketrans({**{c: "X" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
                        **{c: "x" for c in "abcdefghijklmnopqrstuvwxyz"}, **{c: "d" for c in "0123456789"}})
_REPEAT = re.compile(r"(.)\1{2,}")


@lru_cache(maxsize=1 << 16)
def _shape(w: str) -> str:
    return _REPEAT.sub(r"\1\1", w.translate(_SHAPE))


def token_features(words: list[str]) -> list[list[str]]:
    low = [w.lower() for w in words]
    shp = [_shape(w) for w in words]
    head = set(low[:6])
    n = len(words)

    def at(i: int) -> str:
        return low[i] if 0 <= i < n else ("<s>" if i < 0 else "</s>")

    feats = []
    for i, w in enumerate(words):
        f = ["b", "w=" + low[i], "s=" + shp[i], "p3=" + low[i][:3], "x3=" + low[i][-3:],
             "w-1=" + at(i - 1), "w-2=" + at(i - 2), "w-3=" + at(i - 3),
             "w+1=" + at(i + 1), "w+2=" + at(i + 2), "w+3=" + at(i + 3),
             "s-1=" + (shp[i - 1] if i else "<s>"), "s+1=" + (shp[i + 1] if i + 1 < n else "</s>"),
             "bg=" + at(i - 2) + "|" + at(i - 1), "bw=" + at(i - 1) + "|" + low[i],
             "pos=" + str(min(i, 8))]
        f.append("inhead" if low[i] in head and i >= 6 else "-")
        feats.append(f)
    return feats


def hash_features(feats: list[list[str]], buckets: int) -> torch.Tensor:
    """(tokens, features) bucket ids; every token has the same number of features."""
    return torch.tensor([[zlib.crc32(s.encode()) % buckets for s in f] for f in feats], dtype=torch.long)


class TaggerNet(nn.Module):
    def __init__(self, buckets: int, dim: int, n_tags: int):
        super().__init__()
        self.emb = nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)  # sparse grads: fast steps
        self.out = nn.Linear(dim, n_tags)
        self.trans = nn.Parameter(torch.zeros(n_tags + 1, n_tags))  # last row: start of document
        nn.init.normal_(self.emb.weight, std=0.02)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.emb(ids))


class TaggerAnnotator(SavedAnnotator):
    """The learned span tagger behind the `Annotator` interface."""

    kind = "tagger"
    id_prefix = "trained"  # the label it had before there were other kinds: stores keep comparing equal
    files = ("model.pt",)

    def __init__(self, net: TaggerNet, meta: dict, knn: tuple[np.ndarray, list[str]] | None = None):
        self.net = net.eval()
        self.meta = meta
        self.tags: list[str] = meta["tags"]
        self.relations: dict[str, str] = meta["relation_names"]  # tag name -> surface label
        self.rules: dict[str, str] = meta["entity_rules"]
        self.knn = knn
        with torch.no_grad():
            self.trans = self.net.trans.numpy() + bio_mask(self.tags)

    def predict(self, text: str) -> list[tuple[tuple[int, int], Triple]]:
        """Predicted calls: (character span of the stated value, triple)."""
        tokens = tokenize(text)
        if not tokens:
            return []
        ids = hash_features(token_features([w for w, _, _ in tokens]), self.meta["buckets"])
        with torch.no_grad():
            h = self.net.hidden(ids)
            em = self.net.out(h).numpy()
        tags = [self.tags[t] for t in viterbi(em, self.trans)]

        def relation_of(i: int, j: int, name: str) -> str | None:
            return self._nearest_relation(h[i].numpy()) if name == OTHER else self.relations.get(name)

        return calls_from_tags(text, tokens, tags, self.rules, relation_of)

    def _nearest_relation(self, vec: np.ndarray) -> str | None:
        if self.knn is None or not len(self.knn[1]):
            return None
        mat, labels = self.knn
        return labels[int(np.argmax(mat @ (vec / (np.linalg.norm(vec) + 1e-8))))]

    def annotate(self, texts: list[str]) -> list[str]:
        return [insert_calls(t, self.predict(t)) for t in texts]

    def save_files(self, out: Path) -> None:
        torch.save(self.net.state_dict(), out / "model.pt")
        if self.knn is not None:
            np.savez(out / "knn.npz", vectors=self.knn[0], labels=np.array(self.knn[1], dtype=object))
        else:
            (out / "knn.npz").unlink(missing_ok=True)  # an older save's neighbours are not this model's

    @classmethod
    def from_files(cls, path: Path, meta: dict) -> "TaggerAnnotator":
        net = TaggerNet(meta["buckets"], meta["dim"], len(meta["tags"]))
        net.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        knn = None
        if (path / "knn.npz").is_file():
            z = np.load(path / "knn.npz", allow_pickle=True)
            knn = (z["vectors"], [str(x) for x in z["labels"]])
        return cls(net, meta, knn)


# --------------------------------------------------------------------------------------------
# Training


def fit_tagger(annotated: list[str], *, threads: int | None = 1, **kw) -> TaggerAnnotator:
    """Train a tagger from seed documents in legacy (or special-token) annotated form.

    Keyword arguments: see `_fit`. `threads` torch threads while training (restored afterwards):
    tiny sparse steps gain nothing from more threads and stall badly on a busy machine.
    """
    with torch_threads(threads):
        return _fit(annotated, **kw)


def _fit(annotated: list[str], *, buckets: int = 1 << 17, dim: int = 32, epochs: int = 6, lr: float = 0.02,
         batch_tokens: int = 512, min_relation_count: int = 3, max_relations: int = 64, seed: int = 0,
         span_weight: float = 1.0, log=print) -> TaggerAnnotator:
    if not annotated:
        raise ValueError("train-annotator: no seed documents with annotations")
    torch.manual_seed(seed)
    counts, surface = relation_counts(annotated)
    rel_surface = {k: surface[k] for k, c in counts.most_common(max_relations) if c >= min_relation_count}
    rel_tag = {k: k for k in rel_surface}  # tag name = the normalised relation
    docs, seed_counts = align_seeds(annotated, rel_tag)
    tags = ["O", "B-" + ENT, "I-" + ENT]
    names = list(rel_surface) + ([OTHER] if any(n == OTHER for d in docs for _, _, n in spans(d.tags)) else [])
    for name in names:
        tags += ["B-" + name, "I-" + name]
    tag_id = {t: i for i, t in enumerate(tags)}

    rules = select_entity_rules(docs, rel_tag)

    ids_l, y_l, prev_l = [], [], []
    for d in docs:
        if d.tokens:
            ids_l.append(hash_features(token_features([w for w, _, _ in d.tokens]), buckets))
            y = [tag_id[t] for t in d.tags]
            y_l += y
            prev_l += [len(tags)] + y[:-1]
    ids, y, prev = torch.cat(ids_l), torch.tensor(y_l), torch.tensor(prev_l)
    net = TaggerNet(buckets, dim, len(tags))
    opts = [torch.optim.SparseAdam([net.emb.weight], lr=lr),
            torch.optim.Adam([p for n_, p in net.named_parameters() if not n_.startswith("emb.")], lr=lr)]
    n = len(y)
    weight = torch.full((len(tags),), float(span_weight))
    weight[0] = 1.0  # "O"
    for epoch in range(epochs):
        perm, total = torch.randperm(n), 0.0
        for b in range(0, n, batch_tokens):
            idx = perm[b:b + batch_tokens]
            logits = net.out(net.hidden(ids[idx])) + net.trans[prev[idx]]
            loss = nn.functional.cross_entropy(logits, y[idx], weight=weight)
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.item() * len(idx)
        log(f"train-annotator: epoch {epoch + 1}/{epochs} loss {total / n:.4f}")

    # kNN memory for the shared OTHER tag: hidden vector of each rare value's first word
    knn = None
    if OTHER in names:
        vecs, labels = [], []
        net.eval()
        with torch.no_grad():
            for d in docs:
                rare = [(i, t) for i, _, t in d.calls if normalize_key(t.relation) not in rel_tag]
                if rare:
                    h = net.hidden(hash_features(token_features([w for w, _, _ in d.tokens]), buckets)).numpy()
                    for i, t in rare:
                        vecs.append(h[i] / (np.linalg.norm(h[i]) + 1e-8))
                        labels.append(t.relation)
        knn = (np.stack(vecs).astype(np.float32), labels) if vecs else None

    meta = {"tags": tags, "relation_names": {**rel_surface}, "entity_rules": rules, "buckets": buckets,
            "dim": dim, "fingerprint": seed_fingerprint(annotated, buckets, dim, epochs, seed), **seed_counts}
    return TaggerAnnotator(net.eval(), meta, knn)
