"""Ray Train + DeepSpeed pretraining end to end on CPU: 2 workers, ZeRO-2, a killed worker,
resume from the run directory, and the HF export. Two fits in all (each costs ~20 s of overhead)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmlm.train.config import PretrainConfig
from lmlm.train.loop import PROBE_FILE, run_pretraining
from lmlm.train.steps import step_rows
from lmlm.train.rundir import COMPLETE_FILE, STATE_FILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs():
    from lmlm.world import WorldConfig, generate_world

    return [d.annotated_text for d in generate_world(WorldConfig(people=60, seed=1)).documents]


def test_data_order_depends_only_on_seed_and_step():
    cfg = PretrainConfig(micro_batch_size=4, grad_accum=2, seed=3)
    a = [step_rows(s, m, r, cfg, 100, 2) for s in range(3) for m in range(2) for r in range(2)]
    b = [step_rows(s, m, r, cfg, 100, 2) for s in range(3) for m in range(2) for r in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    flat = np.concatenate(a)
    assert len(set(flat.tolist())) == len(flat)  # no row twice within an epoch


def test_two_workers_zero2_failure_resume_and_export(ray_cluster, tmp_path, docs, tiny_tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    cfg = PretrainConfig(run_dir=str(run_dir), model="tiny", seq_len=64, micro_batch_size=4, grad_accum=2,
                         max_steps=6, warmup_steps=2, lr=3e-3, num_workers=2, cpus_per_worker=0.5,
                         zero_stage=2, log_every=1, checkpoint_every=3, max_failures=1)
    res = run_pretraining(cfg, documents=docs, tokenizer=tiny_tokenizer, _fail_at_step=4)  # the test hook

    # rank 1 died after step 4 on the first attempt; the run restarted from the step-3 checkpoint
    assert (run_dir / ".failed_at_step_4").exists()
    assert [a["start_step"] for a in res.attempts] == [0, 3]
    assert res.final_step == 6 and res.checkpoint_dir.endswith("checkpoint_0000006")
    assert [m["step"] for m in res.metrics] == [1, 2, 3, 4, 5, 6]
    losses = [m["loss"] for m in res.metrics]
    assert losses[-1] < losses[0] - 0.3
    assert all(m["world_size"] == 2 and m["tokens_per_s"] > 0 for m in res.metrics)
    ds_files = sorted(p.name for p in (run_dir / "checkpoint_0000006" / "ds").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in ds_files
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in ds_files
    # checkpoints were renamed into place complete (keep_checkpoints=2); no temporary one is left
    assert sorted(p.name for p in run_dir.glob("*checkpoint_*")) == ["checkpoint_0000003", "checkpoint_0000006"]
    assert (run_dir / "checkpoint_0000006" / COMPLETE_FILE).is_file()
    # the driver printed the workers' progress (their stdout is not forwarded), and TensorBoard has it
    out = capsys.readouterr().out
    assert "pretrain[lmlm] attempt 2 resumes at step 3/6 on 2 worker(s)" in out
    assert "pretrain[lmlm] step 6/6 (100.0%) | loss " in out and " eta 0m00s" in out
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # the HF export loads with transformers and reproduces the trained engine's logits
    probe = torch.load(run_dir / "checkpoint_0000006" / PROBE_FILE)
    model = AutoModelForCausalLM.from_pretrained(res.hf_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)

    # a second run on the same directory continues at the saved step, past a crash's leftovers:
    # an incomplete later checkpoint (no complete.json) and a torn last metrics line
    (run_dir / "checkpoint_0000007").mkdir()
    (run_dir / "checkpoint_0000007" / STATE_FILE).write_text(json.dumps({"step": 7}))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.')
    cfg2 = PretrainConfig(**{**cfg.__dict__, "max_steps": 8})
    res2 = run_pretraining(cfg2, documents=docs, tokenizer=tiny_tokenizer)
    assert [a["start_step"] for a in res2.attempts] == [0, 3, 6]
    assert res2.final_step == 8
    assert [m["step"] for m in res2.metrics] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((run_dir / "checkpoint_0000008" / STATE_FILE).read_text())["step"] == 8


def test_ray_data_packing_matches_plain_packing(ray_cluster, docs, tiny_tokenizer, tmp_path):
    import ray

    from lmlm.train.data import PAD, encode_and_pack, pack_dataset, save_tokenizer_dir

    tok_dir = save_tokenizer_dir(tiny_tokenizer, tmp_path / "tok")
    ds = ray.data.from_items([{"annotated_text": d} for d in docs])
    plain = encode_and_pack(docs, tiny_tokenizer, "lmlm", 64)
    whole = pack_dataset(ds, tok_dir, "lmlm", 64, batch_size=len(docs))
    assert np.array_equal(whole.input_ids, plain.input_ids) and np.array_equal(whole.kinds, plain.kinds)
    blocks = pack_dataset(ds, tok_dir, "standard", 64, batch_size=16)  # each block packed on its own
    std = encode_and_pack(docs, tiny_tokenizer, "standard", 64)
    assert np.array_equal(blocks.input_ids[blocks.kinds != PAD], std.input_ids[std.kinds != PAD])
    with pytest.raises(ValueError, match="column"):
        pack_dataset(ds, tok_dir, "lmlm", 64, column="text")


def test_parquet_shards_are_read_one_block_per_file_in_name_order(ray_cluster, docs, tiny_tokenizer, tmp_path):
    """The platform's Parquet read (annotated shards into packing): one block per file, in file-name
    order, whatever the cluster's size or the files' sizes; packed in that order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data import DataContext

    from lmlm.storage import read_parquet
    from lmlm.train.data import encode_and_pack, pack_dataset, save_tokenizer_dir

    folder = tmp_path / "shards"
    folder.mkdir()
    parts = [docs[i:i + 12] for i in range(0, 60, 12)]
    for k, part in enumerate(parts):  # written last to first: the read follows the names, not the writes
        pq.write_table(pa.table({"annotated_text": part}), folder / f"shard-{len(parts) - k:03d}.parquet")
    default = DataContext.get_current().use_datasource_v2
    ds = read_parquet(str(folder))
    assert DataContext.get_current().use_datasource_v2 == default  # only this Dataset reads the other way
    ds.context.execution_options.preserve_order = True
    assert ds.materialize().num_blocks() == len(parts)
    assert [r["annotated_text"] for r in ds.take_all()] == [t for part in reversed(parts) for t in part]
    tok_dir = save_tokenizer_dir(tiny_tokenizer, tmp_path / "tok")
    packed = pack_dataset(read_parquet(str(folder)), tok_dir, "lmlm", 64)  # one batch: 60 < 512 documents
    ordered = encode_and_pack([t for part in reversed(parts) for t in part], tiny_tokenizer, "lmlm", 64)
    assert np.array_equal(packed.input_ids, ordered.input_ids) and np.array_equal(packed.kinds, ordered.kinds)
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        read_parquet(str(tmp_path / "tok"))


