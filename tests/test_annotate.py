"""The trained annotator, the matching rules, chunking, anchoring generated calls, output validation and the configs."""
from __future__ import annotations

import argparse
import json

import pytest

from lmlm.annotate import AnnotateConfig, Annotator, TaggerAnnotator, evaluate_annotator, fit_tagger, score_triples
from lmlm.annotate.anchor import anchor_calls
from lmlm.annotate.chunks import chunk_words, word_cut
from lmlm.annotate.shards import annotate_rows
from lmlm.annotate.alignment import align
from lmlm.config import load_config
from lmlm.format import Triple, extract_triples, strip_lookups
from lmlm.world import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world_docs():
    return [d.annotated_text for d in generate_world(WorldConfig(people=80, seed=3)).documents]


@pytest.fixture(scope="module")
def tagger(world_docs):
    return fit_tagger(world_docs[:50], epochs=4, log=lambda s: None)


def test_alignment_finds_every_world_value(world_docs):
    a = align(world_docs[0])
    assert a.unaligned == 0 and len(a.calls) == len(extract_triples(world_docs[0]))
    assert a.text == strip_lookups(world_docs[0])
    for i, j, triple in a.calls:
        assert a.text[a.tokens[i][1]:a.tokens[j - 1][2]] == triple.value


def test_trained_annotator_recovers_held_out_world_triples(tagger, world_docs):
    m = evaluate_annotator(tagger, world_docs[50:])
    assert m["exact"]["f1"] >= 0.9, m
    assert tagger.meta["entity_rules"]["*"] == "subject"  # bios are about their subject


def test_relation_labels_come_from_the_seeds_not_from_rules(world_docs):
    renamed = [d.replace("'Birth City')", "'Hometown')") for d in world_docs[:50]]
    m = fit_tagger(renamed, epochs=4, log=lambda s: None)
    triples = [t for d in m.annotate([strip_lookups(x) for x in world_docs[50:60]]) for t in extract_triples(d)]
    relations = {t.relation for t in triples}
    assert "Hometown" in relations and "Birth City" not in relations


def test_save_load_gives_identical_output(tagger, world_docs, tmp_path):
    texts = [strip_lookups(d) for d in world_docs[60:65]]
    tagger.save(tmp_path / "ann")
    again = TaggerAnnotator.load(tmp_path / "ann")
    assert again.annotate(texts) == tagger.annotate(texts)
    assert again.annotator_id == tagger.annotator_id.replace("unsaved", again.meta["fingerprint"])
    with pytest.raises(FileNotFoundError, match="not a tagger annotator"):
        TaggerAnnotator.load(tmp_path / "nothing")


def test_older_tagger_directories_without_a_kind_still_load(tagger, world_docs, tmp_path):
    from lmlm.annotate import load_trained
    from lmlm.annotate.registry import annotator_id_for

    out = tagger.save(tmp_path / "old")
    meta = json.loads((out / "annotator.json").read_text())
    assert meta.pop("kind") == "tagger"
    (out / "annotator.json").write_text(json.dumps(meta))
    texts = [strip_lookups(d) for d in world_docs[60:62]]
    assert load_trained(out).annotate(texts) == tagger.annotate(texts)
    assert annotator_id_for(AnnotateConfig(trained_path=str(out))) == f"trained:{meta['fingerprint']}"
    assert annotator_id_for(AnnotateConfig(annotator="tagger", trained_path=str(out))) == tagger.annotator_id
    with pytest.raises(ValueError, match="holds a 'tagger' annotator, not 'minilm'"):
        annotator_id_for(AnnotateConfig(annotator="minilm", trained_path=str(out)))


def test_annotation_keeps_the_text_and_handles_empty_input(tagger, world_docs):
    text = strip_lookups(world_docs[70])
    out = tagger.annotate([text, "", "   "])
    assert strip_lookups(out[0]) == text and out[1:] == ["", "   "]


