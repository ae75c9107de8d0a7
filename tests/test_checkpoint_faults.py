"""Checkpoint faults on real files, without Ray: one in-process DeepSpeed engine (gloo, world size 1)
writes real checkpoints with the train loop's own functions, then the tests prune, fsync, corrupt,
resume and publish them (issue items 7 and 8)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
import threading

import numpy as np
import pytest
import torch

from lmlm.train.config import PretrainConfig
from lmlm.train.loop import _save_checkpoint
from lmlm.train.rundir import (ATTEMPTS_JSONL, COMPLETE_FILE, STATE_FILE, ProgressPrinter, checkpoint_name,
                               complete_checkpoints, prune_checkpoints)

CFG = PretrainConfig(model="tiny", seq_len=32, micro_batch_size=2, zero_stage=2, max_steps=4, warmup_steps=1)


@pytest.fixture(scope="module")
def ds(tiny_tokenizer, tmp_path_factory):
    """(engine, tokenizer): a tiny Llama under DeepSpeed ZeRO-2 on a one-process gloo group."""
    import deepspeed
    import torch.distributed as dist

    from lmlm.train.loop import deepspeed_config, use_environment_ninja
    from lmlm.train.steps import lr_scheduler
    from lmlm.train.models import build_model

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            mp.setenv(k, v)
        mp.setenv("PATH", os.environ.get("PATH", ""))  # restored after: the ninja choice is the train worker's
        use_environment_ninja()
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1),
                                rank=0, world_size=1)
        try:
            model = build_model(CFG.model, len(tiny_tokenizer), CFG.seq_len, seed=0, tokenizer=tiny_tokenizer)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=lr_scheduler(opt, CFG, 4),
                                                   config=deepspeed_config(CFG, bf16=False))
            yield engine, tiny_tokenizer
        finally:
            dist.destroy_process_group()


def _train_step(engine):
    x = torch.randint(0, 200, (2, CFG.seq_len))
    engine.backward(engine(input_ids=x, labels=x).loss)
    engine.step()


def _save(ds, run_dir, step, cfg=CFG):
    engine, tok = ds
    _train_step(engine)  # each checkpoint holds other weights
    _save_checkpoint(engine, tok, cfg, run_dir, step, 0, 1, np.arange(16).reshape(2, 8))
    return run_dir / checkpoint_name(step)


def _weights(engine) -> dict:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# 7a: keep_checkpoints


def test_keep_checkpoints_zero_keeps_the_newest_and_negative_is_rejected(ds, tmp_path):
    cfg = dataclasses.replace(CFG, keep_checkpoints=0)
    _save(ds, tmp_path, 1, cfg)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1]  # the one just written survives
    _save(ds, tmp_path, 2, cfg)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2]
    prune_checkpoints(tmp_path, keep=0)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2]
    with pytest.raises(ValueError, match="keep_checkpoints: -1"):
        PretrainConfig(keep_checkpoints=-1)


# ------------------------------------------------------------------------------------------------
# 7b: fsync before complete.json


def test_every_file_is_fsynced_before_the_complete_marker(ds, tmp_path, monkeypatch):
    """os.fsync and os.replace are observed (and still run): every file of the checkpoint, rank_0.done
    included, is fsynced before complete.json is renamed into place; complete.json is last; the
    run directory is fsynced after the checkpoint's rename."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = _save(ds, tmp_path.resolve(), 1)
    monkeypatch.undo()

    tmp = str(final.with_name(".tmp-" + final.name))
    synced: set[str] = set()
    for i, e in enumerate(events):
        if e[0] == "fsync":
            synced.add(e[1])
        elif e[1] in synced:  # a synced file renamed into place (atomicfile's temporary names)
            synced.add(e[2])
        if e[0] == "replace" and e[2] == f"{tmp}/{COMPLETE_FILE}":
            marker_at = i
            break
    else:
        pytest.fail("complete.json was not renamed into place")
    files = [p for p in final.rglob("*") if p.name != COMPLETE_FILE]
    assert any(p.name == "rank_0.done" for p in files) and any(p.suffix == ".pt" for p in files)
    unsynced = [str(p.relative_to(final)) for p in files if f"{tmp}/{p.relative_to(final)}" not in synced]
    assert unsynced == []  # files and directories alike
    assert e[1] in synced  # the marker itself, fsynced under its temporary name
    later = events[marker_at + 1:]
    moved = later.index(("replace", tmp, str(final)))
    assert ("fsync", str(tmp_path.resolve())) in later[moved + 1:]


