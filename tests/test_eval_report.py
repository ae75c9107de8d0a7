"""Report writing: results.json round trip, report.md tables, plots from pretraining metric logs."""
from __future__ import annotations

import json
import math

import pytest

from lmlm.eval.report import read_curves, write_report
from lmlm.eval.results import EvalResults, read_results, write_results
from lmlm.eval.suite import REQUIRED_KEYS


def _results() -> EvalResults:
    r = EvalResults(config={"seed": 0}, forget_quality_reference="same_weights")
    r.update({k: 0.1 * (i + 1) for i, k in enumerate(REQUIRED_KEYS)})
    r.update({"weird": float("nan")})  # not a field: kept in details
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
    assert all(saved[k] == pytest.approx(getattr(_results(), k)) for k in REQUIRED_KEYS)
    assert saved["details"]["weird"] is None  # NaN is written as null, never as invalid JSON
    back = read_results(tmp_path / "out")
    assert all(getattr(back, k) == pytest.approx(getattr(_results(), k)) for k in REQUIRED_KEYS)
    assert back.forget_quality_reference == "same_weights" and back.files["report"].endswith("report.md")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| factual precision, trained people | 0.5 | 0.7 | 0.6 |" in md
    assert "factual precision, inserted people" not in md  # rows of what this run did not measure are left out
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


def test_results_round_trip_is_atomic_and_rejects_bad_files(tmp_path):
    r = EvalResults(precision_lmlm=0.5, complete=True, details={"x": [1, 2]})
    write_results(r, tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))  # written to a temporary file, renamed into place
    back = read_results(tmp_path / "results.json")
    assert back.precision_lmlm == 0.5 and back.complete and back.details == {"x": [1, 2]}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "torn.json").write_text('{"precision_lmlm": 0.')
    with pytest.raises(ValueError, match="torn.json"):
        read_results(tmp_path / "torn.json")


def test_read_curves_ignores_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_curves(tmp_path)["total"] == [(1.0, 2.0)]
