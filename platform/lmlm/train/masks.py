"""The loss mask of docs/method.md §4, as a per-token kind computed by one small state machine.

Every token of a sequence gets a kind. The state changes at the markers:

    <|db_entity|>  -> entity      <|db_relationship|> -> relation
    <|db_return|>  -> value       <|db_end|> or EOS   -> text

A token takes the state left by the last marker before it; the markers themselves are MARKER
(`<|db_entity|>`, `<|db_relationship|>`, `<|db_return|>`, in the loss), END (`<|db_end|>`, out of
the loss) or TEXT (EOS, in the loss as a document separator). So a value runs to `<|db_end|>` or to
EOS, whichever comes first, and a block cut by the end of a sequence leaves its tail as value.

Kinds are aligned with `input_ids` (the target view: kind[i] describes token i as the target
predicted at position i-1), so `labels[i] = input_ids[i]` or -100 exactly as HF models expect.

`token_kinds` is numpy: the packing workers of Ray Data call it and never import torch (a second
or more of each worker's start); the loss functions import torch where they run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lmlm.tokenizer import LookupTokenIds

if TYPE_CHECKING:
    import torch

TEXT, MARKER, ENTITY, RELATION, VALUE, END, PAD = range(7)
KIND_NAMES = ("text", "marker", "entity", "relation", "value", "end", "pad")
IGNORE_INDEX = -100

# Kinds left out of the loss, per training variant. The standard baseline's text has no lookups;
# its VALUE tokens (the restated fact, see lmlm.train.data) are measured and trained.
NOT_TRAINED = {"lmlm": (VALUE, END, PAD), "standard": (PAD,)}

# (state after the marker: the kind of the non-marker tokens that follow, kind of the marker), in
# LookupTokenIds.markers order (entity, relationship, return, end).
_MARKER_STATES = ((ENTITY, MARKER), (RELATION, MARKER), (VALUE, MARKER), (TEXT, END))


def token_kinds(
    input_ids,
    token_ids: LookupTokenIds,
    attention_mask=None,
    start_state: int | None = None,
) -> np.ndarray:
    """Kinds (TEXT..PAD, int8 array) of each token of `input_ids` ([T] or [B, T], array/list/CPU tensor).

    `token_ids` (lmlm.tokenizer.lookup_token_ids) names the markers; its EOS (when not None)
    separates documents: it ends any open block and is TEXT itself.

    `start_state`: the state at the first token (TEXT, ENTITY, RELATION or VALUE). None infers it
    per row from the first marker of the row: a row that opens with the tail of a block (its first
    marker is `<|db_relationship|>`, `<|db_return|>` or `<|db_end|>`) started inside that block.
    The packer computes kinds on whole documents, so it never needs the inference.
    `attention_mask`: zeros mark padding (kind PAD); padding by id alone is ambiguous when the pad
    token is EOS.
    """
    if not isinstance(token_ids, LookupTokenIds):
        raise TypeError(f"token_ids: expected lmlm.tokenizer.LookupTokenIds, got {type(token_ids).__name__}")
    ids = np.asarray(input_ids, dtype=np.int64)
    squeeze = ids.ndim == 1
    if squeeze:
        ids = ids[None]
    B, T = ids.shape
    markers = [(tid, state, kind) for tid, (state, kind) in zip(token_ids.markers, _MARKER_STATES)]
    if token_ids.eos is not None:
        markers.append((token_ids.eos, TEXT, TEXT))

    state_after = np.full_like(ids, -1)   # state set by the marker at i, -1 where no marker
    kind_of_marker = np.full_like(ids, -1)
    for tid, state, kind in markers:
        hit = ids == tid
        state_after[hit] = state
        kind_of_marker[hit] = kind
    is_marker = state_after >= 0

    # The state before each token: the state left by the last marker strictly before it.
    pos = np.broadcast_to(np.arange(T), (B, T))
    last = np.maximum.accumulate(np.where(is_marker, pos, -1), axis=1)
    prev = np.concatenate([np.full((B, 1), -1), last[:, :-1]], axis=1)

    if start_state is None:
        first = np.where(is_marker, pos, T).min(axis=1)
        first_tok = np.take_along_axis(ids, np.minimum(first, T - 1)[:, None], axis=1)[:, 0]
        initial = np.full(B, TEXT)
        for tok, state in ((token_ids.relationship, ENTITY), (token_ids.return_, RELATION), (token_ids.end, VALUE)):
            initial[(first < T) & (first_tok == tok)] = state
    else:
        if start_state not in (TEXT, ENTITY, RELATION, VALUE):
            raise ValueError(f"start_state: {start_state} is not TEXT, ENTITY, RELATION or VALUE")
        initial = np.full(B, start_state)

    before = np.where(prev >= 0, np.take_along_axis(state_after, np.maximum(prev, 0), axis=1), initial[:, None])
    kinds = np.where(is_marker, kind_of_marker, before)
    if attention_mask is not None:
        kinds = np.where(np.asarray(attention_mask).reshape(kinds.shape).astype(bool), kinds, PAD)
    kinds = kinds.astype(np.int8)
    return kinds[0] if squeeze else kinds


def labels_from_kinds(input_ids, kinds, variant: str = "lmlm") -> torch.Tensor:
    """`input_ids` with IGNORE_INDEX where the variant's loss does not count the token."""
    import torch

    if variant not in NOT_TRAINED:
        raise ValueError(f"variant: {variant!r} is not one of {sorted(NOT_TRAINED)}")
    ids = torch.as_tensor(input_ids).long()
    kinds = torch.as_tensor(kinds)
    out = torch.isin(kinds, torch.tensor(NOT_TRAINED[variant], dtype=kinds.dtype, device=kinds.device))
    return ids.masked_fill(out, IGNORE_INDEX)


