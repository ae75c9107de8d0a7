"""The words of the synthetic world (lmlm.world): relations, value pools, sentence templates.

Pools are large and partly compositional (surnames, places, employers, schools, awards), so values
form a long tail that a small LM cannot guess from a prior: it has to look them up.

A fact sentence is an optional OPENER clause followed by one of its relation's PHRASINGS. The
(opener, phrasing) pairs are split: `heldout_pair` marks a quarter of them that no training document
uses, so evaluation texts made of held-out pairs are sentences no model was trained on, built from
words and clauses it has seen in other sentences. NOVEL_PHRASINGS (with NOVEL_GENERAL) go further:
whole new sentences around a familiar relation cue, for the hardest, text-dominated measurement.
"""
from __future__ import annotations

import random

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
Cosimo, Dunja, Elio, Fabienne, Gunnar, Hester, Ignatius, Jessamy, Kjell, Leontine, Mirela, Nils, Oriane,
Adaeze, Benedikt, Chiara, Dmitri, Efua, Filippa, Goran, Hiroko, Ingrid, Jarek, Kalinda, Leif, Malak, Nadia,
Olusegun, Paloma, Rasmus, Siobhan, Thandiwe, Valentin, Wiebke, Ximena, Yevgenia, Zainab, Anselm, Bronwen,
Cillian, Dalia, Eero, Farida, Gwendolyn, Hugo, Isolde, Joaquin, Katrin, Lorcan, Mireille, Nikolai, Odalys,
Pernille, Radek, Svea, Tiberius, Ugne, Vasco, Winifred, Yannick, Zuzana, Amadou, Bettina, Cormac, Dragana,
Evert, Fiorella, Gaspard, Hedda, Ismail, Jutta, Konrad, Lavinia, Mattias, Nanna, Ottavio, Perpetua, Quirin,
Rowena, Stellan, Tuulikki, Umberto, Verity, Wolfgang, Yrsa, Zdenek, Achille, Blessing, Clemence, Diederik""")
_SUR_ON = _words("""Ab, Bel, Cor, Dra, El, Fen, Gal, Hal, Is, Jor, Kel, Lor, Mar, Nor, Or, Pel, Quen, Ros, Sal,
Tor, Ul, Var, Wen, Yor, Zel, Cas, Dun, Grim, Hol, Mor, Ash, Brand, Crest, Dor, Fair, Harl, Kirk, Lang, Pem,
Rad, Stan, Thorn, Wex, Blak, Cald, Egl, Gorm, Hump, Lind, Mal, Pres, Stow""")
_SUR_CODA = _words("""ford, wick, mere, holt, ridge, vane, dell, bury, stone, thorne, quist, ley, grove, more,
well, by, mont, hart, croft, dane, garth, hurst, lowe, marsh, rook, shaw, ton, worth""")
_PLACE_ON = _words("""Ash, Bramble, Cinder, Dusk, Elm, Frost, Glen, Heath, Iron, Juniper, Kings, Lark, Moss,
North, Oak, Pine, Raven, Salt, Thistle, Willow, Amber, Copper, Marsh, Ember, Birch, Clover, Drift, Fern, Gold,
Hazel, Ivy, Kestrel, Linden, Maple, Nettle, Otter, Quill, Rowan, Sedge, Tarn""")
_PLACE_CODA = _words("haven, field, port, dale, minster, bridge, mouth, wold, combe, stead, ford, hollow, gate")

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
Falcon, Granite, Lantern, Keystone, Polaris, Saltmarsh, Kestrel, Amberly, Foxglove, Hollowell, Marigold, Quarry,
Aldergrove, Beacon, Cedarline, Driftwood, Evergreen, Firecrest, Goldcrest, Heron, Indigo, Juniper, Larkspur,
Millstone, Nightjar, Oakridge, Pinnacle, Quicksilver, Riverbend, Sandpiper, Thornbury, Umber""")
_CO_TAIL = _words("""Analytics, Logistics, Foods, Biotech, Press, Robotics, Textiles, Shipping, Instruments,
Energy, Pharmaceuticals, Studios, Ceramics, Optics, Software, Mills, Aviation, Insurance, Architects, Records,
Laboratories, Publishing, Motors, Systems, Furniture, Foundry, Bank, Hotels""")
_FIELDS = _words("""Coastal Ecology, Civic Design, Chamber Music, Investigative Reporting, Applied Geology,
Children's Literature, Public Health, Urban Renewal, Glass Art, Marine Science, Historical Research, Poetry,
Documentary Film, Structural Engineering, Rural Medicine, Translation, Botanical Illustration, Astronomy,
Organic Chemistry, Folk Music, Landscape Painting, Science Writing, Bridge Design, Child Health, Soil Science,
Opera Direction, Typography, Arctic Exploration""")
_AWARD_KIND = _words("Prize, Medal, Award, Fellowship")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")

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


