"""The fact store: LMLM's database on Redis 8 (exact and fuzzy lookups, provenance, unlearning)."""
from .config import FactStoreConfig
from .layout import InvalidFact
from .retrieval import Answer
from .server import DataDirInUse, RedisServer, ServerError, StoreUnavailable
from .store import FactStore

__all__ = ["FactStore", "FactStoreConfig", "Answer", "StoreUnavailable", "InvalidFact", "RedisServer", "ServerError",
           "DataDirInUse"]
