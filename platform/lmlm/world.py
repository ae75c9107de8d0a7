"""A TOFU-like synthetic world: fictitious people, their facts, biographies and evaluation prompts.

Every person has the eight relations of RELATIONS drawn from large, long-tailed pools
(lmlm.world_text), so a small LM cannot guess a value from the name or the context: it has to look it
up. A biography states each fact once, with
one of several phrasings, in a shuffled order, mixed with sentences that hold no fact. The gold
annotation places each lookup right before the words that state the value, as the paper's
annotators do: `... was born in [dblookup('Mara Quell', 'Birth City') -> Lisbon] Lisbon ...`.

Everything is a pure function of WorldConfig: the same seed gives the same world.
"""
from __future__ import annotations

import dataclasses
import json
import random
from typing import Iterable, Literal
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmlm import atomicfile
from lmlm.corpus import Record, extract_database, read_corpus, read_database, write_parquet
from lmlm.format import UNKNOWN, Triple, render_legacy
from lmlm.world_text import (  # noqa: F401  (the pools are part of this module's interface)
    ALMA_MATERS,
    AWARDS,
    CITIES,
    EMPLOYERS,
    FIRST_NAMES,
    GENERAL,
    MONTHS,
    NATIONALITIES,
    NOVEL_GENERAL,
    NOVEL_PHRASINGS,
    OCCUPATIONS,
    OPENERS,
    PHRASINGS,
    RELATION_SYNONYMS,
    RELATIONS,
    SURNAMES,
    UNKNOWN_PHRASINGS,
    heldout_pair,
)
from lmlm.world_names import draw_heldout_names, draw_training_names


@dataclass
class WorldConfig:
    people: int = 2000  # number of fictitious people
    seed: int = 0  # everything is a function of the seed
    forget_fraction: float = 0.1  # share of people in the forget split (TOFU)
    general_sentences: tuple[int, int] = (2, 4)  # fact-free sentences per biography (min, max)
    name_mention_rate: float = 0.25  # chance a later sentence names the person instead of a pronoun
    # sentences of the documents: "train"; "heldout" (opener-phrasing pairs no training document
    # uses); "novel" (new sentences around familiar relation cues). The last two: evaluation only.
    phrasings: Literal["train", "heldout", "novel"] = "train"
    # share of facts the world does not know: the biography says so ("her alma mater is unknown")
    # after a lookup that returns "unknown"; the person has no triple for them (at most 4 per person)
    unknown_fact_rate: float = 0.0
    # share of names (people and spouses) drawn from lmlm.world_names' broad generated distribution
    # instead of FIRST_NAMES x SURNAMES: names no prior predicts, so lookups learn to copy them
    generated_name_rate: float = 0.0


@dataclass
class Person:
    name: str
    attributes: dict[str, str]  # the facts the world knows (its triples)
    pronoun: str = "she"  # "she" or "he": the pronouns of the biography
    unknown: list[str] = field(default_factory=list)  # relations the biography says are unknown


@dataclass
class Cloze:
    name: str
    relation: str
    prompt: str  # left context, ending right before the value (no trailing space)
    answer: str


