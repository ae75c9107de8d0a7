"""Evaluation as Ray work: generation and perplexity run in Ray actors that hold the models (each on
a GPU of its own when the cluster has them, in lmlm.precision's inference dtype), the driver sends
prompts and documents in batches and merges what comes back in order.

    with EvalWorkers({"lmlm": lmlm_dir, "standard": standard_dir}, workers=4) as pool:
        results = pool.generate("lmlm", prompts, params, store, batch_size=16)

Each actor loads the model directories itself (a path every node can read: the run's storage) and
opens the fact store from its config (`url` + namespace), so the store the driver evaluates on, a
private namespace copy included, is the one the actors query. Generation batches go round-robin
over the actors; perplexity runs one model per actor (both models at once with two or more).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional, Sequence


class EvalWorker:
    """One actor: the models of an evaluation, and a store connection per namespace it is sent."""

    def __init__(self, model_dirs: dict[str, str], threads: int = 1):
        import torch

        from lmlm.eval.scoring import load_model

        torch.set_num_threads(max(1, threads))  # its CPU share, not every core of the node
        self.models = {kind: load_model(path, kind) for kind, path in model_dirs.items()}
        self.stores: dict[tuple, Any] = {}

    def device(self) -> str:
        return str(next(next(iter(self.models.values())).model.parameters()).device)

    def _store(self, store_cfg):
        from lmlm.factstore import FactStore

        if store_cfg is None:
            return None
        key = (store_cfg.url, store_cfg.namespace)
        if key not in self.stores:
            self.stores[key] = FactStore.open(store_cfg)
        return self.stores[key]

    def generate(self, kind: str, prompts: list[str], params, store_cfg) -> list:
        from lmlm.generate import Engine

        em = self.models[kind]
        return Engine(em.model, em.tokenizer, self._store(store_cfg)).generate(prompts, params)

    def perplexity(self, kind: str, documents: list[str], max_len: Optional[int], batch_size: int):
        from lmlm.eval.perplexity import evaluate_perplexity

        em = self.models[kind]
        return evaluate_perplexity(em.model, em.tokenizer, documents, kind, max_len, batch_size)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        self.stores.clear()


def store_config_of(store) -> Any:
    """The config an actor opens `store` with: its server's URL and its namespace, no local server."""
    if store is None:
        return None
    return dataclasses.replace(store.cfg, url=store.connection_url, data_dir=None)


class EvalWorkers:
    """`workers` EvalWorker actors over `model_dirs` ({kind: directory}); a context manager that
    kills them at exit. `gpus`: per actor (None: 1 when the cluster has GPUs, else 0)."""

    def __init__(self, model_dirs: dict[str, str], workers: int, cpus: float = 1.0, gpus: Optional[float] = None):
        import ray

        if workers < 1:
            raise ValueError(f"workers: must be >= 1 (got {workers})")
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        actor = ray.remote(EvalWorker).options(num_cpus=cpus, num_gpus=gpus)
        self.actors = [actor.remote(dict(model_dirs), max(1, int(cpus))) for _ in range(workers)]
        self.devices = ray.get([a.device.remote() for a in self.actors])  # models loaded, or the error now

    def __enter__(self) -> "EvalWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 — a dead actor has nothing to close
                pass
            ray.kill(a)
        self.actors = []

    def generate(self, kind: str, prompts: Sequence[str], params, store, batch_size: int) -> list:
        """The GenerationResults of `prompts`, in order: batches of `batch_size` round-robin over the actors."""
        import ray

        cfg = store_config_of(store)
        batches = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        futures = [self.actors[i % len(self.actors)].generate.remote(kind, b, params, cfg) for i, b in enumerate(batches)]
        return [r for rs in ray.get(futures) for r in rs]

    def perplexity(self, kinds: Sequence[str], documents: Sequence[str], max_len: Optional[int], batch_size: int) -> dict:
        """{kind: PerplexityReport} of each model on the same documents, one model per actor."""
        import ray

        docs = list(documents)
        futures = [self.actors[i % len(self.actors)].perplexity.remote(k, docs, max_len, batch_size)
                   for i, k in enumerate(kinds)]
        return dict(zip(kinds, ray.get(futures)))


@contextlib.contextmanager
def attach_workers(cfg, *models) -> Iterator[Optional[EvalWorkers]]:
    """With `cfg.workers` > 0 (an EvalConfig), start EvalWorkers over the EvalModels' directories and
    attach them to the models (their generation and perplexity then run there) for a `with` block."""
    if cfg.workers <= 0:
        yield None
        return
    from lmlm.rayinit import init_ray

    missing = [m.kind for m in models if not m.path]
    if missing:
        raise ValueError(f"eval.workers: {cfg.workers} Ray workers load models from directories; "
                         f"the {', '.join(missing)} model was given in memory")
    init_ray()
    pool = EvalWorkers({m.kind: m.path for m in models}, cfg.workers, cfg.worker_cpus, cfg.worker_gpus)
    for m in models:
        m.workers = pool
    try:
        yield pool
    finally:
        for m in models:
            m.workers = None
        pool.shutdown()
