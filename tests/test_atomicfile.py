"""Atomic writes and done-markers written last: a save that fails half-way (a real filesystem error)
leaves no marker, so a rerun redoes the stage instead of resuming on half of it."""
from __future__ import annotations

import pytest

from lmlm import atomicfile


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomicfile.write_json(path, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomicfile.replacing(path) as tmp:
            tmp.write_text('{"step": 2')  # torn
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n "step": 1\n}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    atomicfile.write_text(path, "é")
    assert path.read_text(encoding="utf-8") == "é" and oct(path.stat().st_mode & 0o777) == "0o644"


def test_world_marker_is_written_last(tmp_path):
    from lmlm.world import World, WorldConfig, generate_world

    world = generate_world(WorldConfig(people=6, seed=3))
    out = tmp_path / "world"
    (out / "prompts.json").mkdir(parents=True)  # the save fails on its third file
    with pytest.raises(OSError):
        world.save(out)
    assert not (out / "documents.parquet").exists()  # so the world stage does not take it as saved
    (out / "prompts.json").rmdir()
    world.save(out)
    assert [p.name for p in World.load(out).people] == [p.name for p in world.people]


def test_annotator_marker_is_removed_first_and_written_last(tmp_path):
    from lmlm.annotate import fit_tagger
    from lmlm.world import WorldConfig, generate_world

    docs = [d.annotated_text for d in generate_world(WorldConfig(people=8, seed=4)).documents[:8]]
    tagger = fit_tagger(docs, epochs=1, log=lambda s: None)
    out = tagger.save(tmp_path / "ann")
    assert (out / "annotator.json").is_file()
    (out / "model.pt").unlink()
    (out / "model.pt").mkdir()  # the next save cannot write its weights
    with pytest.raises((OSError, RuntimeError)):  # torch reports a directory as a RuntimeError
        tagger.save(out)
    assert not (out / "annotator.json").exists()  # the older annotator no longer counts as whole
