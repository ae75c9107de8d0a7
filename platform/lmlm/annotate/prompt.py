"""The platform's own annotation prompt for chat annotators (what an empty `prompt_path` means).

A system message that states the lookup-call format and its rules, then few-shot pairs (plain
document -> the same document with calls) cut from biographies of the synthetic world
(lmlm.world, a fixed seed), then the document to annotate in place of [INSERT_TEXT]; and the
reading of prompt files (`load_prompt`) and their filling (`build_messages`) for every chat annotator.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

PLACEHOLDER = "[INSERT_TEXT]"

SYSTEM = """\
You annotate documents for a language model that reads facts from a database instead of memorising \
them. Copy the document word for word and, right before each word span that states a specific fact, \
insert a lookup call:

[dblookup('Entity', 'Relation') -> Value]

- Entity: the full name of whom or what the fact is about (a person, place, organisation, work), \
written the same way in every call of the document, even where the text says "he", "she" or "it".
- Relation: a short, general, reusable label in title case, such as 'Birth Date', 'Employer' or \
'Capital' - never a phrase that already contains the value.
- Value: the answer, as short as possible, and exactly the words the text uses next. The call goes \
immediately before those words, which stay in the text after it.
- One fact per call. Annotate dates, places, names, numbers, titles, memberships and similar \
specific facts; leave opinions, general statements and common knowledge without calls.
- Use single quotes around Entity and Relation and no square brackets inside a call.
- Change nothing else: no added, removed or reworded text, no comments. Reply with the annotated \
document only."""

# Few-shot examples: the first sentences of these world biographies (WorldConfig(people=..., seed=...)).
EXAMPLE_WORLD_SEED = 7
EXAMPLE_DOCS = (0, 1)
EXAMPLE_SENTENCES = 4


def _first_sentences(text: str, n: int) -> str:
    return " ".join(re.split(r"(?<=\.) (?=[A-Z])", text)[:n])


def examples() -> list[tuple[str, str]]:
    """(plain text, annotated text) pairs from the synthetic world; a pure function of the constants."""
    from lmlm.format import strip_lookups
    from lmlm.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(people=max(EXAMPLE_DOCS) + 1, seed=EXAMPLE_WORLD_SEED))
    pairs = []
    for i in EXAMPLE_DOCS:
        annotated = _first_sentences(world.documents[i].annotated_text, EXAMPLE_SENTENCES)
        pairs.append((strip_lookups(annotated), annotated))
    return pairs


def default_prompt() -> list[dict]:
    """The chat messages: system, few-shot user/assistant pairs, and the user turn [INSERT_TEXT]."""
    messages = [{"role": "system", "content": SYSTEM}]
    for plain, annotated in examples():
        messages += [{"role": "user", "content": plain}, {"role": "assistant", "content": annotated}]
    return [*messages, {"role": "user", "content": PLACEHOLDER}]


def load_prompt(path: str | Path) -> list[dict]:
    """Chat messages of a prompt file (`[{"role", "content"}, ...]`), validated. "" is the platform's
    own prompt (lmlm.annotate.prompt)."""
    if not path:
        return default_prompt()
    p = Path(path)
    try:
        messages = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"prompt file {p}: cannot read a JSON list of messages ({e})") from e
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError(f"prompt file {p}: expected a list of {{'role': str, 'content': str}} messages")
    return messages


def build_messages(template: list[dict], text: str) -> list[dict]:
    """The template with the document in place of [INSERT_TEXT] (or appended as a user message)."""
    if any(PLACEHOLDER in m["content"] for m in template):
        return [{**m, "content": m["content"].replace(PLACEHOLDER, text)} for m in template]
    return [*template, {"role": "user", "content": text}]
