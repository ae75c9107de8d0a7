"""The trained annotator: a small learned span tagger that inserts lookup calls (fast on CPU).

Model: every word gets hashed sparse features (the word, its shape and affixes, a window of three
words each side, left bigrams). An EmbeddingBag sums their vectors, a tanh hidden layer and a linear
layer give per-tag emission scores, and a learned transition matrix scores the tag given the
previous tag (a maximum-entropy Markov tagger, decoded exactly with Viterbi under BIO constraints).
Tags: `O`, `B-/I-ENT` (mentions of entities that seed calls are about) and `B-/I-<relation>` for
each relation seen at least `min_relation_count` times; rarer relations share one `OTHER` tag whose
label comes from the nearest seed value in the tagger's hidden space (cosine kNN).

Training data is derived from seed annotations only: each seed call is aligned to the words that
follow it (the value as stated in the text); mentions of the call's entity anywhere in the document
become ENT spans. The entity of a predicted value is chosen by a rule *selected from the seeds*:
for each relation we count whether the call's entity was the document's subject (its first entity
mention) or the nearest entity mention to the left, and keep the more frequent rule.
"""
from __future__ import annotations

import json
import re
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmlm.annotate.base import Annotator, begin_save, write_meta
from lmlm.format import Triple, render_legacy

TOKEN_RE = re.compile(r"\w+(?:[.\-]\w+)*|[^\w\s]")
OTHER = "OTHER"
ENT = "ENT"
SUBJECT, NEAREST = "subject", "nearest"


def tokenize(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in TOKEN_RE.finditer(text)]


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


# --------------------------------------------------------------------------------------------
# Tags to spans, spans to entities


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    out, i = [], 0
    while i < len(tags):
        if tags[i].startswith("B-"):
            name, j = tags[i][2:], i + 1
            while j < len(tags) and tags[j] == "I-" + name:
                j += 1
            out.append((i, j, name))
            i = j
        else:
            i += 1
    return out


def entity_for(ent_spans: list[tuple[int, int]], value_start: int, rule: str) -> tuple[int, int] | None:
    if not ent_spans:
        return None
    if rule == NEAREST:
        left = [s for s in ent_spans if s[1] <= value_start]
        return left[-1] if left else ent_spans[0]
    return ent_spans[0]


def calls_from_tags(text: str, tokens: list[tuple[str, int, int]], tags: list[str], rules: dict[str, str],
                    relation_of) -> list[tuple[tuple[int, int], Triple]]:
    """Calls of a tagged text: each value span with the relation `relation_of(i, j, tag name)` gives
    (None: skipped) and the ENT span that the entity rule of its tag (else rules["*"]) picks."""
    found = spans(tags)
    ents = [(i, j) for i, j, name in found if name == ENT]
    out = []
    for i, j, name in found:
        if name == ENT:
            continue
        relation = relation_of(i, j, name)
        ent = entity_for(ents, i, rules.get(name, rules["*"]))
        if relation is None or ent is None:
            continue
        start, end = tokens[i][1], tokens[j - 1][2]
        entity, value = text[tokens[ent[0]][1]:tokens[ent[1] - 1][2]], text[start:end]
        if "]" in value or "\n" in value or "\n" in entity:
            continue  # not expressible as a legacy call
        out.append(((start, end), Triple(entity, relation, value)))
    return out


def insert_calls(text: str, calls: list[tuple[tuple[int, int], Triple]]) -> str:
    """The text with a legacy call right before each value span (calls in text order)."""
    parts, pos = [], 0
    for (start, _), triple in calls:
        parts += [text[pos:start], render_legacy(triple), " "]
        pos = start
    parts.append(text[pos:])
    return "".join(parts)


