"""Run storage named by URI: the one place every node of a cluster reads and writes a run's files.

A `Storage` is a directory on any pyarrow filesystem, named by a local path or a URI (`file:///`,
`s3://bucket/prefix`, `gs://...`; credentials come from the environment as pyarrow reads them).
Nodes share nothing else: a worker that needs a directory (a tokenizer, start weights) takes a
node-local copy of it with `node_copy`, which downloads it once per node and content.

    store = Storage("s3://bucket/runs/demo")
    store.upload(local_dir, "tokenizer")
    tokenizer_dir = node_copy(store.uri_of("tokenizer"))   # on any node
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

NODE_CACHE_ENV = "LMLM_NODE_CACHE"  # where node_copy keeps its copies (default: <tmp>/lmlm-node-cache)
NODE_CACHE_MAX_GB_ENV = "LMLM_NODE_CACHE_MAX_GB"  # the copies' total size it keeps to (default 50)
NODE_CACHE_MAX_GB = 50.0
IDLE_BEFORE_EVICTION_S = 3600.0  # a copy used more recently than this is never removed
COPY_MARKER = ".lmlm-copy-complete"  # written last into a copy; its mtime is the copy's last use


def is_uri(location: str) -> bool:
    """A URI with a scheme (`file:///x`, `s3://b/x`), not a plain path (`runs/x`, `C:\\x`)."""
    return len(urlparse(str(location)).scheme) > 1


class Storage:
    """A directory on a pyarrow filesystem. Paths given to its methods are relative to it ("a/b")."""

    def __init__(self, location: str | os.PathLike):
        from pyarrow import fs as pafs

        location = str(location)
        if not location:
            raise ValueError("storage: empty location (give a folder or a URI such as s3://bucket/run)")
        if not is_uri(location):
            location = str(Path(location).resolve())
        try:
            self.fs, root = pafs.FileSystem.from_uri(location)
        except (ValueError, OSError) as e:
            raise ValueError(f"storage {location!r}: not a folder or URI pyarrow can open ({e})") from None
        self.root = root.rstrip("/") or "/"
        self.uri = location.rstrip("/")
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def child(self, rel: str) -> "Storage":
        return Storage(self.uri_of(rel))

    # -- inspection ----------------------------------------------------------------------------
    def _info(self, rel: str):
        return self.fs.get_file_info(self.path(rel))

    def is_file(self, rel: str) -> bool:
        from pyarrow import fs as pafs

        return self._info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        from pyarrow import fs as pafs

        return self._info(rel).type == pafs.FileType.Directory

    def listdir(self, rel: str = "") -> list[str]:
        """Names of the entries directly under `rel` (none when it does not exist), sorted."""
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def file_sizes(self, rel: str = "") -> dict[str, int]:
        """{path relative to `rel`: size} of every file under `rel` (recursively)."""
        from pyarrow import fs as pafs

        base = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    # -- reading and writing -------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file. On a local filesystem it is written under a temporary name and renamed
        into place; object stores make a single PUT visible whole."""
        if self.is_local:
            from lmlm.atomicfile import write_bytes

            write_bytes(self.path(rel), data)
            return
        self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    @contextmanager
    def writing(self, rel: str) -> Iterator[str]:
        """A path on `self.fs` for a writer that takes one (pyarrow's `filesystem=self.fs`), where `rel`
        appears whole: locally a temporary name renamed into place on a clean exit, elsewhere `rel`
        itself (an object store makes one PUT visible whole)."""
        if self.is_local:
            from lmlm.atomicfile import replacing

            with replacing(self.path(rel)) as tmp:
                yield str(tmp)
            return
        yield self.path(rel)

    def upload(self, local_dir: str | os.PathLike, rel: str) -> None:
        """Copy the files under the local directory `local_dir` to `rel` (files already there with
        other names stay)."""
        from pyarrow import fs as pafs

        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"upload: {local_dir} is not a directory")
        self.fs.create_dir(self.path(rel), recursive=True)
        pafs.copy_files(str(local_dir.resolve()), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs, use_threads=True)

    def upload_file(self, local: str | os.PathLike, rel: str) -> None:
        self.write_bytes(rel, Path(local).read_bytes())

    def download(self, rel: str, local_dir: str | os.PathLike, keep=None) -> Path:
        """Copy every file under `rel` into `local_dir` (created); `keep(relpath) -> bool` selects."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        files = self.file_sizes(rel)
        if not files and not self.is_dir(rel):
            raise FileNotFoundError(f"storage {self.uri_of(rel)}: no such directory")
        for name in files:
            if keep is not None and not keep(name):
                continue
            dest = local_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(f"{self.path(rel)}/{name}") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        return local_dir

    def delete(self, rel: str) -> None:
        """Remove the file or directory `rel` (nothing when it is not there)."""
        from pyarrow import fs as pafs

        info = self._info(rel)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def move(self, rel: str, new_rel: str) -> None:
        """Rename a directory: atomic on a local filesystem; elsewhere a copy, then the delete."""
        if self.is_local:
            os.rename(self.path(rel), self.path(new_rel))
            return
        from pyarrow import fs as pafs

        pafs.copy_files(self.path(rel), self.path(new_rel), source_filesystem=self.fs, destination_filesystem=self.fs)
        self.delete(rel)


def local_dir(location: str) -> str:
    """A directory this process can read: a URI's node copy (`node_copy`), a plain path as it is
    (a plain path is on a disk every reader sees)."""
    return node_copy(location) if is_uri(location) else str(location)


def node_copy(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A local directory with the files of the storage directory `location` (a folder or URI).

    The copy is made once per node and content (the cache key is the location and every file's
    name and size), under a temporary name renamed into place, so workers sharing a node share it
    and a half-made copy is never used. `cache_dir`: default `$LMLM_NODE_CACHE` or `<tmp>/lmlm-node-cache`.
    The cache keeps to `$LMLM_NODE_CACHE_MAX_GB` (default 50): a new copy evicts the least recently
    used ones (`prune_node_cache`).
    """
    store = Storage(location)
    sizes = store.file_sizes()
    if not sizes:
        raise FileNotFoundError(f"{location}: no such directory in storage, or it is empty")
    key = hashlib.sha1(repr((store.uri, sorted(sizes.items()))).encode()).hexdigest()[:20]
    root = Path(cache_dir or os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "lmlm-node-cache")
    dest = root / f"{Path(store.root).name}-{key}"
    try:
        os.utime(dest / COPY_MARKER)  # used now
        return str(dest)
    except FileNotFoundError:
        pass
    tmp = root / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    store.download("", tmp)
    (tmp / COPY_MARKER).write_text(store.uri + "\n")
    try:
        os.rename(tmp, dest)
    except OSError:  # another worker on this node finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / COPY_MARKER).is_file():
            raise
    max_gb = float(os.environ.get(NODE_CACHE_MAX_GB_ENV) or NODE_CACHE_MAX_GB)
    prune_node_cache(root, keep=dest, max_bytes=int(max_gb * 2**30))
    return str(dest)


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune_node_cache(root: str | os.PathLike, keep: str | os.PathLike, max_bytes: int,
                     min_idle_s: float = IDLE_BEFORE_EVICTION_S) -> list[str]:
    """Remove node copies under `root`, least recently used first, until they total at most
    `max_bytes`; never `keep`, nor a copy used in the last `min_idle_s` seconds (a reader may still
    be opening its files), so the cache may stay above the limit. Half-made copies a killed worker
    left (`.tmp-*`, a day old) go too. A copy is renamed away before it is deleted, so a reader never
    finds half of one. Returns the names removed."""
    root, now = Path(root), time.time()
    for tmp in root.glob(".tmp-*"):
        if now - tmp.stat().st_mtime > 86400:
            shutil.rmtree(tmp, ignore_errors=True)
    copies = []
    for d in root.iterdir():
        try:
            copies.append((d.joinpath(COPY_MARKER).stat().st_mtime, d, _tree_bytes(d)))
        except FileNotFoundError:  # not a finished copy (a temporary one, or removed meanwhile)
            continue
    total, removed = sum(size for _, _, size in copies), []
    for used, d, size in sorted(copies, key=lambda c: c[0]):
        if total <= max_bytes:
            break
        if d == Path(keep) or now - used < min_idle_s:
            continue
        trash = root / f".tmp-evicted-{d.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, trash)
        except OSError:  # another process evicted it first
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total -= size
        removed.append(d.name)
    return removed


