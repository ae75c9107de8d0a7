"""Pretraining with Ray Train (`TorchTrainer`) and DeepSpeed inside the train function.

One code path for CPU (gloo, fp32) and GPU (NCCL, bf16). The loss of one optimizer step is

    sum of token NLL over counted tokens / number of counted tokens in the whole step

where the count runs over all workers and accumulation micro-steps (one all-reduce per step), so
padding and masked value tokens never rescale it. Data order is a function of (seed, step) only:
a resumed run reads exactly the rows the interrupted one would have. The learning rate follows
`transformers.get_cosine_with_min_lr_schedule_with_warmup` (linear warmup from 0, cosine down to
lr x min_lr_ratio at the last step).

The run directory (checkpoints, metrics, TensorBoard events, progress) is `lmlm.train.rundir`; where
workers find it, the run directory on a shared disk or storage named by URI (`storage`), is
`lmlm.train.runstore`.

    result = run_pretraining(load_config(PretrainConfig, "pretrain.yaml"))
    result.hf_dir  # AutoModelForCausalLM.from_pretrained(result.hf_dir)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


from lmlm.config import from_dict, save_config, to_dict
from lmlm.rayinit import init_ray
from lmlm.train.config import RESUMABLE, PretrainConfig
from lmlm.train.mfu import mfu, peak_flops
from lmlm.train.masks import TRAIN_GROUPS, counted_mask, masked_nll
from lmlm.train.steps import lr_scheduler, make_optimizer, total_steps, uses_bf16
from lmlm.storage import Storage, local_dir
from lmlm.train.rundir import ATTEMPTS_JSONL, STATE_FILE, MetricsLog, ProgressPrinter, append_line
from lmlm.train.runstore import PretrainResult, SharedRunDir, read_result, run_place

SHUFFLE_BUFFER_ROWS = 1024  # a rank's rows are reshuffled each epoch within windows of this many
PROBE_FILE = "probe_logits.pt"  # a fixed batch and the trained engine's logits on it (export check)


def use_environment_ninja() -> None:
    """Put this Python environment's `ninja` first on PATH (when it has one) before DeepSpeed starts.

    On CPU DeepSpeed JIT-builds its shared-memory collective op on first use and keeps it in the torch
    extensions cache; ninja decides whether to rebuild by a hash of the command that changed between
    ninja versions (1.11 and 1.13 here: the system's and the one pip installs). So processes that found
    different ninjas on PATH (a driver started by `make`, a `ray job submit` entrypoint with the venv
    first) rebuilt it in turn, 40 s of compiling on 2 cores each time; now each uses the same one."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.isfile(os.path.join(bindir, "ninja")) and path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir, path]) if path else bindir


def deepspeed_config(cfg: PretrainConfig, bf16: bool) -> dict:
    zero = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# --------------------------------------------------------------------------------------------
# The train function (runs in every Ray Train worker)


def _train_func(config: dict) -> None:
    use_environment_ninja()
    import deepspeed
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from lmlm.train.models import build_model, flops_per_token

    cfg = from_dict(PretrainConfig, config["cfg"])
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
    bf16 = uses_bf16(cfg, device)

    shard = ray.train.get_dataset_shard("train")  # this rank's equal part of the packed rows
    steps, per_epoch = total_steps(cfg, config["n_rows"], world)
    place = run_place(run_dir, cfg.storage, rank)
    tokenizer = AutoTokenizer.from_pretrained(local_dir(config["tokenizer_dir"]))
    start = local_dir(config["start"])  # a preset name, a directory, or a URI in the run's storage
    model = build_model(start, len(tokenizer), cfg.seq_len, seed=cfg.seed, tokenizer=tokenizer)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model, cfg)
    scheduler = lr_scheduler(optimizer, cfg, steps)
    per_token = flops_per_token(model, cfg.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(device) if cfg.use_gpu else "cpu", cfg.peak_tflops)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, bf16))

    # Checkpoints live in the run's place (not in Ray's checkpoint store): after a worker failure Ray
    # Train restarts this function and it resumes from the newest complete one, as a rerun does.
    step, corrupt = resume(engine, cfg, place, rank)
    start_step = step
    log = None
    if rank == 0:
        place.open_logs()
        log = MetricsLog(place.workdir, step)  # drops rows a crashed attempt logged past this step
        append_line(place.workdir / ATTEMPTS_JSONL, {"start_step": step, "steps": steps, "world_size": world,
                                                       "time": time.time(), "corrupt": corrupt})
        place.sync_logs()
    t_start = time.perf_counter()

    # loss sum, count, then sum/count per kind group (masked_nll); kept on the device (no host sync per step)
    acc = torch.zeros(2 + 2 * len(TRAIN_GROUPS), dtype=torch.float64, device=device)
    t_last, tokens_since = time.perf_counter(), 0

    batches = micro_batches(shard, cfg, step, per_epoch)
    while step < steps:
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        counted_m = [counted_mask(k[:, 1:], cfg.variant) for _, k in micro]
        count = torch.tensor([float(sum(int(c.sum()) for c in counted_m))], device=device)
        dist.all_reduce(count)  # the global number of counted tokens in this step
        global_count = max(count.item(), 1.0)
        for ids, kinds in micro:
            x = ids.to(device)
            nll, counted, sums = masked_nll(engine(input_ids=x, use_cache=False).logits, x, kinds, cfg.variant,
                                            TRAIN_GROUPS)
            # DeepSpeed averages gradients over ranks: multiply by world to get sum / global count.
            loss = (nll * counted).sum() * (world / global_count)
            engine.backward(loss, scale_wrt_gas=False)
            engine.step()
            acc += sums
            tokens_since += x.numel() * world
        step += 1

        if (fail_at := config.get("fail_at_step")) and step == fail_at and rank == min(1, world - 1):
            marks, marker = Storage(cfg.storage or run_dir), f".failed_at_step_{fail_at}"
            if not marks.is_file(marker):
                marks.write_text(marker, f"rank {rank} exited at step {step}\n")
                os._exit(1)

        do_ckpt = step % cfg.checkpoint_every == 0 or step == steps
        if step % cfg.log_every and not do_ckpt:
            continue
        tot = acc.clone()
        dist.all_reduce(tot)
        tot = tot.cpu().tolist()
        acc.zero_()
        now = time.perf_counter()
        elapsed = now - t_start
        metrics = {"step": step, "max_steps": steps, "loss": tot[0] / max(tot[1], 1),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_since / (now - t_last),
                   "mfu": mfu(tokens_since / (now - t_last) / world, per_token, peak),
                   "counted_tokens": tot[1], "variant": cfg.variant, "world_size": world,
                   "elapsed_s": elapsed, "eta_s": elapsed / (step - start_step) * (steps - step)}
        for i, name in enumerate(TRAIN_GROUPS):
            s, c = tot[2 + 2 * i], tot[3 + 2 * i]
            metrics[f"{name}_loss"] = s / c if c else float("nan")
        if log is not None:
            log.log(metrics)
            place.sync_logs()
        if do_ckpt:
            _save_checkpoint(engine, tokenizer, cfg, place, step, rank, world, micro[0][0][:2].numpy())
        ray.train.report(metrics)
        t_last, tokens_since = time.perf_counter(), 0
    if log is not None:
        log.close()
        place.sync_logs(tensorboard=True)


