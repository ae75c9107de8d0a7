"""The generation engine against a real FactStore (private Redis 8) and a tiny random LLaMA model."""
from __future__ import annotations

import pytest
import torch

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, strip_lookups
from lmlm.generate import Engine, GenerationParams, ParamsError, QueueFull, Request, reference_generate
from lmlm.testing.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer

PROMPTS = ["Tell me a bio of Ada Varen. Ada Varen is", "Hugo Marsh works for", "Kira",
           "Tell me a bio of Lev Arno. Lev Arno was born in the city of"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On the shared 2-core machine two intra-op threads spin-wait each other (about 10x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(synthetic_texts())


@pytest.fixture(scope="module")
def store():
    with FactStore.open(FactStoreConfig()) as s:
        s.add_triples(synthetic_triples(), annotator="test")
        yield s


@pytest.fixture(scope="module")
def engine64(tok, store):
    # float64: padded batched decoding and unpadded single decoding agree far below any argmax gap.
    return Engine(tiny_model(len(tok), dtype=torch.float64), tok, store)


def cloze(entity: str, relation: str) -> str:
    return f"{entity} lives in {DB_ENTITY} {entity}{DB_RELATIONSHIP} {relation}{DB_RETURN}"


def test_parity_with_reprefill_reference(engine64):
    params = GenerationParams(max_new_tokens=30, max_lookups=4, fallback="top1_anyway")
    got = engine64.generate(PROMPTS, params)
    ref = reference_generate(engine64, PROMPTS, params)
    for g, r in zip(got, ref):
        assert g.token_ids == r.token_ids
        assert g.raw_text == r.raw_text and g.display_text == r.display_text
        assert [lk.to_dict() for lk in g.lookups] == [lk.to_dict() for lk in r.lookups]
        assert len(g.lookups) >= 3 and g.raw_text.count(DB_END) == len(g.lookups)
        assert g.n_text_tokens == 30 and g.finish_reason == "length"
        assert DB_ENTITY not in g.display_text and DB_END not in g.display_text
    # The fuzzy path answered with stored values (top1_anyway), injected exactly as in training text.
    lk = got[0].lookups[0]
    assert lk.triple is not None and f"{DB_RETURN} {lk.value}{DB_END}" in got[0].raw_text


def test_prompt_opening_a_block_keeps_it_out_of_the_display_after_later_lookups(engine64):
    # A cloze prompt forced into a lookup ends with <|db_entity|>; the query the model writes and
    # every later block must leave the display text whole, however many lookups follow.
    prompt = "Hugo Marsh works for " + DB_ENTITY
    [res] = engine64.generate([prompt], GenerationParams(max_new_tokens=30, max_lookups=4, fallback="top1_anyway"))
    assert len(res.lookups) >= 2
    assert res.display_text == strip_lookups(DB_ENTITY + res.raw_text)


def test_exact_lookup_injects_stored_value_and_deletion_is_immediate(engine64, store):
    t = synthetic_triples()[0]
    p = GenerationParams(max_new_tokens=3, max_lookups=0)
    [res] = engine64.generate([cloze(t.entity, t.relation)], p)
    assert res.raw_text.startswith(f" {t.value}{DB_END}")
    assert (res.lookups[0].stage, res.lookups[0].triple) == ("exact", t)
    assert res.lookups[0].provenance
    store.delete(t.entity, t.relation)
    try:
        [res2] = engine64.generate([cloze(t.entity, t.relation)], GenerationParams(max_new_tokens=3, fallback="abstain"))
        # The next lookup no longer sees the fact (fuzzy matching may answer from another key).
        assert res2.lookups[0].triple != t and res2.lookups[0].value != t.value
    finally:
        store.put(t)


def test_a_fact_put_after_training_is_used_by_the_very_next_request(engine64, store):
    """Knowledge insertion: the model never saw this person; a fact put into the running store is
    what the next request's lookup injects, and its deletion is what the one after sees."""
    from lmlm.format import Triple

    t = Triple("Ottilie Fernquist", "Birth City", "Valparaiso")
    params = GenerationParams(max_new_tokens=3, max_lookups=0, fallback="abstain")
    [before] = engine64.generate([cloze(t.entity, t.relation)], params)
    assert before.lookups[0].triple != t and not before.raw_text.startswith(f" {t.value}{DB_END}")
    store.put(t)
    try:
        [after] = engine64.generate([cloze(t.entity, t.relation)], params)
        assert (after.lookups[0].stage, after.lookups[0].triple) == ("exact", t)
        assert after.raw_text.startswith(f" {t.value}{DB_END}")
    finally:
        store.delete(t.entity, t.relation)
    [gone] = engine64.generate([cloze(t.entity, t.relation)], params)
    assert gone.lookups[0].triple != t


def test_batched_lookups_use_one_store_call_per_step(engine64, store, monkeypatch):
    calls = []
    real = store.lookup_batch
    monkeypatch.setattr(store, "lookup_batch", lambda qs, **kw: calls.append(list(qs)) or real(qs, **kw))
    ts = synthetic_triples()[:3]
    res = engine64.generate([cloze(t.entity, t.relation) for t in ts], GenerationParams(max_new_tokens=2, max_lookups=0))
    assert calls[0] == [(t.entity, t.relation) for t in ts]
    assert [r.lookups[0].value for r in res] == [t.value for t in ts]


def test_lookups_off_and_caps(engine64):
    off = engine64.generate(PROMPTS[:2], GenerationParams(max_new_tokens=20, use_lookups=False))
    for r in off:
        assert r.lookups == [] and r.n_lookup_tokens == 0 and r.raw_text == r.display_text
        assert r.n_text_tokens == 20 == r.n_generated_tokens
    capped = engine64.generate(PROMPTS[:2], GenerationParams(max_new_tokens=25, max_lookups=2, max_query_tokens=3))
    for r in capped:
        assert len(r.lookups) == 2 and r.n_text_tokens == 25
        assert r.n_generated_tokens == r.n_text_tokens + r.n_lookup_tokens


def test_sampling_is_reproducible_with_a_seed(engine64):
    p = GenerationParams(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7, max_lookups=1,
                         fallback="unknown")
    a = engine64.generate(PROMPTS, p)
    b = engine64.generate(PROMPTS[::-1], p)[::-1]  # other batch order, same per-sequence draws
    c = engine64.generate(PROMPTS, GenerationParams(max_new_tokens=20, temperature=1.0, seed=8, use_lookups=False))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_stop_strings_and_eos(engine64, tok):
    [free] = engine64.generate([PROMPTS[0]], GenerationParams(max_new_tokens=30, use_lookups=False, ignore_eos=True))
    stop = free.display_text[10:13]
    [r] = engine64.generate([PROMPTS[0]], GenerationParams(max_new_tokens=30, use_lookups=False, ignore_eos=True, stop=[stop]))
    assert r.finish_reason == "stop" and r.display_text == free.display_text[: free.display_text.find(stop)]
    eos = tok.eos_token_id
    [e] = engine64.generate([PROMPTS[0]], GenerationParams(max_new_tokens=30, use_lookups=False, logit_bias={eos: 100}))
    assert e.finish_reason == "eos" and e.raw_text == "" and e.n_generated_tokens == 1


def test_store_unreachable_fails_or_disables_lookups(tok):
    with FactStore.open(FactStoreConfig(timeout_s=0.5)) as dead:
        pass  # closed: its server is gone
    eng = Engine(tiny_model(len(tok)), tok, dead)
    c = cloze("Ada Varen", "Birth City")
    [r] = eng.generate([c], GenerationParams(max_new_tokens=5))
    assert r.finish_reason == "store_unavailable" and "unavailable" in r.error
    [r] = eng.generate([c], GenerationParams(max_new_tokens=5, on_store_error="disable_lookups"))
    assert r.lookups_disabled and r.finish_reason == "length" and r.n_text_tokens == 5
    assert r.raw_text.startswith(f" unknown{DB_END}") and r.raw_text.count(DB_ENTITY) == 0


def test_bad_params_name_the_field():
    for kw, name in [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0}, "top_p"),
                     ({"temperature": -1}, "temperature"), ({"fallback": "maybe"}, "fallback"),
                     ({"stop": "x"}, "stop"), ({"logit_bias": {"a": 1}}, "logit_bias")]:
        with pytest.raises(ParamsError, match=f"^{name}:"):
            GenerationParams(**kw)


