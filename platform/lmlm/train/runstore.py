"""Where a pretraining run's files live for its workers: the run directory, or storage by URI.

Both places offer what the train function calls (list, check, fetch and set aside checkpoints;
save one in three steps; keep the logs), so the loop reads the same for both:

- `SharedRunDir` (`PretrainConfig.storage` empty): the run directory itself, which every node must
  see (one machine, or a shared mount). A checkpoint is written into `.tmp-checkpoint_NNNNNNN/`
  and renamed into place once complete (`lmlm.train.rundir`).
- `StoredRun` (`storage` set: a folder or a URI such as `s3://bucket/runs/demo`): nodes share
  nothing but the storage. Each rank works in a scratch directory on its own node and uploads what
  it wrote to `checkpoint_NNNNNNN/` in storage, then its `rank_R.done`; rank 0 writes
  `complete.json` (every file's size) last, once every rank's marker is there: only then is the
  checkpoint listed (object stores have no rename). A resume checks the sizes in storage and
  takes a copy per node. Rank 0's metrics, attempts and TensorBoard events are uploaded after
  each logged row.

What a run holds, for its driver and readers: `read_result` (a `PretrainResult`) and `model_dir`
(the model directory of a path or URI: a model, or a run's newest export).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmlm.atomicfile import fsync_dir, fsync_tree, write_json, write_text
from lmlm.storage import Storage, is_uri, node_copy
from lmlm.train.rundir import (ATTEMPTS_JSONL, CHECKPOINT_PREFIX, COMPLETE_FILE, CORRUPT_PREFIX, METRICS_CSV,
                               METRICS_JSONL, STATE_FILE, TENSORBOARD_DIR, TMP_PREFIX, checkpoint_name,
                               checkpoint_problem, complete_checkpoints, file_sizes, marked_checkpoints, move_aside,
                               parse_jsonl, prune_checkpoints, read_jsonl, read_metrics, size_problem)

LOG_FILES = (METRICS_JSONL, METRICS_CSV, ATTEMPTS_JSONL)


@dataclass
class PretrainResult:
    run_dir: str  # the run directory
    variant: str  # "lmlm" or "standard"
    final_step: int  # optimizer steps completed
    checkpoint_dir: str | None  # latest checkpoint: DeepSpeed state of every rank + hf/ + train_state.json
    hf_dir: str | None  # HF export in that checkpoint (model + tokenizer), loadable by from_pretrained
    tokenizer_dir: str  # the tokenizer used
    metrics: list[dict] = field(default_factory=list)  # rows of metrics.jsonl, by step
    attempts: list[dict] = field(default_factory=list)  # rows of attempts.jsonl: each start's step


def run_place(run_dir, storage: str, rank: int | None = None):
    """The place of a run: `StoredRun` when `storage` names one, else `SharedRunDir(run_dir)`."""
    return StoredRun(Storage(storage), rank) if storage else SharedRunDir(run_dir)


def _wait_for_markers(is_there, world: int, where: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s  # a shared file system or object store may show files late
    while missing := [r for r in range(world) if not is_there(f"rank_{r}.done")]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"checkpoint {where}: ranks {missing} wrote no files within {wait_s:.0f} s")
        time.sleep(0.5)


class SharedRunDir:
    """The run directory on a filesystem every node sees; checkpoints are its directories."""

    def __init__(self, run_dir):
        self.run_dir = self.workdir = Path(run_dir)

    def checkpoints(self) -> list[tuple[int, Path]]:
        return marked_checkpoints(self.run_dir)

    def problem(self, ckpt: Path) -> str | None:
        return checkpoint_problem(ckpt)

    def fetch(self, ckpt: Path) -> Path:
        return ckpt

    def state(self, ckpt: Path) -> dict:
        return json.loads((ckpt / STATE_FILE).read_text())

    def publish_input(self, local_dir, rel: str) -> str:
        return str(local_dir)

    def set_aside(self, ckpt: Path) -> str:
        return move_aside(ckpt).name

    def begin_save(self, step: int, rank: int) -> Path:
        out = self.run_dir / f"{TMP_PREFIX}{checkpoint_name(step)}"
        if rank == 0:
            shutil.rmtree(out, ignore_errors=True)  # left by an attempt that crashed while saving
            out.mkdir(parents=True)
        return out

    def rank_done(self, out: Path, step: int, rank: int) -> None:
        # DeepSpeed's save ends with a barrier: ds/ holds every rank's state, and syncing it covers this rank's
        fsync_tree(out if rank == 0 else out / "ds")
        write_json(out / f"rank_{rank}.done", {"rank": rank, "step": step})

    def commit(self, out: Path, step: int, world: int, keep: int, wait_s: float) -> None:
        _wait_for_markers(lambda name: (out / name).is_file(), world, str(out), wait_s)
        write_json(out / COMPLETE_FILE, {"step": step, "world_size": world, "files": file_sizes(out)})
        final = self.run_dir / checkpoint_name(step)
        if final.exists():  # an incomplete directory of an older layout: never resumed from
            shutil.rmtree(final)
        os.replace(out, final)
        fsync_dir(self.run_dir)
        prune_checkpoints(self.run_dir, keep)

    def open_logs(self) -> None:
        pass

    def sync_logs(self, tensorboard: bool = False) -> None:
        pass


class StoredRun:
    """The run in storage; this rank's files are made in a scratch directory on its node."""

    def __init__(self, store: Storage, rank: int | None):
        """`rank` None: the driver's view (no work directory)."""
        self.store = store
        tag = f"{Path(store.root).name}-{hashlib.sha1(store.uri.encode()).hexdigest()[:12]}"
        self.node_dir = Path(tempfile.gettempdir()) / "lmlm-runs" / tag
        if rank is not None:
            self.workdir = self.node_dir / f"rank{rank}"
            shutil.rmtree(self.workdir, ignore_errors=True)  # what a crashed attempt left on this node
            self.workdir.mkdir(parents=True)

    def checkpoints(self) -> list[tuple[int, str]]:
        out = []
        for name in self.store.listdir():
            if name.startswith(CHECKPOINT_PREFIX):
                try:
                    out.append((int(json.loads(self.store.read_text(f"{name}/{COMPLETE_FILE}"))["step"]), name))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return sorted(out)

    def problem(self, name: str) -> str | None:
        """`checkpoint_problem`, judged from the files in storage."""
        try:
            listed = json.loads(self.store.read_text(f"{name}/{COMPLETE_FILE}")).get("files", {})
        except (OSError, ValueError, AttributeError) as e:
            return f"{COMPLETE_FILE} is unreadable ({e})"
        try:
            int(json.loads(self.store.read_text(f"{name}/{STATE_FILE}"))["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{STATE_FILE} is missing or unreadable"
        return size_problem(listed, self.store.file_sizes(name))

    def fetch(self, name: str) -> Path:
        """A copy on this node (made once for the ranks it holds): DeepSpeed reads every rank's state."""
        return Path(node_copy(self.store.uri_of(name), cache_dir=self.node_dir / "fetched"))

    def set_aside(self, name: str) -> str:
        taken = set(self.store.listdir())
        dest, n = CORRUPT_PREFIX + name, 0
        while dest in taken:
            n += 1
            dest = f"{CORRUPT_PREFIX}{name}.{n}"
        self.store.move(name, dest)
        return dest

    def begin_save(self, step: int, rank: int) -> Path:
        out = self.workdir / f"{TMP_PREFIX}{checkpoint_name(step)}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if rank == 0:
            self.store.delete(checkpoint_name(step))  # a partial one of a crashed attempt (never listed)
        return out

    def rank_done(self, out: Path, step: int, rank: int) -> None:
        name = checkpoint_name(step)
        self.store.upload(out, name)
        self.store.write_text(f"{name}/rank_{rank}.done", json.dumps({"rank": rank, "step": step}))
        if rank != 0:
            shutil.rmtree(out, ignore_errors=True)

    def commit(self, out: Path, step: int, world: int, keep: int, wait_s: float) -> None:
        name = checkpoint_name(step)
        _wait_for_markers(lambda marker: self.store.is_file(f"{name}/{marker}"), world, self.store.uri_of(name),
                          wait_s)
        files = self.store.file_sizes(name)
        self.store.write_text(f"{name}/{COMPLETE_FILE}",
                              json.dumps({"step": step, "world_size": world, "files": files}))
        shutil.rmtree(out, ignore_errors=True)
        self.prune(keep)
        self.sync_logs(tensorboard=True)

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` complete checkpoints (the newest always); delete older ones and
        unlisted ones older than the newest (left by crashed attempts)."""
        found = self.checkpoints()
        for _, name in found[:max(0, len(found) - max(keep, 1))]:
            self.store.delete(name)
        newest = found[-1][0] if found else -1
        listed = {name for _, name in found}
        for name in self.store.listdir():
            if name.startswith(CHECKPOINT_PREFIX) and name not in listed:
                try:
                    stale = int(name.removeprefix(CHECKPOINT_PREFIX)) < newest
                except ValueError:
                    continue
                if stale:
                    self.store.delete(name)

    def open_logs(self) -> None:
        """Rank 0: the logs in storage, copied into the work directory to be appended to."""
        for f in LOG_FILES:
            if self.store.is_file(f):
                (self.workdir / f).write_bytes(self.store.read_bytes(f))
        if self.store.is_dir(TENSORBOARD_DIR):
            self.store.download(TENSORBOARD_DIR, self.workdir / TENSORBOARD_DIR)

    def state(self, name: str) -> dict:
        return json.loads(self.store.read_text(f"{name}/{STATE_FILE}"))

    def publish_input(self, local_dir, rel: str) -> str:
        """Put a directory the workers need (tokenizer, start weights) into storage, unless the same
        files are there already; return its URI."""
        local_dir = Path(local_dir)
        if self.store.file_sizes(rel) != file_sizes(local_dir):
            self.store.delete(rel)
            self.store.upload(local_dir, rel)
        return self.store.uri_of(rel)

    def sync_logs(self, tensorboard: bool = False) -> None:
        """Rank 0: the logs of the work directory written to storage."""
        for f in LOG_FILES:
            if (self.workdir / f).is_file():
                self.store.upload_file(self.workdir / f, f)
        if tensorboard and (self.workdir / TENSORBOARD_DIR).is_dir():
            self.store.upload(self.workdir / TENSORBOARD_DIR, TENSORBOARD_DIR)


def read_result(run_dir, variant: str, tokenizer_dir, storage: str = "") -> PretrainResult:
    """What a run holds now: its newest complete checkpoint (step 0 and no export when there is
    none), its metrics and its attempts. With `storage`, the checkpoint's export and state are
    copied from there into `run_dir/from-storage/` (where `checkpoint_dir` and `hf_dir` then point),
    and the metrics and attempts logs into `run_dir`."""
    if not storage:
        found = complete_checkpoints(run_dir)
        step, ckpt = found[-1] if found else (0, None)
        return PretrainResult(str(run_dir), variant, step, str(ckpt) if ckpt else None,
                              str(ckpt / "hf") if ckpt else None, str(tokenizer_dir), read_metrics(run_dir),
                              read_jsonl(Path(run_dir) / ATTEMPTS_JSONL))
    store = Storage(storage)
    found = StoredRun(store, None).checkpoints()
    step, ckpt = 0, None
    if found:
        step, name = found[-1]
        ckpt = Path(run_dir) / "from-storage" / name
        if not (ckpt / STATE_FILE).is_file():
            shutil.rmtree(ckpt, ignore_errors=True)
            tmp = ckpt.with_name(f".tmp-{name}")
            shutil.rmtree(tmp, ignore_errors=True)
            store.download(name, tmp, keep=lambda rel: not rel.startswith("ds/"))
            os.replace(tmp, ckpt)
    logs = {f: store.read_text(f) for f in (METRICS_JSONL, ATTEMPTS_JSONL) if store.is_file(f)}
    for f, text in logs.items():  # the driver's copy: run_dir's readers (plots, reports) find them there
        write_text(Path(run_dir) / f, text)
    metrics, attempts = (parse_jsonl(logs[f], store.uri_of(f)) if f in logs else []
                         for f in (METRICS_JSONL, ATTEMPTS_JSONL))
    return PretrainResult(str(run_dir), variant, step, str(ckpt) if ckpt else None,
                          str(ckpt / "hf") if ckpt else None, str(tokenizer_dir), metrics, attempts)


def model_dir(location) -> Path:
    """A local model directory (with `config.json`) for `location`: a model directory, or a run
    (its newest complete checkpoint's `hf/`), each a local path or a URI in storage (copied to
    this node once: `lmlm.storage.node_copy`). Raises FileNotFoundError naming `location`."""
    location = str(location)
    if not is_uri(location):
        p = Path(location)
        if (p / "config.json").is_file():
            return p
        found = complete_checkpoints(p)
        if found and (found[-1][1] / "hf" / "config.json").is_file():
            return found[-1][1] / "hf"
    else:
        store = Storage(location)
        if store.is_file("config.json"):
            return Path(node_copy(location))
        found = StoredRun(store, None).checkpoints()
        if found and store.is_file(f"{found[-1][1]}/hf/config.json"):
            return Path(node_copy(store.uri_of(f"{found[-1][1]}/hf")))
    raise FileNotFoundError(f"model directory {location}: no config.json, and no checkpoint_*/hf export inside")
