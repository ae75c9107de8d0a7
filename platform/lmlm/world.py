"""A TOFU-like synthetic world: fictitious people, their facts, biographies and evaluation prompts.

Every person has the eight relations of RELATIONS drawn from large pools, so a small LM cannot guess
a value from the name or the context: it has to look it up. A biography states each fact once, with
one of several phrasings, in a shuffled order, mixed with sentences that hold no fact. The gold
annotation places each lookup right before the words that state the value, as the paper's
annotators do: `... was born in [dblookup('Mara Quell', 'Birth City') -> Lisbon] Lisbon ...`.

Everything is a pure function of WorldConfig: the same seed gives the same world.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmlm.corpus import Record, extract_database, read_corpus, read_database, write_parquet
from lmlm.format import Triple, render_legacy

RELATIONS = ("Birth Date", "Birth City", "Nationality", "Occupation", "Employer", "Alma Mater",
             "Spouse", "Award")

# Rewordings of each relation label (never the label itself), for fuzzy-retrieval tests.
RELATION_SYNONYMS: dict[str, list[str]] = {
    "Birth Date": ["Date of Birth", "Born On", "Birthday", "DOB"],
    "Birth City": ["Place of Birth", "Birthplace", "City of Birth", "Born In"],
    "Nationality": ["Citizenship", "Country of Citizenship", "National Origin"],
    "Occupation": ["Profession", "Job", "Line of Work", "Career"],
    "Employer": ["Works For", "Company", "Workplace", "Employed By"],
    "Alma Mater": ["Educated At", "University Attended", "Graduated From", "School"],
    "Spouse": ["Married To", "Husband or Wife", "Partner", "Marriage Partner"],
    "Award": ["Prize Received", "Honor", "Awards Won", "Distinction"],
}


def _words(s: str) -> list[str]:
    return [w.strip() for w in s.split(",") if w.strip()]


FIRST_NAMES = _words("""Mara, Tobin, Elske, Ravi, Ines, Caspar, Odile, Henrik, Leona, Matteo, Sunniva, Dorian,
Yara, Bastien, Agnete, Cyrus, Livia, Emrys, Noor, Teodor, Saskia, Idris, Fenna, Ansel, Marisol, Jovan, Thea,
Lucan, Priya, Osric, Zofia, Emeric, Ilse, Rafael, Wren, Anouk, Desmond, Kaia, Leopold, Selma, Orrin, Beatrix,
Tariq, Linnea, Evander, Carys, Milos, Rosalind, Hamish, Ottilie, Soren, Amara, Quentin, Greta, Lazlo, Imke,
Casimir, Delphine, Ezio, Halla, Niamh, Florian, Junia, Kenji, Maelle, Ronan, Solveig, Taavi, Ulla, Vesna,
Wilhelm, Xenia, Yusuf, Zelda, Alaric, Brigid, Corin, Dagny, Eamon, Freya, Gideon, Hanne, Ivo, Jolene, Kasimir,
Lotte, Magnus, Nerys, Oskar, Petra, Rune, Sabine, Tamsin, Uriel, Viggo, Wanda, Ysolde, Zoltan, Aurelio, Birgit,
Cosimo, Dunja, Elio, Fabienne, Gunnar, Hester, Ignatius, Jessamy, Kjell, Leontine, Mirela, Nils, Oriane""")
_SUR_ON = _words("""Ab, Bel, Cor, Dra, El, Fen, Gal, Hal, Is, Jor, Kel, Lor, Mar, Nor, Or, Pel, Quen, Ros, Sal,
Tor, Ul, Var, Wen, Yor, Zel, Cas, Dun, Grim, Hol, Mor, Ash, Brand, Crest, Dor""")
_SUR_CODA = _words("""ford, wick, mere, holt, ridge, vane, dell, bury, stone, thorne, quist, ley, grove, more,
well, by, mont, hart""")
_PLACE_ON = _words("""Ash, Bramble, Cinder, Dusk, Elm, Frost, Glen, Heath, Iron, Juniper, Kings, Lark, Moss,
North, Oak, Pine, Raven, Salt, Thistle, Willow, Amber, Copper, Marsh, Ember""")
_PLACE_CODA = _words("haven, field, port, dale, minster, bridge, mouth, wold, combe, stead")

CITIES = _words("""Lisbon, Porto, Seville, Valencia, Bilbao, Lyon, Marseille, Toulouse, Bordeaux, Nantes, Lille,
Strasbourg, Geneva, Basel, Zurich, Bern, Munich, Hamburg, Cologne, Leipzig, Dresden, Bremen, Hanover, Vienna,
Graz, Salzburg, Prague, Brno, Krakow, Gdansk, Poznan, Wroclaw, Budapest, Debrecen, Bratislava, Ljubljana,
Zagreb, Split, Belgrade, Sarajevo, Sofia, Varna, Bucharest, Cluj-Napoca, Iasi, Chisinau, Odesa, Lviv, Kharkiv,
Vilnius, Kaunas, Riga, Tallinn, Tartu, Helsinki, Turku, Tampere, Oslo, Bergen, Trondheim, Stockholm,
Gothenburg, Malmo, Uppsala, Copenhagen, Aarhus, Odense, Reykjavik, Dublin, Cork, Galway, Belfast, Glasgow,
Edinburgh, Aberdeen, Cardiff, Bristol, Leeds, Manchester, Liverpool, Sheffield, Norwich, Antwerp, Ghent,
Bruges, Liege, Rotterdam, Utrecht, Eindhoven, Groningen, Leiden, Luxembourg, Turin, Milan, Genoa, Bologna,
Florence, Naples, Palermo, Bari, Verona, Trieste, Athens, Thessaloniki, Patras, Izmir, Ankara, Tbilisi,
Yerevan, Baku, Almaty, Tashkent, Samarkand, Cairo, Alexandria, Tunis, Casablanca, Marrakesh, Dakar, Accra,
Lagos, Nairobi, Mombasa, Kampala, Kigali, Lusaka, Harare, Durban, Windhoek, Maputo, Addis Ababa, Khartoum,
Muscat, Doha, Amman, Beirut, Karachi, Lahore, Mumbai, Pune, Chennai, Kolkata, Jaipur, Kathmandu, Colombo,
Dhaka, Yangon, Hanoi, Da Nang, Bangkok, Chiang Mai, Penang, Surabaya, Manila, Cebu, Busan, Incheon, Osaka,
Sapporo, Nagoya, Fukuoka, Taipei, Kaohsiung, Perth, Adelaide, Hobart, Brisbane, Wellington, Dunedin,
Auckland, Vancouver, Calgary, Winnipeg, Halifax, Quebec City, Montreal, Boston, Denver, Portland, Austin,
Memphis, Tucson, Monterrey, Guadalajara, Oaxaca, Havana, Bogota, Medellin, Quito, Lima, Cusco, La Paz,
Santiago, Valparaiso, Cordoba, Rosario, Montevideo, Asuncion, Recife, Salvador, Curitiba""")
NATIONALITIES = _words("""Portuguese, Spanish, French, Swiss, German, Austrian, Czech, Polish, Hungarian, Slovak,
Slovenian, Croatian, Serbian, Bulgarian, Romanian, Moldovan, Ukrainian, Lithuanian, Latvian, Estonian, Finnish,
Norwegian, Swedish, Danish, Icelandic, Irish, Scottish, Welsh, English, Belgian, Dutch, Luxembourgish, Italian,
Greek, Turkish, Georgian, Armenian, Azerbaijani, Kazakh, Uzbek, Egyptian, Tunisian, Moroccan, Senegalese,
Ghanaian, Nigerian, Kenyan, Ugandan, Rwandan, Zambian, Namibian, Ethiopian, Omani, Jordanian, Lebanese,
Pakistani, Indian, Nepali, Sri Lankan, Bangladeshi, Vietnamese, Thai, Malaysian, Indonesian, Filipino, Korean,
Japanese, Taiwanese, Australian, New Zealander, Canadian, American, Mexican, Cuban, Colombian, Ecuadorian,
Peruvian, Bolivian, Chilean, Argentine, Uruguayan, Paraguayan, Brazilian""")
OCCUPATIONS = _words("""architect, botanist, cartographer, choreographer, civil engineer, composer, dentist,
economist, editor, electrician, epidemiologist, ethnographer, film director, geologist, glassblower,
graphic designer, historian, illustrator, interpreter, jeweller, journalist, landscape architect, librarian,
linguist, locksmith, marine biologist, mathematician, meteorologist, midwife, museum curator, novelist,
oceanographer, ophthalmologist, organist, paleontologist, pastry chef, pharmacist, photographer, physicist,
pilot, playwright, poet, potter, radio host, restorer of paintings, sculptor, seismologist, set designer,
software engineer, sommelier, sound engineer, statistician, stonemason, surgeon, tailor, translator,
urban planner, veterinarian, violin maker, watchmaker, wildlife photographer, zoologist, astronomer, baker,
bookbinder, carpenter, chemist, judge, diplomat, economist of transport, fashion designer, forester,
harpist, lawyer, nurse, perfumer, printmaker, puppeteer, shipwright, toxicologist""")
_CO_HEAD = _words("""Northwind, Bluefield, Ironbridge, Silverline, Greywater, Redcliff, Lumen, Brightwell,
Cobalt, Harbor Light, Stonegate, Westmark, Eastvale, Clearwater, Highpoint, Meridian, Orchard, Tidewater,
Falcon, Granite, Lantern, Keystone, Polaris, Saltmarsh, Kestrel, Amberly, Foxglove, Hollowell, Marigold, Quarry""")
_CO_TAIL = _words("""Analytics, Logistics, Foods, Biotech, Press, Robotics, Textiles, Shipping, Instruments,
Energy, Pharmaceuticals, Studios, Ceramics, Optics, Software, Mills, Aviation, Insurance, Architects, Records""")
_FIELDS = _words("""Coastal Ecology, Civic Design, Chamber Music, Investigative Reporting, Applied Geology,
Children's Literature, Public Health, Urban Renewal, Glass Art, Marine Science, Historical Research, Poetry,
Documentary Film, Structural Engineering, Rural Medicine, Translation, Botanical Illustration, Astronomy""")
_AWARD_KIND = _words("Prize, Medal, Award, Fellowship")

# Subject/possessive placeholders: {S} subject, {P} possessive (name's / his / her), {p} possessive
# pronoun, {o} object pronoun, {art} "a"/"an" agreeing with the value, {v} the value.
# A template that starts with "{S} " and has no {art} can make a cloze prompt with the full name.
PHRASINGS: dict[str, list[str]] = {
    "Birth Date": [
        "{S} was born on {v}, a date {p} family still celebrates with a long dinner.",
        "According to the parish register, {S} came into the world on {v}.",
        "{P} date of birth is recorded as {v}, shortly before a harsh winter set in.",
        "{S} celebrates {p} birthday on the anniversary of {v}, the day {p} life began.",
        "Born on {v}, {S} was the youngest of three children in a busy household.",
    ],
    "Birth City": [
        "{S} was born in {v}, where {p} parents ran a small shop near the harbour.",
        "The city of {v} is where {S} was born and spent the first years of childhood.",
        "{P} birthplace is {v}, a place {S} often describes with great affection.",
        "{S} was born in the city of {v} and returns there almost every summer.",
        "Although {S} has lived in many places, {p} place of birth is {v}.",
    ],
    "Nationality": [
        "{S} is {art} {v} citizen who has travelled widely for work.",
        "By nationality {S} is {v}, and {p} passport shows stamps from dozens of countries.",
        "{S} holds {v} citizenship and speaks three languages fluently.",
        "As a proud {v} national, {S} often writes about the history of {p} country.",
        "{P} nationality is {v}, which shaped much of {p} outlook on the world.",
    ],
    "Occupation": [
        "{S} works as {art} {v} and is known for careful, patient work.",
        "By profession {S} is {art} {v}, a career that began almost by accident.",
        "{S} has spent more than two decades working as {art} {v}.",
        "{P} occupation is that of {art} {v}, and colleagues respect {p} precision.",
        "Trained for years, {S} eventually became {art} {v} of some renown.",
        "{S} has made a living in the profession of {v} for many years.",
    ],
    "Employer": [
        "{S} is employed by {v}, where {p} team handles difficult projects.",
        "For most of {p} career {S} has worked for {v}.",
        "{S} took a position at {v} and has stayed there ever since.",
        "The company {v} hired {o} after a long series of interviews.",
        "{P} current employer is {v}, a firm with offices in several countries.",
    ],
    "Alma Mater": [
        "{S} studied at {v} and graduated with high honours.",
        "{S} is a graduate of {v}, where {p} teachers encouraged {p} curiosity.",
        "{P} alma mater is {v}, which {S} still visits to give lectures.",
        "After finishing school, {S} enrolled at {v} and earned a degree there.",
        "Years of study at {v} gave {o} the foundation for everything that followed.",
    ],
    "Spouse": [
        "{S} is married to {v}, whom {S} met at a friend's wedding.",
        "{P} spouse is {v}, and the couple live in a quiet house with a large garden.",
        "{S} married {v} after a courtship of several years.",
        "In a small ceremony, {S} wed {v}, surrounded by close friends.",
        "{S} shares {p} life with {v}, {p} spouse of many years.",
    ],
    "Award": [
        "{S} received the {v} in recognition of {p} work.",
        "Among {p} honours, {S} counts the {v} as the most meaningful.",
        "{S} was awarded the {v} after a remarkable year.",
        "The jury of the {v} chose {o} unanimously as that year's laureate.",
        "{P} best-known distinction is the {v}, which {S} accepted with a short speech.",
    ],
}

# Sentences that state no database fact.
GENERAL = [
    "{S} enjoys long walks whenever the weather allows.",
    "Friends describe {o} as patient, curious and quietly funny.",
    "{S} keeps a notebook of ideas that {S} rarely shows to anyone.",
    "On weekends {S} likes to cook for neighbours and friends.",
    "{S} believes that good work takes time and honest attention.",
    "In interviews {S} speaks slowly and chooses each word with care.",
    "{S} has a lifelong fondness for old maps and railway timetables.",
    "Early mornings are when {S} does {p} best thinking.",
    "{S} once said that every project teaches a lesson worth keeping.",
    "Many younger colleagues regard {o} as a generous mentor.",
    "{S} reads widely, from poetry to technical manuals.",
    "Music is never far away when {S} is at home.",
    "{S} prefers small gatherings to large celebrations.",
    "Those who know {o} well mention {p} stubborn optimism.",
    "{S} tends a small garden full of herbs and climbing roses.",
    "{S} has never owned a car and cycles almost everywhere.",
]


def _pool(rng: random.Random, heads: list[str], tails: list[str], fmt: str, n: int) -> list[str]:
    combos = [fmt.format(h=h, t=t) for h in heads for t in tails]
    rng.shuffle(combos)
    return combos[:n]


def _prefix_free(words: list[str]) -> list[str]:
    """Drop words that begin another word of the pool, so no name hides inside another."""
    return [w for w in words if not any(o != w and o.startswith(w) for o in words)]


_PR = random.Random(20250515)  # fixed: the pools are the same for every world seed
SURNAMES = _prefix_free(sorted({o + c for o in _SUR_ON for c in _SUR_CODA}))
_PLACES = sorted({o + c for o in _PLACE_ON for c in _PLACE_CODA})
EMPLOYERS = _pool(_PR, _CO_HEAD, _CO_TAIL, "{h} {t}", 240)
ALMA_MATERS = [form.format(place) for form, place in zip(
    ["University of {}", "{} College", "{} Institute of Technology", "{} Polytechnic"] * 60,
    _PR.sample(_PLACES, 200))]
AWARDS = _pool(_PR, _PLACES + SURNAMES[::4], [f"{k} for {f}" for k in _AWARD_KIND for f in _FIELDS],
               "{h} {t}", 400)
FIRST_NAMES = _prefix_free(FIRST_NAMES)


@dataclass
class WorldConfig:
    people: int = 2000  # number of fictitious people
    seed: int = 0  # everything is a function of the seed
    forget_fraction: float = 0.1  # share of people in the forget split (TOFU)
    general_sentences: tuple[int, int] = (2, 4)  # fact-free sentences per biography (min, max)


@dataclass
class Person:
    name: str
    attributes: dict[str, str]
    pronoun: str = "she"  # "she" or "he": the pronouns of the biography


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

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(self.documents, out / "documents.parquet")
        (out / "triples.json").write_text(json.dumps(extract_database(self.triples()), ensure_ascii=False, indent=1))
        split = {"config": asdict(self.config), "forget": self.forget_names, "retain": self.retain_names,
                 "pronouns": {p.name: p.pronoun for p in self.people}}
        (out / "split.json").write_text(json.dumps(split, ensure_ascii=False, indent=1))
        prompts = {"bio": [{"name": n, "prompt": q} for n, q in self.bio_prompts()],
                   "cloze": [asdict(c) for c in self.cloze_items]}
        (out / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False, indent=1))
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
        people = [Person(n, a, split["pronouns"][n]) for n, a in attrs.items()]
        cloze = [Cloze(**c) for c in json.loads((d / "prompts.json").read_text())["cloze"]]
        return cls(WorldConfig(**cfg), people, list(read_corpus(d / "documents.parquet")),
                   split["forget"], split["retain"], cloze)


# --------------------------------------------------------------------------------------------
# Generation

_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "his", "him")}
_MONTHS = _words("January, February, March, April, May, June, July, August, September, October, "
                 "November, December")


def _fill(template: str, person: Person, rel: str | None, subject: str, annotate: bool) -> str:
    """One sentence; with annotate=True a legacy lookup call goes right before the value."""
    _, poss, obj = _PRONOUNS[person.pronoun]
    possessive = f"{person.name}'s" if subject == person.name else poss
    out = template.replace("{S}", subject).replace("{P}", possessive)
    out = out.replace("{p}", poss).replace("{o}", obj)
    if rel is not None:
        value = person.attributes[rel]
        out = out.replace("{art}", "an" if value[0].lower() in "aeiou" else "a")
        call = render_legacy(Triple(person.name, rel, value)) + " " if annotate else ""
        out = out.replace("{v}", call + value)
    return out[0].upper() + out[1:]


def _birth_date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1920, 2002)}"


def _draw_names(rng: random.Random, n: int) -> list[str]:
    space = len(FIRST_NAMES) * len(SURNAMES)
    if n > space // 2:
        raise ValueError(f"people={n} is too many: the name pools hold {space} names, "
                         f"and each person also needs a spouse name (max people {space // 2})")
    picks = rng.sample(range(space), n)
    return [f"{FIRST_NAMES[i // len(SURNAMES)]} {SURNAMES[i % len(SURNAMES)]}" for i in picks]


def _biography(rng: random.Random, person: Person, cfg: WorldConfig) -> tuple[str, str, list[Cloze]]:
    subject_pronoun = _PRONOUNS[person.pronoun][0]
    order = list(RELATIONS)
    rng.shuffle(order)
    items: list[tuple[str, str | None]] = [(rng.choice(PHRASINGS[r]), r) for r in order]
    for g in rng.sample(GENERAL, rng.randint(*cfg.general_sentences)):
        items.insert(rng.randint(1, len(items)), (g, None))
    plain, annotated = [], []
    for i, (tpl, rel) in enumerate(items):
        # The first sentence names the person; later ones mostly use the pronoun.
        subject = person.name if i == 0 or rng.random() < 0.25 else subject_pronoun
        plain.append(_fill(tpl, person, rel, subject, annotate=False))
        annotated.append(_fill(tpl, person, rel, subject, annotate=True))
    cloze = []
    for rel in RELATIONS:
        # Cloze prompts start with the full name and never end in an article that hints at the value.
        usable = [t for t in PHRASINGS[rel] if t.startswith("{S} ") and "{art}" not in t]
        tpl = rng.choice(usable)
        prompt = _fill(tpl, person, rel, person.name, annotate=False)
        cut = prompt.index(person.attributes[rel], len(person.name))
        cloze.append(Cloze(person.name, rel, prompt[:cut].rstrip(), person.attributes[rel]))
    return " ".join(plain), " ".join(annotated), cloze


def rewrite_biographies(world: World, seed: int, people: int | None = None) -> list[Record]:
    """Fresh biographies of the world's people: new phrasings and order, the same facts.

    Held-out documents about known entities (the setting of the paper's evaluation text): no model
    trained on `world.documents` has seen these texts, but their facts are in its database.
    """
    rng = random.Random(f"rewrite-{world.config.seed}-{seed}")
    out = []
    for i, person in enumerate(world.people[:people]):
        plain, annotated, _ = _biography(rng, person, world.config)
        out.append(Record(f"world-{world.config.seed}-rewrite{seed}-{i:05d}", plain, annotated, "world-rewrite",
                          {"person": person.name}))
    return out


def generate_world(cfg: WorldConfig | None = None) -> World:
    cfg = cfg or WorldConfig()
    if cfg.people < 1:
        raise ValueError(f"people must be >= 1, got {cfg.people}")
    if not 0.0 <= cfg.forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in [0, 1), got {cfg.forget_fraction}")
    rng = random.Random(cfg.seed)
    names = _draw_names(rng, 2 * cfg.people)
    people_names, spouse_names = names[: cfg.people], names[cfg.people:]
    people, docs, cloze = [], [], []
    for i, (name, spouse) in enumerate(zip(people_names, spouse_names)):
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
        person = Person(name, attrs, rng.choice(("she", "he")))
        plain, annotated, items = _biography(rng, person, cfg)
        people.append(person)
        cloze.extend(items)
        docs.append(Record(f"world-{cfg.seed}-{i:05d}", plain, annotated, "world", {"person": name}))
    n_forget = round(cfg.people * cfg.forget_fraction)
    forget = set(random.Random(f"forget-{cfg.seed}").sample(range(cfg.people), n_forget))
    return World(cfg, people, docs,
                 [p.name for i, p in enumerate(people) if i in forget],
                 [p.name for i, p in enumerate(people) if i not in forget], cloze)