def bio_mask(tags: list[str]) -> np.ndarray:
    """(tags + 1, tags) additive transition mask: -1e9 where I-x follows anything but B-x / I-x
    (the last row is the start of the text)."""
    n = len(tags)
    mask = np.zeros((n + 1, n), dtype=np.float32)
    for t, tag in enumerate(tags):
        if tag.startswith("I-"):
            ok = {"B-" + tag[2:], tag}
            mask[[p for p in range(n) if tags[p] not in ok] + [n], t] = -1e9
    return mask


def viterbi(em: np.ndarray, trans: np.ndarray) -> list[int]:
    """Best tag path of emission scores em (n, tags) under transition scores trans (tags + 1, tags),
    each row of em + trans normalised to log-probabilities (a Markov tagger's local model)."""
    s = em[:, None, :] + trans[None]  # (n, prev, tag)
    s = (s - torch.from_numpy(s).logsumexp(2, keepdim=True).numpy())
    n_tags = em.shape[1]
    delta = s[0, n_tags]
    back = np.zeros((len(em), n_tags), dtype=np.int64)
    for i in range(1, len(em)):
        cand = delta[:, None] + s[i, :n_tags]
        back[i] = cand.argmax(0)
        delta = cand.max(0)
    path = [int(delta.argmax())]
    for i in range(len(em) - 1, 0, -1):
        path.append(int(back[i][path[-1]]))
    return path[::-1]


# --------------------------------------------------------------------------------------------
# The model


class TaggerNet(nn.Module):
    def __init__(self, buckets: int, dim: int, n_tags: int):
        super().__init__()
        self.emb = nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)  # sparse grads: fast steps
        self.out = nn.Linear(dim, n_tags)
        self.trans = nn.Parameter(torch.zeros(n_tags + 1, n_tags))  # last row: start of document
        nn.init.normal_(self.emb.weight, std=0.02)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.emb(ids))


class TrainedAnnotator(Annotator):
    """A learned span tagger wrapped in the `Annotator` interface (see annotators.py)."""

    name = "trained"

    def __init__(self, net: TaggerNet, meta: dict, knn: tuple[np.ndarray, list[str]] | None = None):
        self.net = net.eval()
        self.meta = meta
        self.tags: list[str] = meta["tags"]
        self.relations: dict[str, str] = meta["relation_names"]  # tag name -> surface label
        self.rules: dict[str, str] = meta["entity_rules"]
        self.knn = knn
        with torch.no_grad():
            self.trans = self.net.trans.numpy() + bio_mask(self.tags)

    @property
    def annotator_id(self) -> str:
        return f"trained:{self.meta.get('fingerprint', 'unsaved')}"

    # ---- inference
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

    def annotate_one(self, text: str) -> str:
        return insert_calls(text, self.predict(text))

    def annotate(self, texts: list[str]) -> list[str]:
        return [self.annotate_one(t) for t in texts]

    # ---- persistence
    def save(self, out_dir: str | Path) -> Path:
        out = begin_save(out_dir)
        torch.save(self.net.state_dict(), out / "model.pt")
        if self.knn is not None:
            np.savez(out / "knn.npz", vectors=self.knn[0], labels=np.array(self.knn[1], dtype=object))
        else:
            (out / "knn.npz").unlink(missing_ok=True)  # an older save's neighbours are not this model's
        return write_meta(out, self.meta).parent

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None) -> "TrainedAnnotator":
        p = Path(path)
        if not (p / "annotator.json").is_file() or not (p / "model.pt").is_file():
            raise FileNotFoundError(f"{p} is not a trained annotator directory (needs annotator.json and model.pt)")
        if num_threads:
            torch.set_num_threads(num_threads)
        meta = json.loads((p / "annotator.json").read_text())
        net = TaggerNet(meta["buckets"], meta["dim"], len(meta["tags"]))
        net.load_state_dict(torch.load(p / "model.pt", weights_only=True))
        knn = None
        if (p / "knn.npz").is_file():
            z = np.load(p / "knn.npz", allow_pickle=True)
            knn = (z["vectors"], [str(x) for x in z["labels"]])
        return cls(net, meta, knn)