def lookup_labels(input_ids, token_ids: LookupTokenIds, attention_mask=None,
                  start_state: int | None = None) -> torch.Tensor:
    """LMLM labels (docs/method.md §4): value tokens, `<|db_end|>` and padding set to -100."""
    kinds = token_kinds(input_ids, token_ids, attention_mask, start_state)
    return labels_from_kinds(input_ids, kinds, "lmlm")


def counted_mask(kinds, variant: str = "lmlm") -> torch.Tensor:
    """Bool mask of the tokens the variant's loss counts."""
    import torch

    if variant not in NOT_TRAINED:
        raise ValueError(f"variant: {variant!r} is not one of {sorted(NOT_TRAINED)}")
    kinds = torch.as_tensor(kinds)
    return ~torch.isin(kinds, torch.tensor(NOT_TRAINED[variant], dtype=kinds.dtype, device=kinds.device))


# Kind groups whose loss is reported: training's three, evaluation's five.
TRAIN_GROUPS = {"text": (TEXT,), "value": (VALUE,), "query": (MARKER, ENTITY, RELATION)}
EVAL_GROUPS = {"value": (VALUE,), "entity": (ENTITY,), "relation": (RELATION,), "marker": (MARKER,), "text": (TEXT,)}


def masked_nll(logits: torch.Tensor, input_ids: torch.Tensor, kinds: torch.Tensor, variant: str,
               groups: dict[str, tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one masked loss: (nll [B, T-1] float32 of each next token, the variant's counted mask
    [B, T-1], sums [2 + 2 x groups] float64: NLL and count over the counted tokens, then per group).

    Training backpropagates through `(nll * counted).sum()` (scaled as it needs); evaluation reads
    `sums`. Everything stays on the logits' device (no host sync).
    """
    import torch
    import torch.nn.functional as F

    device = logits.device
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                          input_ids[:, 1:].reshape(-1).to(device), reduction="none").view(len(input_ids), -1)
    tk = kinds[:, 1:].to(device)
    counted = counted_mask(tk, variant)
    with torch.no_grad():
        nd = nll.detach().double()
        parts = [(nd * counted).sum(), counted.sum().double()]
        for kk in groups.values():
            m = torch.isin(tk, torch.tensor(kk, dtype=tk.dtype, device=device))
            parts += [(nd * m).sum(), m.sum().double()]
        sums = torch.stack(parts)
    return nll, counted, sums