_READER_SWITCH = threading.Lock()


def read_parquet(location, filesystem=None, **kwargs):
    """A lazy Ray Dataset of Parquet files: `location` is a folder or URI (its `*.parquet` files, by
    name) or a list of files on `filesystem`. One read task and block per file, in that order, read
    by Ray workers, so what is computed per block (packed training rows) depends on the files alone,
    not on the cluster's size or the files' sizes.

    Through Ray Data's first Parquet reader (the one its JSON, CSV and text readers still use): the
    newer one starts every read with a task that reads each file's footer in a pool of its own, about
    7 s per read on 2 cores whatever the size (10 of every 11 s that packing 60 documents took), and
    groups small files into blocks by size, out of their order."""
    import ray

    if isinstance(location, (str, os.PathLike)):
        store = Storage(location)
        files, filesystem = [store.path(f) for f in store.listdir() if f.endswith(".parquet")], store.fs
    else:
        files = [str(f) for f in location]
    if not files:
        raise FileNotFoundError(f"{location}: no Parquet files")
    ctx = ray.data.DataContext.get_current()
    with _READER_SWITCH:  # two threads reading at once restore the setting they found, not each other's
        before = ctx.use_datasource_v2
        ctx.use_datasource_v2 = False  # read when the Dataset is made; other datasets keep the default
        try:
            return ray.data.read_parquet(files, filesystem=filesystem, override_num_blocks=len(files), **kwargs)
        finally:
            ctx.use_datasource_v2 = before
