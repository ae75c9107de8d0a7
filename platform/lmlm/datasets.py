"""Data sets by name: where each file comes from, its size and SHA-256, and a verified local copy.

    fetch("lmlm-wiki")                       -> the data set's folder, every file present and verified
    dataset_file("lmlm-wiki", "LICENSE")     -> one file of it, fetched and verified

A data set `name` lives in `$LMLM_DATA_DIR/<name>/` when LMLM_DATA_DIR is set (a read-only local
copy is fine: valid files are only read), else in `<user cache dir>/lmlm/data/<name>/`. A missing
file is downloaded from the data set's source (LMLM_DATA_URL, or the `base_url` argument, replaces
the source's base URL, e.g. for a mirror or a test server) into a temporary file in the same folder,
and renamed into place only after its size and checksum verify, so the final path never holds a
partial file. A present file with the wrong size or checksum is an error, never silently replaced;
`force=True` downloads every file again and replaces each one only once the new copy verifies.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lmlm.atomicfile import replacing

DATA_DIR_ENV = "LMLM_DATA_DIR"  # folder holding data sets by name (<dir>/<name>/...)
DATA_URL_ENV = "LMLM_DATA_URL"  # replaces every data set's base URL (files at <url>/<source path>)
CHUNK = 1 << 16


class DatasetError(RuntimeError):
    """A data set that cannot be obtained or verified; the message names the file and the problem."""


@dataclass(frozen=True)
class DataFile:
    name: str  # path inside the data set folder
    source: str  # path inside the source (appended to the base URL)
    size: int  # bytes
    sha256: str


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    homepage: str
    license: str
    base_url: str  # files are downloaded from <base_url>/<DataFile.source>
    files: tuple[DataFile, ...]

    def file(self, filename: str) -> DataFile:
        for f in self.files:
            if f.name == filename:
                return f
        known = ", ".join(f.name for f in self.files)
        raise DatasetError(f"data set {self.name}: no file {filename!r} (files: {known})")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


_LMLM_REPO = "https://github.com/kilian-group/LMLM"

REGISTRY: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        name="lmlm-wiki",
        description="SQuAD and Wikipedia paragraphs annotated with lookup calls by the LMLM reference "
                    "release (GPT-4o seeds, its fine-tuned annotator), its extracted databases and prompts",
        homepage=_LMLM_REPO,
        license="MIT (Copyright (c) 2025 LMLM; the LICENSE file of the data set)",
        base_url="https://raw.githubusercontent.com/kilian-group/LMLM/main",
        files=(
            DataFile("LICENSE", "LICENSE", 1060,
                     "250867a42608c7a4c9761c114aaa5191959951bc29428777d4c0897149d923f7"),
            DataFile("squad-train1k_chatgpt_gpt4o-v7.1_cleaned.json",
                     "data/squad-train1k_chatgpt_gpt4o-v7.1_cleaned.json", 2608683,
                     "db90ca9ab879d6d9b0713375bb863a3de81965e739098786b941cba726a43b54"),
            DataFile("squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json",
                     "data/squad-eval100_chatgpt_gpt4o-v7.1_cleaned.json", 286714,
                     "c449cc950f5f4a6f218ea8984356bf77cf58475348f0c11919d5ec7ca075a149"),
            DataFile("dwiki-eval1k_annotator_llama-v6.1_cleaned.json",
                     "data/dwiki-eval1k_annotator_llama-v6.1_cleaned.json", 2654041,
                     "3e2781dd27bffeefa8a747ae0e9fd8e2def991895fed8a8e300ddbbb720e22b8"),
            DataFile("dwiki-eval100-annotator_database.json",
                     "data/database/dwiki-eval100-annotator_database.json", 124268,
                     "518daed1e220f9aa50d01fc0b04a2e2d413e54eaf39a11a0c6293ac904168c2b"),
            DataFile("prompt-annotator-v6.1.json", "prompts/llama-v6.1.json", 748,
                     "c6b628578b9908f23ed209572395999b61e438012ff63b43a1c7e645d48b32be"),
            DataFile("prompt-gpt4o-v7.1.json", "prompts/gpt4o-v7.1.json", 3703,
                     "88183946f1ea8590d29c83e64bdb5a3587501e83bb2a5bc565bba6be05687c90"),
            # the parity pair: an annotator output and the database the reference extracted from it
            DataFile("parity/squad-eval100_llama-LMLM-Annotator_llama-v6.1.json",
                     "output/annotation/squad-eval100_llama-LMLM-Annotator_llama-v6.1.json", 241832,
                     "f5a88fbc03e92f9321c66ade88f271f1bfbfe92aef17d6f64eb642e78db01403"),
            DataFile("parity/squad-eval100-Annotator_database.json",
                     "output/database/squad-eval100-Annotator_database.json", 6244,
                     "54b6e233e2283ec5b5a476ed9a95f7e532468caa59f428264550e1ad38638b1b"),
        ),
    ),
)}


def get(name: str) -> Dataset:
    """The registry entry of data set `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown data set {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


def data_root() -> Path:
    """$LMLM_DATA_DIR, else the user cache dir's `lmlm/data`."""
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lmlm")) / "data"


def dataset_dir(name: str) -> Path:
    """The folder of data set `name` (it may not exist yet; nothing is downloaded)."""
    return data_root() / get(name).name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# Files verified in this process, by (path, size, mtime_ns): a data set read many times is hashed once.
_verified: set[tuple[str, int, int]] = set()


def check(path: Path, f: DataFile, dataset: str) -> None:
    """Raise DatasetError unless `path` holds exactly `f` (size, then SHA-256)."""
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp in _verified:
        return
    where = f"{dataset}/{f.name} ({path})"
    if st.st_size != f.size:
        raise DatasetError(f"{where}: size {st.st_size} bytes, expected {f.size}")
    actual = sha256_of(path)
    if actual != f.sha256:
        raise DatasetError(f"{where}: SHA-256 {actual}, expected {f.sha256}")
    _verified.add(stamp)


def _download(url: str, dest: Path, f: DataFile, dataset: str, progress: bool) -> None:
    """`url` into `dest` through a temporary file beside it, renamed only once size and hash match."""
    import requests
    from tqdm import tqdm

    where = f"{dataset}/{f.name}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with replacing(dest) as tmp:
            h, n = hashlib.sha256(), 0
            with open(tmp, "wb") as out, \
                    tqdm(total=f.size, unit="B", unit_scale=True, desc=f.name, disable=not progress) as bar:
                try:
                    with requests.get(url, stream=True, timeout=(10, 60)) as r:
                        if r.status_code != 200:
                            raise DatasetError(f"{where}: HTTP {r.status_code} from {url}")
                        for block in r.iter_content(CHUNK):
                            out.write(block)
                            h.update(block)
                            n += len(block)
                            bar.update(len(block))
                            if n > f.size:
                                raise DatasetError(f"{where}: {url} sends more than the expected {f.size} bytes")
                except requests.RequestException as e:
                    raise DatasetError(f"{where}: download from {url} failed after {n} of {f.size} bytes "
                                       f"({type(e).__name__}: {e})") from e
            if n != f.size:
                raise DatasetError(f"{where}: downloaded {n} bytes from {url}, expected {f.size}")
            if h.hexdigest() != f.sha256:
                raise DatasetError(f"{where}: SHA-256 {h.hexdigest()} of the download from {url}, "
                                   f"expected {f.sha256}")
    except OSError as e:
        raise DatasetError(f"{where}: cannot write into {dest.parent} ({e})") from e
    st = dest.stat()
    _verified.add((str(dest), st.st_size, st.st_mtime_ns))


def _ensure(ds: Dataset, f: DataFile, force: bool, progress: bool, base_url: str | None) -> Path:
    dest = dataset_dir(ds.name) / f.name
    if dest.exists() and not force:
        try:
            check(dest, f, ds.name)
        except DatasetError as e:
            raise DatasetError(f"{e}; delete it, or run `lmlm data fetch {ds.name} --force`") from None
        return dest
    base = base_url or os.environ.get(DATA_URL_ENV) or ds.base_url
    _download(f"{base.rstrip('/')}/{f.source}", dest, f, ds.name, progress)
    check(dest, f, ds.name)
    return dest


def fetch(name: str, *, force: bool = False, progress: bool = True, base_url: str | None = None) -> Path:
    """The folder of data set `name`, every file present and verified; missing files are downloaded.

    A present file that fails verification raises DatasetError (delete it, or pass force=True).
    force=True downloads every file again, replacing each only after the new copy verifies.
    """
    ds = get(name)
    for f in ds.files:
        _ensure(ds, f, force, progress, base_url)
    return dataset_dir(name)


def dataset_file(name: str, filename: str, *, progress: bool = True, base_url: str | None = None) -> Path:
    """One file of data set `name` (its path inside the data set, e.g. "parity/x.json"), verified,
    downloaded first when missing."""
    ds = get(name)
    return _ensure(ds, ds.file(filename), False, progress, base_url)


def status(name: str) -> dict[str, str]:
    """Per file of data set `name`: "ok", "missing" or the verification error. Downloads nothing."""
    ds = get(name)
    out = {}
    for f in ds.files:
        path = dataset_dir(name) / f.name
        if not path.exists():
            out[f.name] = "missing"
            continue
        try:
            check(path, f, name)
            out[f.name] = "ok"
        except DatasetError as e:
            out[f.name] = str(e)
    return out
