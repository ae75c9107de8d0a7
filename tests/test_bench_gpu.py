"""bench/gpu.py: it refuses to run without CUDA, and its code paths (the one-device training loop,
the engine against `generate` with a real Redis, the wiki recipe and its evaluation) run at toy
sizes on a CPU, down to the JSON line the GPU run records."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "gpu.py"


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal cannot show")
def test_refuses_without_a_gpu():
    p = _run()
    assert p.returncode == 2 and "needs a CUDA GPU" in p.stderr
    assert _run("--device", "cpu").returncode == 2  # a CPU run without --tiny would record nothing real
    assert _run("--quick").returncode == 2 and _run("--parts", "train,nope", "--device", "cpu", "--tiny").returncode == 2


@pytest.mark.slow
def test_every_part_runs_at_toy_sizes_on_cpu(lmlm_wiki, tmp_path):
    p = _run("--device", "cpu", "--tiny", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("train_tokens_per_s_176m", "train_bf16_vs_fp32", "engine_vs_hf_generate_batch1", "speedup_concurrent16",
                "wiki_ppl_normalized_lmlm", "wiki_ppl_normalized_standard", "wiki_entity_loss_lmlm",
                "wiki_completion_em_lmlm", "wiki_completion_em_standard"):
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
    assert result["train_mfu_176m_bf16"] is None  # no peak for a CPU: no MFU
    assert result["engine_lookups_batch1"] > 0  # the engine did look facts up in the store
    assert result["wiki_train_steps_lmlm"] > 0 and (tmp_path / "wiki" / "lmlm" / "config.json").is_file()
