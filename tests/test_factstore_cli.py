"""`lmlm facts ...` end to end through lmlm.cli.main on a real Redis 8."""
from __future__ import annotations

import json

from lmlm.factstore.cli import register


def run(capsys, *argv) -> dict:
    import argparse

    parser = argparse.ArgumentParser(prog="lmlm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_facts_commands(capsys, redis_server, lmlm_wiki, tmp_path):
    url = ["--set", f"url={redis_server.url}", "--set", "namespace=clitest"]
    db = tmp_path / "db.json"
    out = run(capsys, "facts", "extract", str(lmlm_wiki / "parity" / "squad-eval100_llama-LMLM-Annotator_llama-v6.1.json"),
              "--out", str(db))
    ref = json.loads((lmlm_wiki / "parity" / "squad-eval100-Annotator_database.json").read_text())
    assert out["triplets"] == len(json.loads(db.read_text())["triplets"]) > 0
    assert abs(out["triplets"] - len(ref["triplets"])) <= 3
    loaded = run(capsys, "facts", "load", str(db), *url)
    assert loaded["loaded"] == out["triplets"] and loaded["triples"] == out["triplets"]
    e, r, v = json.loads(db.read_text())["triplets"][0]
    got = run(capsys, "facts", "get", e, r, *url)
    assert got["stage"] == "exact" and got["triple"][0] == e
    run(capsys, "facts", "put", "CLI Person", "Birth City", "Oslo", *url)
    assert run(capsys, "facts", "get", "cli person", "birth city", *url)["value"] == "Oslo"
    assert run(capsys, "facts", "delete", "CLI Person", *url) == {"deleted": 1}
    assert run(capsys, "facts", "get", "CLI Person", "Birth City", "--fallback", "abstain", *url) is None
    assert run(capsys, "facts", "stats", *url)["triples"] == out["triplets"]
    exp = tmp_path / "exp.json"
    assert run(capsys, "facts", "export", str(exp), *url)["exported"] == out["triplets"]
    assert sorted(map(tuple, json.loads(exp.read_text())["triplets"])) == \
        sorted(map(tuple, json.loads(db.read_text())["triplets"]))
