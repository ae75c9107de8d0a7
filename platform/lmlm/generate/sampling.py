"""Logits processing and token choice, row by row parameters, batched where it is cheap.

Order (as in HF `generate` with the reference's bias processor): repetition penalty, logit bias
(lookup tokens by state, then the request's own bias), then greedy argmax or temperature, top-k,
top-p and a draw from the sequence's own seeded generator. Each step touches every row the same
way whether it decodes alone or in a batch, so a row's choice does not depend on its neighbours.
"""
from __future__ import annotations

from typing import Sequence

import torch

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF rule: a token already in the sequence has its logit divided (> 0) or multiplied (< 0)."""
    p = penalty[:, None].to(logits.dtype)
    scored = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, scored, logits)


def top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) what lies outside the k most likely tokens and the top-p nucleus (one row)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first one always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), NEG_INF)
    return logits


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, states: Sequence, lookup_ids: torch.Tensor,
                  eos_id: int | None) -> list[int]:
    """The next token of every row: its forced token if it has one, else a processed choice.

    `logits` [B, V] for the last position, `seen` [B, V] bool (ids present in each sequence),
    `states` the rows' `SequenceState`s (parameters, lookup state, generator).
    """
    forced = [s.next_forced() for s in states]
    free = [i for i, f in enumerate(forced) if f is None]
    if not free:
        return forced
    rows = torch.tensor(free)
    x = logits[rows]
    x = apply_repetition_penalty(x, seen[rows], torch.tensor([states[i].params.repetition_penalty for i in free]))
    bias = torch.tensor([states[i].lookup_bias() for i in free], dtype=x.dtype)
    x[:, lookup_ids] += bias
    for j, i in enumerate(free):
        p = states[i].params
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias.keys()))
            x[j, ids] += torch.tensor(list(p.logit_bias.values()), dtype=x.dtype)
        if p.ignore_eos and eos_id is not None:
            x[j, eos_id] = NEG_INF
    greedy = x.argmax(dim=-1).tolist()
    out = list(forced)
    for j, i in enumerate(free):
        p = states[i].params
        if p.greedy:
            out[i] = greedy[j]
            continue
        row = top_k_top_p(x[j].double() / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(row, dim=-1)
        out[i] = int(torch.multinomial(probs, 1, generator=states[i].generator).item())
    return out
