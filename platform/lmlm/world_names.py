"""Held-out names: a name distribution that no training document of the synthetic world uses.

The training world (lmlm.world) names its people from lmlm.world_text's FIRST_NAMES x SURNAMES. The
names here measure whether an LMLM copies *any* name into its lookups, not just recombinations of
the pools it was trained on. They come from cultures and shapes absent from those pools:

- given + family names of fourteen cultures (Chinese, Vietnamese, Korean, Thai, Mongolian, Polynesian,
  Quechua, Turkish, Georgian, Basque, Ethiopian, Tamil, Persian, Icelandic), in the culture's order
  (family first for Chinese, Korean and Vietnamese, a middle name for Vietnamese), many with
  diacritics ("Nguyễn Thị Hương", "Çağrı Yıldız", "Þórdís Sigurðsson");
- particles: "Maarten van der Meulen", "Hamdan bin Rashid", "Benedita dos Anjos";
- hyphenated surnames ("Aroha Ngata-Quispe") and hyphenated given names ("Park Ji-woo");
- single-token names ("Sukarni"), initials ("T. K. Ramasamy");
- generated pronounceable strings ("Vokuteli Zanamo").

The training world can name a share of its people (`WorldConfig.generated_name_rate`) from a second,
broad distribution (`draw_training_names`): random pronounceable strings over a wide alphabet with
diacritics, in every shape above, so that a person's name cannot be predicted from a prior and the
only way to write it into a lookup is to copy it. Those names share letters with the held-out ones,
never a part: a generated part is redrawn when it (folded) is a held-out pool part, begins one or is
begun by one (4+ letters), or could begin a held-out generated string.

Contract (`draw_heldout_names`, checked by tests/test_world_names.py): every name part (the name split
at whitespace and hyphens, "." stripped, lower-cased, diacritics folded) is no word that the
training world can write (`TRAINING_WORDS`: every word of world_text's pools, pool pieces, sentence
templates, relation labels and month names, the same words tokenised as training documents are)
and begins with no training first name or surname of 4+ letters ("Anselmo" is not held out, since
"Anselm" is trained). Pool entries that break the rule are dropped when this module loads and
generated strings are redrawn, so the guarantee does not depend on the lists below being right.
Drawn names are distinct and none occurs inside another (so finding a name in text is exact).
"""
from __future__ import annotations

import random
import re
import unicodedata
from typing import Iterable

from lmlm import world_text as wt
from lmlm.format import UNKNOWN

_WORD = re.compile(r"[^\W\d_]+")


