"""`lmlm corpus convert IN OUT` and `lmlm world --people N --seed S --out DIR`.

Each command prints, as its last line, one JSON object with what it did.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter


def register(subparsers) -> None:
    corpus = subparsers.add_parser("corpus", help="read, convert and write corpora")
    csub = corpus.add_subparsers(dest="corpus_command", required=True)
    conv = csub.add_parser("convert", help="convert a corpus to special-token form (Parquet or .jsonl out)")
    conv.add_argument("input", help="corpus: reference .json, .jsonl, .parquet or a directory of shards")
    conv.add_argument("output", help="output path (.parquet, or .jsonl)")
    conv.add_argument("--report", help="write per-document lookup and drop counts to this JSON file")
    conv.add_argument("--skip-bad-lines", action="store_true",
                      help="leave out broken JSONL lines (listed on stderr) instead of failing")
    conv.set_defaults(func=_convert)

    world = subparsers.add_parser("world", help="generate a synthetic TOFU-like world")
    world.add_argument("--people", type=int, default=2000, help="number of fictitious people")
    world.add_argument("--seed", type=int, default=0, help="random seed (same seed, same world)")
    world.add_argument("--forget-fraction", type=float, default=0.1, help="share of people to forget")
    world.add_argument("--out", required=True, help="output directory")
    world.set_defaults(func=_world)


def _convert(args: argparse.Namespace) -> int:
    import sys

    from lmlm.corpus import convert_records, read_corpus, write_corpus

    records = read_corpus(args.input, on_error="skip" if args.skip_bad_lines else "raise")
    for s in records.skipped:
        print(f"skipped {s.path} line {s.line}: {s.error}", file=sys.stderr)
    converted, stats, summary = convert_records(records)
    write_corpus(converted, args.output)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "documents": stats}, f, ensure_ascii=False, indent=1)
    for st in stats:
        for d in st["drops"]:
            print(f"dropped {d['reason']} in {st['id']}: {d['text'][:120]!r}")
    print(f"wrote {len(converted)} documents to {args.output}")
    if records.skipped:
        summary["skipped_lines"] = len(records.skipped)
    print(json.dumps(summary))
    return 0


def _world(args: argparse.Namespace) -> int:
    from lmlm.format import extract_triples
    from lmlm.world import WorldConfig, generate_world

    w = generate_world(WorldConfig(people=args.people, seed=args.seed, forget_fraction=args.forget_fraction))
    out = w.save(args.out)
    lookups = Counter(t.relation for d in w.documents for t in extract_triples(d.annotated_text))
    print(f"wrote world to {out}")
    print(json.dumps({"people": len(w.people), "docs": len(w.documents), "triples": len(w.triples()),
                      "lookups": sum(lookups.values()), "forget": len(w.forget_names),
                      "retain": len(w.retain_names), "cloze": len(w.cloze_items),
                      "words": sum(len(d.text.split()) for d in w.documents), "out": str(out)}))
    return 0
