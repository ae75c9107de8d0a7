"""Durability of deletions and of a served store: a deletion without AOF warns (or, with
`require_durable_deletes`, is refused before anything is deleted); a deletion's audit entry and
tombstone keep no deleted value; a private server whose owner process still runs is never stopped
by another process starting on its data dir (real servers, real processes)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from lmlm.factstore import FactStore, FactStoreConfig, RedisServer, StoreUnavailable
from lmlm.factstore.layout import SEP
from lmlm.factstore.server import OWNER, DataDirInUse, _alive
from lmlm.format import Triple

REPO = Path(__file__).resolve().parents[1]
TRIPLES = [Triple("Ada Quill", "Employer", "Nimbus Air"), Triple("Ada Quill", "Birth City", "Tromso"),
           Triple("Bo Renn", "Employer", "Harbor Bank")]


# ------------------------------------------------------------------------------------------------
# Deletions without AOF


@pytest.fixture(scope="module")
def no_aof_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("noaof"), extra_config=("appendonly no",)) as server:
        yield server


def test_a_deletion_without_aof_warns_once_per_store(no_aof_server):
    with FactStore.open(FactStoreConfig(url=no_aof_server.url, namespace="warns")) as store:
        assert store.r.config_get("appendonly")["appendonly"] in ("no", b"no")
        store.add_triples(TRIPLES)
        with pytest.warns(UserWarning, match=r"not durable: AOF is off .*require_durable_deletes"):
            assert store.delete("Ada Quill", "Employer") == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert store.delete("Ada Quill") == 1  # once per store
        store.flush()


def test_require_durable_deletes_refuses_a_deletion_without_aof_and_deletes_nothing(no_aof_server):
    cfg = FactStoreConfig(url=no_aof_server.url, namespace="refuses", require_durable_deletes=True)
    with FactStore.open(cfg) as store:
        store.add_triples(TRIPLES)
        before = store.stats()
        for args in (("Bo Renn",), ("Bo Renn", "Employer"), ("Bo Renn", "Employer", "Harbor Bank")):
            with pytest.raises(StoreUnavailable, match="require_durable_deletes") as e:
                store.delete(*args)
            assert "AOF is off" in str(e.value) and "nothing was deleted" in str(e.value)
        assert store.stats() == before and store.stats()["tombstones"] == 0
        assert store.get("Bo Renn", "Employer")["values"][0]["value"] == "Harbor Bank"
        assert not [e for e in store.audit() if e["op"] == "delete"]
        store.flush()


def test_durable_deletions_neither_warn_nor_are_refused(redis_server):
    cfg = FactStoreConfig(url=redis_server.url, namespace="durable", require_durable_deletes=True)
    with FactStore.open(cfg) as store:
        store.add_triples(TRIPLES)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert store.delete("Ada Quill") == 2
        # AOF on but told not to wait for it: not durable either
        with FactStore.open(replace(cfg, aof_wait_ms=0)) as nowait:
            with pytest.raises(StoreUnavailable, match="aof_wait_ms is 0"):
                nowait.delete("Bo Renn")
        store.flush()


# ------------------------------------------------------------------------------------------------
# No deleted value kept


SECRETS = ["Vault Code 4471-Quartz", "Rare Illness Xq", "12 Hidden Lane"]


def _raw_audit_and_tombstones(store: FactStore) -> bytes:
    out = []
    for ks in store.layout.parts:
        for _, fields in store.r.xrange(ks.audit):
            out += [k + b"=" + v for k, v in fields.items()]
        out += [k + b"=" + v for k, v in store.r.hgetall(ks.tombstones).items()]
    return b"\n".join(out)


def test_a_deletion_keeps_no_deleted_value_in_the_audit_or_tombstones(fact_store):
    store = fact_store
    store.add_triples([Triple("Ada Quill", "Password Hint", SECRETS[0]), Triple("Ada Quill", "Password Hint", "Blue"),
                       Triple("Bo Renn", "Diagnosis", SECRETS[1]), Triple("Cy Vale", "Address", SECRETS[2])])
    assert store.delete("Ada Quill", "Password Hint", SECRETS[0]) == 1
    assert store.delete("Bo Renn", "Diagnosis") == 1
    assert store.delete("Cy Vale") == 1
    deletes = [e for e in store.audit() if e["op"] == "delete"]  # newest first
    assert [(e["entity"], e["relation"], e["removed"], e["who"]) for e in deletes] == [
        ("Cy Vale", "", "1", store.actor), ("Bo Renn", "diagnosis", "1", store.actor),
        ("Ada Quill", "password hint", "1", store.actor)]
    assert all("value" not in e for e in deletes)
    raw = _raw_audit_and_tombstones(store).lower()
    for s in SECRETS:
        assert s.lower().encode() not in raw and s.lower() not in json.dumps(store.audit(1000)).lower()
    # the tombstones still work: the deleted triple is skipped, the key's other values stay
    again = store.load([Triple("Ada Quill", "Password Hint", SECRETS[0]), Triple("Bo Renn", "Diagnosis", "x"),
                        Triple("Cy Vale", "Address", SECRETS[2])])
    assert (again.written, again.skipped) == (0, 3)
    assert [v["value"] for v in store.get("Ada Quill", "Password Hint")["values"]] == ["Blue"]
    assert store.add_triples([Triple("Ada Quill", "Password Hint", "Green")]) == 1  # another value is not deleted
    assert store.load([Triple("Ada Quill", "Password Hint", SECRETS[0])], force=True).forced == 1


def test_a_value_tombstone_an_older_store_kept_as_text_still_counts_and_is_rehashed(fact_store):
    store = fact_store
    ks = store.layout.of("dana moor")
    store.r.hset(ks.tombstones, f"dana moor{SEP}hobby{SEP}Chess", 1)  # as the store wrote it before
    assert store.add_triples([Triple("Dana Moor", "Hobby", "Chess")]) == 0
    assert store.delete("Dana Moor", "Hobby", "Chess") == 0
    assert store.r.hkeys(ks.tombstones) == [f"dana moor{SEP}hobby{SEP}{hashlib.sha1(b'Chess').hexdigest()}".encode()]
    assert store.add_triples([Triple("Dana Moor", "Hobby", "Chess"), Triple("Dana Moor", "Hobby", "Go")]) == 1


# ------------------------------------------------------------------------------------------------
# A private server in use by another process


OWNER_PROC = """
import sys, time
from lmlm.factstore import RedisServer
server = RedisServer(sys.argv[1]).start()
print(server.pid, server.port, server.password, flush=True)
time.sleep(600)
"""


def _start_owner(data: Path) -> tuple[subprocess.Popen, int, int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "HF_HUB_OFFLINE": "1"}
    owner = subprocess.Popen([sys.executable, "-c", OWNER_PROC, str(data)], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    pid, port, password = owner.stdout.readline().decode().split()
    return owner, int(pid), int(port), password


def _kill(pid: int) -> None:
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_a_start_on_a_data_dir_served_by_a_live_process_is_refused(tmp_path):
    data = tmp_path / "served"
    owner, pid, port, password = _start_owner(data)
    try:
        second = RedisServer(data)
        try:
            with pytest.raises(DataDirInUse) as e:
                second.start()
        finally:
            second.stop()  # stops something only if the start went through: never left behind
        assert str(data) in str(e.value) and f"process {owner.pid}," in str(e.value)
        served = redis.Redis(port=port, password=password, protocol=2, socket_timeout=5)
        assert served.ping() and _alive(pid)  # untouched, its owner record too
        assert json.loads((data / OWNER).read_text())["owner"] == owner.pid
        served.close()
        os.kill(owner.pid, signal.SIGKILL)  # the owner dies: its server is left behind ...
        owner.wait(10)
        with RedisServer(data) as server:  # ... and the next start stops it
            assert server.pid != pid and not _alive(pid)
    finally:
        _kill(owner.pid)
        owner.wait(10)
        _kill(pid)


def test_an_owner_pid_taken_by_another_process_does_not_keep_a_left_behind_server(tmp_path):
    data = tmp_path / "reused"
    owner, pid, _, _ = _start_owner(data)
    sleeper = None
    try:
        record = json.loads((data / OWNER).read_text())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        # another live process now has the owner's pid (as after pid reuse): its start time differs
        sleeper = subprocess.Popen(["sleep", "600"])
        (data / OWNER).write_text(json.dumps({**record, "owner": sleeper.pid}))
        with RedisServer(data) as server:
            assert server.pid != pid and not _alive(pid)
    finally:
        _kill(owner.pid)
        owner.wait(10)
        _kill(pid)
        if sleeper:
            sleeper.kill()
            sleeper.wait(10)