# What a biography says of a fact the world does not know (WorldConfig.unknown_fact_rate): the lookup
# returns lmlm.format.UNKNOWN (the store's own answer when it has none) and the text restates it, so a model
# learns to say so when the store has no answer.
UNKNOWN_PHRASINGS: dict[str, list[str]] = {
    "Birth Date": ["{P} date of birth is {v}, as no record of it survives."],
    "Birth City": ["{P} place of birth is {v}, and {S} rarely speaks of it."],
    "Nationality": ["{P} nationality is {v}, since {p} papers were lost long ago."],
    "Occupation": ["{P} occupation is {v} to the public."],
    "Employer": ["{P} current employer is {v}, as {S} prefers to keep it private."],
    "Alma Mater": ["{P} alma mater is {v}, and {S} never mentions school."],
    "Spouse": ["{P} spouse is {v} to the public."],
    "Award": ["{P} best-known distinction is {v} to the public."],
}


# Clauses that may open a fact sentence ({o}: the object pronoun). Training sentences use about half
# without one; `heldout_pair` keeps some (opener, phrasing) pairs for evaluation only.
OPENERS = ["In interviews, ", "As many colleagues know, ", "According to a recent profile, ", "By all accounts, ",
           "Friends often point out that ", "It is worth noting that ", "As the records show, ",
           "People who know {o} say that ", "Not everyone knows that ", "For the record, ", "Over the years, ",
           "Local newspapers have reported that "]


def heldout_pair(relation: str, opener: int, phrasing: int) -> bool:
    """Whether (OPENERS[opener], PHRASINGS[relation][phrasing]) is kept out of training documents."""
    return (opener + phrasing + RELATIONS.index(relation)) % 4 == 0


# Evaluation-only sentences (WorldConfig.phrasings="novel"): no training document uses them. Each is
# a new sentence around a cue phrase that training sentences also use right before the value ("was
# born in", "works as"), as text in the wild restates facts in new sentences with familiar relation
# words; everything around the cue is new.
NOVEL_PHRASINGS: dict[str, list[str]] = {
    "Birth Date": [
        "Records from the town hall say that {S} was born on {v}, during a storm.",
        "{S} came into the world on {v}, as the family bible still shows.",
    ],
    "Birth City": [
        "Long before any fame, {S} was born in {v}, a city of old bridges.",
        "Few readers know that {P} birthplace is {v}, not the capital.",
    ],
    "Nationality": [
        "On every form {S} fills in, {p} nationality is {v}, written in capitals.",
        "{S} holds {v} citizenship, as every document {S} signs makes clear.",
    ],
    "Occupation": [
        "Day to day, {S} works as {art} {v} in a crowded office.",
        "After many detours {S} eventually became {art} {v}, and has never regretted it.",
    ],
    "Employer": [
        "Each morning {S} heads out early, since {S} is employed by {v} downtown.",
        "Colleagues say that {P} current employer is {v}, which values experience.",
    ],
    "Alma Mater": [
        "Classmates remember that {S} studied at {v} with tireless energy.",
        "{S} enrolled at {v} after a gap year spent travelling.",
    ],
    "Spouse": [
        "Friends were delighted when {S} married {v} in early spring.",
        "At home, {S} is married to {v}, a patient and cheerful person.",
    ],
    "Award": [
        "At a crowded ceremony {S} received the {v}, to long applause.",
        "Late in {p} career {S} was awarded the {v} by a unanimous jury.",
    ],
}
NOVEL_GENERAL = [
    "{S} spends quiet evenings repairing old clocks.",
    "Neighbours often see {o} feeding the birds at dawn.",
    "{S} writes long letters by hand to old friends.",
    "Travel by night train is, for {o}, the only proper way to travel.",
]


def _pool(rng: random.Random, heads: list[str], tails: list[str], join, n: int) -> list[str]:
    """n distinct `join(head, tail)` values, in a shuffled order."""
    combos = sorted({join(h, t) for h in heads for t in tails})
    rng.shuffle(combos)
    return combos[:n]


def _prefix_free(words: list[str]) -> list[str]:
    """Drop words that begin another word of the pool, so no name hides inside another."""
    return [w for w in words if not any(o != w and o.startswith(w) for o in words)]


_PR = random.Random(20250515)  # fixed: the pools are the same for every world seed
SURNAMES = _prefix_free(sorted({o + c for o in _SUR_ON for c in _SUR_CODA}))
_PLACES = sorted({o + c for o in _PLACE_ON for c in _PLACE_CODA})
_SCHOOL_FORMS = ["University of {}", "{} College", "{} Institute of Technology", "{} Polytechnic",
                 "{} Academy of Arts", "{} School of Medicine"]
EMPLOYERS = _pool(_PR, _CO_HEAD, _CO_TAIL, "{} {}".format, 1500)
ALMA_MATERS = _pool(_PR, _SCHOOL_FORMS, _PLACES, str.format, 1500)
AWARDS = _pool(_PR, _PLACES + SURNAMES[::3], [f"{k} for {f}" for k in _AWARD_KIND for f in _FIELDS],
               "{} {}".format, 3000)
FIRST_NAMES = _prefix_free(FIRST_NAMES)
# every piece the composed pools are made of (lmlm.world_names keeps held-out names clear of them all)
POOL_PIECES = (*_SUR_ON, *_SUR_CODA, *_PLACE_ON, *_PLACE_CODA, *_PLACES, *_CO_HEAD, *_CO_TAIL, *_FIELDS,
               *_AWARD_KIND, *_SCHOOL_FORMS)