def micro_batches(shard, cfg: PretrainConfig, start_step: int, per_epoch: int):
    """(input_ids int64, kinds int8) micro-batches of this rank from optimizer step `start_step` on:
    every epoch the rank's part of the rows in a shuffled order of its own (`seed` + epoch), the
    same `per_epoch` x `grad_accum` micro-batches on every rank; a resumed run skips what it did."""
    import torch

    epoch, done = divmod(start_step, per_epoch)
    skip = done * cfg.grad_accum
    while True:
        it = shard.iter_torch_batches(batch_size=cfg.micro_batch_size, drop_last=True,
                                      local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=cfg.seed + epoch,
                                      dtypes={"input_ids": torch.long, "kinds": torch.int8})
        for n, b in enumerate(it):
            if n == per_epoch * cfg.grad_accum:
                break
            if n >= skip:
                yield b["input_ids"], b["kinds"]
        epoch, skip = epoch + 1, 0


def resume(engine, cfg: PretrainConfig, place, rank: int) -> tuple[int, list[dict]]:
    """Load the newest complete checkpoint that loads on every rank (every rank calls this); return
    its step (0: none) and, on rank 0, the ones that failed (`checkpoint_problem` or a DeepSpeed
    error), which rank 0 moved aside. `place`: a SharedRunDir or StoredRun (a path: the run directory).
    A config that differs from the saved one raises."""
    import torch.distributed as dist

    place = SharedRunDir(place) if isinstance(place, (str, Path)) else place
    corrupt = []
    while found := place.checkpoints():
        step, ckpt = found[-1]
        problem = place.problem(ckpt)
        if problem is None:
            d = place.fetch(ckpt)
            check_resume_config(d, cfg)  # the same verdict on every rank: all of them raise
            problem = _load_checkpoint(engine, d)
        problems = [None] * dist.get_world_size()
        dist.all_gather_object(problems, problem)
        if not any(problems):
            return step, corrupt
        error = "; ".join(f"rank {r}: {p}" for r, p in enumerate(problems) if p)
        if rank == 0:
            moved = place.set_aside(ckpt)
            name = Path(ckpt).name
            print(f"checkpoint {name} could not be loaded ({error}): moved to {moved}; trying the previous one",
                  file=sys.stderr, flush=True)
            corrupt.append({"checkpoint": name, "error": error, "moved_to": moved})
        dist.barrier()  # every rank lists the checkpoints again after the rename
    return 0, corrupt


