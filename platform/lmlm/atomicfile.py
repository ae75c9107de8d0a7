"""Atomic file writes: the one way the platform puts a file in place.

A file appears whole or not at all: it is written under a temporary name in the same directory,
flushed and fsynced, renamed over the destination, and the directory is fsynced so the rename
itself survives a crash. A done-marker written with these helpers, after the files it vouches for,
means those files are complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote (DeepSpeed, pyarrow), or a directory's entries (creations,
    renames), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_file  # the same call makes a directory's entries durable


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and directory under `path` (files a library wrote there, before a marker),
    deepest first; an entry another process renamed away meanwhile is that process's to sync."""
    for root, _, files in os.walk(path, topdown=False):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                fsync_file(os.path.join(root, f))
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(root)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a path (pyarrow, numpy, torch);
    on a clean exit it is fsynced and renamed to `path`; on an error it is removed and `path` is
    left as it was."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp's 0600 would hide a shared folder's files from other users
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **dump_kw) -> Path:
    """`obj` as JSON (UTF-8, `ensure_ascii=False`, `indent=1` unless given)."""
    dump_kw = {"ensure_ascii": False, "indent": 1, **dump_kw}
    return write_text(path, json.dumps(obj, **dump_kw))
