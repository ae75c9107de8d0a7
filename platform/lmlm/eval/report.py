"""The evaluation report: results.json (every number plus the config behind it), report.md (tables)
and PNG plots, all in one run directory. Plotting uses matplotlib's Agg backend (no display).

Training curves are read from pretraining run directories: any `*.jsonl` / `*.csv` metric log
with a step column (`step`/`global_step`/`iteration`) and loss columns; the total loss is the first of
`loss`, `train_loss`, `total_loss` found and the value-token loss the first of `value_loss`,
`loss_value`, `train_value_loss`, `val_value_loss`.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from lmlm.eval.results import EvalResults, fmt, table_rows, write_results
from lmlm.train.rundir import ATTEMPTS_JSONL, read_jsonl, read_metrics

STEP_KEYS = ("step", "global_step", "iteration")
TOTAL_KEYS = ("loss", "train_loss", "total_loss")
VALUE_KEYS = ("value_loss", "loss_value", "train_value_loss", "val_value_loss")

def read_curves(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """`{"total": [(step, loss)], "value": [(step, loss)]}` from a run directory's metric logs."""
    rows: list[dict] = []
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"training run directory {root} does not exist")
    for path in sorted(root.rglob("*.jsonl")):
        if path.name.startswith(".") or path.name == ATTEMPTS_JSONL:
            continue  # a metrics file being replaced, or the log of (re)starts
        rows.extend(read_jsonl(path))  # a torn last line (a crash mid-write) is ignored
    for path in sorted(root.rglob("*.csv")):
        with path.open() as f:
            rows.extend(csv.DictReader(f))
    curves: dict[str, list[tuple[float, float]]] = {"total": [], "value": []}
    for row in rows:
        step = next((row[k] for k in STEP_KEYS if row.get(k) not in (None, "")), None)
        if step is None:
            continue
        for name, keys in (("total", TOTAL_KEYS), ("value", VALUE_KEYS)):
            v = next((row[k] for k in keys if row.get(k) not in (None, "")), None)
            if v is not None and math.isfinite(float(v)):
                curves[name].append((float(step), float(v)))
    for name in curves:
        curves[name] = sorted(set(curves[name]))
    return curves


def pretrain_tokens_per_s(run_dir: str | Path | None) -> int | None:
    """Median `tokens_per_s` over the windows a pretraining run logged (`metrics.jsonl`, one row per
    `log_every` steps, checkpoint saves excluded); None without a run directory or a logged row."""
    if not run_dir:
        return None
    rates = sorted(float(r["tokens_per_s"]) for r in read_metrics(run_dir) if r.get("tokens_per_s"))
    if not rates:
        return None
    mid = len(rates) // 2
    return round(rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(runs: dict[str, str | Path], path: Path) -> bool:
    """Total and value-token loss per run; False (no file) when no run has a curve."""
    curves = {label: read_curves(d) for label, d in runs.items() if d}
    if not any(c["total"] or c["value"] for c in curves.values()):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, title in ((axes[0], "total", "Total loss"), (axes[1], "value", "Value-token loss")):
        for label, c in curves.items():
            if c[kind]:
                xs, ys = zip(*c[kind])
                ax.plot(xs, ys, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_bars(groups: dict[str, dict[str, float]], title: str, path: Path, ylabel: str = "") -> None:
    """Grouped bar chart: `groups[group][series] = value`."""
    plt = _plt()
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(groups)), 4))
    values = []
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(groups))]
        ys = [float(groups[g].get(s) or 0.0) for g in groups]
        values += ys
        ax.bar_label(ax.bar(xs, ys, width, label=s), fmt="%.3g", fontsize=8)
    top = max(values, default=0.0)
    ax.set_ylim(0, 1.1 if 0 <= top <= 1 else top * 1.15)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(r: EvalResults, out_dir: str | Path, plots: list[str]) -> Path:
    lines = ["# LMLM evaluation", "", "| metric | LMLM (or first) | standard (or second) | LMLM, lookups off |",
             "|---|---|---|---|"]
    lines += [f"| {title} | {a} | {b} | {c} |" for title, a, b, c in table_rows(r)]
    before = r.details.get("before") or {}
    if before:
        lines += ["", "## Factual precision in detail (trained people)", "",
                  "| setting | precision | micro | length-penalized | facts/answer | answers with a fact | "
                  "completion EM (with lookup value) |", "|---|---|---|---|---|---|---|"]
        for setting, d in before.items():
            p, c = d["precision"]["all"], d["completion"]["all"]
            lines.append(f"| {setting} | {fmt(p['precision'])} | {fmt(p['precision_micro'])} | "
                         f"{fmt(p['precision_length_penalized'])} | {fmt(p['facts_per_answer'])} | "
                         f"{fmt(p['answered_share'])} | {fmt(c['em'])} ({fmt(c['em_with_lookup'])}) |")
    lines += ["", "## Unlearning (LMLM, forget split deleted from the store)", "",
              "| set | precision before | precision after | completion EM before | completion EM after |",
              "|---|---|---|---|---|"]
    for split in ("forget", "retain"):
        lines.append(f"| {split} | {fmt(getattr(r, f'{split}_precision_before'))} | "
                     f"{fmt(getattr(r, f'{split}_precision_after'))} | "
                     f"{fmt(getattr(r, f'{split}_completion_em_before'))} | "
                     f"{fmt(getattr(r, f'{split}_completion_em_after'))} |")
    lines += ["", f"Forget quality (KS p-value, reference: {r.forget_quality_reference}): "
              f"{fmt(r.forget_quality_p)}; before deletion: {fmt(r.forget_quality_p_before)}.",
              f"Model utility on the retain set: before {fmt(r.model_utility_before)}, "
              f"after {fmt(r.model_utility_after)}.", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "All numbers and the configuration that produced them: `results.json`.", ""]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_report(r: EvalResults, out_dir: str | Path, training_runs: dict[str, str | Path] | None = None) -> dict:
    """results.json, report.md and the plots; returns {"results", "report", "plots"} paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    if training_runs and plot_training_curves(training_runs, out / "training_curves.png"):
        plots.append("training_curves.png")
    groups = {"precision, trained": ("precision_lmlm", "precision_lmlm_db_off", "precision_standard"),
              "precision, inserted": ("precision_inserted_lmlm", "precision_inserted_lmlm_db_off",
                                      "precision_inserted_standard"),
              "completion EM": ("completion_em_lmlm", "completion_em_lmlm_db_off", "completion_em_standard")}
    plot_bars({g: dict(zip(("LMLM", "LMLM lookups off", "standard"), (getattr(r, k) or 0.0 for k in keys)))
               for g, keys in groups.items()}, "Precision and completion EM per setting", out / "precision.png")
    plots.append("precision.png")
    plot_bars({split: {"before": getattr(r, f"{split}_precision_before") or 0.0,
                       "after": getattr(r, f"{split}_precision_after") or 0.0} for split in ("forget", "retain")},
              "LMLM precision, forget split deleted", out / "unlearning.png", "precision")
    plots.append("unlearning.png")
    r.files = {"results": str(out / "results.json"), "report": str(write_markdown(r, out, plots)),
               "plots": [str(out / p) for p in plots]}
    write_results(r, out)
    return r.files