def fold(s: str) -> str:
    """Lower-cased, diacritics removed ("Çelik" -> "celik"); letters without a decomposition stay."""
    return "".join(c for c in unicodedata.normalize("NFKD", s.casefold()) if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The folded words of a text: runs of letters (digits, "_" and punctuation split them)."""
    return _WORD.findall(fold(text))


def name_parts(name: str) -> list[str]:
    """A name's parts: split at whitespace and hyphens, "." stripped, folded ("T. Ji-woo" -> t, ji, woo)."""
    return [p for p in (fold(x).strip(".") for x in re.split(r"[\s\-]+", name)) if p]


def _training_words() -> frozenset[str]:
    texts: list[str] = [UNKNOWN, "she he her his him a an"]  # the value and the {p} {o} {art} slots
    for pool in (wt.FIRST_NAMES, wt.SURNAMES, wt.CITIES, wt.NATIONALITIES, wt.OCCUPATIONS, wt.EMPLOYERS,
                 wt.ALMA_MATERS, wt.AWARDS, wt.RELATIONS, wt.GENERAL, wt.OPENERS, wt.NOVEL_GENERAL, wt.MONTHS,
                 wt.POOL_PIECES):
        texts.extend(pool)
    for table in (wt.PHRASINGS, wt.UNKNOWN_PHRASINGS, wt.NOVEL_PHRASINGS, wt.RELATION_SYNONYMS):
        texts.extend(s for ss in table.values() for s in ss)
    return frozenset(w for t in texts for w in words(t))


TRAINING_WORDS = _training_words()
_TRAINED_NAMES = frozenset(fold(n) for n in (*wt.FIRST_NAMES, *wt.SURNAMES) if len(n) >= 4)


def clashes(part: str) -> bool:
    """Whether a (folded) name part is a training word or begins with a trained name of 4+ letters."""
    return part in TRAINING_WORDS or any(part[:k] in _TRAINED_NAMES for k in range(4, len(part) + 1))


def is_out_of_pool(name: str) -> bool:
    """Whether no part of `name` is a word the training world can write (every part held out)."""
    parts = name_parts(name)
    return bool(parts) and not any(p in TRAINING_WORDS for p in parts)


def _keep(names: str) -> tuple[str, ...]:
    """The comma-separated entries whose every part is held out (see the module contract)."""
    entries = [w.strip() for w in names.split(",") if w.strip()]
    return tuple(e for e in entries if not any(clashes(p) for p in name_parts(e)))


# culture: (given names, family names, order); order "gf": given family, "fg": family given,
# "fmg": family, a middle name of VIETNAMESE_MIDDLE, given.
CULTURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "chinese": (_keep("Xiaoling, Jianguo, Meihua, Zhiwei, Yuting, Haoran, Xinyi, Zihan, Qiuyue, Guangming, Shufen"),
                _keep("Zhang, Liang, Huang, Zhou, Qian, Deng, Xie, Cao, Feng, Jiang, Tang, Xu"), "fg"),
    "vietnamese": (_keep("Hương, Tuấn, Dũng, Thảo, Phương, Khánh, Nhung, Quý, Bảo, Lan"),
                   _keep("Nguyễn, Trần, Phạm, Hoàng, Huỳnh, Võ, Đặng, Bùi, Đỗ"), "fmg"),
    "korean": (_keep("Ji-woo, Seo-yeon, Min-jun, Ha-eun, Do-yun, Ye-jin, Jae-hyun, Su-bin, Hyun-woo, Eun-ji"),
               _keep("Park, Choi, Jeong, Kang, Yoon, Jang, Lim, Shin, Seo"), "fg"),
    "thai": (_keep("Somchai, Siriporn, Anong, Kittisak, Pornthip, Wanida, Thanawat, Chanida, Nattapong, Ratchanee"),
             _keep("Wongsakul, Srisawat, Chaiyaporn, Rattanakorn, Thongchai, Boonmee, Sukprasert, Kaewmanee"), "gf"),
    "mongolian": (_keep("Batbayar, Oyuun, Enkhjargal, Ganbold, Sarangerel, Tsetseg, Munkhbat, Altantsetseg"),
                  _keep("Enkhbold, Batsaikhan, Dorjsuren, Ganzorig, Purevdorj, Tumurbaatar"), "gf"),
    "polynesian": (_keep("Aroha, Wiremu, Mereana, Tamati, Keoni, Leilani, Kahiau, Sefo, Losaline, Tevita"),
                   _keep("Ngata, Parata, Kahananui, Kealoha, Tuilagi, Faleolo, Kamakau, Tupou"), "gf"),
    "quechua": (_keep("Wayra, Killa, Inti, Sumaq, Amaru, Nina, Yupanki, Qori"),
                _keep("Mamani, Quispe, Condori, Huanca, Choque, Apaza, Ticona"), "gf"),
    "turkish": (_keep("Çağrı, Şebnem, Gökhan, Ayşegül, Oğuz, Ebru, Ilgın, Barış, Dilek, Mert"),
                _keep("Yıldız, Öztürk, Aydın, Çelik, Şahin, Doğan, Kılıç, Arslan, Korkmaz"), "gf"),
    "georgian": (_keep("Nino, Levan, Giorgi, Ketevan, Davit, Lasha, Eka, Zurab"),
                 _keep("Beridze, Kapanadze, Gelashvili, Lomidze, Tsiklauri, Khutsishvili, Japaridze, Chkheidze"), "gf"),
    "basque": (_keep("Itziar, Aitor, Nerea, Iker, Maialen, Unai, Garazi, Ander"),
               _keep("Etxeberria, Agirre, Goikoetxea, Urrutia, Zubizarreta, Arrieta, Larrañaga, Iturbe"), "gf"),
    "ethiopian": (_keep("Tigist, Abebe, Meseret, Dawit, Selamawit, Yonas, Hirut, Tesfaye"),
                  _keep("Bekele, Haile, Girma, Tadesse, Wolde, Alemu, Kebede, Negash"), "gf"),
    "tamil": (_keep("Kavitha, Senthil, Arulmozhi, Muthu, Thenmozhi, Karthikeyan, Valli, Ilango"),
              _keep("Ramasamy, Subramaniam, Annamalai, Palanisamy, Velusamy, Muthusamy"), "gf"),
    "persian": (_keep("Shirin, Dariush, Parisa, Kourosh, Golnar, Bahram, Mahsa, Arash"),
                _keep("Tehrani, Moradi, Rahimi, Jafari, Karimi, Sadeghi, Ahmadi"), "gf"),
    "icelandic": (_keep("Sigrún, Þórdís, Guðrún, Ásgeir, Hákon, Eiríkur, Bryndís"),
                  _keep("Hákonardóttir, Sigurðsson, Jónsdóttir, Guðmundsson, Einarsdóttir, Ólafsson"), "gf"),
}
VIETNAMESE_MIDDLE = _keep("Thị, Văn, Minh, Ngọc, Quang")
# given names, particles, family names: "Maarten van der Meulen", "Hamdan bin Rashid"
PARTICLE_CULTURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "dutch": (_keep("Maarten, Joost, Sanne, Femke, Bram, Lieke, Thijs, Marloes"),
              _keep("van der, van den, van, ter"),
              _keep("Meulen, Bosch, Dijk, Horst, Heuvel, Veen, Brink, Wetering")),
    "arabic": (_keep("Hamdan, Khalfan, Saeed, Rashid, Mubarak, Faisal, Nasser, Hamad, Obaid"),
               _keep("bin, ibn"),
               _keep("Hamdan, Khalfan, Saeed, Rashid, Mubarak, Faisal, Nasser, Hamad, Obaid")),
    "portuguese": (_keep("Benedita, Raimundo, Sebastião, Aparecida, Edivaldo, Rosângela"),
                   _keep("dos, das, do"),
                   _keep("Santos, Neves, Anjos, Reis, Prazeres, Nascimento")),
}
MONONYMS = _keep("Sukarni, Wiranto, Sulastri, Budiono, Mulyani, Suparman, Hartini, Winarno, Kartini, Sumarsih")
INITIALS = tuple(c.upper() for c in "bcdefghjklmnpqrtvwxyz" if not clashes(c))
_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "kh", "ts", "ny")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")