@dataclass
class World:
    config: WorldConfig
    people: list[Person]
    documents: list[Record]
    forget_names: list[str]
    retain_names: list[str]
    cloze_items: list[Cloze] = field(default_factory=list)

    def triples(self) -> list[Triple]:
        return [Triple(p.name, r, v) for p in self.people for r, v in p.attributes.items()]

    def bio_prompts(self) -> list[tuple[str, str]]:
        return [(p.name, f"Tell me a bio of {p.name}. {p.name} is") for p in self.people]

    def cloze(self) -> list[Cloze]:
        return list(self.cloze_items)

    def only(self, names: Iterable[str]) -> "World":
        """This world restricted to the people named in `names` (their documents, split, cloze items)."""
        keep = set(names)
        people = [p for p in self.people if p.name in keep]
        return World(dataclasses.replace(self.config, people=len(people)), people,
                     [d for d in self.documents if d.meta.get("person") in keep],
                     [n for n in self.forget_names if n in keep], [n for n in self.retain_names if n in keep],
                     [c for c in self.cloze_items if c.name in keep])

    def save(self, out_dir: str | Path) -> Path:
        """Write the world; `documents.parquet`, the file that marks a saved world, goes last."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomicfile.write_json(out / "triples.json", extract_database(self.triples()))
        split = {"config": asdict(self.config), "forget": self.forget_names, "retain": self.retain_names,
                 "pronouns": {p.name: p.pronoun for p in self.people},
                 "unknown": {p.name: p.unknown for p in self.people if p.unknown}}
        atomicfile.write_json(out / "split.json", split)
        prompts = {"bio": [{"name": n, "prompt": q} for n, q in self.bio_prompts()],
                   "cloze": [asdict(c) for c in self.cloze_items]}
        atomicfile.write_json(out / "prompts.json", prompts)
        write_parquet(self.documents, out / "documents.parquet")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> "World":
        d = Path(out_dir)
        missing = [f for f in ("documents.parquet", "triples.json", "split.json", "prompts.json")
                   if not (d / f).exists()]
        if missing:
            raise FileNotFoundError(f"{d}: not a saved world, missing {', '.join(missing)}")
        split = json.loads((d / "split.json").read_text())
        cfg = split["config"]
        cfg["general_sentences"] = tuple(cfg["general_sentences"])
        attrs: dict[str, dict[str, str]] = {}
        for t in read_database(d / "triples.json"):
            attrs.setdefault(t.entity, {})[t.relation] = t.value
        unknown = split.get("unknown", {})
        people = [Person(n, a, split["pronouns"][n], unknown.get(n, [])) for n, a in attrs.items()]
        cloze = [Cloze(**c) for c in json.loads((d / "prompts.json").read_text())["cloze"]]
        return cls(WorldConfig(**cfg), people, list(read_corpus(d / "documents.parquet")),
                   split["forget"], split["retain"], cloze)


# --------------------------------------------------------------------------------------------
# Generation

_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "his", "him")}


def _fill(template: str, person: Person, rel: str | None, subject: str, annotate: bool) -> str:
    """One sentence; with annotate=True a legacy lookup call goes right before the value."""
    _, poss, obj = _PRONOUNS[person.pronoun]
    possessive = f"{person.name}'s" if subject == person.name else poss
    out = template.replace("{S}", subject).replace("{P}", possessive)
    out = out.replace("{p}", poss).replace("{o}", obj)
    if rel is not None:
        value = person.attributes.get(rel, UNKNOWN)
        out = out.replace("{art}", "an" if value[0].lower() in "aeiou" else "a")
        call = render_legacy(Triple(person.name, rel, value)) + " " if annotate else ""
        out = out.replace("{v}", call + value)
    return out[0].upper() + out[1:]


def _sentence(rng: random.Random, rel: str, phrasings: str) -> str:
    """A fact sentence template: train and heldout draw (opener, phrasing) pairs from their side of
    the split (train: no opener half of the time); novel draws a novel sentence."""
    if phrasings == "novel":
        return rng.choice(NOVEL_PHRASINGS[rel])
    j = rng.randrange(len(PHRASINGS[rel]))
    if phrasings == "train" and rng.random() < 0.5:
        return PHRASINGS[rel][j]
    side = phrasings == "heldout"
    i = rng.choice([i for i in range(len(OPENERS)) if heldout_pair(rel, i, j) == side])
    core = PHRASINGS[rel][j]
    return OPENERS[i] + (core if core.startswith("{") else core[0].lower() + core[1:])


def _birth_date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1920, 2002)}"


def _draw_names(rng: random.Random, n: int) -> list[str]:
    space = len(FIRST_NAMES) * len(SURNAMES)
    if n > space // 2:
        raise ValueError(f"people={n} is too many: the name pools hold {space} names, "
                         f"and each person also needs a spouse name (max people {space // 2})")
    picks = rng.sample(range(space), n)
    return [f"{FIRST_NAMES[i // len(SURNAMES)]} {SURNAMES[i % len(SURNAMES)]}" for i in picks]


def _biography(rng: random.Random, person: Person, cfg: WorldConfig) -> tuple[str, str, list[Cloze]]:
    subject_pronoun = _PRONOUNS[person.pronoun][0]
    phrasings, general = (NOVEL_PHRASINGS, NOVEL_GENERAL) if cfg.phrasings == "novel" else (PHRASINGS, GENERAL)
    order = list(RELATIONS)
    rng.shuffle(order)
    items: list[tuple[str, str | None]] = [
        (rng.choice(UNKNOWN_PHRASINGS[r]) if r in person.unknown else _sentence(rng, r, cfg.phrasings), r)
        for r in order]
    # The first sentence names the person: lead with a fact sentence that has a subject slot.
    first = next((k for k, (tpl, _) in enumerate(items) if "{S}" in tpl or "{P}" in tpl), None)
    if first is None:
        items.insert(0, (next(g for g in general if g.startswith("{S}")), None))
    else:
        items.insert(0, items.pop(first))
    for g in rng.sample(general, min(len(general), rng.randint(*cfg.general_sentences))):
        items.insert(rng.randint(1, len(items)), (g, None))
    plain, annotated = [], []
    for i, (tpl, rel) in enumerate(items):
        # The first sentence names the person; later ones mostly use the pronoun.
        subject = person.name if i == 0 or rng.random() < cfg.name_mention_rate else subject_pronoun
        plain.append(_fill(tpl, person, rel, subject, annotate=False))
        annotated.append(_fill(tpl, person, rel, subject, annotate=True))
    cloze = []
    for rel in (r for r in RELATIONS if r in person.attributes):
        # Cloze prompts start with the full name and never end in an article that hints at the value.
        usable = ([t for t in phrasings[rel] if t.startswith("{S} ") and "{art}" not in t]
                  or [t for t in PHRASINGS[rel] if t.startswith("{S} ") and "{art}" not in t])
        tpl = rng.choice(usable)
        prompt = _fill(tpl, person, rel, person.name, annotate=False)
        cut = prompt.index(person.attributes[rel], len(person.name))
        cloze.append(Cloze(person.name, rel, prompt[:cut].rstrip(), person.attributes[rel]))
    return " ".join(plain), " ".join(annotated), cloze


def rewrite_biographies(world: World, seed: int, people: int | None = None,
                        phrasings: Literal["train", "heldout", "novel"] = "heldout") -> list[Record]:
    """Fresh biographies of the world's people: new order and (by default) held-out phrasings, the
    same facts.

    Held-out documents about known entities (the setting of the paper's evaluation text): no model
    trained on `world.documents` has seen these texts, but their facts are in its database.
    """
    rng = random.Random(f"rewrite-{world.config.seed}-{seed}")
    cfg = dataclasses.replace(world.config, phrasings=phrasings)
    out = []
    for i, person in enumerate(world.people[:people]):
        plain, annotated, _ = _biography(rng, person, cfg)
        out.append(Record(f"world-{world.config.seed}-rewrite{seed}-{i:05d}", plain, annotated, "world-rewrite",
                          {"person": person.name}))
    return out


def generate_world(cfg: WorldConfig | None = None) -> World:
    cfg = cfg or WorldConfig()
    if cfg.people < 1:
        raise ValueError(f"people must be >= 1, got {cfg.people}")
    if not 0.0 <= cfg.forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in [0, 1), got {cfg.forget_fraction}")
    if not 0.0 <= cfg.name_mention_rate <= 1.0:
        raise ValueError(f"name_mention_rate must be in [0, 1], got {cfg.name_mention_rate}")
    if not 0.0 <= cfg.unknown_fact_rate <= 0.5:
        raise ValueError(f"unknown_fact_rate must be in [0, 0.5], got {cfg.unknown_fact_rate}")
    if cfg.phrasings not in ("train", "heldout", "novel"):
        raise ValueError(f"phrasings must be 'train', 'heldout' or 'novel', got {cfg.phrasings!r}")
    if not 0.0 <= cfg.generated_name_rate <= 1.0:
        raise ValueError(f"generated_name_rate must be in [0, 1], got {cfg.generated_name_rate}")
    rng = random.Random(cfg.seed)
    names = _draw_names(rng, 2 * cfg.people)
    if cfg.generated_name_rate:  # a stream of its own: rate 0 leaves the world as it was
        name_rng = random.Random(f"generated-names-{cfg.seed}")
        slots = [i for i in range(len(names)) if name_rng.random() < cfg.generated_name_rate]
        for i, name in zip(slots, draw_training_names(name_rng, len(slots))):
            names[i] = name
    # the unknown facts have their own stream: rate 0 leaves the world as it was
    people, docs, cloze = _populate(cfg, rng, random.Random(f"unknown-{cfg.seed}"), names, f"world-{cfg.seed}")
    n_forget = round(cfg.people * cfg.forget_fraction)
    forget = set(random.Random(f"forget-{cfg.seed}").sample(range(cfg.people), n_forget))
    return World(cfg, people, docs,
                 [p.name for i, p in enumerate(people) if i in forget],
                 [p.name for i, p in enumerate(people) if i not in forget], cloze)


def _populate(cfg: WorldConfig, rng: random.Random, unknown_rng: random.Random, names: list[str],
              id_prefix: str) -> tuple[list[Person], list[Record], list[Cloze]]:
    """People `names[:cfg.people]`, married to `names[cfg.people:]`: their facts, biographies
    (documents "<id_prefix>-00000", ...) and cloze items, drawn from `rng` (unknown facts: `unknown_rng`)."""
    people, docs, cloze = [], [], []
    for i, (name, spouse) in enumerate(zip(names[: cfg.people], names[cfg.people:])):
        attrs = {
            "Birth Date": _birth_date(rng),
            "Birth City": rng.choice(CITIES),
            "Nationality": rng.choice(NATIONALITIES),
            "Occupation": rng.choice(OCCUPATIONS),
            "Employer": rng.choice(EMPLOYERS),
            "Alma Mater": rng.choice(ALMA_MATERS),
            "Spouse": spouse,
            "Award": rng.choice(AWARDS),
        }
        n_unknown = sum(unknown_rng.random() < cfg.unknown_fact_rate for _ in RELATIONS)
        unknown = sorted(unknown_rng.sample(RELATIONS, min(n_unknown, 4))) if n_unknown else []
        person = Person(name, {r: v for r, v in attrs.items() if r not in unknown}, rng.choice(("she", "he")), unknown)
        plain, annotated, items = _biography(rng, person, cfg)
        people.append(person)
        cloze.extend(items)
        docs.append(Record(f"{id_prefix}-{i:05d}", plain, annotated, "world", {"person": name}))
    return people, docs, cloze


def unseen_world(world: World, people: int, seed: int, out_of_pool: int = 0) -> World:
    """`people` people absent from `world` (no name shared with its people or their spouses), with
    biographies in the held-out phrasings: knowledge no model trained on `world.documents` has seen.

    They are new combinations of the world's own first names and surnames (never generated names,
    whatever `generated_name_rate` the world has). `out_of_pool` more people
    follow them, they and their spouses named from lmlm.world_names' held-out distribution: no part
    of their names is a word of any training document (`lmlm.world_names.is_out_of_pool`). They are
    drawn from streams of their own, so the first `people` are the same whatever `out_of_pool` is.
    """
    taken = {p.name for p in world.people} | {p.attributes.get("Spouse") for p in world.people}
    cfg = dataclasses.replace(world.config, people=people + people // 5 + 10, seed=seed, phrasings="heldout",
                              generated_name_rate=0.0)
    other = generate_world(cfg)
    keep = [p for p in other.people if p.name not in taken and p.attributes.get("Spouse") not in taken][:people]
    names = {p.name for p in keep}
    docs = [d for d in other.documents if d.meta["person"] in names]
    cloze = [c for c in other.cloze_items if c.name in names]
    if out_of_pool:
        held_cfg = dataclasses.replace(cfg, people=out_of_pool)
        rng = random.Random(f"out-of-pool-{seed}")
        held, held_docs, held_cloze = _populate(held_cfg, rng, random.Random(f"out-of-pool-unknown-{seed}"),
                                                draw_heldout_names(rng, 2 * out_of_pool), f"world-{seed}-oop")
        keep, docs, cloze = keep + held, docs + held_docs, cloze + held_cloze
    return World(dataclasses.replace(cfg, people=len(keep)), keep, docs, [], sorted(p.name for p in keep), cloze)