# ------------------------------------------------------------------------------------------------
# 7c: a corrupt newest checkpoint


def _truncate(d):
    p = d / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _overwrite(d):  # same size: only DeepSpeed's load finds it
    p = d / "ds" / "mp_rank_00_model_states.pt"
    with open(p, "r+b") as f:
        f.write(b"\0" * 4096)


def _torn_state(d):
    (d / STATE_FILE).write_text('{"step": 2, "conf')


def _no_weights(d):
    (d / "hf" / "model.safetensors").unlink()


@pytest.mark.parametrize("damage,why", [(_truncate, "has .* bytes"), (_overwrite, "DeepSpeed could not load it"),
                                        (_torn_state, "train_state.json"), (_no_weights, "hf/model.safetensors is missing")])
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_one_resumed(ds, tmp_path, damage, why):
    from lmlm.train.loop import resume

    engine = ds[0]
    _save(ds, tmp_path, 1)
    saved = _weights(engine)
    newest = _save(ds, tmp_path, 2)
    assert not torch.equal(saved["lm_head.weight"], engine.module.state_dict()["lm_head.weight"])
    damage(newest)

    step, corrupt = resume(engine, CFG, tmp_path, rank=0)
    assert step == 1
    assert [c["checkpoint"] for c in corrupt] == ["checkpoint_0000002"]
    assert corrupt[0]["moved_to"] == "corrupt-checkpoint_0000002"
    assert re.search(why, corrupt[0]["error"])
    assert (tmp_path / "corrupt-checkpoint_0000002" / "ds").is_dir()  # kept for inspection
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1]
    for k, v in _weights(engine).items():  # the engine holds checkpoint 1's weights
        torch.testing.assert_close(v, saved[k])
    # rank 0 records it in attempts.jsonl; the driver prints it
    (tmp_path / ATTEMPTS_JSONL).write_text(json.dumps({"start_step": step, "steps": 4, "world_size": 1,
                                                       "corrupt": corrupt}) + "\n")
    out = io.StringIO()
    printer = ProgressPrinter(tmp_path, "lmlm", out=out)
    printer.n_attempts = 0
    printer.poll()
    assert out.getvalue().startswith("pretrain[lmlm] checkpoint_0000002 could not be loaded (rank 0: ")
    assert "moved to corrupt-checkpoint_0000002\npretrain[lmlm] attempt 1 resumes at step 1/4" in out.getvalue()

    # the same step corrupted again is kept beside the first; none left: step 0, as with no checkpoint
    _save(ds, tmp_path, 2)
    for d in (tmp_path / "checkpoint_0000001", tmp_path / "checkpoint_0000002"):
        _truncate(d)
    step, corrupt = resume(engine, CFG, tmp_path, rank=0)
    assert step == 0 and [c["moved_to"] for c in corrupt] == ["corrupt-checkpoint_0000002.1",
                                                              "corrupt-checkpoint_0000001"]
    assert not list(tmp_path.glob("checkpoint_*"))


# ------------------------------------------------------------------------------------------------
# 7d: the saved config is compared on resume


def test_resume_refuses_a_changed_training_setup(ds, tmp_path):
    from lmlm.train.loop import check_resume_config, resume, run_pretraining

    ckpt = _save(ds, tmp_path, 1)
    assert json.loads((ckpt / STATE_FILE).read_text())["config"]["num_workers"] == 1
    with pytest.raises(ValueError, match=r"num_workers: 1 -> 2\)"):
        check_resume_config(ckpt, dataclasses.replace(CFG, num_workers=2))
    with pytest.raises(ValueError, match=r"seq_len: 32 -> 64, .*lr: 0.0005 -> 0.001"):
        check_resume_config(ckpt, dataclasses.replace(CFG, seq_len=64, lr=1e-3))
    with pytest.raises(ValueError, match="variant: 'lmlm' -> 'standard'"):
        resume(ds[0], dataclasses.replace(CFG, variant="standard"), tmp_path, rank=0)
    assert ckpt.is_dir()  # a changed setup is the caller's error, not a corrupt checkpoint
    # continuing further, logging, checkpointing and paths may change
    check_resume_config(ckpt, dataclasses.replace(CFG, max_steps=40, log_every=1, checkpoint_every=7,
                                                  keep_checkpoints=5, run_dir="elsewhere", max_failures=0))
    # the driver refuses before it starts Ray
    with pytest.raises(ValueError, match="num_workers: 1 -> 2"):
        run_pretraining(dataclasses.replace(CFG, run_dir=str(tmp_path), num_workers=2), documents=["x"])