def _load_checkpoint(engine, d: Path) -> str | None:
    """Load `d` into the engine: None, or why it could not (the engine is then reloaded from another)."""
    import torch

    try:
        path, _ = engine.load_checkpoint(str(d), tag="ds")
    except (MemoryError, torch.OutOfMemoryError):
        raise  # not the checkpoint's fault
    except Exception as e:
        return f"DeepSpeed could not load it: {type(e).__name__}: {e}"
    return None if path is not None else "DeepSpeed found no state in it"


def check_resume_config(ckpt, cfg: PretrainConfig, state: dict | None = None) -> None:
    """Raise when `cfg` differs from the config saved with checkpoint `ckpt` (its `state`, else read
    from its directory) in a field that changes the trained model or the data order (any field
    outside `RESUMABLE`), naming old and new values."""
    ckpt = Path(ckpt)
    saved = (state if state is not None else json.loads((ckpt / STATE_FILE).read_text())).get("config") or {}
    now = to_dict(cfg)
    diff = {k: (saved[k], now[k]) for k in now if k in saved and k not in RESUMABLE and saved[k] != now[k]}
    if diff:
        changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
        where = f"storage {cfg.storage}" if cfg.storage else f"run_dir {ckpt.parent}"
        raise ValueError(f"{where}: cannot resume {ckpt.name} with a different training setup "
                         f"({changes}); set these back as saved, or use a new {where.split()[0]}")


def _save_checkpoint(engine, tokenizer, cfg: PretrainConfig, place, step: int, rank: int, world: int,
                     probe_ids, wait_s: float = 120.0) -> None:
    """Write checkpoint_NNNNNNN (every rank calls this) into `place` (a SharedRunDir or StoredRun; a
    path: the run directory).

    Each rank writes its DeepSpeed state into the place's temporary directory and marks it done;
    rank 0 adds the HF export, the step and an export probe, waits until every rank's marker is
    there and commits: `complete.json` (every file's size) last, then prunes old checkpoints.
    """
    import torch.distributed as dist

    if isinstance(place, (str, Path)):
        place = SharedRunDir(place)
    out = place.begin_save(step, rank)
    dist.barrier()
    _write_rank_files(engine, tokenizer, cfg, out, step, rank, probe_ids)
    place.rank_done(out, step, rank)
    dist.barrier()
    if rank == 0:
        place.commit(out, step, world, cfg.keep_checkpoints, wait_s)
    dist.barrier()


