"""`train_annotator` as a Ray Train job: one TorchTrainer worker trains and saves the annotator (any
kind) into a temporary directory and reports it as the run's checkpoint; the driver copies that
checkpoint to `out_dir`. On a cluster the checkpoint travels through the run's storage path
(`<out_dir>.ray-train/`, which must be shared storage there), not through the worker's disk.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from lmlm.annotate.config import TrainAnnotatorConfig
from lmlm.config import from_dict, to_dict


def _train_loop(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from lmlm.annotate.seeds import train_annotator

    cfg = from_dict(TrainAnnotatorConfig, config["cfg"])
    with tempfile.TemporaryDirectory(prefix="annotator-") as tmp:
        out = train_annotator(dataclasses.replace(cfg, ray_train=False, out_dir=tmp))
        ray.train.report({"kind": cfg.kind}, checkpoint=Checkpoint.from_directory(str(out)))


def train_with_ray(cfg: TrainAnnotatorConfig, log=print) -> Path:
    """Run `train_annotator(cfg)` in a one-worker Ray Train job; returns cfg.out_dir."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False)
    out = Path(cfg.out_dir).resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / "annotator.json").is_file():
        raise ValueError(f"train-annotator: out_dir {out} is a non-empty directory that holds no annotator")
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"cfg": to_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": cfg.ray_cpus}),
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
