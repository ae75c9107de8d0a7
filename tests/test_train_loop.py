"""The run directory's crash safety without Ray: torn metrics lines, incomplete checkpoints, the
progress lines the driver prints, and the learning-rate schedule."""
from __future__ import annotations

import io
import json

import pytest
import torch

from lmlm.train.config import PretrainConfig
from lmlm.train.steps import lr_scheduler
from lmlm.train.rundir import (ATTEMPTS_JSONL, COMPLETE_FILE, METRICS_JSONL, STATE_FILE, TENSORBOARD_DIR, MetricsLog,
                               ProgressPrinter, complete_checkpoints, latest_checkpoint, progress_line, prune_checkpoints,
                               read_jsonl, read_metrics)


def _row(step, **kw):
    return {"step": step, "max_steps": 10, "loss": 5.0 - step / 10, "value_loss": 6.0, "query_loss": float("nan"),
            "tokens_per_s": 1234.5, "lr": 1e-3, "variant": "lmlm", "elapsed_s": 6.0 * step,
            "eta_s": 6.0 * (10 - step), **kw}


def _checkpoint(run_dir, step, complete=True, name=None):
    d = run_dir / (name or f"checkpoint_{step:07d}")
    d.mkdir(parents=True)
    (d / STATE_FILE).write_text(json.dumps({"step": step}))
    if complete:
        (d / COMPLETE_FILE).write_text(json.dumps({"step": step, "world_size": 2}))
    return d


def test_torn_last_metrics_line_is_ignored(tmp_path):
    lines = [json.dumps(_row(s)) for s in (1, 2, 3)]
    (tmp_path / METRICS_JSONL).write_text("\n".join(lines) + "\n" + '{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    # A complete last line without its newline may be torn too (it was written in one call with it).
    (tmp_path / METRICS_JSONL).write_text("\n".join(lines))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    # Damage before the last line is not a crash artefact: it is reported.
    (tmp_path / METRICS_JSONL).write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_resumed_metrics_log_drops_torn_and_later_rows(tmp_path):
    lines = [json.dumps(_row(s)) for s in (1, 2, 3, 4)]
    (tmp_path / METRICS_JSONL).write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')
    log = MetricsLog(tmp_path, start_step=3)  # resumed from the step-3 checkpoint
    log.log(_row(4, loss=0.5))
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.5
    assert (tmp_path / METRICS_JSONL).read_text().endswith("\n")
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    assert any((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def test_resume_skips_incomplete_and_temporary_checkpoints(tmp_path):
    _checkpoint(tmp_path, 3)
    _checkpoint(tmp_path, 6)
    _checkpoint(tmp_path, 9, complete=False)  # a rank's files never arrived: no complete.json
    _checkpoint(tmp_path, 12, name=".tmp-checkpoint_0000012")  # being written when the run died
    (tmp_path / "checkpoint_0000015").mkdir()  # empty
    bad = _checkpoint(tmp_path, 18)
    (bad / STATE_FILE).write_text('{"step": 1')  # torn state file
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_0000006"
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [3, 6]
    assert latest_checkpoint(tmp_path / "nothing") is None

    _checkpoint(tmp_path, 7)
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [6, 7]
    assert not (tmp_path / ".tmp-checkpoint_0000012").exists()


def test_progress_line_and_printer(tmp_path):
    line = progress_line(_row(3), "lmlm")
    assert line.startswith("pretrain[lmlm] step 3/10 ( 30.0%) | loss 4.7000 | value 6.0000 | 1,234 tok/s")
    assert "query" not in line and line.endswith("elapsed 0m18s | eta 0m42s")

    out = io.StringIO()
    (tmp_path / ATTEMPTS_JSONL).write_text(json.dumps({"start_step": 0, "steps": 10, "world_size": 1}) + "\n")
    (tmp_path / METRICS_JSONL).write_text(json.dumps(_row(1)) + "\n")
    printer = ProgressPrinter(tmp_path, "lmlm", out=out)
    printer.poll()
    assert out.getvalue() == ""  # rows of an earlier run are not this run's progress
    with open(tmp_path / ATTEMPTS_JSONL, "a") as f:
        f.write(json.dumps({"start_step": 1, "steps": 10, "world_size": 2}) + "\n")
    with open(tmp_path / METRICS_JSONL, "a") as f:
        f.write(json.dumps(_row(2)) + "\n" + json.dumps(_row(3)) + "\n" + '{"step": 4')
    printer.poll()
    printer.poll()  # nothing twice
    lines = out.getvalue().splitlines()
    assert lines[0] == "pretrain[lmlm] attempt 2 resumes at step 1/10 on 2 worker(s)"
    assert [ln.split(" | ")[0] for ln in lines[1:]] == ["pretrain[lmlm] step 2/10 ( 20.0%)",
                                                         "pretrain[lmlm] step 3/10 ( 30.0%)"]


def test_lr_schedule_warmup_then_cosine_to_min_ratio():
    cfg = PretrainConfig(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg, steps=20)
    lrs = []
    for _ in range(21):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[12] == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down the cosine
    assert lrs[20] == pytest.approx(1e-4) and min(lrs[4:]) == pytest.approx(1e-4)


def test_mfu_from_the_model_shape_and_the_device_peak():
    from lmlm.train.mfu import mfu, peak_flops
    from lmlm.train.models import build_model, flops_per_token

    model = build_model("tiny", 300, 64, seed=0)
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    assert flops_per_token(model, 64) == 6 * n + 12 * c.num_hidden_layers * c.hidden_size * 64
    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and peak_flops("cpu", peak_tflops=2.5) == 2.5e12
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1) and mfu(1000.0, 1e9, None) is None


def test_single_device_loop_trains_with_the_library_loss_and_schedule(tiny_tokenizer):
    from lmlm.train.data import encode_and_pack
    from lmlm.train.models import build_model
    from lmlm.train.single import train_single
    from lmlm.world import WorldConfig, generate_world

    torch.set_num_threads(1)
    docs = [d.annotated_text for d in generate_world(WorldConfig(people=30, seed=2)).documents]
    cfg = PretrainConfig(model="tiny", seq_len=64, micro_batch_size=4, grad_accum=2, max_steps=25, warmup_steps=2,
                         lr=3e-3)
    packed = encode_and_pack(docs, tiny_tokenizer, "lmlm", cfg.seq_len)
    model = build_model("tiny", len(tiny_tokenizer), cfg.seq_len, seed=0)
    seen = []
    rows = train_single(model, packed, cfg, "cpu", on_step=seen.append)
    assert [r["step"] for r in rows] == list(range(1, 26)) and seen == rows
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert all(r["tokens"] == 2 * 4 * 64 for r in rows) and rows[-1]["lr"] < rows[3]["lr"]  # cosine decay
    assert rows[0]["value_loss"] > 0 and rows[0]["query_loss"] > 0  # measured, though values are not trained


def test_deepspeed_builds_with_the_environments_own_ninja(monkeypatch):
    """Whatever PATH a process starts with (a shell without the venv, a job entrypoint with it first),
    the train worker finds this environment's ninja: two ninja versions hash the build command
    differently and would rebuild DeepSpeed's CPU op in turn."""
    import os
    import shutil
    import sys

    from lmlm.train.loop import use_environment_ninja

    own = os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.path.isfile(own):
        pytest.skip("this Python environment has no ninja of its own")
    for start in ("/usr/bin:/bin", f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"):
        monkeypatch.setenv("PATH", start)
        use_environment_ninja()
        assert shutil.which("ninja") == own
        assert os.environ["PATH"].split(os.pathsep).count(os.path.dirname(sys.executable)) == 1
