"""The one config system: typed dataclasses, loaded from YAML files and `key.path=value` overrides.

Every stage declares a small dataclass (fields documented with a comment); the `lmlm` command and
the `jobs/*.py` entrypoints both go through `parse_args`, so there is no second argument parser
that can drift. Unknown keys and wrongly typed values are errors that name the key.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import io
import re
import shutil
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import pydantic
import pydantic_core
import yaml

from lmlm import atomicfile

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass; the message names the key."""


# pydantic checks and converts (a TypeAdapter of the dataclass: sections from mappings, lists
# from lists or tuples, __post_init__ run), made strict where YAML types must not be bent: a bool,
# int or str field takes only that type (no "yes" or 1 -> True, "3" or 3.0 -> 3, 3 -> "3"), and a
# float field any number or numeric string (YAML 1.1 reads `1e-3`, without a dot, as a string).
_KEEP = {"default", "metadata", "expected", "keys_schema", "serialization"}  # values, not schemas to make strict
_WANT = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number", "string_type": "a string",
         "dataclass_type": "a mapping", "dict_type": "a mapping", "list_type": "a list", "tuple_type": "a list"}


def _number(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _strict(schema: Any) -> Any:
    """pydantic core schema `schema` with scalars made strict and dataclasses refusing unknown keys."""
    if isinstance(schema, (list, tuple)):
        return type(schema)(_strict(s) for s in schema)
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _KEEP else _strict(v) for k, v in schema.items()}
    kind = out.get("type")
    if kind in ("bool", "int", "str", "literal"):
        out["strict"] = True
    elif kind == "dataclass-args":
        out["extra_behavior"] = "forbid"
    elif kind == "float":
        return pydantic_core.core_schema.no_info_before_validator_function(_number, {**out, "strict": True})
    return out


@functools.lru_cache(maxsize=None)
def _validator(cls: type) -> pydantic_core.SchemaValidator:
    return pydantic_core.SchemaValidator(_strict(pydantic.TypeAdapter(cls).core_schema))


def _message(cls: type, err: Any) -> str:
    """One pydantic error as a message that starts with the dotted key path."""
    loc, value, kind = err["loc"], err.get("input"), err["type"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "unexpected_keyword_argument":  # list the keys the section holding it knows
        section = _dataclass_in(_type_at(cls, loc[:-1]))
        known = sorted(f.name for f in dataclasses.fields(section) if f.init) if section else []
        return f"unknown config key {key}" + (f" (known: {', '.join(known)})" if known else "")
    if kind in _WANT:  # a wrong value is shown, a wrong section or list named by its type
        got = type(value).__name__ if _WANT[kind] in ("a mapping", "a list") else repr(value)
        return f"{key or cls.__name__}: expected {_WANT[kind]}, got {got}"
    if kind == "literal_error":
        tp = _type_at(cls, loc)  # Literal[...] or Optional[Literal[...]]; past a list, pydantic's wording
        allowed = next((list(typing.get_args(a)) for a in (tp, *typing.get_args(tp))
                        if typing.get_origin(a) is typing.Literal), err["ctx"]["expected"])
        return f"{key}: {value!r} is not one of {allowed}"
    if kind in ("value_error", "assertion_error"):  # raised by a __post_init__
        return f"{key or cls.__name__}: {err['ctx']['error']}"
    return f"{key or cls.__name__}: " + ("required, has no default" if kind.startswith("missing") else err["msg"])


def _type_at(tp: Any, loc: Sequence) -> Any:
    """The annotated type at key path `loc` below dataclass `tp` (None past a list or a mapping)."""
    for part in loc:
        section = _dataclass_in(tp)
        tp = typing.get_type_hints(section).get(part) if section and isinstance(part, str) else None
    return tp


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass `cls` from a mapping, recursively; unknown keys and wrong types are errors naming the key."""
    try:
        return _validator(cls).validate_python(data)
    except pydantic_core.ValidationError as e:
        raise ConfigError("; ".join(dict.fromkeys(_message(cls, err) for err in e.errors()))) from None
    except TypeError as e:  # a __post_init__'s own TypeError
        raise ConfigError(f"{cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """A config as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then `a.b=value` overrides (YAML values)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        _set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return from_dict(cls, data)


def save_config(obj: Any, path: str | Path) -> None:
    atomicfile.write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, config: type | str | None = None) -> None:
    """`--config FILE` and repeated `--set key.path=value`; with `config` (the dataclass, or
    "module:Class" to import it only when help is shown), `--help` lists its fields."""
    parser.add_argument("--config", "-c", default=None, help="YAML config file")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config field, e.g. --set train.steps=20")
    if config is not None:
        add_config_help(parser, config)


def add_config_command(subparsers, name: str, func, help: str, description: str | None = None,
                       config: type | str | None = None):
    """A subcommand of `lmlm` that takes `--config FILE` and `--set key=value` and runs `func(args)`;
    its `--help` lists every field of `config` (see add_config_arguments)."""
    parser = subparsers.add_parser(name, help=help, description=description or help)
    add_config_arguments(parser, config)
    parser.set_defaults(func=func)
    return parser