def test_streamed_training_rows_are_deterministic_and_resume_where_they_stopped(ray_cluster, docs, tiny_tokenizer,
                                                                                tmp_path):
    from ray.data import DataContext

    from lmlm.train.data import documents_dataset, encode_and_pack, pack_dataset, packed_dataset, save_tokenizer_dir
    from lmlm.train.loop import micro_batches
    from lmlm.train.steps import total_steps

    tok_dir = save_tokenizer_dir(tiny_tokenizer, tmp_path / "tok")
    # a dataset made before anything asked for order (as in a fresh driver) is still packed in order
    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, False
    try:
        a = packed_dataset(documents_dataset(docs, docs_per_block=16), tok_dir, "lmlm", 64, seed=3)
    finally:
        options.preserve_order = before
    assert a.context.execution_options.preserve_order
    b = packed_dataset(documents_dataset(docs, docs_per_block=16), tok_dir, "lmlm", 64, seed=3)
    rows = lambda ds: np.stack([r["input_ids"] for r in ds.take_all()])  # noqa: E731
    assert np.array_equal(rows(a), rows(b))  # the same rows in the same order for a seed
    in_order = pack_dataset(documents_dataset(docs, docs_per_block=16), tok_dir, "lmlm", 64).input_ids
    as_set = lambda ids: sorted(map(bytes, ids))  # noqa: E731
    assert as_set(rows(a)) == as_set(in_order) and not np.array_equal(rows(a), in_order)  # shuffled, nothing lost
    other = rows(packed_dataset(documents_dataset(docs, docs_per_block=16), tok_dir, "lmlm", 64, seed=4))
    assert as_set(other) == as_set(in_order) and not np.array_equal(other, rows(a))  # the order is the seed's
    plain = encode_and_pack(docs, tiny_tokenizer, "lmlm", 64)
    assert a.count() >= len(plain)  # each block of 16 documents packed on its own: at most one padded row more
    cfg = PretrainConfig(micro_batch_size=2, grad_accum=2, seed=3)
    _, per_epoch = total_steps(cfg, a.count(), 2)
    shard = a.split(2, equal=True)[1].iterator()  # rank 1 of 2
    full = micro_batches(shard, cfg, 0, per_epoch)
    first = [next(full) for _ in range(3 * per_epoch * cfg.grad_accum)]  # three epochs
    assert len({tuple(x[0][0].tolist()) for x in first}) > 1
    epoch0 = {tuple(r.tolist()) for ids, _ in first[:per_epoch * cfg.grad_accum] for r in ids}
    epoch1 = {tuple(r.tolist()) for ids, _ in first[per_epoch * cfg.grad_accum:2 * per_epoch * cfg.grad_accum] for r in ids}
    mine = {tuple(r["input_ids"].tolist()) for r in a.split(2, equal=True)[1].take_all()}
    assert epoch0 <= mine and epoch1 <= mine  # the rank's own rows each epoch (a remainder left out) ...
    assert [x[0].tolist() for x in first[:4]] != [x[0].tolist() for x in first[per_epoch * 2:per_epoch * 2 + 4]]  # ... reordered
    resumed = micro_batches(a.split(2, equal=True)[1].iterator(), cfg, per_epoch + 1, per_epoch)  # resume at a step
    for want in first[(per_epoch + 1) * cfg.grad_accum:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