# shape: weight (shares of the drawn names)
SHAPES = {"native": 0.4, "particle": 0.1, "hyphenated": 0.1, "single": 0.1, "initials": 0.1, "generated": 0.2}


def _native(rng: random.Random) -> str:
    culture = rng.choice(sorted(CULTURES))
    given, family, order = CULTURES[culture]
    g, f = rng.choice(given), rng.choice(family)
    if order == "fmg":
        return f"{f} {rng.choice(VIETNAMESE_MIDDLE)} {g}"
    return f"{f} {g}" if order == "fg" else f"{g} {f}"


def _particle(rng: random.Random) -> str:
    given, particles, family = PARTICLE_CULTURES[rng.choice(sorted(PARTICLE_CULTURES))]
    return f"{rng.choice(given)} {rng.choice(particles)} {rng.choice(family)}"


def _hyphenated(rng: random.Random) -> str:
    a, b = rng.sample(sorted(CULTURES), 2)
    return f"{rng.choice(CULTURES[a][0])} {rng.choice(CULTURES[a][1])}-{rng.choice(CULTURES[b][1])}"


def _single(rng: random.Random) -> str:
    return rng.choice(MONONYMS) if rng.random() < 0.5 else _generated_word(rng, 3, 4)


def _initials(rng: random.Random) -> str:
    letters = " ".join(f"{c}." for c in rng.sample(INITIALS, rng.randint(1, 2)))
    return f"{letters} {rng.choice(CULTURES[rng.choice(sorted(CULTURES))][1])}"


