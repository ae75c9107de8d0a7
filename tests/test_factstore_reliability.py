"""Reliability on a real server: kill -9 mid bulk load, unreachable or silent servers, old versions."""
from __future__ import annotations

import socket
import stat
import threading
import time

import pytest

from lmlm.factstore import FactStore, FactStoreConfig, RedisServer, ServerError, StoreUnavailable
from lmlm.factstore.server import check_version
from lmlm.format import Triple
from lmlm.netutil import free_port


@pytest.mark.slow
def test_kill9_mid_bulk_load_keeps_every_acknowledged_triple(tmp_path):
    data = tmp_path / "redis"
    server = RedisServer(data, appendfsync="always").start()
    cfg = FactStoreConfig(url=server.url, write_batch=40, timeout_s=1.0)
    batches = [[Triple(f"Person {b} {i // 4}", f"Rel {i % 4}", f"value {b}-{i}") for i in range(40)]
               for b in range(200)]
    acked: list[list[Triple]] = []
    errors: list[Exception] = []
    store = FactStore.open(cfg)
    store.embedder.encode([f"person {b} {j}" for b in range(6) for j in range(10)])  # warm the model

    def load():
        try:
            for batch in batches:
                store.add_triples(batch)
                acked.append(batch)
        except StoreUnavailable as e:
            errors.append(e)

    t = threading.Thread(target=load)
    t.start()
    while len(acked) < 3 and t.is_alive():
        time.sleep(0.01)
    server.kill()
    t.join(30)
    store.r.close()
    assert errors and len(acked) < len(batches), "the load should have been cut by the kill"
    server = RedisServer(data, appendfsync="always").start()
    try:
        with FactStore.open(FactStoreConfig(url=server.url)) as again:
            for batch in acked:
                got = again.lookup_batch([(t.entity, t.relation) for t in batch], fallback="abstain")
                assert [a.value if a else None for a in got] == [t.value for t in batch]
            s = again.stats()
            assert s["entity_vectors"] == s["entities"] >= 3 * 10
            assert s["keys"] == s["triples"] >= 3 * 40
            names = {E.decode() for E in again.r.execute_command("VRANDMEMBER", again.layout.parts[0].entity_vectors, -10**6)}
            hashes = {k.decode().split(":e:", 1)[1] for k in again.r.scan_iter(match="{lmlm:0}:e:*")}
            assert names == hashes
    finally:
        server.stop()


def test_unreachable_server_raises_store_unavailable_quickly():
    port = free_port()
    t = time.monotonic()
    with pytest.raises(StoreUnavailable, match=str(port)):
        FactStore.open(FactStoreConfig(url=f"redis://127.0.0.1:{port}/0", timeout_s=0.5))
    assert time.monotonic() - t < 5


def test_silent_server_times_out_instead_of_hanging():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # accepts connections, never answers
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            FactStore.open(FactStoreConfig(url=f"redis://127.0.0.1:{s.getsockname()[1]}/0", timeout_s=0.5))
        assert time.monotonic() - t < 5


def test_store_down_is_distinguishable_from_not_found(tmp_path):
    server = RedisServer(tmp_path / "r").start()
    store = FactStore.open(FactStoreConfig(url=server.url, timeout_s=0.5))
    assert store.lookup_batch([], fallback="abstain") == []
    assert store.get("A", "B") is None  # not found: None
    server.kill()
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get("A", "B")
    with pytest.raises(StoreUnavailable):
        store.lookup("A", "B")
    assert time.monotonic() - t < 5
    store.close()
    server.stop()


def test_server_without_vector_sets_is_refused(tmp_path):
    with pytest.raises(ServerError, match="Redis 7.0.15, which has no vector sets"):
        check_version("7.0.15", "redis-server")
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(ServerError, match="7.0.15"):
        RedisServer(tmp_path / "d", binary=str(fake))


def test_private_server_lifecycle(tmp_path):
    with FactStore.open(FactStoreConfig(data_dir=str(tmp_path / "data"), key_index=False)) as store:
        pid = store.server.pid
        assert store.url.startswith("redis://127.0.0.1:")
        assert store.r.config_get("appendonly")["appendonly"] in ("yes", b"yes")
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)
