"""Tokenizers: lookup tokens are single ids and blocks round-trip with their exact spacing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlm.format import DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, SPECIAL_TOKENS, Triple, render_block, to_special
from lmlm.tokenizer import (EOS_TOKEN, LookupTokenIds, add_lookup_tokens, load_tokenizer, lookup_token_ids,
                            train_tokenizer)
from lmlm.world import WorldConfig, generate_world

BLOCK_DOC = ("Itakura was born in <|db_entity|> Ko Itakura<|db_relationship|> Birth Place<|db_return|> "
             "Yokohama<|db_end|> Yokohama on 27 January.")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    w = generate_world(WorldConfig(people=120, seed=0))
    return [to_special(d.annotated_text).text for d in w.documents]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=1000, out_dir=out)
    return out


def test_trained_tokenizer_loads_with_auto(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS_TOKEN
    assert tok.eos_token_id == 0
    ids = lookup_token_ids(tok)
    assert ids == LookupTokenIds(entity=1, relationship=2, return_=3, end=4, eos=0, pad=0)
    assert ids.by_token() == {t: i for i, t in enumerate(SPECIAL_TOKENS, 1)}
    assert 500 < len(tok) <= 1000
    for t in SPECIAL_TOKENS:
        assert tok.encode(t, add_special_tokens=False) == [ids.by_token()[t]]
    assert tok.encode(EOS_TOKEN, add_special_tokens=False) == [0]


def _pieces_ids(tok, pieces):
    ids = []
    for p in pieces:
        ids += [lookup_token_ids(tok).by_token()[p]] if p in SPECIAL_TOKENS else tok.encode(p, add_special_tokens=False)
    return ids


def test_block_round_trip_and_ids(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = tok.encode(BLOCK_DOC, add_special_tokens=False)
    assert tok.decode(ids) == BLOCK_DOC
    # The prose around the tokens encodes as it would alone; the space after a token starts the next word.
    expected = _pieces_ids(tok, ["Itakura was born in", " ", DB_ENTITY, " Ko Itakura", DB_RELATIONSHIP,
                                 " Birth Place", DB_RETURN, " Yokohama", DB_END, " Yokohama on 27 January."])
    assert ids == expected
    words = tok.convert_ids_to_tokens(tok.encode(" was born", add_special_tokens=False))
    assert words == ["Ġwas", "Ġborn"]  # frequent words merged, with their leading space


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\\]<"), min_size=1,
               max_size=20).map(lambda s: " ".join(s.split())).filter(bool))
def test_any_block_round_trips(tok_dir, field):
    tok = _cached(tok_dir)
    text = f"He met {render_block(Triple(field, 'Spouse', field))} {field}."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert sum(i in lookup_token_ids(tok).markers for i in ids) == 4


_CACHE: dict = {}


def _cached(path):
    if path not in _CACHE:
        _CACHE[path] = load_tokenizer(path)
    return _CACHE[path]


def test_add_lookup_tokens_to_existing_dir(tmp_path, texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # A plain local tokenizer without lookup tokens, as a stand-in for any downloaded one.
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([t.replace("<|db_", "") for t in texts], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", clean_up_tokenization_spaces=False)
    plain.save_pretrained(str(tmp_path / "plain"))
    before = plain.encode("Ko was born in Yokohama.", add_special_tokens=False)
    with pytest.raises(ValueError, match="add_lookup_tokens"):
        load_tokenizer(tmp_path / "plain")

    tok = add_lookup_tokens(tmp_path / "plain", out_dir=tmp_path / "with")
    ids = lookup_token_ids(tok)
    assert list(ids.markers) == list(range(len(plain), len(plain) + 4))
    assert tok.pad_token == "</s>" and ids.pad == ids.eos == plain.eos_token_id
    again = load_tokenizer(tmp_path / "with")
    assert lookup_token_ids(again) == ids
    assert again.encode("Ko was born in Yokohama.", add_special_tokens=False) == before
    assert again.decode(again.encode(BLOCK_DOC, add_special_tokens=False)) == BLOCK_DOC
    assert len(add_lookup_tokens(again)) == len(again)  # adding twice adds nothing


def test_errors(tmp_path, texts):
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(texts, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
