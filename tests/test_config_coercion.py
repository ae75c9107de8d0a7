"""`lmlm.config` turns YAML files and `--set key.path=value` overrides into typed dataclasses (pydantic
underneath): sections from mappings, Optional/Literal/list/tuple/dict fields, and errors that name the
dotted key. A bool, int or str field takes only that type; a float field any number or numeric string."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from lmlm.config import ConfigError, from_dict, load_config, parse_args, save_config, to_dict


@dataclass
class _Optim:
    lr: float = 0.003
    warmup: int = 10
    betas: tuple[float, float] = (0.9, 0.95)
    fused: bool = False

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup: {self.warmup} must be >= 0")


@dataclass
class _Train:
    steps: int = 100
    optim: _Optim = field(default_factory=_Optim)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    resume: Optional[str] = None
    limit: Optional[int] = None
    fallback: Optional[Literal["unknown", "abstain"]] = None


@dataclass
class _Top:
    name: str = "demo"
    stages: list[str] = field(default_factory=lambda: ["a", "b"])
    shape: tuple[int, int] = (2, 4)
    extra: dict[str, Any] = field(default_factory=dict)
    bias: dict[int, float] = field(default_factory=dict)
    train: _Train = field(default_factory=_Train)
    spare: Optional[_Optim] = None


def _error(cls: type, data: Any = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(cls, data) if data is not None else load_config(cls, None, overrides)
    return str(e.value)


def test_nested_sections_from_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run1\n"
                    "stages: [x, y, z]\n"
                    "shape: [3, 5]\n"
                    "extra: {anything: [1, two]}\n"
                    "train:\n"
                    "  steps: 7\n"
                    "  precision: bf16\n"
                    "  optim:\n"
                    "    lr: 1e-3\n"  # YAML 1.1: a string, taken as a number by a float field
                    "    warmup: 0\n"
                    "    betas: [0.8, 1]\n"
                    "    fused: true\n"
                    "spare: {lr: 2}\n")
    cfg = load_config(_Top, path)
    assert cfg == _Top(name="run1", stages=["x", "y", "z"], shape=(3, 5), extra={"anything": [1, "two"]},
                       train=_Train(steps=7, precision="bf16", optim=_Optim(lr=0.001, warmup=0, betas=(0.8, 1.0), fused=True)),
                       spare=_Optim(lr=2.0))
    assert isinstance(cfg.shape, tuple) and isinstance(cfg.train.optim.betas, tuple) and type(cfg.spare.lr) is float
    assert isinstance(cfg.train.optim, _Optim) and cfg.train.resume is None
    save_config(cfg, tmp_path / "again.yaml")  # what is saved loads back to the same config
    assert load_config(_Top, tmp_path / "again.yaml") == cfg
    assert from_dict(_Top, to_dict(cfg)) == cfg
    assert load_config(_Top) == _Top()  # no file, no overrides: the defaults
    section = _Optim(lr=0.5)
    assert from_dict(_Top, {"spare": section}).spare is section  # a section given as the dataclass itself


def test_optional_fields_take_none_or_their_type():
    cfg = from_dict(_Top, {"train": {"resume": None, "limit": None, "fallback": None}, "spare": None})
    assert (cfg.train.resume, cfg.train.limit, cfg.train.fallback, cfg.spare) == (None, None, None, None)
    cfg = load_config(_Top, None, ["train.resume=runs/x", "train.limit=5", "train.fallback=abstain", "spare.warmup=3"])
    assert (cfg.train.resume, cfg.train.limit, cfg.train.fallback, cfg.spare) == ("runs/x", 5, "abstain", _Optim(warmup=3))
    assert load_config(_Top, None, ["train.resume=null", "train.limit=~"]).train.resume is None
    assert _error(_Top, overrides=("train.limit=1.5",)) == "train.limit: expected an integer, got 1.5"
    assert _error(_Top, overrides=("train.resume=3",)) == "train.resume: expected a string, got 3"


def test_literal_refusal_names_the_allowed_values():
    assert _error(_Top, overrides=("train.precision=fp16",)) == \
        "train.precision: 'fp16' is not one of ['auto', 'fp32', 'bf16']"
    assert _error(_Top, overrides=("train.fallback=maybe",)) == \
        "train.fallback: 'maybe' is not one of ['unknown', 'abstain']"  # Optional[Literal[...]]
    assert load_config(_Top, None, ["train.precision=fp32"]).train.precision == "fp32"


def test_list_and_tuple_fields():
    assert load_config(_Top, None, ["stages=[a,b]"]).stages == ["a", "b"]
    assert load_config(_Top, None, ["stages=[]"]).stages == []
    assert from_dict(_Top, {"stages": ("c",), "shape": [1, 2]}) == _Top(stages=["c"], shape=(1, 2))  # either kind of sequence
    assert _error(_Top, overrides=("stages=a",)) == "stages: expected a list, got str"
    assert _error(_Top, overrides=("stages=[a,1]",)) == "stages[1]: expected a string, got 1"
    assert _error(_Top, overrides=("shape=[1,x]",)) == "shape[1]: expected an integer, got 'x'"
    assert "shape" in _error(_Top, overrides=("shape=[1,2,3]",))  # a fixed-size tuple checks its length


def test_mappings():
    cfg = load_config(_Top, None, ["extra={k: [1, x], n: null}", "bias={50256: -100, 7: 0.5}"])
    assert cfg.extra == {"k": [1, "x"], "n": None} and cfg.bias == {50256: -100.0, 7: 0.5}
    assert _error(_Top, overrides=("extra=3",)) == "extra: expected a mapping, got int"
    assert _error(_Top, overrides=("bias={1: x}",)) == "bias[1]: expected a number, got 'x'"


def test_unknown_keys_are_refused_naming_the_dotted_key():
    assert _error(_Top, {"nmae": "x"}) == \
        "unknown config key nmae (known: bias, extra, name, shape, spare, stages, train)"
    assert _error(_Top, overrides=("train.optim.momentum=0.9",)) == \
        "unknown config key train.optim.momentum (known: betas, fused, lr, warmup)"
    assert _error(_Top, overrides=("spare.momentum=0.9",)) == \
        "unknown config key spare.momentum (known: betas, fused, lr, warmup)"  # inside an Optional section
    assert _error(_Top, overrides=("train.optim.lr.x=1",)).startswith("train.optim.lr: expected a number")


def test_wrong_types_name_the_dotted_key():
    assert _error(_Top, overrides=("train.steps=many",)) == "train.steps: expected an integer, got 'many'"
    assert _error(_Top, overrides=("train.optim=3",)) == "train.optim: expected a mapping, got int"
    assert _error(_Top, overrides=("train.optim.lr=fast",)) == "train.optim.lr: expected a number, got 'fast'"
    assert _error(_Top, overrides=("name=[a]",)) == "name: expected a string, got ['a']"
    assert _error(_Top, [1, 2]) == "_Top: expected a mapping, got list"
    # every problem is named, not only the first
    both = _error(_Top, overrides=("train.steps=x", "train.optim.fused=1"))
    assert "train.steps: expected an integer, got 'x'" in both and "train.optim.fused: expected true or false, got 1" in both
    # a section's own check (__post_init__) is reported under the section's key
    assert _error(_Top, overrides=("train.optim.warmup=-1",)) == "train.optim: warmup: -1 must be >= 0"


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("false", False), ("True", True), ("yes", True), ("on", True),  # YAML 1.1 booleans
    ("1", "expected true or false, got 1"), ("'true'", "expected true or false, got 'true'"),
    ("0.0", "expected true or false, got 0.0"), ("", "expected true or false, got ''"),
])
def test_bool_fields_take_only_booleans(value, expected):
    overrides = (f"train.optim.fused={value}",)
    if isinstance(expected, bool):
        assert load_config(_Top, None, overrides).train.optim.fused is expected
    else:
        assert _error(_Top, overrides=overrides) == f"train.optim.fused: {expected}"


@pytest.mark.parametrize("value, expected", [
    ("7", 7), ("-3", -3), ("0x10", 16),
    ("true", "got True"), ("7.0", "got 7.0"), ("'7'", "got '7'"), ("null", "got None"),
])
def test_int_fields_take_only_integers(value, expected):
    overrides = (f"train.steps={value}",)
    if isinstance(expected, int):
        steps = load_config(_Top, None, overrides).train.steps
        assert steps == expected and type(steps) is int
    else:
        assert _error(_Top, overrides=overrides) == f"train.steps: expected an integer, {expected}"


@pytest.mark.parametrize("value, expected", [
    ("0.5", 0.5), ("2", 2.0), ("1e-3", 0.001), ("1.0e-3", 0.001), ("'0.25'", 0.25), (".inf", float("inf")),
    ("true", "got True"), ("abc", "got 'abc'"), ("[1]", "got [1]"),
])
def test_float_fields_take_numbers_and_numeric_strings(value, expected):
    overrides = (f"train.optim.lr={value}",)
    if isinstance(expected, float):
        lr = load_config(_Top, None, overrides).train.optim.lr
        assert lr == expected and type(lr) is float
    else:
        assert _error(_Top, overrides=overrides) == f"train.optim.lr: expected a number, {expected}"


def test_overrides_win_over_the_file_and_parse_args(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 3, optim: {lr: 0.1}}\n")
    cfg = parse_args(_Top, ["--config", str(path), "--set", "train.steps=9", "-s", "train.optim.betas=[0.5, 0.6]",
                            "--set", "name=", "--set", "stages=[a, b c]"])
    assert (cfg.train.steps, cfg.train.optim.lr, cfg.train.optim.betas, cfg.name, cfg.stages) == \
        (9, 0.1, (0.5, 0.6), "", ["a", "b c"])
    with pytest.raises(ConfigError, match=re.escape("override 'train.steps' must look like key.path=value")):
        load_config(_Top, None, ["train.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(_Top, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="train.steps: expected an integer, got 'x'"):
        parse_args(_Top, ["--set", "train.steps=x"])


def test_the_shipped_configs_load():
    """Every config the platform ships still loads through the pydantic-backed coercion."""
    from pathlib import Path

    from lmlm.pipeline.config import PipelineConfig
    from lmlm.serve.config import ServeConfig
    from lmlm.train.config import PretrainConfig

    files = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.y*ml"))
    assert files
    for path in files:
        cfg = load_config(PipelineConfig, path)
        assert from_dict(PipelineConfig, to_dict(cfg)) == cfg, path
    assert load_config(PipelineConfig) == PipelineConfig() and load_config(ServeConfig) == ServeConfig()
    assert "zero_stage: 4 is not 0, 1, 2 or 3" in _error(PretrainConfig, overrides=("zero_stage=4",))
