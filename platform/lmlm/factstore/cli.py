"""`lmlm facts load|get|search|put|delete|stats|export|extract`.

The store comes from `--config FILE` / `--set key=value` (FactStoreConfig) or LMLM_REDIS_URL. Without
a URL, `--set data_dir=DIR` runs a private Redis 8 on that directory for the command (its AOF keeps
the data between commands). Each command prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from lmlm.atomicfile import write_json

from .config import FALLBACKS, FUZZY_MODES


def register(subparsers) -> None:
    from lmlm.config import add_config_arguments

    facts = subparsers.add_parser("facts", help="the fact store (Redis 8): load, query, edit, export")
    sub = facts.add_subparsers(dest="facts_command", required=True)

    def cmd(name, help, func, store=True):
        p = sub.add_parser(name, help=help)
        if store:
            add_config_arguments(p, "lmlm.factstore.config:FactStoreConfig")
        p.set_defaults(func=func)
        return p

    p = cmd("load", "load a reference database JSON or a corpus's lookups", _load)
    p.add_argument("input", help="database JSON ({'triplets': ...}) or corpus (.json, .jsonl, .parquet, dir)")
    p.add_argument("--annotator", default=None, help="annotator id for provenance (default: file name)")
    p.add_argument("--force", action="store_true",
                   help="also write facts that were deleted (tombstoned); the audit stream records it")
    p.add_argument("--batch-id", default=None,
                   help="load exactly once under this id: run again after an interruption with the same id")
    p = cmd("get", "look a fact up (exact key, then fuzzy)", _get)
    p.add_argument("entity")
    p.add_argument("relation")
    p.add_argument("--mode", choices=FUZZY_MODES, default=None)
    p.add_argument("--fallback", choices=FALLBACKS, default=None)
    p.add_argument("--entity-threshold", type=float, default=None,
                   help="two_stage: least entity similarity to accept (default: the config's)")
    p.add_argument("--relation-threshold", type=float, default=None,
                   help="two_stage: least relation-label cosine to accept (default: the config's)")
    p.add_argument("--cosine-threshold", type=float, default=None,
                   help="reference: least cosine of '{entity} {relation}' to a key (default: the config's)")
    p = cmd("search", "nearest keys to free text", _search)
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--entity", default=None, help="only this entity's keys")
    p = cmd("put", "set a value (replaces the key's values unless --add)", _put)
    p.add_argument("entity")
    p.add_argument("relation")
    p.add_argument("value")
    p.add_argument("--add", action="store_true", help="add the value next to the existing ones")
    p = cmd("delete", "delete an entity, a key or one triple (with its vectors)", _delete)
    p.add_argument("entity")
    p.add_argument("relation", nargs="?")
    p.add_argument("value", nargs="?")
    cmd("stats", "counts and memory", _stats)
    p = cmd("export", "write the store as a reference database JSON", _export)
    p.add_argument("output")
    p.add_argument("--provenance", action="store_true", help="add a provenance list next to the triplets")
    p = cmd("extract", "extract the reference database JSON from an annotated corpus (no store)", _extract,
            store=False)
    p.add_argument("input", help="corpus: reference .json, .jsonl, .parquet or a directory of shards")
    p.add_argument("--out", required=True, help="output database JSON")


def _open(args):
    from lmlm.config import load_config

    from .config import FactStoreConfig
    from .store import FactStore

    cfg = load_config(FactStoreConfig, args.config, args.overrides)
    if cfg.resolved_url() is None and cfg.data_dir is None:
        raise ValueError("no store: give --set url=redis://HOST:PORT/DB (or LMLM_REDIS_URL), or "
                         "--set data_dir=DIR to run a private Redis 8 on DIR")
    return FactStore.open(cfg)


def _print(obj) -> int:
    print(json.dumps(obj, ensure_ascii=False))
    return 0


def _answer(a):
    if a is None:
        return None
    d = asdict(a)
    d["triple"] = list(a.triple.__dict__.values()) if a.triple else None
    return d


def _load(args) -> int:
    from pathlib import Path

    from lmlm.corpus import document_triples, read_corpus

    path = Path(args.input)
    with _open(args) as store:
        if path.suffix == ".json" and path.is_file() and '"triplets"' in path.read_text(encoding="utf-8")[:1 << 20]:
            n = store.import_json(path, annotator=args.annotator or path.stem, force=args.force)
        else:
            records = read_corpus(path)
            triples, docs = document_triples([r.annotated_text for r in records], [r.id for r in records])
            n = store.load(triples, docs, annotator=args.annotator or path.stem, batch_id=args.batch_id,
                           force=args.force).written
        return _print({"loaded": n, **store.stats()})


def _get(args) -> int:
    with _open(args) as store:
        a = store.lookup(args.entity, args.relation, mode=args.mode, fallback=args.fallback,
                         entity_threshold=args.entity_threshold, relation_threshold=args.relation_threshold,
                         cosine_threshold=args.cosine_threshold)
        return _print(_answer(a))


def _search(args) -> int:
    with _open(args) as store:
        return _print([_answer(a) for a in store.search(args.text, args.k, args.entity)])


def _put(args) -> int:
    from lmlm.format import Triple

    with _open(args) as store:
        store.put(Triple(args.entity, args.relation, args.value), replace=not args.add)
        return _print({"put": [args.entity, args.relation, args.value], "values": store.get(args.entity, args.relation)})


def _delete(args) -> int:
    with _open(args) as store:
        return _print({"deleted": store.delete(args.entity, args.relation, args.value)})


def _stats(args) -> int:
    with _open(args) as store:
        return _print(store.stats())


def _export(args) -> int:
    with _open(args) as store:
        return _print({"exported": store.export_json(args.output, provenance_too=args.provenance),
                       "output": args.output})


def _extract(args: argparse.Namespace) -> int:
    from lmlm.corpus import extract_database, read_corpus, records_triples

    db = extract_database(records_triples(read_corpus(args.input)))
    write_json(args.out, db)
    return _print({"triplets": len(db["triplets"]), "entities": len(db["entities"]), "output": args.out})
