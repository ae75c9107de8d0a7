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


def top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) what lies outside each row's k most likely tokens (0: all) and its top-p
    nucleus (>= 1: all); `logits` [B, V], `top_k` and `top_p` [B]. Rows are independent."""
    vocab = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = sorted_logits.gather(-1, (k - 1)[:, None])
    logits = logits.masked_fill(logits < kth, NEG_INF)  # ties with the k-th stay, as torch.topk's threshold
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, NEG_INF)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass before it already reaches top_p (the first one always stays).
    p = torch.where(top_p < 1.0, top_p, torch.inf)[:, None]
    drop = (torch.cumsum(probs, dim=-1) - probs) >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, states: Sequence, lookup_ids: torch.Tensor,
                  eos_id: int | None) -> torch.Tensor:
    """The next token of every row: its forced token if it has one, else a processed choice.

    `logits` [B, V] for the last position, `seen` [B, V] bool (ids present in each sequence),
    `states` the rows' `SequenceState`s (parameters, lookup state, generator). Returns the ids [B]
    on the logits' device: everything runs there, and the caller copies just these B ids to the host.
    """
    device = logits.device
    forced = [s.next_forced() for s in states]
    out = torch.zeros(len(states), dtype=torch.long, device=device)
    fixed = [i for i, f in enumerate(forced) if f is not None]
    if fixed:
        out[fixed] = torch.tensor([forced[i] for i in fixed], device=device)
    free = [i for i, f in enumerate(forced) if f is None]
    if not free:
        return out
    params = [states[i].params for i in free]
    rows = torch.tensor(free, device=device)
    x = apply_repetition_penalty(logits[rows], seen[rows],
                                 torch.tensor([p.repetition_penalty for p in params], device=device))
    bias = torch.tensor([states[i].lookup_bias() for i in free], dtype=x.dtype, device=device)
    x[:, lookup_ids.to(device)] += bias
    for j, i in enumerate(free):  # copied entities (lmlm.generate.copying): other spellings ruled out
        c = states[i].entity_constraint()
        if c is not None:
            keep = torch.full((x.shape[1],), NEG_INF, dtype=x.dtype, device=device)
            keep[torch.tensor(c[0], dtype=torch.long, device=device)] = 0.0
            if c[1]:
                keep[lookup_ids[1]] = 0.0  # <|db_relationship|>, with its lookup bias
            x[j] += keep
    for j, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias.keys()), device=device)
            x[j, ids] += torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=device)
        if p.ignore_eos and eos_id is not None:
            x[j, eos_id] = NEG_INF
    tok = x.argmax(dim=-1)
    drawn = [j for j, p in enumerate(params) if not p.greedy]
    if drawn:
        d = torch.tensor(drawn, device=device)
        z = x[d].double() / torch.tensor([params[j].temperature for j in drawn], dtype=torch.float64, device=device)[:, None]
        z = top_k_top_p(z, torch.tensor([params[j].top_k for j in drawn], device=device),
                        torch.tensor([params[j].top_p for j in drawn], dtype=torch.float64, device=device))
        probs = torch.softmax(z, dim=-1)
        for k, j in enumerate(drawn):  # each row draws from its own seeded generator
            tok[j] = torch.multinomial(probs[k], 1, generator=states[free[j]].generator)[0]
    out[rows] = tok
    return out
