"""A pretraining run directory: what it holds, how it survives crashes, and how progress is shown.

What a run directory holds, and how it survives crashes:

- `checkpoint_NNNNNNN/`: every rank writes into `.tmp-checkpoint_NNNNNNN/`, fsyncs its files and
  then writes its `rank_R.done` marker; when every rank's marker is there, rank 0 writes
  `complete.json` (step, world size, and the size of every file) last and atomically, renames the
  directory into place and fsyncs the run directory. Resume and `latest_checkpoint` only see
  complete checkpoints. `prune_checkpoints` keeps the newest `keep_checkpoints` complete ones (the
  newest always) and deletes leftover temporary ones.
- A resume takes the newest complete checkpoint. One that fails to load (a file missing or of
  another size than `complete.json` lists, an unreadable `train_state.json`, a DeepSpeed load error)
  is renamed to `corrupt-checkpoint_NNNNNNN/` (kept for inspection: rename it back to retry) and the
  previous one is tried; with none left the run starts at step 0, as with no checkpoint. Its
  `train_state.json` config must match the current one outside `lmlm.train.config.RESUMABLE`.
- `metrics.jsonl` (+ `metrics.csv`): rank 0 appends one flushed line per `log_every` steps; a
  torn last line (a crash mid-write) is ignored when read, and resume drops rows past its step.
- `tensorboard/`: the same scalars as TensorBoard events (`tensorboard --logdir <parent dir>`).
- `attempts.jsonl`: one line per (re)start of the train function with its start step (and the
  checkpoints it moved aside).
- `published/<link>/<version>/`: a copy of an HF export that the symlink `<link>` beside
  `published/` points at (`publish_model`): it outlives the checkpoint it was copied from.

Workers' stdout does not reach the driver (the platform starts Ray with log_to_driver=False), so
the driver prints the progress: it follows metrics.jsonl while the trainer runs (`ProgressPrinter`).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path

from lmlm.atomicfile import fsync_dir, fsync_tree, write_text

STATE_FILE = "train_state.json"
COMPLETE_FILE = "complete.json"  # written last into a checkpoint: every rank's files are there
CHECKPOINT_PREFIX = "checkpoint_"
TMP_PREFIX = ".tmp-"  # a checkpoint being written: .tmp-checkpoint_NNNNNNN
CORRUPT_PREFIX = "corrupt-"  # a checkpoint that failed to load: corrupt-checkpoint_NNNNNNN
PUBLISHED_DIR = "published"
TENSORBOARD_DIR = "tensorboard"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
ATTEMPTS_JSONL = "attempts.jsonl"  # one line per (re)start of the train function: its start step


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def marked_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint renamed into place with a readable `complete.json`,
    oldest first: complete when saved, though a file may have been damaged since (`checkpoint_problem`)."""
    out = []
    for d in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        try:
            out.append((int(json.loads((d / COMPLETE_FILE).read_text())["step"]), d))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out)


def complete_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint under `run_dir`, oldest first.

    Complete: renamed into place with its `complete.json` and `train_state.json`; temporary
    (`.tmp-...`) and incomplete directories are ignored.
    """
    return [(step, d) for step, d in marked_checkpoints(run_dir) if _state(d) is not None]


def _state(d: Path) -> dict | None:
    try:
        state = json.loads((d / STATE_FILE).read_text())
        int(state["step"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(run_dir) -> Path | None:
    """The complete checkpoint with the highest step under `run_dir` (None when there is none)."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (the newest one whatever `keep` is); delete older
    ones and stale temporary ones."""
    found = complete_checkpoints(run_dir)
    for _, d in found[:max(0, len(found) - max(keep, 1))]:
        shutil.rmtree(d, ignore_errors=True)
    for d in Path(run_dir).glob(f"{TMP_PREFIX}{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)


def file_sizes(d: Path) -> dict[str, int]:
    """{path relative to `d`: size} of every file under `d` (what `complete.json` lists)."""
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


def checkpoint_problem(d: Path) -> str | None:
    """Why checkpoint `d` cannot be resumed from, judged from its files (None: they look whole):
    an unreadable `complete.json` or `train_state.json`, or a file missing or of another size than
    `complete.json` lists."""
    try:
        files = json.loads((d / COMPLETE_FILE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError) as e:
        return f"{COMPLETE_FILE} is unreadable ({e})"
    if _state(d) is None:
        return f"{STATE_FILE} is missing or unreadable"
    return size_problem(files, file_sizes(d))


def size_problem(listed: dict[str, int], there: dict[str, int]) -> str | None:
    """The first file `complete.json` lists (`listed`: path -> size) that is missing from `there`
    (the files present: path -> size) or of another size; None when all are as saved."""
    for rel, size in listed.items():
        if rel not in there:
            return f"{rel} is missing"
        if there[rel] != size:
            return f"{rel} has {there[rel]} bytes, {size} when saved"
    return None


def move_aside(d: Path) -> Path:
    """Rename a checkpoint that failed to load to `corrupt-<name>` (`.1`, `.2`, ... if taken)."""
    dest, n = d.with_name(CORRUPT_PREFIX + d.name), 0
    while dest.exists():
        n += 1
        dest = d.with_name(f"{CORRUPT_PREFIX}{d.name}.{n}")
    os.rename(d, dest)
    fsync_dir(d.parent)
    return dest


def publish_model(hf_dir, link) -> Path:
    """Point the symlink `link` at a copy of the HF export `hf_dir` in
    `<link's dir>/published/<link name>/<checkpoint step>-<id>/` and return that copy.

    The copy (hard links where the file system allows, else copies) is made under a temporary name
    and renamed into place, so the link never points at a partial model, and outlives the pruning
    of the checkpoint it came from. The link is swapped with os.replace (a reader sees the old
    model or the new one, never no `link`); then the copies it no longer points at are removed.
    """
    hf_dir, link = Path(hf_dir).resolve(), Path(link)
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link}: not a link to a published model; move it away to publish {hf_dir}")
    versions = link.parent / PUBLISHED_DIR / link.name
    versions.mkdir(parents=True, exist_ok=True)
    name = f"{hf_dir.parent.name.removeprefix(CHECKPOINT_PREFIX)}-{uuid.uuid4().hex[:8]}"
    tmp, dest = versions / f"{TMP_PREFIX}{name}", versions / name
    shutil.copytree(hf_dir, tmp, copy_function=_link_or_copy)
    fsync_tree(tmp)
    os.rename(tmp, dest)
    fsync_dir(versions)
    tmp_link = link.with_name(f"{TMP_PREFIX}{link.name}")
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(os.path.relpath(dest, link.parent))
    os.replace(tmp_link, link)
    fsync_dir(link.parent)
    for old in versions.iterdir():
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # checkpoint files are never rewritten in place: sharing them is safe
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------
# Metrics log (rank 0 writes; anyone reads)


def read_jsonl(p: Path) -> list[dict]:
    """Rows of a JSON-lines log; a torn last line (no newline yet: a crash mid-write) is ignored."""
    p = Path(p)
    return parse_jsonl(p.read_text(), str(p)) if p.exists() else []


def parse_jsonl(text: str, where: str) -> list[dict]:
    """`read_jsonl` of a log's text (read from `where`)."""
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines[:-1]):  # lines[-1] is "" or the unterminated (torn) tail
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: line {i + 1} is not JSON ({e})") from None
    return rows