def test_fit_refuses_seeds_without_calls():
    with pytest.raises(ValueError, match="no seed"):
        fit_tagger([], log=lambda s: None)
    with pytest.raises(ValueError, match="aligned"):
        fit_tagger(["plain text without any call"], log=lambda s: None)


def test_matching_rules():
    gold = [[Triple("Mara Quell", "Birth City", "Lisbon"), Triple("Mara Quell", "Award", "X Prize")]]
    pred = [[Triple("mara quell", "Birth_City", "lisbon"), Triple("Mara Quell", "Prize", "X Prize"),
             Triple("Other", "Award", "X Prize")]]
    ex, ev = score_triples(pred, gold, "exact"), score_triples(pred, gold, "entity_value")
    assert (ex["tp"], ex["predicted"], ex["gold"]) == (1, 3, 2)
    assert ev["tp"] == 2 and ev["precision"] == pytest.approx(2 / 3) and ev["recall"] == 1.0
    with pytest.raises(ValueError, match="unknown matching rule"):
        score_triples(pred, gold, "fuzzy")  # type: ignore[arg-type]


def test_chunking_at_word_boundaries():
    text = " ".join(f"w{i}" for i in range(1600)) + "\n"
    pieces = chunk_words(text, 750)
    assert "".join(pieces) == text and [len(p.split()) for p in pieces] == [750, 750, 100]
    assert chunk_words("a b", 750) == ["a b"] and word_cut("one two  three", 2) == len("one two")


class FixedOutput(Annotator):
    """An annotator whose outputs are given: malformed model output as a test input."""

    def __init__(self, outputs: dict[str, str]):
        self.outputs = outputs

    def annotate(self, texts):
        if any(t == "explode" for t in texts):
            raise RuntimeError("model crashed")
        return [self.outputs.get(t, t) for t in texts]


def test_malformed_and_truncated_calls_are_repaired_and_counted():
    ann = FixedOutput({
        "a": "Born in [dblookup('A', 'Birth City') -> Oslo] Oslo and [dblookup('A' 'Award' -> X] here.",
        "b": "Works at [dblookup('B', 'Employer') -> Polaris] Polaris. [dblookup('B', 'Spo",
        "c": "",
    })
    res = {r["id"]: r for r in annotate_rows(ann, ["a", "b", "c", "d", "e"], ["a", "b", "c", "explode", "plain"])}
    assert res["a"]["status"] == "ok" and res["a"]["lookups"] == 1 and "malformed" not in res["a"]["special_text"]
    assert sum(json.loads(res["a"]["dropped"]).values()) == 1
    assert res["b"]["lookups"] == 1 and json.loads(res["b"]["dropped"]) == {"truncated": 1}
    assert "dblookup" not in res["b"]["special_text"]
    assert (res["c"]["status"], res["c"]["reason"]) == ("rejected", "empty_output")
    assert (res["d"]["status"], res["d"]["reason"]) == ("rejected", "annotator_error")
    assert "RuntimeError" in res["d"]["detail"]
    assert res["e"]["status"] == "ok" and res["e"]["lookups"] == 0


def test_config_overrides_and_cli_registration():
    cfg = load_config(AnnotateConfig, overrides=["num_actors=3", "num_cpus_per_actor=0.25", "store.namespace=ann",
                                                 "openai.max_retries=1", "annotator=openai"])
    assert (cfg.num_actors, cfg.num_cpus_per_actor, cfg.store.namespace, cfg.openai.max_retries) == (3, 0.25, "ann", 1)
    from lmlm.config import ConfigError

    with pytest.raises(ConfigError, match="annotator"):
        load_config(AnnotateConfig, overrides=["annotator=gpt5"])
    from lmlm.annotate.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-annotator", "--set", "epochs=2"])
    assert args.command == "train-annotator" and args.overrides == ["epochs=2"] and callable(args.func)