def _generated_word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(lo, hi))).capitalize()


def _generated(rng: random.Random) -> str:
    return f"{_generated_word(rng, 2, 3)} {_generated_word(rng, 2, 4)}"


_BUILDERS = {"native": _native, "particle": _particle, "hyphenated": _hyphenated, "single": _single,
             "initials": _initials, "generated": _generated}


# ---------------------------------------------------------------------------------------------
# Training names beyond the pools: every part its own random string (no two names share a part, and
# no part begins another, so no name hides inside another).
_T_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "x", "y", "z", "")
_T_CLUSTERS = ("ch", "sh", "th", "ph", "gh", "kh", "zh", "ng", "dr", "tr", "br", "kr", "gr", "pr", "st", "sk",
               "bl", "kl", "fl", "vr", "ts", "dz", "sz", "cz", "qu")
_T_VOWELS = ("a", "e", "i", "o", "u", "y")
_T_DIPHTHONGS = ("ai", "au", "ei", "ie", "oa", "ou", "ua", "ae")
_T_CODAS = ("n", "m", "r", "l", "s", "k", "t", "ng", "nd", "rt", "x", "z", "sh", "th")
# letters a generated string may carry instead of a plain one (Latin-1, Latin Extended, Vietnamese)
_ACCENTED = {"a": "áàâäãåāăąạảấầẩẫậắằẳẵặ", "e": "éèêëēėęěẹẻẽếềểễệ", "i": "íìîïīįıỉị",
             "o": "óòôöõøōőơọỏốồổỗộớờởỡợ", "u": "úùûüūůűưụủứừửữự", "y": "ýÿỳỵỷỹ", "c": "çćč", "s": "şśš",
             "z": "žźż", "n": "ñńň", "l": "ł", "d": "đďð", "g": "ğ", "r": "ř", "t": "ťþ"}
TRAINING_PARTICLES = 80  # lowercase particles ("van der", "bin") drawn per call: an open class, copied too
_T_INITIALS = tuple(c.upper() for c in "abcdefghijklmnopqrstuvwxyz" if c.upper() not in INITIALS)
TRAINING_SHAPES = {"two": 0.45, "three": 0.15, "single": 0.1, "hyphenated": 0.1, "particle": 0.1, "initials": 0.1}
_HELDOUT_SYLLABLE = "(?:kh|ts|ny|[bdgklmnprstvz])(?:ai|ou|[aeiou])"  # of a held-out generated word (_generated_word)
_HELDOUT_GENERATED_PREFIX = re.compile(f"(?:{_HELDOUT_SYLLABLE})*(?:kh|ts|ny|[bdgklmnprstvz])?")  # begins one
_HELDOUT_GENERATED = re.compile(f"(?:{_HELDOUT_SYLLABLE})+")  # could be one


def _heldout_parts() -> frozenset[str]:
    entries = [*MONONYMS, *VIETNAMESE_MIDDLE, *INITIALS]
    for given, family, _ in CULTURES.values():
        entries += [*given, *family]
    for given, particles, family in PARTICLE_CULTURES.values():
        entries += [*given, *particles, *family]
    return frozenset(p for e in entries for p in name_parts(e))


HELDOUT_PARTS = _heldout_parts()
_HELDOUT_LONG = frozenset(p for p in HELDOUT_PARTS if len(p) >= 4)
_HELDOUT_PREFIXES = frozenset(p[:k] for p in HELDOUT_PARTS for k in range(4, len(p) + 1))


def near_heldout(part: str) -> bool:
    """Whether a (folded) part is a held-out part, begins or is begun by one (4+ letters), could begin
    a held-out generated string or begins with one: what a training name may never be."""
    return (part in HELDOUT_PARTS or part in _HELDOUT_PREFIXES
            or any(part[:k] in _HELDOUT_LONG or _HELDOUT_GENERATED.fullmatch(part[:k])
                   for k in range(4, len(part) + 1))
            or _HELDOUT_GENERATED_PREFIX.fullmatch(part) is not None)


def _accent(rng: random.Random, s: str, rate: float) -> str:
    return "".join(rng.choice(_ACCENTED[c]) if c in _ACCENTED and rng.random() < rate else c for c in s)


