"""Corpus records: reading every format, writing Parquet, conversion stats, the database layout, CLI."""
from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmlm import corpus_cli
from lmlm.corpus import (
    CorpusError,
    Record,
    SkippedLine,
    convert_records,
    extract_database,
    iter_corpus,
    read_corpus,
    read_database,
    records_to_table,
    records_triples,
    write_jsonl,
    write_parquet,
)
from lmlm.format import Triple, render_block

DOCS = [
    Record("a", "Ko was born in Yokohama.", "Ko was born in [dblookup('Ko', 'Birth Place') -> Yokohama] Yokohama.",
           "test", {"annotator": "gold", "n": 1}),
    Record("b", "Plain text only.", "", "test", {}),
    Record("c", "It has 3 members.", "It has [dblookup('Band', 'Members')] 3 [dblookup('Band', 'Members') -> 3] "
           "3 members [dblookup('Ko', 'Birth Place') -> Yokohama] and [dblookup('X', 'Y') -> tru", "test", {}),
]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lmlm")
    corpus_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parquet_round_trip(tmp_path):
    path = write_parquet(DOCS, tmp_path / "c.parquet")
    assert read_corpus(path) == DOCS
    assert records_to_table(DOCS).column_names == ["id", "text", "annotated_text", "source", "meta"]


def test_parquet_directory_of_shards(tmp_path):
    write_parquet(DOCS[:2], tmp_path / "shards" / "part-0.parquet")
    write_parquet(DOCS[2:], tmp_path / "shards" / "part-1.parquet")
    assert sorted(r.id for r in read_corpus(tmp_path / "shards")) == ["a", "b", "c"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .parquet files"):
        read_corpus(tmp_path / "empty")


def test_parquet_written_by_others(tmp_path):
    # Extra columns land in meta; a missing id gets "{stem}:{row}".
    pq.write_table(pa.table({"text": ["t"], "annotated_text": ["a"], "lang": ["en"]}), tmp_path / "x.parquet")
    assert read_corpus(tmp_path / "x.parquet") == [Record("x:0", "t", "a", "x", {"lang": "en"})]


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    path = write_jsonl(DOCS, tmp_path / "c.jsonl")
    assert read_corpus(path) == DOCS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{broken", "", '{"id": 5}', lines[1]]) + "\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl: line 2"):
        read_corpus(path)
    got = read_corpus(path, on_error="skip")
    assert [r.id for r in got] == ["a", "b"]
    assert [(s.line, "text" in s.error) for s in got.skipped] == [(2, False), (4, True)]


def test_one_reader_says_why_each_line_is_no_record(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n\n{"id": "n"}\n[1]\n{"text": "caf\xe9"}\n{"cut\n')
    items = list(iter_corpus(path))
    assert [(type(x).__name__, x.id) for x in items] == [("Record", "a"), ("SkippedLine", "n"),
                                                         ("SkippedLine", "in:4"), ("SkippedLine", "in:5"),
                                                         ("SkippedLine", "in:6")]
    assert [x.reason for x in items if isinstance(x, SkippedLine)] == ["bad_record", "bad_record", "invalid_utf8",
                                                                       "broken_json"]
    assert len(read_corpus(path, on_error="skip", limit=2).skipped) == 1  # the first two lines only
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["t", None]}), tmp_path / "p.parquet")
    got = read_corpus(tmp_path / "p.parquet", on_error="skip")
    assert [r.id for r in got] == ["x"] and str(got.skipped[0]).endswith("row 1: record has neither 'text' nor "
                                                                          "'annotated_text'")


def test_reference_layout(tmp_path):
    ex = {"annotated_text": "A [dblookup('E', 'R') -> v] v.", "text": "A v.", "model_id": "gpt-4o",
          "prompt_id": "p", "original_dataset": "squad", "original_dataset_ids": ["q1"]}
    (tmp_path / "ref.json").write_text(json.dumps({"examples": [ex, ex], "metadata": {}}))
    recs = read_corpus(tmp_path / "ref.json")
    assert [r.id for r in recs] == ["ref:0", "ref:1"]
    assert recs[0].source == "ref" and recs[0].meta["annotator"] == "gpt-4o"
    assert recs[0].meta["original_dataset_ids"] == ["q1"]
    (tmp_path / "bad.json").write_text('{"examples": [1]}')
    with pytest.raises(CorpusError, match=r"bad\.json: example 0: expected a JSON object"):
        read_corpus(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text('{"examples": [')
    with pytest.raises(CorpusError, match=r"worse\.json: invalid JSON at line 1"):
        read_corpus(tmp_path / "worse.json")
    (tmp_path / "nope.txt").write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "missing.jsonl")


def test_convert_records_stats():
    out, stats, summary = convert_records(DOCS)
    assert out[0].annotated_text == f"Ko was born in {render_block(Triple('Ko', 'Birth Place', 'Yokohama'))} Yokohama."
    assert out[1].annotated_text == "" and out[1].text == DOCS[1].text
    assert [s["lookups"] for s in stats] == [1, 0, 2]
    assert stats[2]["dropped"] == {"missing_arrow": 1, "truncated": 1}
    assert summary == {"docs": 3, "lookups": 3, "unique_triples": 2,
                       "dropped": {"missing_arrow": 1, "truncated": 1}}


def test_extract_database_layout(tmp_path):
    db = extract_database(records_triples(DOCS))
    assert db == {"entities": ["Ko", "Band"], "relationships": ["Birth Place", "Members"],
                  "return_values": ["Yokohama", "3"],
                  "triplets": [["Ko", "Birth Place", "Yokohama"], ["Band", "Members", "3"]]}
    (tmp_path / "db.json").write_text(json.dumps(db))
    assert read_database(tmp_path / "db.json") == [Triple("Ko", "Birth Place", "Yokohama"), Triple("Band", "Members", "3")]
    (tmp_path / "bad.json").write_text('{"triplets": [["a", "b"]]}')
    with pytest.raises(CorpusError, match=r"triplets\[0\]"):
        read_database(tmp_path / "bad.json")


def test_reference_database_reads(lmlm_wiki):
    triples = read_database(lmlm_wiki / "dwiki-eval100-annotator_database.json")
    assert len(triples) == 692
    db = extract_database(triples)
    assert len(db["triplets"]) == len(set(map(tuple, db["triplets"])))


def test_cli_convert_reference_file(lmlm_wiki, tmp_path, capsys):
    out = tmp_path / "squad.parquet"
    report = tmp_path / "report.json"
    rc = run_cli(["corpus", "convert", str(lmlm_wiki / "squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json"),
                  str(out), "--report", str(report)])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["docs"] == 99 and last["lookups"] == 585 and last["dropped"] == {"mangled": 1}
    assert 0 < last["unique_triples"] <= 585
    recs = read_corpus(out)
    assert len(recs) == 99 and all("dblookup" not in r.annotated_text for r in recs)
    per_doc = json.loads(report.read_text())["documents"]
    assert sum(d["lookups"] for d in per_doc) == 585


def test_cli_convert_jsonl_skip(tmp_path, capsys):
    src = write_jsonl(DOCS, tmp_path / "in.jsonl")
    src.write_text(src.read_text() + "not json\n")
    with pytest.raises(CorpusError, match="line 4"):
        run_cli(["corpus", "convert", str(src), str(tmp_path / "o.jsonl")])
    assert run_cli(["corpus", "convert", str(src), str(tmp_path / "o.jsonl"), "--skip-bad-lines"]) == 0
    cap = capsys.readouterr()
    assert "line 4" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["skipped_lines"] == 1
    assert len(read_corpus(tmp_path / "o.jsonl")) == 3