def read_metrics(run_dir) -> list[dict]:
    """Rows of `run_dir/metrics.jsonl`, by step."""
    return read_jsonl(Path(run_dir) / METRICS_JSONL)


def append_line(path: Path, row: dict) -> None:
    """Append one JSON line, flushed to disk, so a crash leaves at most a torn last line."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_csv(run_dir: Path, rows: list[dict]) -> None:
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(run_dir / METRICS_CSV, buf.getvalue())


class MetricsLog:
    """Rank 0's metrics: metrics.jsonl (appended, one flushed line per row), metrics.csv and
    TensorBoard events under `tensorboard/`. Opening it for a run resumed at `start_step` drops the
    rows (and TensorBoard events) an interrupted attempt logged past that step."""

    SCALARS = ("loss", "lr", "tokens_per_s", "mfu", "text_loss", "value_loss", "query_loss")

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.rows = [r for r in read_metrics(run_dir) if r["step"] <= start_step]
        write_text(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

    def log(self, row: dict) -> None:
        append_line(self.run_dir / METRICS_JSONL, row)
        self.rows.append(row)
        write_csv(self.run_dir, self.rows)
        for k in self.SCALARS:
            if row.get(k) is not None:
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _duration(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(row: dict, name: str = "") -> str:
    """One human-readable progress line of a metrics row."""
    steps = row.get("max_steps") or row["step"]
    parts = [f"pretrain[{name or row.get('variant', '?')}] step {row['step']}/{steps} "
             f"({100 * row['step'] / max(steps, 1):5.1f}%)", f"loss {row['loss']:.4f}"]
    for k in ("value_loss", "query_loss"):
        if row.get(k) is not None and row[k] == row[k]:  # skip NaN (no such tokens)
            parts.append(f"{k.removesuffix('_loss')} {row[k]:.4f}")
    parts.append(f"{row.get('tokens_per_s', 0):,.0f} tok/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    if "elapsed_s" in row:
        parts.append(f"elapsed {_duration(row['elapsed_s'])}")
    if row.get("eta_s") is not None:
        parts.append(f"eta {_duration(row['eta_s'])}")
    return " | ".join(parts)


class ProgressPrinter:
    """Follows a run's metrics.jsonl and attempts.jsonl from the driver and prints a progress line
    per new row (flushed), so progress shows even when workers' stdout is not forwarded."""

    def __init__(self, run, name: str = "", interval: float = 1.0, out=None):
        """`run`: the run directory, or the `lmlm.storage.Storage` the run keeps its logs in."""
        self.run, self.name, self.interval = run, name, interval
        self.out = out or sys.stdout
        self.n_attempts = len(self._read(ATTEMPTS_JSONL))
        self.last_step = float("inf")  # print nothing until this run's first attempt starts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmlm-progress", daemon=True)

    def poll(self) -> None:
        try:
            attempts, rows = self._read(ATTEMPTS_JSONL), self._read(METRICS_JSONL)
        except (OSError, ValueError):
            return  # being rewritten: try again at the next poll
        for a in attempts[self.n_attempts:]:
            self.last_step = a["start_step"]
            for c in a.get("corrupt", []):
                self._print(f"pretrain[{self.name}] {c['checkpoint']} could not be loaded ({c['error']}): "
                            f"moved to {c['moved_to']}")
            what = "starts" if a["start_step"] == 0 else "resumes at"
            self._print(f"pretrain[{self.name}] attempt {len(attempts)} {what} step {a['start_step']}/{a['steps']} "
                        f"on {a['world_size']} worker(s)")
        self.n_attempts = len(attempts)
        for r in rows:
            if r["step"] > self.last_step:
                self._print(progress_line(r, self.name))
                self.last_step = r["step"]

    def _read(self, name: str) -> list[dict]:
        if isinstance(self.run, (str, os.PathLike)):
            return read_jsonl(Path(self.run) / name)
        return parse_jsonl(self.run.read_text(name), self.run.uri_of(name)) if self.run.is_file(name) else []

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