def _write_rank_files(engine, tokenizer, cfg: PretrainConfig, out: Path, step: int, rank: int, probe_ids) -> None:
    """DeepSpeed state of this rank; on rank 0 also the HF export, the step and an export probe."""
    import torch

    engine.save_checkpoint(str(out), tag="ds")
    state_dict = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None
    engine.eval()
    with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
        x = torch.as_tensor(probe_ids).long().to(engine.device)
        logits = engine(input_ids=x, use_cache=False).logits.float().cpu()
    engine.train()
    if rank != 0:
        return
    hf = out / "hf"
    module = engine.module
    module.save_pretrained(str(hf), state_dict=state_dict)
    tokenizer.save_pretrained(str(hf))
    torch.save({"input_ids": x.cpu(), "logits": logits}, out / PROBE_FILE)
    (out / STATE_FILE).write_text(json.dumps({"step": step, "variant": cfg.variant, "config": to_dict(cfg)}))


# --------------------------------------------------------------------------------------------
# Driver


def run_pretraining(cfg: PretrainConfig, documents=None, tokenizer=None, progress: bool = True, *,
                    _fail_at_step: int = 0) -> PretrainResult:
    """Train an LMLM (`cfg.variant="lmlm"`) or the standard baseline with Ray Train + DeepSpeed.

    `documents`: annotated texts (list of str, legacy or special-token form) or a Ray Dataset with
    an `annotated_text` column; None reads `cfg.data_path` or generates `cfg.world_people`.
    `tokenizer`: a tokenizer with the lookup tokens; None loads `cfg.tokenizer_path` or trains one.
    Rerunning with the same `run_dir` resumes from its latest complete checkpoint. Raises on failure.
    `progress`: print a progress line per logged step (and per attempt) while training.
    `_fail_at_step` is a test hook (not a setting): rank 1 (else 0) exits at that step, first attempt only.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lmlm.train.data import (documents_dataset, load_documents, packed_dataset, prepare_tokenizer, split_config,
                                 tokenizer_sample)
    from lmlm.train.pretrained import resolve_start

    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve_start(cfg, run_dir / "init")
    place = run_place(run_dir, cfg.storage)
    if found := place.checkpoints():  # before Ray starts: a clear error, not a failed trainer
        try:
            state = place.state(found[-1][1])
        except (OSError, ValueError):
            state = None  # damaged: the workers' resume sets it aside
        if state is not None:
            check_resume_config(found[-1][1], cfg, state)
    # what workers load: in storage when the run has one, as the directories the driver prepared
    start = place.publish_input(cfg.model, "init") if Path(cfg.model).is_dir() else cfg.model
    init_ray(cfg.ray_address or None)
    if documents is None:
        documents = load_documents(cfg.data_path, cfg.world_people, cfg.world_seed)
    texts = documents if isinstance(documents, (list, tuple)) else None
    if texts is None and tokenizer is None and not cfg.tokenizer_path and not (run_dir / "tokenizer").is_dir():
        texts_for_tok = tokenizer_sample(documents)
    else:
        texts_for_tok = texts or []
    tokenizer, tok_dir = prepare_tokenizer(texts_for_tok, run_dir / "tokenizer", cfg.vocab_size,
                                           cfg.tokenizer_path, tokenizer)
    tok_location = place.publish_input(tok_dir, "tokenizer")
    packed = packed_dataset(documents_dataset(documents), tok_location, cfg.variant, cfg.seq_len, seed=cfg.seed)
    n_rows = packed.count()
    total_steps(cfg, n_rows, cfg.num_workers)  # too few rows for one step: a clear error before any worker starts
    save_config(cfg, run_dir / "pretrain_config.yaml")

    trainer = TorchTrainer(
        _train_func,
        train_loop_config={"cfg": to_dict(cfg), "run_dir": str(run_dir), "tokenizer_dir": tok_location,
                           "start": start, "n_rows": n_rows, "fail_at_step": _fail_at_step},
        datasets={"train": packed}, dataset_config=split_config(),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=run_dir.name, storage_path=cfg.storage or str(run_dir.parent),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    if progress:
        # label: the run's directory name when it names the variant (lmlm-retain), else the variant
        with ProgressPrinter(Storage(cfg.storage) if cfg.storage else run_dir,
                             run_dir.name if run_dir.name.startswith(cfg.variant) else cfg.variant):
            result = trainer.fit()
    else:
        result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"pretraining {run_dir} failed: {result.error}") from result.error
    return read_result(run_dir, cfg.variant, tok_dir, cfg.storage)
