"""Train the LMLM and the standard baseline on the same documents, and plot their loss curves.

Both runs share the tokenizer, the model preset, the seed and the number of steps; only the
variant differs (docs/method.md §2: the baseline sees the same prose with the lookups removed).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmlm.train.config import PretrainConfig
from lmlm.train.loop import PretrainResult, read_result, run_pretraining
from lmlm.train.rundir import STATE_FILE

RETAIN = "lmlm-retain"  # the LMLM trained without the forget split's documents (TOFU's reference)


def run_config(base: PretrainConfig, name: str, out_dir, **changes) -> PretrainConfig:
    """The config of run `name` ("lmlm", "standard" or RETAIN) of a comparison in `out_dir`: its own
    run directory, and its own folder of `base.storage` when the runs keep their files there."""
    return dataclasses.replace(base, variant="standard" if name == "standard" else "lmlm",
                               run_dir=str(Path(out_dir) / name),
                               storage=f"{base.storage.rstrip('/')}/{name}" if base.storage else "", **changes)


def finished_run(cfg: PretrainConfig) -> PretrainResult | None:
    """The result of a run in `cfg.run_dir` that reached its last step (None: not finished): `max_steps`,
    or with `max_steps: 0` the steps of `epochs` passes, as the run resolved them from its data (its
    metrics say so), when it ran with the same `epochs`."""
    result = read_result(cfg.run_dir, cfg.variant, cfg.tokenizer_path, cfg.storage)
    if result.checkpoint_dir is None:
        return None
    target = cfg.max_steps
    if not target:
        saved = json.loads((Path(result.checkpoint_dir) / STATE_FILE).read_text()).get("config", {})
        if saved.get("max_steps") or saved.get("epochs") != cfg.epochs:
            return None
        target = next((r["max_steps"] for r in reversed(result.metrics) if r.get("max_steps")), 0)
    return result if target and result.final_step >= target else None


def train_both(base: PretrainConfig, documents, out_dir, tokenizer=None,
               retain_documents: list[str] | None = None) -> dict[str, PretrainResult]:
    """{"lmlm": result, "standard": result[, "lmlm-retain": result]}: the one place that trains the
    models of a comparison. `documents` (and `retain_documents`): a list of annotated texts or a Ray
    Dataset with an `annotated_text` column (streamed to the trainers). Runs live in out_dir/<name> with the shared tokenizer in out_dir/tokenizer
    (trained on `documents` once); a run that already reached max_steps is not started again.
    `retain_documents`: also train an LMLM on these (the documents without the forget split).
    Writes the value-loss plot out_dir/value_loss.png."""
    from lmlm.train.data import load_documents, prepare_tokenizer, tokenizer_sample
    from lmlm.train.pretrained import resolve_start

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_start(base, out / "init")  # a pretrained start: both models continue from it
    if documents is None:
        documents = load_documents(base.data_path, base.world_people, base.world_seed)
    sample = documents if isinstance(documents, (list, tuple)) else tokenizer_sample(documents)
    tok, tok_dir = prepare_tokenizer(sample, out / "tokenizer", base.vocab_size, base.tokenizer_path, tokenizer)
    runs = {"lmlm": ("lmlm", documents), "standard": ("standard", documents)}
    if retain_documents is not None:
        runs[RETAIN] = ("lmlm", retain_documents)
    results = {}
    for name, (variant, docs) in runs.items():
        cfg = run_config(base, name, out, tokenizer_path=tok_dir)
        done = finished_run(cfg)
        if done is not None:
            print(f"pretrain[{name}]: finished run in {cfg.run_dir}", flush=True)
            results[name] = done
            continue
        what = f"{len(docs)} documents" if isinstance(docs, (list, tuple)) else "documents streamed by Ray Data"
        print(f"pretrain[{name}]: {what}, model {cfg.model}, {cfg.max_steps} steps, "
              f"{cfg.num_workers} worker(s), ZeRO-{cfg.zero_stage}", flush=True)
        results[name] = run_pretraining(cfg, documents=docs, tokenizer=tok)
    plot_value_loss({v: r.metrics for v, r in results.items() if v != RETAIN}, out / "value_loss.png")
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
