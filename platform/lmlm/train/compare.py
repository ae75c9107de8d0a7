"""Train the LMLM and the standard baseline on the same documents, and plot their loss curves.

Both runs share the tokenizer, the model preset, the seed and the number of steps; only the
variant differs (LMLM.md §2: the baseline sees the same prose with the lookups removed).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from lmlm.train.config import PretrainConfig
from lmlm.train.loop import PretrainResult, run_pretraining


def train_both(base: PretrainConfig, documents, out_dir, tokenizer=None) -> dict[str, PretrainResult]:
    """{"lmlm": result, "standard": result}: runs in out_dir/lmlm and out_dir/standard, the shared
    tokenizer in out_dir/tokenizer, the value-loss plot in out_dir/value_loss.png."""
    from lmlm.train.data import load_documents, prepare_tokenizer

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if documents is None:
        documents = load_documents(base.data_path, base.world_people, base.world_seed)
    tok, tok_dir = prepare_tokenizer(documents, out / "tokenizer", base.vocab_size, base.tokenizer_path, tokenizer)
    results = {}
    for variant in ("lmlm", "standard"):
        cfg = dataclasses.replace(base, variant=variant, run_dir=str(out / variant), tokenizer_path=tok_dir)
        results[variant] = run_pretraining(cfg, documents=documents, tokenizer=tok)
    plot_value_loss({v: r.metrics for v, r in results.items()}, out / "value_loss.png")
    return results


def plot_value_loss(metrics: dict[str, list[dict]], png) -> Path:
    """Value-token loss (solid) and text-token loss (dashed) per step for each run, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics or not all(metrics.values()):
        raise ValueError("metrics: every run needs at least one logged step to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, rows), color in zip(metrics.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["value_loss"] for r in rows], color=color, label=f"{name}: value tokens")
        ax.plot(steps, [r["text_loss"] for r in rows], color=color, ls="--", alpha=0.6, label=f"{name}: text tokens")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss on value tokens: LMLM (looked up, not trained) vs standard (memorised)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
