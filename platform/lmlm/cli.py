"""The `lmlm` command. Each stage module contributes its subcommands through `register(subparsers)`;
stage configs come from `lmlm.config`, so the command and the `jobs/*.py` share one definition."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands; each defines `register(subparsers) -> None` and sets `func` on its
# parsers (func(args) -> int exit code).
COMMAND_MODULES = (
    "lmlm.corpus_cli",
    "lmlm.datasets_cli",
    "lmlm.factstore.cli",
    "lmlm.annotate.cli",
    "lmlm.train.cli",
    "lmlm.generate.cli",
    "lmlm.serve.cli",
    "lmlm.eval.cli",
    "lmlm.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlm", description="Large Memory Language Model platform")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 — a clean one-line error for users, full trace with LMLM_DEBUG
        if os.environ.get("LMLM_DEBUG"):
            raise
        print(f"lmlm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
