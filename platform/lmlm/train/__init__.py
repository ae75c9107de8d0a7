"""Pretraining of LMLMs and their standard baselines (docs/method.md §4, §5).

- `masks`: per-token kinds and the loss mask of §4 (`token_kinds`, `lookup_labels`, `labels_from_kinds`).
- `data`: tokenize annotated documents and pack them with EOS separators (`encode_and_pack` on a
  list, `pack_dataset` on a Ray Dataset: the same packing code), `load_documents`, `prepare_tokenizer`.
- `models`: presets tiny / llama2-176m / llama2-382m / gpt2-124m or a local dir (`build_model`).
- `config`: `PretrainConfig` (loaded with `lmlm.config.load_config`).
- `loop`: the Ray Train + DeepSpeed loop. Entry point for jobs and the CLI:

      from lmlm.config import load_config
      from lmlm.train.config import PretrainConfig
      from lmlm.train.loop import run_pretraining

      cfg = load_config(PretrainConfig, "pretrain.yaml", ["variant=standard"])
      result = run_pretraining(cfg)            # documents / tokenizer may be passed in too
      result.hf_dir                            # AutoModelForCausalLM.from_pretrained(result.hf_dir)
      result.metrics                           # rows of run_dir/metrics.jsonl

  Rerunning with the same `run_dir` resumes from its latest complete checkpoint; a worker that dies
  is restarted by Ray Train from there (up to `max_failures` times). The driver prints a progress
  line per logged step; TensorBoard events go to `run_dir/tensorboard/`.
- `rundir`: what a run directory holds (complete checkpoints, metrics.jsonl, TensorBoard events,
  attempts) and the driver's progress printer.
- `compare`: `train_both` (the one trainer of the compared models: LMLM, standard, optionally the
  retain-only LMLM; finished runs are skipped) and `plot_value_loss` (PNG).
- `cli`: `lmlm pretrain` and `lmlm pretrain-both`.
"""
from lmlm.train.config import PretrainConfig

__all__ = ["PretrainConfig"]
