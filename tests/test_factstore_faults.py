"""Faults with real kills: a loader killed mid-load and run again, deletions through a server crash,
reloads, imports and restores, and a private server left behind by a killed parent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlm.factstore import FactStore, FactStoreConfig, RedisServer
from lmlm.format import Triple

REPO = Path(__file__).resolve().parents[1]

LOADER = """
import os, sys
from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import Triple
n, namespace, partitions = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
triples = [Triple(f"Loader Person {i // 4}", f"Rel {i % 4}", f"value {i}") for i in range(n)]
cfg = FactStoreConfig(url=os.environ["LMLM_REDIS_URL"], write_batch=25, namespace=namespace, partitions=partitions)
with FactStore.open(cfg) as store:
    store.embedder.encode(["warm up"])
    print("ready", flush=True)
    store.add_triples(triples, batch_id="shard:killed", annotator="loader")
print("done", flush=True)
"""


def _env(url: str) -> dict:
    # the URL holds the password: passed in the environment, never on a command line
    return {**os.environ, "LMLM_REDIS_URL": url, "PYTHONPATH": str(REPO / "platform"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_loader_killed_mid_load_and_run_again_counts_each_triple_once(store_url):
    from lmlm.factstore.backend import is_cluster_url

    n, ns, parts = 2400, f"killed{os.getpid()}", 6 if is_cluster_url(store_url) else 1
    cfg = FactStoreConfig(url=store_url, write_batch=25, namespace=ns, partitions=parts)
    with FactStore.open(cfg) as store:
        proc = subprocess.Popen([sys.executable, "-c", LOADER, str(n), ns, str(parts)], env=_env(store_url),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 120
            while store.stats()["triples"] < 300 and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        try:
            cut = store.stats()["triples"]
            assert 300 <= cut < n, "the loader should have been killed mid-load"
            chunks = n // 25
            triples = [Triple(f"Loader Person {i // 4}", f"Rel {i % 4}", f"value {i}") for i in range(n)]
            res = store.load(triples, batch_id="shard:killed", annotator="loader")
            assert res.replayed >= cut // 25 and res.written == n - cut
            s = store.stats()
            assert (s["triples"], s["mentions"], s["keys"], s["entities"]) == (n, n, n, n // 4)
            assert {v.count for _, v in store.iter_records()} == {1}  # 0 counted twice
            again = store.load(triples, batch_id="shard:killed")
            assert again.written == 0 and again.replayed >= chunks and store.stats()["mentions"] == n
            audited = [e for e in store.audit(10 * chunks) if e["op"] == "load" and "units" in e]
            assert sum(int(e["triples"]) for e in audited) == n  # audited in the same scripts: once
        finally:
            store.flush()


PEOPLE = {f"Person {c}": {"Birth City": f"City {c}", "Employer": f"Firm {c}", "Spouse": f"Spouse {c}"}
          for c in "ABCD"}
TRIPLES = [Triple(e, r, v) for e, a in PEOPLE.items() for r, v in a.items()]


@pytest.mark.slow
def test_deletions_survive_a_crash_reloads_imports_and_restores_unless_forced(tmp_path):
    data = tmp_path / "redis"
    server = RedisServer(data, appendfsync="everysec").start()
    try:
        store = FactStore.open(FactStoreConfig(url=server.url))
        store.load(TRIPLES, batch_id="shard:1", annotator="gold")
        snapshot = tmp_path / "db.json"
        store.export_json(snapshot, provenance_too=True)
        assert store.delete("Person A") == 3
        assert store.delete("Person B", "Birth City") == 1
        assert store.delete("Person C", "Employer", "Firm C") == 1
        assert store.delete("Person Z") == 0  # not stored yet: tombstoned all the same
        waited = store.r.info("commandstats").get("cmdstat_waitaof", {}).get("calls", 0)
        assert waited == 4  # each deletion's reply waited for the AOF (appendfsync everysec)
        server.kill()  # right after the acknowledgements: SIGKILL, no shutdown flush
        store.r.close()
        server = RedisServer(data, appendfsync="everysec").start()
        store = FactStore.open(FactStoreConfig(url=server.url))
        gone = [("Person A", "Birth City"), ("Person A", "Spouse"), ("Person B", "Birth City"),
                ("Person C", "Employer")]

        def resurrected() -> list:
            return [k for k in gone if store.get(*k) is not None]

        assert resurrected() == [] and store.stats()["triples"] == 12 - 5
        # reload (a new batch id: a rebuild from the same shards), import, the forget split restored
        res = store.load(TRIPLES + [Triple("Person Z", "Spouse", "Zed")], batch_id="shard:rebuild")
        assert (res.written, res.skipped) == (7, 6) and resurrected() == []
        assert store.import_json(snapshot) == 12 and resurrected() == []
        assert store.add_triples([t for t in TRIPLES if t.entity == "Person A"], op="restore") == 0
        assert resurrected() == [] and store.get("Person C", "Spouse")["values"][0]["count"] == 3
        skipped = [e for e in store.audit(50) if e.get("skipped")]
        assert {e["op"] for e in skipped} == {"load", "import", "restore"}
        # --force writes them back, and says so
        assert store.add_triples([t for t in TRIPLES if t.entity == "Person A"], op="restore", force=True) == 3
        assert store.get("Person A", "Spouse")["chosen"] == "Spouse A"
        assert store.audit(1)[0]["forced"] == "3" and store.audit(1)[0]["op"] == "restore"
        assert store.stats()["tombstones"] == 4
        store.close()
    finally:
        server.stop()


PARENT = """
import sys, time
from lmlm.factstore import RedisServer
server = RedisServer(sys.argv[1] if sys.argv[1] != "-" else None).start()
print(server.pid, server.data_dir, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("persistent", [True, False], ids=["data_dir", "temporary"])
def test_private_server_left_by_a_killed_parent_is_stopped_on_next_start(tmp_path, persistent):
    data = tmp_path / "data" if persistent else None
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(data) if data else "-"], env=_env(""),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        pid, left_dir = parent.stdout.readline().decode().split()
        pid = int(pid)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
    from lmlm.factstore.server import _alive

    assert _alive(pid)  # the orphan still runs
    try:
        with RedisServer(data) as server:
            assert server.pid != pid and not _alive(pid)
            assert persistent or not Path(left_dir).exists()
    finally:
        if _alive(pid):  # the test failed: do not leave it behind
            os.kill(pid, signal.SIGKILL)


