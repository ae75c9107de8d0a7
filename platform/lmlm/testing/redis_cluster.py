"""A real Redis Cluster on 127.0.0.1 from the same Redis 8 binary (tests, benchmarks, local runs).

`LocalCluster(masters=3)` starts one `RedisServer` per master with cluster mode on (its own data dir,
a free port and a free cluster-bus port, one shared random password), assigns the 16384 slots in
equal ranges with CLUSTER ADDSLOTSRANGE, joins the nodes with CLUSTER MEET and waits until every
node reports `cluster_state:ok`. `stop()` stops each server by its PID. A new cluster each start
(fresh ports): it is not meant to be restarted on its data dirs.

`move_slot(slot, to)` reshards one slot to another master the way `redis-cli --cluster reshard` does
(the wheel ships no redis-cli): CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the source,
MIGRATE of the slot's keys, then SETSLOT NODE on every master. `finish=False` (and `keys`, to move
only some) stops mid-migration, where the source answers ASK for what it no longer holds, until
`finish_slot_move(slot, to)`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import redis

from lmlm.factstore.server import RedisServer, ServerError, private_root
from lmlm.netutil import free_port

SLOTS = 16384


class LocalCluster:
    def __init__(self, masters: int = 3, data_dir: str | os.PathLike | None = None, appendfsync: str = "everysec",
                 maxmemory: str | int | None = None):
        if masters < 1:
            raise ValueError(f"masters must be >= 1, not {masters}")
        self._tmp = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=private_root()) if data_dir is None else data_dir)
        self.password = secrets.token_urlsafe(24)
        if maxmemory is None:  # the masters share the machine: each gets its share of the default
            from lmlm.factstore.server import default_maxmemory

            maxmemory = default_maxmemory() // masters
        self.servers = [
            RedisServer(self.data_dir / f"node{i}", appendfsync, maxmemory=maxmemory, password=self.password,
                        extra_config=("cluster-enabled yes", "cluster-config-file nodes.conf",
                                      "cluster-node-timeout 5000", f"cluster-port {free_port()}",
                                      f"masterauth {self.password}"))
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://:{self.password}@127.0.0.1:{self.servers[0].port}"

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def _client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=server.port, password=self.password, protocol=2,
                           socket_timeout=5)

    def start(self, timeout_s: float = 30.0) -> "LocalCluster":
        try:
            for s in self.servers:
                s.start()
            n = len(self.servers)
            for i, s in enumerate(self.servers):
                c = self._client(s)
                try:
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", SLOTS * i // n, SLOTS * (i + 1) // n - 1)
                    if i:
                        c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.servers[0].port,
                                          self._bus_port(self.servers[0]))
                finally:
                    c.close()
            self._wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _bus_port(s: RedisServer) -> int:
        return int(next(x for x in s.extra_config if x.startswith("cluster-port ")).split()[1])

    def _wait_ok(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for s in self.servers:
                c = self._client(s)
                info = c.execute_command("CLUSTER", "INFO").decode()
                c.close()
                states.append("cluster_state:ok" in info and f"cluster_known_nodes:{len(self.servers)}" in info)
            if all(states):
                return
            if time.monotonic() > deadline:
                ports = [s.port for s in self.servers]
                raise ServerError(f"local cluster on ports {ports} not ok after {timeout_s:.0f} s")
            time.sleep(0.1)

    def slot_owner(self, slot: int) -> int:
        """Index in `servers` of the master serving `slot` (as the first master sees it)."""
        ranges = self._command(0, "CLUSTER", "SLOTS")
        port = next(r[2][1] for r in ranges if r[0] <= slot <= r[1])
        return next(i for i, s in enumerate(self.servers) if s.port == port)

    def move_slot(self, slot: int, to: int, keys: list | None = None, finish: bool = True) -> int:
        """Move `slot` to master `to` (its keys, or only `keys`, then `finish_slot_move` if `finish`);
        returns the index of the master it came from."""
        src = self.slot_owner(slot)
        if src == to:
            raise ValueError(f"slot {slot} is already on master {to}")
        self._command(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", self._node_id(src))
        self._command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", self._node_id(to))
        self._migrate(slot, src, to, keys)
        if finish:
            self.finish_slot_move(slot, to)
        return src

    def finish_slot_move(self, slot: int, to: int) -> None:
        """Migrate what is left of `slot` on its source, then assign it to `to` on every master."""
        src = self.slot_owner(slot)
        if src != to:
            self._migrate(slot, src, to, None)
        for i in [to] + [i for i in range(len(self.servers)) if i != to]:
            self._command(i, "CLUSTER", "SETSLOT", slot, "NODE", self._node_id(to))

    def _migrate(self, slot: int, src: int, to: int, keys: list | None) -> None:
        while True:
            batch = keys if keys is not None else self._command(src, "CLUSTER", "GETKEYSINSLOT", slot, 100)
            if batch:
                self._command(src, "MIGRATE", "127.0.0.1", self.servers[to].port, "", 0, 5000,
                              "AUTH", self.password, "KEYS", *batch)
            if keys is not None or not batch:
                return

    def _node_id(self, i: int) -> str:
        return self._command(i, "CLUSTER", "MYID").decode()

    def _command(self, i: int, *args):
        c = self._client(self.servers[i])
        try:
            return c.execute_command(*args)
        finally:
            c.close()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
