"""`lmlm <command> --help` lists every config field: dotted name, type, default and the comment
written beside the field in its dataclass (trailing, or on the line(s) above)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from lmlm.config import add_config_command, config_help, field_docs


@dataclass
class _Section:
    lr: float = 0.003  # peak learning rate
    # steps of linear warmup,
    # before the cosine decay
    warmup: int = 10
    bare: str = "x"


@dataclass
class _Top:
    run_dir: str = "runs/demo"  # everything the run writes
    # --- a heading, not a field's description
    inner: _Section = field(default_factory=lambda: _Section(lr=0.01))  # the optimiser
    spare: Optional[_Section] = None
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)  # noqa: E501


def _flat(text: str) -> str:
    return " ".join(text.split())  # help lines wrap at the terminal width


def test_comments_beside_and_above_fields_are_read():
    assert field_docs(_Section) == {"lr": "peak learning rate", "warmup": "steps of linear warmup, before the cosine decay"}
    assert field_docs(_Top) == {"run_dir": "everything the run writes", "inner": "the optimiser"}


def test_help_walks_sections_with_their_parents_defaults():
    text = _flat(config_help(_Top))
    for entry in ["run_dir (str, default 'runs/demo'): everything the run writes",
                  "inner (_Section section): the optimiser",
                  "inner.lr (float, default 0.01): peak learning rate",  # the parent's default, not 0.003
                  "inner.warmup (int, default 10): steps of linear warmup, before the cosine decay",
                  "inner.bare (str, default 'x')",
                  "spare (_Section | None, default None)",
                  "spare.lr (float, default 0.003): peak learning rate",
                  "mode ('a' | 'b', default 'a')",
                  "tags (list[str], default [])"]:
        assert entry in text, f"{entry!r} not in:\n{text}"
    assert "tags (list[str], default []):" not in text, "a pragma comment is no description"


def test_epilog_is_built_when_help_is_shown():
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    cmd = add_config_command(parser.add_subparsers(), "run", lambda a: 0, "run it",
                             config=f"{__name__}:_Top")  # imported only when help is formatted
    assert cmd.epilog is None
    text = _flat(cmd.format_help())
    assert "--set KEY=VALUE" in text and "inner.lr (float, default 0.01): peak learning rate" in text
    assert _flat(cmd.format_help()).count("inner.lr (") == 1


def _lmlm_help(*command: str) -> str:
    exe = Path(sys.executable).with_name("lmlm")
    out = subprocess.run([str(exe), *command, "--help"], capture_output=True, text=True, timeout=120,
                         cwd="/", env={**os.environ, "COLUMNS": "100"})  # not from the checkout
    assert out.returncode == 0, out.stderr
    return _flat(out.stdout)


def test_lmlm_pipeline_help_lists_nested_fields():
    text = _lmlm_help("pipeline")
    assert "config fields of PipelineConfig" in text
    for entry in ["run_dir (str, default 'runs/demo'): everything the run writes",
                  "pretrain (PretrainConfig section)",
                  "pretrain.lr (float, default 0.0005): peak learning rate (AdamW)",
                  "pretrain.zero_stage (int, default 2): DeepSpeed ZeRO stage 0-3",
                  "pretrain.beta1 (float, default 0.9)",  # no comment: still listed
                  "annotate.openai.api_key_env (str, default 'OPENAI_API_KEY')",  # no comment, two levels down
                  "annotate.hf.batch_size (int, default 8): documents per generate() call",  # comment above
                  "factstore.url (str | None, default None): redis://"]:
        assert entry in text, f"{entry!r} not in `lmlm pipeline --help`"
    assert "annotate.store.url (" in text and "serve.port (" in text


def test_other_config_commands_list_their_fields():
    serve = _lmlm_help("serve")
    assert "model_path (str, default 'runs/demo/model')" in serve and "store.url (str | None, default None)" in serve
    assert "max_steps (int, default 100): optimizer steps" in _lmlm_help("pretrain")
    assert "namespace (str, default 'lmlm')" in _lmlm_help("facts", "get")
