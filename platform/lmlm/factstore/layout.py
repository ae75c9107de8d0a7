"""Key layout and input validation.

Every key of one entity carries the hash tag `{namespace:p}`, p = hash(entity) mod partitions: the
entity's hash, the partition's vector sets, stats and audit stream all live in one Redis Cluster slot,
so each edit is one atomic script and each partition is served by one shard.
"""
from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass

from lmlm.format import Triple, normalize_key

MAX_VALUE_BYTES = 64 * 1024
MAX_NAME_CHARS = 1024
SEP = "\x1f"  # between entity and relation in key-vector elements; normalize_key turns it into a space
_WS = re.compile(r"\s+")
# Unicode category Cc is exactly U+0000-001F and U+007F-009F; tab, newline and return are allowed.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class InvalidFact(ValueError):
    """A triple that cannot be stored; the message names the field and the problem."""


def check_namespace(ns: str) -> str:
    if not _NAMESPACE.match(ns or ""):
        raise ValueError(f"namespace {ns!r} may hold only letters, digits, '_', '-', '.'")
    return ns


def entity_hash(norm_entity: str) -> int:
    return int.from_bytes(hashlib.blake2b(norm_entity.encode("utf-8"), digest_size=8).digest(), "big")


def _partition_key(suffix: str, doc: str) -> property:
    return property(lambda self: f"{self.tag}:{suffix}", doc=doc)


@dataclass(frozen=True)
class Keys:
    """Redis key names of one partition."""

    tag: str

    def entity(self, norm_entity: str) -> str:
        """The entity's hash: one field per normalised relation (records.KeyRecord)."""
        return f"{self.tag}:e:{norm_entity}"

    def lexical(self, block: str) -> str:
        """Set of the partition's normalised entity names in one lexical block (`lexical_blocks`)."""
        return f"{self.tag}:lx:{block}"

    entity_vectors = _partition_key("ve", "vector set of the partition's normalised entity names")
    key_vectors = _partition_key("vk", 'vector set of "entity\\x1frelation" (the key index)')
    stats = _partition_key("stats", "hash of running totals (records.PartitionStats)")
    audit = _partition_key("audit", "stream of edits (records.AuditEntry)")
    tombstones = _partition_key("tomb", "hash: deleted entity / entity\\x1frelation / ...\\x1fsha1(value) -> ms")
    batches = _partition_key("batches", "set of the write batches applied (replays are no-ops)")

    def part_keys(self) -> "PartKeys":
        return PartKeys(self.entity_vectors, self.key_vectors, self.stats, self.audit, self.tombstones, self.batches)

    def entity_keys(self, norm_entity: str) -> "EntityKeys":
        return EntityKeys(self.entity(norm_entity), *(self.lexical(b) for b in lexical_blocks(norm_entity)))


@dataclass(frozen=True)
class PartKeys:
    """KEYS of every edit script (scripts.py) first, in this order: the partition's shared keys."""

    entity_vectors: str
    key_vectors: str
    stats: str
    audit: str
    tombstones: str
    batches: str


@dataclass(frozen=True)
class EntityKeys:
    """The keys of one entity that the edit scripts write, after the PartKeys: its hash, then the
    LEX_BLOCKS lexical block sets it is filed in."""

    entity_hash: str
    lex_1: str
    lex_2: str
    lex_3: str


# Lexical blocks. A name of length L is filed under LEX_BLOCKS keys, block k being the name with
# window k cut out; the windows split the name into thirds, each widened by one character so that
# neighbours overlap. One edit (substitution, insertion, deletion, adjacent swap) touches at most
# two adjacent positions, which lie inside one window, so a query one edit away from a stored name
# has the same cut-out string for that window: `query_blocks` lists the query's cuts for the
# stored lengths L - 1, L, L + 1. Each block keeps two thirds of the name, so names that share a
# long prefix (numbered ones) still fall into small blocks. Names shorter than MIN_BLOCK_LEN share
# one block per length.
LEX_BLOCKS = 3
MIN_BLOCK_LEN = 6


