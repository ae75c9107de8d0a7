"""What each replica loads: the model, the tokenizer and the fact store.

Loaders are module-level functions, so that `functools.partial(fn, ...)` pickles by reference into
the replicas; `build_app` defaults to the `default_*_loader`s of its `ServeConfig`.
"""
from __future__ import annotations


from lmlm.factstore.config import FactStoreConfig

from .config import ServeConfig


def model_from_dir(path: str, dtype: str = "auto", device: str = "auto"):
    """The model of `path` on `device` (auto: CUDA when the replica has a GPU) in `dtype` (auto: the
    inference rule of lmlm.precision); the engine decodes wherever the model is."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmlm.precision import device_of, inference_dtype

    from lmlm.train.runstore import model_dir

    try:
        path = str(model_dir(path))  # a URI: this node's copy
    except FileNotFoundError:
        raise FileNotFoundError(f"model_path: {path} is not a checkpoint directory; train a model or set model_path") from None
    where = device_of(device)
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but this replica sees no CUDA GPU "
                         "(give the deployment num_gpus, or set device: cpu)")
    dt = inference_dtype("auto", where) if dtype == "auto" else getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(where)


def tokenizer_from_dir(path: str):
    from transformers import AutoTokenizer

    from lmlm.storage import local_dir
    from lmlm.train.runstore import model_dir

    try:
        path = str(model_dir(path))  # a model or run directory, by path or URI
    except FileNotFoundError:
        path = local_dir(path)  # a tokenizer directory alone
    return AutoTokenizer.from_pretrained(path)


def store_at(url: str, timeout_s: float = 2.0):
    from lmlm.factstore import FactStore

    return FactStore.open(FactStoreConfig(url=url, timeout_s=timeout_s))


def default_model_loader(cfg: ServeConfig):
    return model_from_dir(cfg.model_path, cfg.dtype, cfg.device)


def default_tokenizer_loader(cfg: ServeConfig):
    return tokenizer_from_dir(cfg.tokenizer_path or cfg.model_path)


def default_store_loader(cfg: ServeConfig):
    """The configured store; without a URL, one private Redis shared by all replicas (a named actor)."""
    import dataclasses

    import ray

    from lmlm.factstore import FactStore

    if cfg.store.resolved_url():
        return FactStore.open(cfg.store)
    host = ray.remote(num_cpus=0)(_StoreHost).options(
        name=f"lmlm-store-{cfg.store.namespace}", get_if_exists=True, lifetime="detached").remote(cfg.store)
    url = ray.get(host.url.remote(), timeout=120)
    return FactStore.open(dataclasses.replace(cfg.store, url=url))


class _StoreHost:
    """Owns the private Redis of an app started without a store URL (stopped by its PID on exit)."""

    def __init__(self, store_cfg: FactStoreConfig):
        import atexit

        from lmlm.factstore import FactStore

        self.store = FactStore.open(store_cfg)
        atexit.register(self.store.close)

    def url(self) -> str:
        return self.store.connection_url

    def __ray_shutdown__(self) -> None:  # graceful actor exit (ray.kill with no_restart, cluster shutdown)
        self.store.close()
