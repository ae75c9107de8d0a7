"""Static and normalized perplexity (docs/method.md §7) against a direct computation with HF's loss."""
from __future__ import annotations

import math

import pytest
import torch

from lmlm.eval.perplexity import evaluate_pair, evaluate_perplexity
from lmlm.format import strip_lookups
from lmlm.train.data import encode_document
from lmlm.train.masks import TEXT, labels_from_kinds
from lmlm.train.models import build_model


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    from lmlm.world import WorldConfig, generate_world

    docs = [d.annotated_text for d in generate_world(WorldConfig(people=4, seed=7)).documents]
    model = build_model("tiny", len(tiny_tokenizer), 128, seed=0).eval()
    return model, tiny_tokenizer, docs


def _direct_nll(model, tok, doc, variant):
    """NLL sum and count from HF's own masked loss on `EOS doc EOS`."""
    ids, kinds = encode_document(doc, tok, variant)
    ids = torch.tensor([tok.eos_token_id, *ids.tolist(), tok.eos_token_id])
    kinds = torch.tensor([TEXT, *kinds.tolist(), TEXT], dtype=torch.int8)
    labels = labels_from_kinds(ids, kinds, variant)
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=labels[None]).loss.item()
    n = int((labels[1:] != -100).sum())
    return loss * n, n


def test_static_and_normalized_match_direct_computation(setup):
    model, tok, docs = setup
    doc = docs[0]
    nll, n = _direct_nll(model, tok, doc, "lmlm")
    rep = evaluate_perplexity(model, tok, [doc], "lmlm", max_len=4096)
    n_plain = len(tok(strip_lookups(doc), add_special_tokens=False)["input_ids"]) + 1
    assert rep.n_trained_tokens == n and rep.n_plain_tokens == n_plain
    assert rep.nll_sum == pytest.approx(nll, rel=1e-4)
    assert rep.static_ppl == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert rep.normalized_ppl == pytest.approx(math.exp(nll / n_plain), rel=1e-4)
    assert all(math.isfinite(x) for x in (rep.value_loss, rep.entity_loss, rep.relation_loss, rep.text_loss))

    std_nll, std_n = _direct_nll(model, tok, doc, "standard")
    std = evaluate_perplexity(model, tok, [doc], "standard", max_len=4096)
    assert std.n_trained_tokens == std_n == n_plain  # the standard model reads the lookup-free text
    assert std.normalized_ppl == pytest.approx(std.static_ppl) == pytest.approx(math.exp(std_nll / std_n), rel=1e-4)
    assert math.isnan(std.entity_loss) and math.isfinite(std.value_loss)  # restated values are measured


def test_windows_score_every_token_once(setup):
    model, tok, docs = setup
    docs = docs[:2]
    full = evaluate_perplexity(model, tok, docs, "lmlm", max_len=4096, batch_size=3)
    short = evaluate_perplexity(model, tok, docs, "lmlm", max_len=24, batch_size=5)
    assert short.n_trained_tokens == full.n_trained_tokens and short.n_plain_tokens == full.n_plain_tokens
    pair = evaluate_pair(model, model, tok, docs, max_len=4096)
    assert pair["ppl_normalized_lmlm"] == pytest.approx(full.normalized_ppl)
    assert pair["lmlm"]["n_documents"] == len(docs)


def test_bad_input(setup):
    model, tok, _ = setup
    with pytest.raises(ValueError, match="documents"):
        evaluate_perplexity(model, tok, ["", "  "], "lmlm")
    with pytest.raises(ValueError, match="variant"):
        evaluate_perplexity(model, tok, ["x"], "other")
