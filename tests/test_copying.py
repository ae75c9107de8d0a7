"""Copied entities (lmlm.generate.copying): the rules on a trained byte-level BPE, and the engine with a
real FactStore and a tiny random model, whose lookups name nothing the prompt does not spell."""
from __future__ import annotations

import pytest
import torch

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import Triple
from lmlm.generate import Engine, GenerationParams, ParamsError, reference_generate
from lmlm.generate.copying import EntityCopier, copy_source, token_bytes
from lmlm.testing.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer

NAMES = ["Nguyễn Thị Thảo", "Joost van der Dijk", "M. B. Korkmaz", "Golnar Sadeghi-Hákonardóttir", "Þórdís"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(synthetic_texts() + [f"{n} met {n} at dawn." for n in NAMES])


@pytest.fixture(scope="module")
def copier(tok):
    return EntityCopier(tok)


def _next(tok, copier, context: str, entity: str) -> tuple[set[str], bool]:
    ids, may_end = copier.allowed(copy_source(copier.text(tok.encode(context))), entity.encode())
    return {tok.decode([i]) for i in ids}, may_end


def test_token_bytes_rebuild_any_text_byte_for_byte(tok, copier):
    text = "Tell me a bio of Nguyễn Thị Thảo. Þórdís Çağrı-Yıldız is 42."
    assert copier.text(tok.encode(text)) == text.encode()
    table = token_bytes(tok)
    assert len(table) == len(tok) and all(table[i] == b"\x00" for i in tok.all_special_ids)


def test_only_spellings_of_the_source_extend_an_entity(tok, copier):
    ctx = "Tell me a bio of Nguyễn Thị Thảo. Nguyễn Thị Thảo is"
    nxt, end = _next(tok, copier, ctx, " Ngu")
    assert nxt and all(("Ngu" + t).startswith("Nguy") or "Nguyễn".startswith("Ngu" + t) for t in nxt) and not end
    # "Nguyễn Thị" goes on with a capitalised word: not an end; the whole name is
    assert _next(tok, copier, ctx, " Nguyễn Thị")[1] is False
    assert _next(tok, copier, ctx, " Nguyễn Thị Thảo")[1] is True
    # a spelling the source lacks has no continuation (the engine then lets the model decide)
    assert _next(tok, copier, ctx, " Nguyen") == (set(), False)
    # an entity starts at a capitalised word: "Tell", "Nguyễn", never "me", "a", "bio", "is"
    starts, end = _next(tok, copier, ctx, "")
    assert not end and all(s.strip()[:1].isupper() for s in starts if s.strip())
    assert any(s.strip().startswith("N") for s in starts) and not any(s.strip() in ("me", "a", "bio", "is") for s in starts)
    # nor inside a name: "Thị" and "Thảo" follow a capitalised word
    assert not any(s.strip().startswith("Th") for s in starts)
    # a bare space opens no way to a lowercase word either
    after_space, _ = _next(tok, copier, ctx, " ")
    assert after_space and all(s[:1].isupper() for s in after_space)


@pytest.mark.parametrize("ctx, cut, whole", [
    ("A bio of Joost van der Dijk. He", " Joost", " Joost van der Dijk"),  # particles before a name
    ("A bio of Golnar Sadeghi-Hákonardóttir. She", " Golnar Sadeghi", " Golnar Sadeghi-Hákonardóttir"),
    ("A bio of M. B. Korkmaz. He", " M", " M. B. Korkmaz"),  # an initial's full stop
])
def test_names_are_copied_whole(tok, copier, ctx, cut, whole):
    assert _next(tok, copier, ctx, cut)[1] is False
    assert _next(tok, copier, ctx, whole)[1] is True
    # no copy starts inside a name after an initial ("B. Korkmaz" -> not "Korkmaz")
    starts, _ = _next(tok, copier, "A bio of M. B. Korkmaz.", "")
    assert not any(s.strip().startswith("Kork") for s in starts)


@pytest.fixture(scope="module")
def store():
    with FactStore.open(FactStoreConfig()) as s:
        s.add_triples(synthetic_triples() + [Triple(n, "Birth City", "Lisbon") for n in NAMES], annotator="test")
        yield s


def test_engine_lookups_name_only_what_the_prompt_spells(tok, store):
    torch.manual_seed(0)
    engine = Engine(tiny_model(len(tok), dtype=torch.float64), tok, store)
    prompts = [f"Tell me a bio of {n}. {n} is" for n in NAMES]
    free = GenerationParams(max_new_tokens=40, max_lookups=4, entity_bias=8.0, repetition_penalty=1.0)
    copied = GenerationParams(max_new_tokens=40, max_lookups=4, entity_bias=8.0, repetition_penalty=1.0,
                              copy_entities=True)
    got = engine.generate(prompts, copied)
    assert sum(len(r.lookups) for r in got) >= len(prompts)
    for p, r in zip(prompts, got):
        for lk in r.lookups:
            assert lk.entity and lk.entity in p, (lk.entity, p)
    # a random model left alone writes entities the prompt never spelt
    loose = [lk.entity for p, r in zip(prompts, engine.generate(prompts, free)) for lk in r.lookups if lk.entity not in p]
    assert loose
    # the batched engine and the re-prefill reference agree under the constraint too
    ref = reference_generate(engine, prompts, copied)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    with pytest.raises(ParamsError, match="copy_entities"):
        GenerationParams(copy_entities="yes")
