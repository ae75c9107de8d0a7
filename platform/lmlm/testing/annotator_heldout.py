"""Evaluation documents no seed resembles: the synthetic world's facts written with the evaluation-only
NOVEL_PHRASINGS sentences (lmlm.world_text), about people named from a name pool the world never uses.

    heldout_documents(people, seed) -> list[Record]   # text and gold annotated_text

Every person and spouse name of a "novel" world is replaced, in the text and in the gold calls, by a
name drawn from HELDOUT_FIRST x HELDOUT_LAST, so neither the sentences nor the names occur in seeds
drawn from `generate_world` (any seed, phrasings "train").
"""
from __future__ import annotations

import random

from lmlm.corpus import Record
from lmlm.world import FIRST_NAMES, SURNAMES, WorldConfig, generate_world

_FIRST = ["Adaeze", "Aurelio", "Bartholomew", "Cosima", "Desmond", "Eulalia", "Ghislaine", "Hamza", "Amara", "Bongani", "Chiara", "Dmitri", "Esperanza", "Farhan", "Giulia", "Haruto", "Ingrid",
                 "Jomo", "Kalani", "Lucian", "Mireille", "Nnamdi", "Oksana", "Pradeep", "Quilla", "Rustam",
                 "Saoirse", "Tariq", "Ulrike", "Valentin", "Wanjiru", "Xiomara", "Yusuf", "Zofia"]
_LAST = ["Abernathy", "Balogun", "Castellanos", "Dubois", "Eriksen", "Fitzgerald", "Gonzaga", "Hakimi",
                "Iwasaki", "Jovanovic", "Kowalczyk", "Lindqvist", "Mbeki", "Nakamura", "Okonkwo", "Petrovic",
                "Quintero", "Rasmussen", "Szabo", "Tanaka", "Umarov", "Vasquez", "Whitfield", "Yilmaz", "Zapata"]

# (names the world's pools also hold are left out)
HELDOUT_FIRST = [n for n in _FIRST if n not in set(FIRST_NAMES) | set(SURNAMES)]
HELDOUT_LAST = [n for n in _LAST if n not in set(FIRST_NAMES) | set(SURNAMES)]


def heldout_documents(people: int, seed: int = 0) -> list[Record]:
    """`people` biographies in held-out sentences about people with held-out names (gold annotated)."""
    world = generate_world(WorldConfig(people=people, seed=seed, phrasings="novel"))
    pool = [f"{f} {s}" for f in HELDOUT_FIRST for s in HELDOUT_LAST]
    if 2 * people > len(pool):
        raise ValueError(f"people={people} is too many for the held-out name pool ({len(pool) // 2} at most)")
    names = random.Random(f"heldout-names-{seed}").sample(pool, 2 * people)
    out = []
    for k, (person, doc) in enumerate(zip(world.people, world.documents)):
        rename = {person.name: names[2 * k]}
        if "Spouse" in person.attributes:
            rename[person.attributes["Spouse"]] = names[2 * k + 1]
        text, annotated = doc.text, doc.annotated_text
        for old, new in rename.items():
            text, annotated = text.replace(old, new), annotated.replace(old, new)
        out.append(Record(f"heldout-{seed}-{k:05d}", text, annotated, "heldout", {"person": rename[person.name]}))
    return out
