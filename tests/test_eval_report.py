"""Report writing: results.json round trip, report.md tables, plots from pretraining metric logs."""
from __future__ import annotations

import json
import math

import pytest

from lmlm.eval.report import read_curves, write_report
from lmlm.eval.suite import REQUIRED_KEYS


def _results() -> dict:
    r = {k: 0.1 * (i + 1) for i, k in enumerate(REQUIRED_KEYS)}
    r["config"] = {"seed": 0}
    r["forget_quality_reference"] = "same_weights"
    r["weird"] = float("nan")
    return r


def test_report_files(tmp_path):
    runs = {}
    for name, offset in (("LMLM", 0.0), ("standard", 0.5)):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"step": s, "loss": 3.0 - 0.1 * s + offset, "value_loss": 4.0 + offset}) for s in range(5)]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        runs[name] = d
    files = write_report(_results(), tmp_path / "out", runs)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(saved[k] == pytest.approx(_results()[k]) for k in REQUIRED_KEYS)
    assert saved["weird"] is None  # NaN is written as null, never as invalid JSON
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Factual precision | 0.5 | 0.7 | 0.6 |" in md
    for p in ("training_curves.png", "precision.png", "unlearning.png"):
        assert (tmp_path / "out" / p).stat().st_size > 1000
        assert (tmp_path / "out" / p).read_bytes()[:4] == b"\x89PNG"
    assert len(files["plots"]) == 3


def test_read_curves_csv_and_errors(tmp_path):
    (tmp_path / "m.csv").write_text("step,train_loss,val_value_loss\n1,2.5,\n2,2.0,5.5\n")
    c = read_curves(tmp_path)
    assert c["total"] == [(1.0, 2.5), (2.0, 2.0)] and c["value"] == [(2.0, 5.5)]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl"):
        read_curves(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_curves(tmp_path / "absent")
    assert math.isfinite(c["total"][0][1])