def test_read_inputs_reference_json_limit_and_chunks(lmlm_wiki, tmp_path):
    from lmlm.annotate import run_annotation
    from lmlm.annotate.inputs import input_files, read_shard, scan_file

    cfg = AnnotateConfig(input=str(lmlm_wiki / "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json"))
    fs, files = input_files(cfg.input)
    shards = scan_file(fs, *files[0], shard_docs=5)
    assert len(shards) == 20 and [s["start"] for s in shards[:2]] == [0, 5]
    rows, rejects = read_shard(fs, shards[0], max_doc_bytes=900, max_words=50)
    assert {r["doc_id"] for r in rows} | {r["id"] for r in rejects} == {f"squad-eval100_chatgpt_gpt4o-v7.1_cleaned:{i}"
                                                                        for i in range(5)}
    assert all(len(r["text"].split()) <= 50 for r in rows) and any(r["chunk"] > 0 for r in rows)
    assert all(r["reason"] == "too_large" for r in rejects)
    with pytest.raises(ValueError, match="persistent fact store"):
        run_annotation(AnnotateConfig(input=cfg.input, output_dir=str(tmp_path / "o"), load_store=True))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        input_files(str(tmp_path / "missing.jsonl"))


TEXT = "Mara Quell was born in Lisbon. She works at Kesterly Mills as a weaver."
BORN = "[dblookup('Mara Quell', 'Birth City') -> Lisbon]"
WORKS = "[dblookup('Mara Quell', 'Employer') -> Kesterly Mills]"


def test_anchoring_keeps_the_document_word_for_word():
    faithful = f"Mara Quell was born in {BORN} Lisbon. She works at {WORKS} Kesterly Mills as a weaver."
    assert anchor_calls(TEXT, faithful) == faithful
    # reworded, stopped early: the input text, with both calls before their values
    reworded = f"Mara Quell was born in {BORN} Lisbon. She worked at {WORKS} Kesterly"
    assert anchor_calls(TEXT, reworded) == faithful
    # a call put before the entity instead of the value moves to the value a few words on
    early = f"{BORN} Mara Quell was born in Lisbon. She works at Kesterly Mills as a weaver."
    assert anchor_calls(TEXT, early) == f"Mara Quell was born in {BORN} Lisbon. She works at Kesterly Mills as a weaver."
    # a value that is not in the text: the call stays where the output had it, at a word start
    odd = "Mara Quell was born in [dblookup('Mara Quell', 'Country') -> Portugal] Lisbon. She works."
    out = anchor_calls(TEXT, odd)
    assert strip_lookups(out) == TEXT and out.startswith("Mara Quell was born in [dblookup(")
    # chatter without a valid call: the document as it was
    assert anchor_calls(TEXT, "Sure! Here it is: [dblookup('Mara Quell', 'Birth") == TEXT
    assert anchor_calls(" " + TEXT, faithful).startswith(" Mara")  # a leading separator is kept
    # in the pipeline's validation: anchored, and the output's own invalid calls still counted
    row = annotate_rows(FixedOutput({TEXT: reworded + " [dblookup('Mara Quell', 'Trade') -> "}), ["m"], [TEXT])[0]
    assert row["annotated_text"] == faithful and json.loads(row["dropped"]) == {"truncated": 1}
    assert row["lookups"] == 2 and strip_lookups(row["special_text"]) == TEXT


def test_a_trained_annotator_named_by_storage_uri_loads_from_a_node_copy(tagger, world_docs, tmp_path, monkeypatch):
    from lmlm.annotate.config import AnnotateConfig
    from lmlm.annotate.registry import annotator_id_for, load_trained
    from lmlm.storage import Storage

    monkeypatch.setenv("LMLM_NODE_CACHE", str(tmp_path / "cache"))
    store = Storage(f"file://{tmp_path}/storage")
    store.upload(tagger.save(tmp_path / "local"), "annotator")
    uri = store.uri_of("annotator")
    loaded = load_trained(uri, kind="tagger")
    doc = strip_lookups(world_docs[60])
    assert loaded.annotate([doc]) == tagger.annotate([doc])
    assert annotator_id_for(AnnotateConfig(trained_path=uri)) == annotator_id_for(
        AnnotateConfig(trained_path=str(tmp_path / "local")))
    assert any((tmp_path / "cache").iterdir())  # loaded from this node's copy
