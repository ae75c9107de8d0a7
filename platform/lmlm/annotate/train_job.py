"""`train_annotator(cfg)`, the entrypoint of `lmlm train-annotator`: seeds from a corpus file or from
a synthetic world's gold documents, the annotator of `cfg.kind` trained (registry.KINDS[kind].train),
a held-out split scored with triple P/R/F1 (evaluation.py), the model saved.

With `cfg.ray_train` it runs as a Ray Train job: one TorchTrainer worker trains and saves the
annotator into a temporary directory and reports it as the run's checkpoint; the driver copies that
checkpoint to `out_dir`. On a cluster the checkpoint travels through the run's storage path
(`<out_dir>.ray-train/`, which must be shared storage there), not through the worker's disk.
"""
from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
from pathlib import Path

from lmlm.annotate.config import TrainAnnotatorConfig
from lmlm.annotate.evaluation import evaluate_annotator
from lmlm.annotate.registry import trainable_kind
from lmlm.annotate.saved import META
from lmlm.config import from_dict, to_dict
from lmlm.rayinit import init_ray


def _train_loop(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    cfg = from_dict(TrainAnnotatorConfig, config["cfg"])
    with tempfile.TemporaryDirectory(prefix="annotator-") as tmp:
        out = _train_locally(dataclasses.replace(cfg, ray_train=False, out_dir=tmp))
        ray.train.report({"kind": cfg.kind}, checkpoint=Checkpoint.from_directory(str(out)))


def train_with_ray(cfg: TrainAnnotatorConfig, log=print) -> Path:
    """Train in a one-worker Ray Train job; returns cfg.out_dir."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg.ray_address)
    out = Path(cfg.out_dir).resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise ValueError(f"train-annotator: out_dir {out} is a non-empty directory that holds no annotator")
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"cfg": to_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=cfg.ray_gpus > 0,
                                     resources_per_worker={"CPU": cfg.ray_cpus, "GPU": cfg.ray_gpus}),
        run_config=RunConfig(name="train", storage_path=str(out.parent / f"{out.name}.ray-train")))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"train-annotator: the Ray Train job failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("train-annotator: the Ray Train job reported no checkpoint")
    if out.exists():
        shutil.rmtree(out)
    result.checkpoint.to_directory(str(out))
    log(f"train-annotator: Ray Train checkpoint {result.checkpoint.path} -> {out}")
    return out


def load_seeds(cfg: TrainAnnotatorConfig) -> list[str]:
    """Annotated seed documents: from cfg.seeds, else the gold documents of a synthetic world."""
    if cfg.seeds:
        from lmlm.corpus import read_corpus

        docs = [r.annotated_text for r in read_corpus(cfg.seeds) if r.annotated_text.strip()]
        if not docs:
            raise ValueError(f"train-annotator: {cfg.seeds} holds no annotated documents")
    else:
        from lmlm.world import WorldConfig, generate_world

        world = generate_world(WorldConfig(people=cfg.world_people, seed=cfg.world_seed))
        docs = [d.annotated_text for d in world.documents]
    return docs[:cfg.seed_docs] if cfg.seed_docs else docs


def train_annotator(cfg: TrainAnnotatorConfig, log=print) -> Path:
    """Train the annotator of `cfg.kind` from seed annotations, score it on a held-out split, save it
    (in a Ray Train job when cfg.ray_train); returns its dir."""
    if cfg.ray_train:
        return train_with_ray(cfg, log=log)
    return _train_locally(cfg, log)


def _train_locally(cfg: TrainAnnotatorConfig, log=print) -> Path:
    kind = trainable_kind(cfg.kind)
    docs = load_seeds(cfg)
    order = list(range(len(docs)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = int(len(docs) * cfg.eval_fraction) if len(docs) > 1 else 0
    held, train = [docs[i] for i in order[:n_eval]], [docs[i] for i in order[n_eval:]]
    model = kind.train(train, cfg, log)
    model.meta["train_config"] = to_dict(cfg)
    if held:
        model.meta["heldout"] = evaluate_annotator(model, held)
        ex = model.meta["heldout"]["exact"]
        log(f"train-annotator: held-out {len(held)} docs: precision {ex['precision']:.3f} "
            f"recall {ex['recall']:.3f} F1 {ex['f1']:.3f} (exact normalised triples)")
    out = model.save(cfg.out_dir)
    log(f"train-annotator: saved {cfg.kind} annotator in {out} ({_summary(model.meta)})")
    return out


def _summary(meta: dict) -> str:
    """What training made, from the counts annotator.json holds (each kind has some of them)."""
    parts = [f"{len(meta['tags'])} tags"] if "tags" in meta else []
    for key, fmt in (("seed_calls_aligned", "{} aligned seed calls"), ("seed_calls_unaligned", "{} unaligned"),
                     ("train_steps", "{} steps"), ("final_loss", "final loss {}")):
        if key in meta:
            parts.append(fmt.format(meta[key]))
    return ", ".join(parts)