def _windows(L: int) -> list[tuple[int, int]]:
    cuts = [k * L // LEX_BLOCKS for k in range(LEX_BLOCKS + 1)]
    return [(cuts[k], min(cuts[k + 1] + 1, L)) for k in range(LEX_BLOCKS)]


def _blocks(name: str, L: int) -> list[str]:
    """`name`'s blocks as a stored name of length L (a query's length may be L +- 1)."""
    if L < MIN_BLOCK_LEN:
        return [f"{L}:all"] * LEX_BLOCKS
    n = len(name)
    return [f"{L}:{k}:{name[:a]}{SEP}{name[n - (L - b):]}" for k, (a, b) in enumerate(_windows(L))]


def lexical_blocks(norm_entity: str) -> list[str]:
    """The LEX_BLOCKS lexical blocks a stored normalised entity name is filed under."""
    return _blocks(norm_entity, len(norm_entity))


def query_blocks(norm_query: str) -> list[str]:
    """The blocks a stored name one edit away from `norm_query` is filed under (one of them each)."""
    n = len(norm_query)
    return list(dict.fromkeys(b for L in (n - 1, n, n + 1) if L >= 1 for b in _blocks(norm_query, L)))


class Layout:
    def __init__(self, namespace: str, partitions: int):
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        self.namespace = check_namespace(namespace)
        self.partitions = partitions
        self.parts = [Keys(f"{{{namespace}:{p}}}") for p in range(partitions)]
        self.meta = f"{{{namespace}}}:meta"

    @property
    def first(self) -> Keys:
        return self.parts[0]

    def of(self, norm_entity: str) -> Keys:
        if self.partitions == 1:
            return self.parts[0]
        return self.parts[entity_hash(norm_entity) % self.partitions]

    @staticmethod
    def eid(norm_entity: str) -> int:
        """A 48-bit id of the entity (exact in a JSON number): the only thing a VSIM FILTER compares."""
        return entity_hash(norm_entity) >> 16


def _text(x, field: str) -> str:
    if isinstance(x, (bytes, bytearray)):
        try:
            x = bytes(x).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidFact(f"{field} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(x, str):
        raise InvalidFact(f"{field} must be a string, not {type(x).__name__}")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidFact(f"{field} is not valid UTF-8 (unpaired surrogate at {e.start})") from None
    if (m := _CONTROL.search(x)) is not None:
        raise InvalidFact(f"{field} {x[:40]!r} holds control character U+{ord(m.group()):04X} at {m.start()}")
    return x


def clean_name(x, field: str) -> tuple[str, str]:
    """(display, normalised) of an entity or relation; refuses empty, overlong and control chars."""
    s = _WS.sub(" ", _text(x, field)).strip()
    if not s:
        raise InvalidFact(f"{field} is empty")
    if len(s) > MAX_NAME_CHARS:
        raise InvalidFact(f"{field} {s[:40]!r}... is {len(s)} characters long (at most {MAX_NAME_CHARS})")
    norm = normalize_key(s)
    if not norm:
        raise InvalidFact(f"{field} {s!r} is empty once normalised")
    return s, norm


def norm_name(x, field: str) -> str:
    """`clean_name(x, field)[1]`, fast for the usual plain-ASCII name and cached (lookup hot path)."""
    return _norm_str(x, field) if type(x) is str else clean_name(x, field)[1]


@functools.lru_cache(maxsize=100_000)  # lookups repeat relation labels and entities
def _norm_str(x: str, field: str) -> str:
    if (0 < len(x) <= MAX_NAME_CHARS and x.isascii() and x.isprintable()
            and x[0] != " " and x[-1] != " " and "\\" not in x and "_" not in x and "  " not in x):
        return x.lower()  # what clean_name gives: nothing to unescape, collapse or strip
    return clean_name(x, field)[1]


def clean_value(x) -> str:
    s = _text(x, "value").strip()
    if not s:
        raise InvalidFact("value is empty")
    n = len(s.encode("utf-8"))
    if n > MAX_VALUE_BYTES:
        raise InvalidFact(f"value {s[:40]!r}... is {n} bytes long (at most {MAX_VALUE_BYTES})")
    return s


@dataclass(frozen=True)
class Fact:
    """A validated triple with its normalised key."""

    E: str
    R: str
    entity: str
    relation: str
    value: str

    @classmethod
    def of(cls, t: Triple) -> "Fact":
        if not isinstance(t, Triple):
            if isinstance(t, (tuple, list)) and len(t) == 3:
                t = Triple(*t)
            else:
                raise InvalidFact(f"expected a Triple or (entity, relation, value), got {t!r:.80}")
        entity, E = clean_name(t.entity, "entity")
        relation, R = clean_name(t.relation, "relation")
        return cls(E, R, entity, relation, clean_value(t.value))


def now_ms() -> int:
    return int(time.time() * 1000)