class _PartDrawer:
    """Random name parts, each new: not a training word, not near a held-out part, not a pool name,
    and neither beginning nor begun by any part drawn before."""

    def __init__(self, rng: random.Random, accent_rate: float) -> None:
        self.rng, self.accent_rate = rng, accent_rate
        self.parts: set[str] = {fold(n) for n in (*wt.FIRST_NAMES, *wt.SURNAMES)}
        self.prefixes: set[str] = {p[:k] for p in self.parts for k in range(1, len(p) + 1)}

    def _free(self, key: str) -> bool:
        return (len(key) >= 3 and key not in TRAINING_WORDS and key not in self.prefixes
                and not any(key[:k] in self.parts for k in range(1, len(key) + 1)) and not near_heldout(key))

    def draw(self) -> str:
        rng = self.rng
        for _ in range(1000):
            syllables = rng.choices((1, 2, 3), (0.2, 0.55, 0.25))[0]
            plain = "".join(rng.choice(_T_CLUSTERS if rng.random() < 0.2 else _T_ONSETS)
                            + rng.choice(_T_DIPHTHONGS if rng.random() < 0.2 else _T_VOWELS)
                            + (rng.choice(_T_CODAS) if rng.random() < 0.35 else "") for _ in range(syllables))
            word = _accent(rng, plain, self.accent_rate)
            key = fold(word)
            if self._free(key):
                self.parts.add(key)
                self.prefixes.update(key[:k] for k in range(1, len(key) + 1))
                return word[0].upper() + word[1:]
        raise ValueError("draw_training_names: no new name part found in 1000 draws")


def _particles(rng: random.Random, n: int) -> list[str]:
    """`n` distinct short lowercase words (2-4 letters) for particles: no training word, none near a
    held-out part."""
    out: set[str] = set()
    while len(out) < n:
        w = rng.choice(_T_ONSETS) + rng.choice(_T_VOWELS) + (rng.choice(_T_CODAS) if rng.random() < 0.5 else "")
        if 2 <= len(w) <= 4 and w not in TRAINING_WORDS and not near_heldout(w):
            out.add(w)
    return sorted(out)


def draw_training_names(rng: random.Random, n: int, accent_rate: float = 0.08) -> list[str]:
    """`n` distinct generated names of the training distribution (module docstring), shapes drawn by
    TRAINING_SHAPES; no part is shared with another name, a pool name or the held-out distribution.
    A pure function of `rng`'s state."""
    parts = _PartDrawer(rng, accent_rate)
    particles = _particles(rng, TRAINING_PARTICLES)
    shapes, weights = zip(*TRAINING_SHAPES.items())
    out = []
    for _ in range(n):
        shape = rng.choices(shapes, weights)[0]
        if shape == "single":
            name = parts.draw()
        elif shape == "hyphenated":
            name = f"{parts.draw()} {parts.draw()}-{parts.draw()}"
        elif shape == "particle":
            name = f"{parts.draw()} {' '.join(rng.sample(particles, rng.choice((1, 1, 2))))} {parts.draw()}"
        elif shape == "initials":
            name = " ".join(f"{c}." for c in rng.sample(_T_INITIALS, rng.randint(1, 2))) + f" {parts.draw()}"
        else:
            name = " ".join(parts.draw() for _ in range(3 if shape == "three" else 2))
        out.append(name)
    return out


def draw_heldout_names(rng: random.Random, n: int, taken: Iterable[str] = ()) -> list[str]:
    """`n` distinct held-out names (see the module contract), none inside another nor inside (or
    containing) a name of `taken`; a pure function of `rng`'s state."""
    shapes, weights = zip(*SHAPES.items())
    seen = [fold(t) for t in taken]
    out: list[str] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        name = _BUILDERS[rng.choices(shapes, weights)[0]](rng)
        key = fold(name)
        if any(clashes(p) for p in name_parts(name)) or any(key in s or s in key for s in seen):
            continue
        seen.append(key)
        out.append(name)
    if len(out) == n:
        return out
    raise ValueError(f"draw_heldout_names: found only {len(out)} of {n} distinct held-out names")
