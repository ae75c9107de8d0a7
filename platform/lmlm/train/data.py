"""Tokenize annotated documents and pack them into fixed-length sequences (docs/method.md §4, §5).

Each document becomes token ids plus per-token kinds (lmlm.train.masks):

- variant "lmlm": the document in special-token form (`lmlm.format.to_special`); kinds from the
  mask state machine, computed on the whole document so a block cut by a sequence boundary keeps
  its value masked in the next sequence.
- variant "standard": the same document with every lookup removed (`lmlm.format.strip_with_spans`,
  the text of `strip_lookups`), loss on every token. The words right after a removed block that
  restate its value (its `value_span`) are marked VALUE (still trained): they are "the same value
  tokens" whose loss we track for the baseline.

Documents are then concatenated with EOS after each one and cut into rows of `seq_len` tokens;
the last partial row is padded (kind PAD). `encode_and_pack` is the one packing implementation: it
runs on a Python list directly, or per block inside Ray Data `map_batches`: `packed_dataset` keeps
the rows in the object store for the Ray Train workers (the pretraining data path), `pack_dataset`
gathers them into one process.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer

from lmlm.format import strip_with_spans, to_special
from lmlm.tokenizer import LookupTokenIds, lookup_token_ids
from lmlm.train.masks import PAD, TEXT, VALUE, token_kinds

VARIANTS = ("lmlm", "standard")


@dataclass
class Packed:
    """Packed training rows: `input_ids` [N, seq_len] int32 and `kinds` [N, seq_len] int8."""

    input_ids: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_tokens(self) -> int:
        return int((self.kinds != PAD).sum())


def _encode(tokenizer, text: str, offsets: bool = False) -> tuple[list[int], list | None]:
    """Ids (and character offsets) of `text` without added special tokens, by a transformers
    tokenizer or by a bare `tokenizers.Tokenizer` (what a packing worker loads: `_load_encoder`)."""
    if isinstance(tokenizer, Tokenizer):
        enc = tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets if offsets else None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return enc["input_ids"], enc["offset_mapping"] if offsets else None


def _token_ids(tokenizer, token_ids: LookupTokenIds | None, require_eos: bool = False) -> LookupTokenIds:
    """`token_ids` if given, else the transformers tokenizer's own; a bare `tokenizers.Tokenizer`
    knows neither its EOS nor its padding, so it needs them given."""
    if token_ids is not None:
        return token_ids
    if isinstance(tokenizer, Tokenizer):
        raise ValueError("token_ids: required with a bare tokenizers.Tokenizer (it does not know its EOS "
                         "or padding); pass lookup_token_ids(<its transformers tokenizer>)")
    return lookup_token_ids(tokenizer, require_eos=require_eos)


def encode_document(text: str, tokenizer, variant: str, token_ids: LookupTokenIds | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and kinds of one annotated document (legacy or special-token form)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    if variant == "lmlm":
        token_ids = _token_ids(tokenizer, token_ids)
        ids, _ = _encode(tokenizer, to_special(text).text)
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, np.int8)
        kinds = token_kinds(ids, token_ids, start_state=TEXT)
        return np.asarray(ids, np.int32), kinds
    stripped = strip_with_spans(text)
    stripped, spans = stripped.text, stripped.value_spans
    ids, offsets = _encode(tokenizer, stripped, offsets=bool(spans))
    ids = np.asarray(ids, np.int32)
    kinds = np.full(len(ids), TEXT, np.int8)
    if spans:
        offsets = np.asarray(offsets).reshape(-1, 2)
        for s, e in spans:
            kinds[(offsets[:, 0] < e) & (offsets[:, 1] > s)] = VALUE
    return ids, kinds


def pack(docs: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int, eos_id: int, pad_id: int,
         drop_last: bool = False) -> Packed:
    """Concatenate documents with EOS after each and cut into rows of `seq_len` (tail padded)."""
    if seq_len < 2:
        raise ValueError(f"seq_len: {seq_len} must be at least 2")
    ids_parts, kind_parts = [], []
    for ids, kinds in docs:
        if len(ids) == 0:
            continue
        ids_parts += [np.asarray(ids, np.int32), np.array([eos_id], np.int32)]
        kind_parts += [np.asarray(kinds, np.int8), np.array([TEXT], np.int8)]
    if not ids_parts:
        return Packed(np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int8))
    ids = np.concatenate(ids_parts)
    kinds = np.concatenate(kind_parts)
    n_full, rest = divmod(len(ids), seq_len)
    if rest and not drop_last:
        pad = seq_len - rest
        ids = np.concatenate([ids, np.full(pad, pad_id, np.int32)])
        kinds = np.concatenate([kinds, np.full(pad, PAD, np.int8)])
        n_full += 1
    n = n_full * seq_len
    return Packed(ids[:n].reshape(-1, seq_len), kinds[:n].reshape(-1, seq_len))


def encode_and_pack(texts: Sequence[str], tokenizer, variant: str, seq_len: int,
                    drop_last: bool = False, token_ids: LookupTokenIds | None = None) -> Packed:
    """Tokenize and pack a list of annotated documents: the one packing implementation.
    `token_ids`: the tokenizer's (lookup_token_ids), needed when `tokenizer` is a bare
    `tokenizers.Tokenizer`, which does not know its EOS."""
    token_ids = _token_ids(tokenizer, token_ids, require_eos=True)
    docs = (encode_document(t, tokenizer, variant, token_ids) for t in texts if t)
    return pack(docs, seq_len, token_ids.eos, token_ids.pad, drop_last)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int):
    """Right-padded `input_ids` and `attention_mask` tensors ([len(rows), longest row]) of token rows."""
    import torch

    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, :len(r)] = 1
    return ids, mask


# A packing task's Rust tokenizer encodes on several threads: at half a CPU Ray ran twice as many
# tasks as cores (10,000 documents on 2 cores: 9.8-14.8 s, against 6.4-6.7 s at one CPU).
PACK_CPUS = 1.0


@lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    from lmlm.storage import local_dir

    return AutoTokenizer.from_pretrained(local_dir(path))  # a URI: this node's copy of it


@lru_cache(maxsize=4)
def _load_encoder(path: str):
    """What a packing worker encodes with: the bare Rust tokenizer of the directory's tokenizer.json
    (what `save_pretrained` writes; no transformers import, a second or more of each worker's
    start), else the transformers tokenizer. Set as a transformers call leaves it: no padding, no
    truncation, special tokens in the text recognised."""
    from pathlib import Path

    from lmlm.storage import local_dir

    file = Path(local_dir(path)) / "tokenizer.json"
    if not file.is_file():
        return _load_tokenizer(path)
    tok = Tokenizer.from_file(str(file))
    tok.no_padding()
    tok.no_truncation()
    tok.encode_special_tokens = False
    return tok


def _pack_batch(batch: dict, tokenizer_dir: str, token_ids: LookupTokenIds, variant: str, seq_len: int,
                column: str, seed: int | None = None) -> dict:
    packed = encode_and_pack([str(t) for t in batch[column]], _load_encoder(tokenizer_dir), variant, seq_len,
                             token_ids=token_ids)
    ids, kinds = packed.input_ids, packed.kinds
    if seed is not None:  # the rows in an order drawn from the seed and the batch's own tokens
        order = np.random.default_rng([seed, zlib.crc32(ids.tobytes())]).permutation(len(ids))
        ids, kinds = ids[order], kinds[order]
    return {"input_ids": ids, "kinds": kinds}


def _packed_rows(ds, tokenizer_dir: str, variant: str, seq_len: int, column: str, batch_size: int, num_cpus: float,
                 seed: int | None = None):
    """The lazy Ray Dataset of packed rows {"input_ids": [seq_len] int32, "kinds": [seq_len] int8}:
    each batch of `batch_size` documents tokenized and packed on its own by a worker, its rows
    permuted when `seed` is given."""
    # Same rows in the same order on every call: a resumed run must see the same data order. On the
    # dataset's own context: it was copied from the global one when `ds` was made, so setting the
    # global one now would leave the first run of a process unordered.
    ds.context.execution_options.preserve_order = True
    if column not in ds.schema().names:
        raise ValueError(f"dataset: no column {column!r} (columns: {ds.schema().names})")
    token_ids = lookup_token_ids(_load_tokenizer(str(tokenizer_dir)), require_eos=True)  # decided once, here
    return ds.map_batches(_pack_batch, batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus,
                          fn_kwargs=dict(tokenizer_dir=str(tokenizer_dir), token_ids=token_ids, variant=variant,
                                         seq_len=seq_len, column=column, seed=seed))


def packed_dataset(ds, tokenizer_dir: str, variant: str, seq_len: int, seed: int = 0,
                   column: str = "annotated_text", batch_size: int = 512, num_cpus: float = PACK_CPUS):
    """The training rows as a Ray Dataset, materialized in the object store, where the Train workers
    read their shards (`get_dataset_shard`): the driver holds block references and counts, never
    rows. Packed in parallel workers (`_packed_rows`), shuffled with `seed` in two linear steps:
    each batch's rows permuted where it is packed, then the blocks put in a random order (so each
    rank's equal share is a random set of blocks; training reshuffles within a window each epoch).
    Not `random_shuffle`: its all-to-all exchange leaves blocks x blocks pieces whose metadata the
    driver holds (200 blocks: +740 MB, quadratic in the corpus). Deterministic for the same
    documents, blocks and seed."""
    rows = _packed_rows(ds, tokenizer_dir, variant, seq_len, column, batch_size, num_cpus, seed=seed)
    return rows.randomize_block_order(seed=seed).materialize()


def pack_dataset(ds, tokenizer_dir: str, variant: str, seq_len: int, column: str = "annotated_text",
                 batch_size: int = 512, num_cpus: float = PACK_CPUS) -> Packed:
    """`_packed_rows` gathered in order into one `Packed` (for a single process: benchmarks, tests)."""
    out = _packed_rows(ds, tokenizer_dir, variant, seq_len, column, batch_size, num_cpus)
    ids, kinds = [], []
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(np.asarray(b["input_ids"], np.int32).reshape(-1, seq_len))
        kinds.append(np.asarray(b["kinds"], np.int8).reshape(-1, seq_len))
    if not ids:
        return Packed(np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int8))
    return Packed(np.concatenate(ids), np.concatenate(kinds))


def documents_dataset(documents, column: str = "annotated_text", docs_per_block: int = 512):
    """`documents` (a Ray Dataset with `column`, or a list of texts) as a Ray Dataset; a list is cut
    into blocks by count, so the packing (one padded row per block) does not depend on the cluster."""
    import math

    import ray

    if isinstance(documents, (list, tuple)):
        return ray.data.from_items([{column: t} for t in documents],
                                   override_num_blocks=max(1, math.ceil(len(documents) / docs_per_block)))
    return documents


TOKENIZER_SAMPLE_DOCS = 20000  # documents a new tokenizer is trained on when the corpus is a Ray Dataset


def tokenizer_sample(ds, column: str = "annotated_text", n: int = TOKENIZER_SAMPLE_DOCS) -> list[str]:
    """The first `n` texts of a Ray Dataset: what a new BPE trains on (a bounded sample, not the corpus)."""
    return [str(r[column]) for r in ds.take(n)]


def split_config():
    """Ray Train's DataConfig for the packed rows: rank r gets the r-th of `world` equal, ordered
    parts (`Dataset.split`), the same on every run, so a resumed run reads the same rows."""
    from ray.train import DataConfig

    class OrderedEqualSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                for rank, part in enumerate(ds.split(world_size, equal=True)):
                    out[rank][name] = part.iterator()
            return out

    return OrderedEqualSplit()


def build_packed(documents, tokenizer, variant: str, seq_len: int, tokenizer_dir: str | None = None,
                 column: str = "annotated_text") -> Packed:
    """Packed rows from a list of annotated texts (plain Python) or a Ray Dataset (Ray Data)."""
    if isinstance(documents, (list, tuple)):
        return encode_and_pack(documents, tokenizer, variant, seq_len)
    if tokenizer_dir is None:
        raise ValueError("tokenizer_dir: needed to pack a Ray Dataset (workers load the tokenizer from it)")
    return pack_dataset(documents, tokenizer_dir, variant, seq_len, column)


# --------------------------------------------------------------------------------------------
# Documents and tokenizer of a run


def load_documents(data_path: str = "", world_people: int = 0, world_seed: int = 0) -> list[str]:
    """Annotated texts: a synthetic world's documents, or a corpus read by lmlm.corpus."""
    if world_people > 0:
        from lmlm.world import WorldConfig, generate_world

        return [d.annotated_text or d.text for d in generate_world(WorldConfig(people=world_people, seed=world_seed)).documents]
    if not data_path:
        raise ValueError("data: give documents, data_path or world_people > 0")
    from lmlm.corpus import read_corpus

    texts = [r.annotated_text or r.text for r in read_corpus(data_path)]
    if not any(texts):
        raise ValueError(f"data_path: {data_path} holds no text")
    return texts


def save_tokenizer_dir(tokenizer, out_dir) -> str:
    from pathlib import Path

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return str(out_dir)


def prepare_tokenizer(texts: Sequence[str], out_dir, vocab_size: int, tokenizer_path: str = "", tokenizer=None):
    """(tokenizer, directory): the given one or the one at `tokenizer_path` (either saved to `out_dir`),
    the one a previous attempt saved in `out_dir`, or a new byte-level BPE trained on `texts`."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if tokenizer is not None:
        return tokenizer, save_tokenizer_dir(tokenizer, out_dir)
    if tokenizer_path:
        if not Path(tokenizer_path).is_dir():
            raise ValueError(f"tokenizer_path: {tokenizer_path} is not a directory")
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        lookup_token_ids(tok)
        return tok, save_tokenizer_dir(tok, out_dir)  # the run's copy, as loaded: what its workers read
    if (Path(out_dir) / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(out_dir)), str(out_dir)
    from lmlm.tokenizer import train_tokenizer

    tok = train_tokenizer([to_special(t).text for t in texts], vocab_size, str(out_dir))
    return tok, save_tokenizer_dir(tok, out_dir)
