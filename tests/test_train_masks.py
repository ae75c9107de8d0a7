"""The loss mask of docs/method.md §4 on hand-made token sequences, and packing with EOS separators."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlm.format import DB_ENTITY, strip_with_spans
from lmlm.tokenizer import LookupTokenIds
from lmlm.train.data import encode_and_pack, pack
from lmlm.train.masks import (END, ENTITY, IGNORE_INDEX, MARKER, PAD, RELATION, TEXT, VALUE,
                              labels_from_kinds, lookup_labels, token_kinds)

EOS = 0
IDS = LookupTokenIds(entity=1, relationship=2, return_=3, end=4, eos=EOS, pad=EOS)
E, R, RET, END_ = 1, 2, 3, 4
T = 9  # any ordinary token id (>= 5)


def block(entity=(20,), relation=(30,), value=(40, 41)):
    return [E, *entity, R, *relation, RET, *value, END_]


def test_plain_block():
    ids = [T, T, *block(), 50, 51]
    kinds = token_kinds(ids, IDS).tolist()
    assert kinds == [TEXT, TEXT, MARKER, ENTITY, MARKER, RELATION, MARKER, VALUE, VALUE, END, TEXT, TEXT]
    labels = lookup_labels(ids, IDS).tolist()
    # value tokens and <|db_end|> out; <|db_return|>, the query and the text after the block in
    expected = list(ids)
    expected[7] = expected[8] = expected[9] = IGNORE_INDEX
    assert labels == expected


def test_two_blocks_and_text_after_end():
    ids = [T, *block(value=(40,)), 60, *block(entity=(21, 22), value=(42, 43, 44)), 61, 62]
    labels = lookup_labels(torch.tensor(ids), IDS)
    masked = [i for i, l in enumerate(labels.tolist()) if l == IGNORE_INDEX]
    assert masked == [6, 7, 15, 16, 17, 18]
    assert [ids[i] for i in masked] == [40, END_, 42, 43, 44, END_]
    assert labels[8] == 60 and labels[-2:].tolist() == [61, 62]  # text after <|db_end|> is trained


def test_block_cut_at_sequence_end_and_continued():
    doc = [T, T, *block(value=(40, 41, 42)), 70, 71]
    cut = 9  # the first row ends inside the value; the second starts with its tail
    rows = torch.tensor([doc[:cut], doc[cut:] + [EOS] * (cut - len(doc[cut:]))])
    mask = torch.tensor([[1] * cut, [1] * len(doc[cut:]) + [0] * (cut - len(doc[cut:]))])
    kinds = token_kinds(rows, IDS, attention_mask=mask)
    assert kinds[0].tolist()[-2:] == [VALUE, VALUE]  # the value runs to the end of the row
    # the second row opens inside the value: its first marker is <|db_end|>
    assert kinds[1].tolist()[:4] == [VALUE, END, TEXT, TEXT]
    assert kinds[1].tolist()[4:] == [PAD] * 5
    # packing computes kinds on whole documents, so the cut never matters there
    packed = pack([(np.array(doc), token_kinds(doc, IDS, start_state=TEXT))], 8, EOS, EOS)
    assert packed.kinds.reshape(-1).tolist()[:len(doc) + 1] == token_kinds(doc + [EOS], IDS).tolist()


def test_value_cut_by_eos():
    ids = [T, E, 20, R, 30, RET, 40, 41, EOS, T, *block(value=(45,)), 80]
    kinds = token_kinds(ids, IDS).tolist()
    assert kinds[6:8] == [VALUE, VALUE]
    assert kinds[8] == TEXT and kinds[9] == TEXT  # EOS ends the value; the next document is text
    assert kinds[-3:] == [VALUE, END, TEXT]
    labels = labels_from_kinds(ids, kinds, "standard")
    assert (labels != IGNORE_INDEX).all()  # the standard variant counts everything but padding


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="token_ids"):
        token_kinds([1, 2], {DB_ENTITY: 1})
    with pytest.raises(ValueError, match="variant"):
        labels_from_kinds([1], [TEXT], "other")


def test_pack_and_standard_value_spans(tiny_tokenizer):
    doc = "Ann Lee was born in [dblookup('Ann Lee', 'Birth City') -> Paris] Paris in 1990."
    stripped = strip_with_spans(doc)
    assert stripped.text == "Ann Lee was born in Paris in 1990."
    assert [stripped.text[s:e] for s, e in stripped.value_spans] == ["Paris"]
    lm = encode_and_pack([doc, "Short one."], tiny_tokenizer, "lmlm", 16)
    std = encode_and_pack([doc, "Short one."], tiny_tokenizer, "standard", 16)
    eos = tiny_tokenizer.eos_token_id
    for p in (lm, std):
        flat_ids, flat_kinds = p.input_ids.reshape(-1), p.kinds.reshape(-1)
        real = flat_ids[flat_kinds != PAD]
        assert (real == eos).sum() == 2 and real[-1] == eos  # EOS after each document
    std_text = tiny_tokenizer.decode(std.input_ids.reshape(-1)[std.kinds.reshape(-1) == VALUE])
    assert std_text.strip() == "Paris"
    lm_value = tiny_tokenizer.decode(lm.input_ids.reshape(-1)[lm.kinds.reshape(-1) == VALUE])
    assert lm_value.strip() == "Paris"
    assert DB_ENTITY not in tiny_tokenizer.decode(std.input_ids.reshape(-1))


def test_masked_nll_is_the_one_loss_of_training_and_evaluation():
    import torch.nn.functional as F

    from lmlm.train.masks import END, ENTITY, EVAL_GROUPS, MARKER, PAD, TEXT, TRAIN_GROUPS, VALUE, masked_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    kinds = torch.tensor([[TEXT, MARKER, ENTITY, MARKER, VALUE, END], [TEXT, TEXT, VALUE, VALUE, TEXT, PAD]], dtype=torch.int8)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none").view(2, 5).double()
    tk = kinds[:, 1:]
    for variant, out in (("lmlm", (VALUE, END, PAD)), ("standard", (PAD,))):
        nll, counted, sums = masked_nll(logits, ids, kinds, variant, EVAL_GROUPS)
        keep = ~torch.isin(tk, torch.tensor(out, dtype=torch.int8))
        assert torch.equal(counted, keep) and torch.allclose(nll.double(), want)
        assert sums[0].item() == pytest.approx(float((want * keep).sum())) and sums[1].item() == int(keep.sum())
        for i, kk in enumerate(EVAL_GROUPS.values()):
            m = torch.isin(tk, torch.tensor(kk, dtype=torch.int8))
            assert sums[2 + 2 * i].item() == pytest.approx(float((want * m).sum())) and sums[3 + 2 * i] == int(m.sum())
    _, _, train = masked_nll(logits, ids, kinds, "lmlm", TRAIN_GROUPS)
    query = torch.isin(tk, torch.tensor((MARKER, ENTITY), dtype=torch.int8))  # query = markers + entity + relation
    assert train[-2].item() == pytest.approx(float((want * query).sum())) and train[-1] == int(query.sum())


def test_packing_workers_bare_tokenizer_packs_as_transformers_does(tiny_tokenizer, tmp_path):
    """Ray Data's packing workers encode with the directory's tokenizer.json alone (no transformers
    import): the same rows and kinds as the transformers tokenizer, for a trained BPE and for a
    tokenizer the lookup tokens were added to."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmlm.tokenizer import add_lookup_tokens, lookup_token_ids
    from lmlm.train.data import _load_encoder, save_tokenizer_dir
    from lmlm.world import WorldConfig, generate_world

    docs = [d.annotated_text for d in generate_world(WorldConfig(people=20, seed=4)).documents]
    docs += ["  Zoë  Ñúñez was born in [dblookup('Zoë Ñúñez', 'Birth City') -> São Paulo] São Paulo.\n\nx",
             "<|db_entity|> Ann<|db_relationship|> Employer<|db_return|> ACME<|db_end|> ACME, 日本."]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"], show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    plain.save_pretrained(str(tmp_path / "plain"))
    added = add_lookup_tokens(tmp_path / "plain", out_dir=tmp_path / "added")
    for hf, where in ((tiny_tokenizer, save_tokenizer_dir(tiny_tokenizer, tmp_path / "tiny")), (added, tmp_path / "added")):
        bare = _load_encoder(str(where))
        assert isinstance(bare, Tokenizer)
        ids = lookup_token_ids(hf, require_eos=True)
        for variant in ("lmlm", "standard"):
            a = encode_and_pack(docs, hf, variant, 64)
            b = encode_and_pack(docs, bare, variant, 64, token_ids=ids)
            assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.kinds, b.kinds), (where, variant)
    with pytest.raises(ValueError, match="token_ids: required with a bare tokenizers.Tokenizer"):
        encode_and_pack(docs, bare, "lmlm", 64)
