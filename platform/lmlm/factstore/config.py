"""Configuration of the fact store (one small dataclass, loaded through `lmlm.config`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

# The one definition of each choice set; everything else (CLI choices, request validation, HTTP
# schemas) imports these.
FuzzyMode = Literal["two_stage", "reference"]
FUZZY_MODES: tuple[str, ...] = get_args(FuzzyMode)
# What a lookup without an accepted match returns: "unknown", the best candidate anyway, or None
Fallback = Literal["unknown", "top1_anyway", "abstain"]
FALLBACKS: tuple[str, ...] = get_args(Fallback)
# The thresholds each fuzzy mode compares against, by name (the same name in the config, the
# `lookup_batch` keywords, the CLI flags and the HTTP fields); a threshold of another mode is refused.
THRESHOLDS: dict[str, tuple[str, ...]] = {
    "two_stage": ("entity_threshold", "relation_threshold"),
    "reference": ("cosine_threshold",),
}
ALL_THRESHOLDS: tuple[str, ...] = tuple(t for ts in THRESHOLDS.values() for t in ts)


def check_thresholds(mode: str, given: dict) -> None:
    """Refuse a threshold (given, not None) that the fuzzy `mode` does not compare against."""
    if mode not in FUZZY_MODES:
        raise ValueError(f"mode must be one of {FUZZY_MODES}, not {mode!r}")
    for name, value in given.items():
        if name not in ALL_THRESHOLDS:
            raise ValueError(f"{name}: not a threshold (known: {', '.join(ALL_THRESHOLDS)})")
        if value is None:
            continue
        if name not in THRESHOLDS[mode]:
            uses = [m for m, ts in THRESHOLDS.items() if name in ts]
            raise ValueError(f"{name} applies only to fuzzy mode {' or '.join(map(repr, uses))}; "
                             f"mode {mode!r} compares {' and '.join(THRESHOLDS[mode])}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 2.0:
            raise ValueError(f"{name} must be a number in [-1, 2], not {value!r}")


@dataclass
class FactStoreConfig:
    # redis://[user:password@]host:port/db of a running Redis 8; None: env LMLM_REDIS_URL, else a private server
    url: Optional[str] = None
    # the url names a Redis Cluster (same as a redis+cluster://host:port url): redis-py's cluster client
    cluster: bool = False
    # data dir of the private server (AOF lives here); None: a fresh temporary dir removed on close
    data_dir: Optional[str] = None
    # AOF fsync policy of the private server: "everysec" or "always"
    appendfsync: Literal["everysec", "always"] = "everysec"
    # maxmemory of the private server ("2gb", bytes...); None: 70% of the memory limit (cgroup, else RAM),
    # so a full store answers write errors instead of being killed
    maxmemory: Optional[str] = None
    # a deletion's reply waits (WAITAOF) up to this long for the AOF fsync of a server with AOF on, so an
    # acknowledged unlearning survives a crash; 0: do not wait
    aof_wait_ms: int = 2000
    # refuse a deletion that would be acknowledged before it is on disk (AOF off, or aof_wait_ms 0) instead
    # of making it with a warning: for unlearning that must survive a crash
    require_durable_deletes: bool = False
    # prefix of every key; letters, digits, "_", "-", "." only (it sits inside the hash tag)
    namespace: str = "lmlm"
    # hash-tag partitions: an entity's keys, vectors and audit entries share one; on Redis Cluster use
    # at least one per shard. Fixed when the store is created (kept in the store's meta key).
    partitions: int = 1
    # fuzzy retrieval when the exact key is absent: "two_stage" (entity, then relation) or "reference"
    fuzzy_mode: FuzzyMode = "two_stage"
    # reference mode (single stage): accept cosine >= this between the query "{entity} {relation}" and a key
    cosine_threshold: float = 0.6
    # two_stage: accept an entity whose combined (embedding + character) similarity is >= this
    entity_threshold: float = 0.87
    # two_stage: accept the entity's relation whose label cosine to the query relation is >= this
    relation_threshold: float = 0.3
    # two_stage: relation labels (query and stored) are embedded in each of these contexts and the
    # cosines averaged; a possessive frame makes MiniLM read them as attributes ("born on" -> birth
    # date, not birth city), a verbal one reads verb phrases ("educated at" -> alma mater)
    relation_templates: list[str] = field(default_factory=lambda: ["the person's {relation}", "the person {relation}"])
    # candidates fetched from a vector set per query (reference top-k, two_stage entity candidates)
    top_k: int = 20
    # what a query without an accepted match returns: "unknown", the best candidate, or None
    fallback: Fallback = "unknown"
    # also keep the "{entity} {relation}" vector set that `reference` mode needs: one embedding and about
    # 1 KB per key, so off by default; fixed when the store is created (kept in its meta key)
    key_index: bool = False
    # strings per embedding model call during bulk load
    embed_batch: int = 64
    # triples per pipelined write batch during bulk load
    write_batch: int = 1000
    # socket connect/read timeout; an unreachable server raises StoreUnavailable within about this
    # (a read may take aof_wait_ms longer: a deletion's reply waits for the AOF)
    timeout_s: float = 2.0
    # document ids kept per value (the count keeps counting past this)
    max_docs_per_value: int = 8
    # approximate cap of each partition's audit stream
    audit_maxlen: int = 1_000_000
    # who edits, for the audit stream; None: $USER
    actor: Optional[str] = None

    def resolved_url(self) -> Optional[str]:
        return self.url or os.environ.get("LMLM_REDIS_URL") or None
