"""The platform's own annotation prompt: its format rules and its few-shot examples from the world."""
from __future__ import annotations

import json

import pytest

from lmlm.annotate.prompt import build_messages, load_prompt
from lmlm.annotate.prompt import PLACEHOLDER, SYSTEM, default_prompt, examples
from lmlm.format import strip_lookups, to_special


def test_prompt_shape_and_placeholder():
    messages = default_prompt()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == PLACEHOLDER
    assert sum(PLACEHOLDER in m["content"] for m in messages) == 1
    assert "[dblookup('Entity', 'Relation') -> Value]" in SYSTEM
    assert build_messages(messages, "Some text.")[-1] == {"role": "user", "content": "Some text."}
    assert default_prompt() == messages  # deterministic


def test_examples_are_valid_world_annotations():
    from lmlm.annotate.prompt import EXAMPLE_WORLD_SEED
    from lmlm.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(people=2, seed=EXAMPLE_WORLD_SEED))
    facts = {(t.entity, t.relation, t.value) for t in world.triples()}
    for plain, annotated in examples():
        parsed = to_special(annotated)
        assert parsed.drops == [] and len(parsed.lookups) >= 2
        assert strip_lookups(annotated) == plain and "dblookup" not in plain
        assert {(t.entity, t.relation, t.value) for t in parsed.triples} <= facts
        for t in parsed.triples:  # the value restated right after its call
            assert f"-> {t.value}] {t.value}" in annotated


def test_a_prompt_file_still_overrides(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"role": "user", "content": "Annotate: [INSERT_TEXT]"}]))
    assert load_prompt(str(path)) == [{"role": "user", "content": "Annotate: [INSERT_TEXT]"}]
    assert load_prompt("") == default_prompt()
    with pytest.raises(ValueError, match=r"prompt file .*missing\.json: cannot read"):
        load_prompt(str(tmp_path / "missing.json"))