def test_private_server_defaults_are_safe(tmp_path):
    import redis

    with RedisServer(tmp_path / "d") as server:
        conf = server.conf
        assert conf.stat().st_mode & 0o077 == 0 and f"requirepass {server.password}" in conf.read_text()
        assert server.password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, protocol=2).ping()
        with FactStore.open(FactStoreConfig(url=server.url)) as store:
            mem = store.r.config_get("maxmemory*")
            assert int(mem["maxmemory"]) > 0 and mem["maxmemory-policy"] == "noeviction"
            assert server.password not in store.url and server.password not in json.dumps(store.stats())


class ReplyDropper:
    """A TCP proxy on 127.0.0.1 in front of a real Redis that, when armed with a command name, cuts
    the connection instead of passing on the reply to the next request holding it: the server has
    run the command, the client never learns so (the fault a blind retry turns into a double write)."""

    def __init__(self, upstream_port: int):
        import socket
        import threading

        from lmlm.netutil import free_port

        self.upstream, self.port = upstream_port, free_port()
        self.armed: bytes | None = None
        self.cut = 0
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            state = {"drop": False}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _pump(self, src, dst, state, upstream: bool):
        try:
            while data := src.recv(65536):
                if upstream and self.armed and self.armed in data.upper():
                    state["drop"], self.armed = True, None
                elif not upstream and state["drop"]:
                    self.cut += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.sock.close()


def test_a_write_whose_reply_is_lost_is_not_resent_and_its_replay_counts_once(redis_server):
    from lmlm.factstore import StoreUnavailable

    proxy = ReplyDropper(redis_server.port)
    url = redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
    triples = [Triple(f"Proxy Person {i // 4}", f"Rel {i % 4}", f"value {i}") for i in range(40)]
    direct = FactStore.open(FactStoreConfig(url=redis_server.url, namespace="proxy"))
    try:
        with FactStore.open(FactStoreConfig(url=url, namespace="proxy", write_batch=40)) as store:
            store.load(triples[:4], batch_id="warm")  # scripts loaded, connection pooled
            before = direct.r.info("commandstats")["cmdstat_evalsha"]["calls"]
            proxy.armed = b"EVALSHA"
            with pytest.raises(StoreUnavailable):
                store.load(triples, batch_id="shard:proxy")
            assert proxy.cut == 1
            assert direct.r.info("commandstats")["cmdstat_evalsha"]["calls"] == before + 1  # sent once
            assert direct.stats()["mentions"] == 4 + 40  # ... and applied once
            again = store.load(triples, batch_id="shard:proxy")  # the caller reruns the load
            assert (again.written, again.replayed) == (0, 10) and direct.stats()["mentions"] == 44  # 10 entities: 10 units
            proxy.armed = b"HGET"  # a read whose reply is lost is simply asked again
            assert store.get("Proxy Person 3", "Rel 1")["chosen"] == "value 13" and proxy.cut == 2
    finally:
        direct.flush()
        direct.close()
        proxy.close()
