"""Annotators the platform trains and saves: a directory of model files plus annotator.json.

    SavedAnnotator.save(dir) -> dir          # the model's files, then annotator.json (its meta, "kind" in it)
    SavedAnnotator.load(dir) -> annotator    # refuses a directory of another kind, or one missing files
    read_meta(dir, kind=None, files=()) -> dict   # the one reader of annotator.json

annotator.json is the marker of a whole annotator: it is removed before a save replaces any file and
written after every other file is on disk. Tagger directories saved before kinds were recorded have
no "kind": they read as "tagger". An annotator's provenance label is "<kind>:<fingerprint>", the
fingerprint a digest of its seeds and settings (`seed_fingerprint`).
"""
from __future__ import annotations

import abc
import json
import zlib
from pathlib import Path

from lmlm.annotate.base import Annotator
from lmlm.atomicfile import fsync_tree, write_json

META = "annotator.json"
LEGACY_KIND = "tagger"  # the kind of an annotator.json without one


def seed_fingerprint(annotated: list[str], *settings) -> str:
    """The provenance fingerprint of an annotator trained on these seeds with these settings."""
    return f"{zlib.crc32(json.dumps([annotated[:50], *settings]).encode()):08x}"


def read_meta(path: str | Path, kind: str | None = None, files: tuple[str, ...] = ()) -> dict:
    """annotator.json of the annotator saved in `path`, with its "kind". Given `kind`: the directory
    must also hold `files` and be of that kind."""
    p = Path(path)
    needed = (META, *files)
    if not all((p / f).is_file() for f in needed):
        raise FileNotFoundError(f"{p} is not a {kind or 'trained'} annotator directory (needs {', '.join(needed)}; "
                                "`lmlm train-annotator` writes one)")
    meta = json.loads((p / META).read_text())
    meta.setdefault("kind", LEGACY_KIND)
    if kind and meta["kind"] != kind:
        raise ValueError(f"{p} holds a {meta['kind']!r} annotator, not {kind!r}")
    return meta


class SavedAnnotator(Annotator):
    """An annotator with `meta` (what annotator.json holds) that saves into and loads from a directory.

    A subclass sets `kind` and `files` (what its directory holds besides annotator.json) and writes
    and reads them in `save_files` / `from_files`."""

    files: tuple[str, ...] = ()
    id_prefix = ""  # the provenance label's prefix when it is not the kind
    meta: dict

    @classmethod
    def id_of(cls, meta: dict) -> str:
        return f"{cls.id_prefix or cls.kind}:{meta.get('fingerprint', 'unsaved')}"

    @property
    def annotator_id(self) -> str:
        return self.id_of(self.meta)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)  # an older annotator here no longer counts once its files change
        self.save_files(out)
        fsync_tree(out)
        write_json(out / META, {**self.meta, "kind": self.kind})
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SavedAnnotator":
        p = Path(path)
        return cls.from_files(p, read_meta(p, cls.kind, cls.files))

    @abc.abstractmethod
    def save_files(self, out: Path) -> None:
        """Write this kind's files (`files`) into `out`; annotator.json is written after them."""

    @classmethod
    @abc.abstractmethod
    def from_files(cls, path: Path, meta: dict) -> "SavedAnnotator":
        """The annotator saved in `path`, whose annotator.json holds `meta`."""