def test_generate_command(tmp_path, tok, capsys):
    import json

    from lmlm.cli import main

    tok.save_pretrained(tmp_path)
    tiny_model(len(tok)).save_pretrained(tmp_path)
    t = synthetic_triples()[2]
    facts = tmp_path / "prompts.txt"
    facts.write_text(cloze(t.entity, t.relation) + "\n")
    capsys.readouterr()  # what saving printed (DeepSpeed, imported through accelerate, logs to stdout)
    rc = main(["generate", "--set", f"model_path={tmp_path}", "--set", "params.max_new_tokens=3",
               "--set", f"prompts_file={facts}", "--json", "Kira"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(lines) == 2 and lines[0]["n_text_tokens"] <= 3
    assert lines[1]["lookups"][0]["entity"] == t.entity  # a private, empty store: no value, but the query is parsed
    assert main(["generate", "--set", "model_path=/nonexistent", "Kira"]) == 1
    assert "model_path: /nonexistent is not a checkpoint directory" in capsys.readouterr().err


def test_injected_value_is_fed_in_one_pass(engine64):
    t = synthetic_triples()[3]
    steps = []
    prompts = [cloze(t.entity, t.relation), PROMPTS[0]]
    [res, _] = engine64.generate(prompts, GenerationParams(max_new_tokens=4, max_lookups=0),
                                 on_token=lambda i, s: steps.append((i, len(s.ids))) if i == 0 else None)
    n_value = len(engine64.encode(" " + t.value)) + 1
    # The prompt's own lookup is answered before the first pass: prompt and value are prefilled together.
    assert res.raw_text.startswith(f" {t.value}{DB_END}") and steps[0][1] == res.n_prompt_tokens + n_value + 1
    # A lookup the model makes mid-text: every answered row takes token + value + <|db_end|> in one step.
    got = engine64.generate(PROMPTS, GenerationParams(max_new_tokens=30, max_lookups=4, fallback="top1_anyway"),
                            on_token=lambda i, s: steps.append((i, len(s.ids))))
    grown = {}
    for i, n in steps[1:]:
        grown.setdefault(i, []).append(n)
    jumps = [b - a for ns in grown.values() for a, b in zip(ns, ns[1:])]
    assert max(jumps) >= 3 and sum(len(r.lookups) for r in got) >= 4


def test_grammar_requires_entity_and_relation(engine64):
    # The lookup bias of 100 pushes each marker as early as possible: never before a field's first token.
    params = GenerationParams(max_new_tokens=12, max_lookups=3, lookup_bias=100, entity_bias=100, fallback="unknown")
    for r in engine64.generate(PROMPTS[:2] + ["Kira " + DB_ENTITY], params):
        assert r.lookups and DB_ENTITY + DB_RELATIONSHIP not in r.raw_text
        assert DB_RELATIONSHIP + DB_RETURN not in r.raw_text


def test_overlong_query_is_unknown_without_a_store_call(tok):
    with FactStore.open(FactStoreConfig(timeout_s=0.5)) as dead:
        pass  # closed: any store call would fail the request
    eng = Engine(tiny_model(len(tok)), tok, dead)
    long_entity = "her precision. Her occupation is that of a finishing school"
    [r] = eng.generate([cloze(long_entity, "Award")], GenerationParams(max_new_tokens=3, max_lookups=0, max_entity_chars=40))
    assert r.finish_reason == "length" and r.raw_text.startswith(f" unknown{DB_END}")
    assert (r.lookups[0].stage, r.lookups[0].value, r.lookups[0].entity) == ("skipped", "unknown", long_entity)


def test_a_poisoned_row_ends_alone(engine64, store):
    """A Redis error other than 'unreachable' (a key of the wrong type) and a sampling failure each end
    their own request; the rows decoded beside them finish as if alone."""
    from lmlm.factstore.layout import norm_name

    bad = "Poisoned Person"
    key = store.layout.of(norm_name(bad, "entity")).entity(norm_name(bad, "entity"))
    store.r.set(key, "not a hash")
    try:
        good = [cloze(t.entity, t.relation) for t in synthetic_triples()[:2]] + PROMPTS[:2]
        p = GenerationParams(max_new_tokens=10, max_lookups=1, fallback="top1_anyway")
        nan_sampler = GenerationParams(max_new_tokens=10, temperature=1.0, seed=1, use_lookups=False)
        nan_sampler.temperature = 5e-324  # past validation (as a bug would be): x / T overflows, sampling fails
        prompts = [good[0], cloze(bad, "Birth City"), good[1], "Kira", good[2], good[3]]
        res = engine64.generate(prompts, [p, p, p, nan_sampler, p, p])
        assert res[1].finish_reason == "error" and "WRONGTYPE" in res[1].error
        assert res[3].finish_reason == "error" and "sampling failed" in res[3].error
        alone = [engine64.generate([q], p)[0] for q in good]
        for r, a in zip([res[0], res[2], res[4], res[5]], alone):
            assert r.error is None and r.token_ids == a.token_ids
    finally:
        store.r.delete(key)


def test_bad_values_are_rejected_by_name():
    for kw, name in [({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"), ({"temperature": 5e-324}, "temperature"),
                     ({"temperature": float("nan")}, "temperature"), ({"logit_bias": {3: 1e39}}, "logit_bias"),
                     ({"logit_bias": {3: float("inf")}}, "logit_bias"), ({"top_p": float("nan")}, "top_p"),
                     ({"repetition_penalty": 1e-300}, "repetition_penalty"), ({"entity_bias": 1e9}, "entity_bias"),
                     ({"entity_threshold": float("inf")}, "entity_threshold"), ({"cosine_threshold": 1.5}, "cosine_threshold"),
                     ({"max_entity_chars": 0}, "max_entity_chars")]:
        with pytest.raises(ParamsError, match=f"^{name}:"):
            GenerationParams(**kw)
    GenerationParams(seed=2**63 - 1, temperature=0.01, logit_bias={3: -100})


def test_parity_when_rows_join_a_running_batch_in_chunks(engine64, tok, store):
    """Two rows at a time: later prompts join while others decode, their prompts prefilled 3 ids a
    step beside the running rows' tokens; every row still matches the reference token for token."""
    eng = Engine(engine64.model, tok, store, max_batch_size=2, prefill_chunk=3)
    t = synthetic_triples()[5]
    prompts = PROMPTS + [cloze(t.entity, t.relation)]
    params = GenerationParams(max_new_tokens=20, max_lookups=3, fallback="top1_anyway")
    got = eng.generate(prompts, params)
    ref = reference_generate(eng, prompts, params)
    assert [g.token_ids for g in got] == [r.token_ids for r in ref]
    assert sum(len(g.lookups) for g in got) >= 5 and got[-1].lookups[0].stage == "exact"


def test_a_decode_step_copies_only_the_chosen_ids_to_the_host(engine64):
    """Logits, penalties, biases and sampling stay on the model's device: per step the host gets one
    tensor of `rows` ids (bookkeeping scalars aside), never a logits row. On CPU the copies are
    counted as the calls that would move data off a GPU."""
    from torch.overrides import TorchFunctionMode

    from lmlm.generate.batch import DecodeBatch

    class HostCopies(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__") and args:
                self.calls.append((name, args[0].dtype, args[0].numel(), tuple(args[0].shape)))
            return func(*args, **(kwargs or {}))

    params = [GenerationParams(max_new_tokens=12, max_lookups=3, fallback="top1_anyway"),
              GenerationParams(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=3,
                               logit_bias={5: 2.0}, repetition_penalty=1.3),
              GenerationParams(max_new_tokens=12, temperature=1.1, seed=4, use_lookups=False)]
    batch = DecodeBatch(engine64, prefill_chunk=256)
    vocab = batch.vocab
    for i, (p, pp) in enumerate(zip(PROMPTS, params)):
        batch.add(engine64.new_state(p, pp), i)
    steps = 0
    while len(batch):
        with HostCopies() as h:
            rows = len(batch)
            batch.step()
        steps += 1
        # no logits or probabilities (the store's embeddings of fuzzy queries are its own business)
        assert not [c for c in h.calls if c[1].is_floating_point and c[3][-1:] == (vocab,)], h.calls
        ids = [c for c in h.calls if not c[1].is_floating_point and c[2] > 1]
        assert ids in ([], [("tolist", torch.int64, rows, (rows,))]), h.calls
    assert steps >= 12


# ---------------------------------------------------------------- the engine's request API


def _drain(eng: Engine) -> list:
    steps = []
    while eng.has_unfinished():
        steps.append(eng.step())
    return steps


def test_requests_are_admitted_in_order_up_to_the_batch_size(engine64, tok, store):
    """add_request + step until nothing is unfinished gives what generate gives; waiting requests
    join first come first served, and no step runs more than max_batch_size rows."""
    eng = Engine(engine64.model, tok, store, max_batch_size=2, prefill_chunk=4)
    params = GenerationParams(max_new_tokens=8, max_lookups=1, fallback="top1_anyway")
    states = [eng.add_request(p, params, key=f"r{i}") for i, p in enumerate(PROMPTS)]
    assert eng.num_waiting == 4 and eng.num_running == 0
    admitted, finished = [], []
    for step in _drain(eng):
        assert len(step.stepped) <= 2 and eng.num_running <= 2
        admitted += [r.key for r in step.stepped if r.key not in admitted]
        finished += [r.key for r in step.finished]
    assert admitted == ["r0", "r1", "r2", "r3"] and sorted(finished) == admitted
    assert eng.num_waiting == eng.num_running == 0
    want = engine64.generate(PROMPTS, params)
    assert [s.result().token_ids for s in states] == [w.token_ids for w in want]


def test_an_aborted_request_leaves_the_batch_and_the_others_go_on(engine64, tok, store):
    eng = Engine(engine64.model, tok, store, max_batch_size=2)
    params = GenerationParams(max_new_tokens=10, use_lookups=False, ignore_eos=True)
    a, b = eng.add_request(PROMPTS[0], params, "a"), eng.add_request(PROMPTS[1], params, "b")
    c = eng.add_request(PROMPTS[2], params, "c")  # waits: two rows
    for _ in range(3):
        eng.step()
    assert len(a.ids) > a.n_prompt and not a.done and eng.num_waiting == 1
    eng.abort("a")  # mid-decode: it leaves at the next step, and the waiting one takes its row
    step = eng.step()
    assert [r.key for r in step.finished] == ["a"] and (a.finish_reason, a.error) == ("abort", "aborted")
    assert [r.key for r in eng.batch.rows] == ["b", "c"] and eng.num_waiting == 0
    d = eng.add_request(PROMPTS[3], params, "d")
    eng.abort("d")  # still waiting: it leaves without running
    eng.abort("nobody")  # unknown: nothing
    step = eng.step()
    assert [r.key for r in step.finished] == ["d"] and d.finish_reason == "abort" and d.result().token_ids == []
    assert "d" not in [r.key for r in step.stepped]
    _drain(eng)
    eng.abort("b")  # finished already: nothing
    assert not eng.has_unfinished()
    alone = engine64.generate([PROMPTS[1], PROMPTS[2]], params)
    assert [b.result().token_ids, c.result().token_ids] == [r.token_ids for r in alone]


def test_the_queue_bound_and_request_checks(engine64, tok, store):
    eng = Engine(engine64.model, tok, store, max_batch_size=1, max_waiting=2)
    p = GenerationParams(max_new_tokens=2, use_lookups=False)
    eng.add_requests([Request("Kira", p, 0), Request("Hugo", p, 1)])
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        eng.add_requests([Request("Ada", p, 2)])
    eng.step()  # one joins the batch: one place in the queue
    with pytest.raises(QueueFull):
        eng.add_requests([Request("Ada", p, 2), Request("Lev", p, 3)])  # all or none
    assert eng.num_waiting == 1
    with pytest.raises(ValueError, match="^key:"):
        eng.add_request("Ada", p, 1)
    with pytest.raises(ParamsError, match="^prompt:"):
        eng.add_request("", p, 4)
    with pytest.raises(RuntimeError, match="unfinished"):
        eng.generate(["Ada"], p)
    _drain(eng)
    assert [r.n_text_tokens for r in eng.generate(["Ada"], p)] == [2]
    with pytest.raises(ParamsError, match="^use_lookups:"):
        Engine(engine64.model, tok, None).add_request("Ada", GenerationParams(), 0)


def test_a_prompt_is_tokenised_once(engine64, tok, store):
    """A server encodes the prompt while validating it; the engine takes those ids as they are."""

    class CountingTokenizer:
        def __init__(self, tok):
            self.tok, self.encoded = tok, []

        def __getattr__(self, name):
            return getattr(self.tok, name)

        def encode(self, text, **kw):
            self.encoded.append(text)
            return self.tok.encode(text, **kw)

    counting = CountingTokenizer(tok)
    eng = Engine(engine64.model, counting, store)
    t = synthetic_triples()[4]
    prompt = cloze(t.entity, t.relation)
    params = GenerationParams(max_new_tokens=6, max_lookups=1, fallback="top1_anyway")
    state = eng.add_request(prompt, params, "k", ids=eng.encode_prompt(prompt))
    _drain(eng)
    assert counting.encoded.count(prompt) == 1
    res = state.result()
    assert res.prompt == prompt and res.token_ids == engine64.generate([prompt], params)[0].token_ids
    with pytest.raises(ParamsError, match=r"^prompt: \d+ tokens, longer than the context"):
        eng.encode_prompt("Kira " * eng.max_len)