# ------------------------------------------------------------------------------------------------
# 8: the served model link


def test_published_model_survives_pruning_its_checkpoint(ds, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmlm.pipeline.world import _publish

    cfg = dataclasses.replace(CFG, keep_checkpoints=1)
    first = _save(ds, tmp_path, 1, cfg)
    link = tmp_path / "model"
    _publish(first / "hf", link)
    _save(ds, tmp_path, 2, cfg)  # prunes checkpoint 1, which the export came from
    assert not first.exists()
    model = AutoModelForCausalLM.from_pretrained(link)
    assert model.config.vocab_size == len(ds[1]) and (link / "tokenizer.json").is_file()


def test_publishing_again_swaps_the_link_and_removes_the_old_copy(ds, tmp_path):
    from lmlm.train.rundir import publish_model

    a, b = _save(ds, tmp_path, 1), _save(ds, tmp_path, 2)
    link, other = tmp_path / "model", tmp_path / "model-standard"
    standard = publish_model(a / "hf", other)
    old = publish_model(a / "hf", link)
    assert old.parent == tmp_path / "published" / "model" and old.name.startswith("0000001-")
    new = publish_model(b / "hf", link)
    assert link.resolve() == new and new.name.startswith("0000002-") and not old.exists()
    assert os.readlink(link) == os.path.join("published", "model", new.name)  # relative: the run dir may move
    assert list(new.parent.iterdir()) == [new] and not (tmp_path / ".tmp-model").exists()
    assert other.resolve() == standard and standard.is_dir()  # another link's copy is not touched
    assert sorted(p.name for p in new.iterdir()) == sorted(p.name for p in (b / "hf").iterdir())
    with pytest.raises(FileExistsError, match="not a link"):
        publish_model(b / "hf", a)


def test_a_reader_never_sees_the_link_missing_during_a_swap(ds, tmp_path):
    from lmlm.pipeline.world import _publish

    exports = [_save(ds, tmp_path, s) / "hf" for s in (1, 2)]
    link = tmp_path / "model"
    _publish(exports[0], link)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    missing, done = [], threading.Event()

    def read():
        while not done.is_set():
            if not os.path.lexists(link):
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            _publish(exports[(i + 1) % 2], link)
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert missing == []
    assert (link / "config.json").is_file()


# ------------------------------------------------------------------------------------------------
# A run of `epochs` passes (max_steps: 0) is recognised as finished


def test_an_epochs_run_that_reached_its_last_step_is_finished(ds, tmp_path):
    from lmlm.train.compare import finished_run
    from lmlm.train.rundir import METRICS_JSONL, append_line

    cfg = dataclasses.replace(CFG, max_steps=0, epochs=2, run_dir=str(tmp_path))
    _save(ds, tmp_path, 2, cfg)
    append_line(tmp_path / METRICS_JSONL, {"step": 2, "max_steps": 3, "loss": 1.0})  # the loop's row: 3 steps resolved
    assert finished_run(cfg) is None  # step 2 of 3
    _save(ds, tmp_path, 3, cfg)
    append_line(tmp_path / METRICS_JSONL, {"step": 3, "max_steps": 3, "loss": 0.9})
    done = finished_run(cfg)
    assert done is not None and done.final_step == 3
    assert finished_run(dataclasses.replace(cfg, epochs=3)) is None  # more passes asked for: not finished
    assert finished_run(dataclasses.replace(cfg, max_steps=3)).final_step == 3
    assert finished_run(dataclasses.replace(cfg, max_steps=4)) is None