def parse_args(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    """The shared entrypoint parser: `--config FILE` and repeated `--set key.path=value`."""
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    return load_config(cls, ns.config, ns.overrides)


# ----------------------------------------------------------------------------------------------
# `--help`: every field of a config, with its type, default and the comment written beside it.

def add_config_help(parser: argparse.ArgumentParser, config: type | str) -> None:
    """Show `config`'s fields (`config_help`) as the epilog of `parser`'s help. The text is built
    when the help is printed, so building the `lmlm` parser reads no source and imports nothing."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep one field per line
    show = parser.format_help

    def format_help() -> str:
        if not getattr(parser, "_config_help_done", False):
            width = _help_width()
            if parser.description:
                parser.description = textwrap.fill(parser.description, width)
            fields = config_help(_resolve(config), width)
            parser.epilog = f"{parser.epilog}\n\n{fields}" if parser.epilog else fields
            parser._config_help_done = True
        return show()

    parser.format_help = format_help


def config_help(cls: type, width: int = 100) -> str:
    """The help text of a config: a heading, then one entry per field (nested sections' fields
    under dotted names) like `pretrain.lr (float, default 0.003): peak learning rate`."""
    head = textwrap.fill(f"config fields of {cls.__name__} (set in the --config YAML file or with --set "
                         "KEY=VALUE; a section's fields as section.field):", width)
    entries = [textwrap.fill(line, width, initial_indent="  ", subsequent_indent="      ",
                             break_long_words=False, break_on_hyphens=False) for line in describe_fields(cls)]
    return "\n".join([head, *entries])


def describe_fields(cls: type, obj: Any = None, prefix: str = "") -> list[str]:
    """One line per field of dataclass `cls`: `name (type, default D): comment`. Defaults come from
    `obj` (default: `cls()`), so a section's defaults are the ones its parent sets."""
    if obj is None:
        try:
            obj = cls()
        except Exception:  # noqa: BLE001 — a required field: fall back to each field's own default
            obj = None
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 — an unresolvable annotation: show it as written
        hints = {}
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        value = getattr(obj, f.name) if obj is not None else _field_default(f)
        doc = docs.get(f.name, "")
        section = _dataclass_in(tp)
        if section is not None and dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name} ({_type_name(tp)} section)" + (f": {doc}" if doc else ""))
            lines += describe_fields(section, value, f"{prefix}{f.name}.")
            continue
        default = "required" if value is dataclasses.MISSING else f"default {_short_repr(value)}"
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, {default})" + (f": {doc}" if doc else ""))
        if section is not None:  # e.g. Optional[Section] = None: its fields can still be set
            lines += describe_fields(section, None, f"{prefix}{f.name}.")
    return lines


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the comment documenting it in the class source: the trailing `# ...` of the
    field's line(s), else the comment line(s) right above it. Empty when no source can be read."""
    try:
        tree, comments = _parsed_source(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError, SyntaxError, UnicodeDecodeError):
        return {}
    node = _find_class(tree, cls.__qualname__)
    docs: dict[str, str] = {}
    for stmt in node.body if node is not None else ():
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        trailing = [comments[ln][0] for ln in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                    if ln in comments and not comments[ln][1]]
        above, ln = [], stmt.lineno - 1
        while ln in comments and comments[ln][1] and not comments[ln][0].startswith("---"):  # "# --- x": a heading
            above.insert(0, comments[ln][0])
            ln -= 1
        text = " ".join(t for t in (trailing or above) if t)
        if text:
            docs[stmt.target.id] = text
    return docs


_PRAGMA = re.compile(r"^(noqa|type:|pragma|fmt:)", re.I)


@functools.lru_cache(maxsize=None)
def _parsed_source(path: str) -> tuple[ast.Module, dict[int, tuple[str, bool]]]:
    """The module's syntax tree, and line -> (comment text, whether the line holds only the comment)."""
    src = Path(path).read_text(encoding="utf-8")
    comments: dict[int, tuple[str, bool]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            comments[tok.start[0]] = ("" if _PRAGMA.match(text) else text, not tok.line[:tok.start[1]].strip())
    return ast.parse(src), comments


def _find_class(tree: ast.AST, qualname: str) -> ast.ClassDef | None:
    node: Any = tree
    for part in qualname.split("."):
        node = next((n for n in node.body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            return None
    return node


def _resolve(config: type | str) -> type:
    if isinstance(config, str):
        module, _, name = config.partition(":")
        return getattr(importlib.import_module(module), name)
    return config


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _dataclass_in(tp: Any) -> type | None:
    """`tp` itself if it is a dataclass, or the dataclass member of a union (Optional[Section])."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)), None)
    return None


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if tp is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _short_repr(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _help_width() -> int:
    return max(60, min(120, shutil.get_terminal_size().columns - 2))
