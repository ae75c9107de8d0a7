"""Connections to one Redis server or a Redis Cluster, behind the few calls the store needs.

`redis+cluster://host:port` (or `FactStoreConfig.cluster`) opens redis-py's cluster client; anything
else a plain client. Neither retries a command by itself: a write that may or may not have reached
the server is never sent twice behind the caller's back (the store retries only reads, and writes
carry batch ids; store.py). Redirections (MOVED/ASK) are answers, not failures, and are followed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .server import StoreUnavailable, check_version

CLUSTER_SCHEME = "redis+cluster"


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def safe_url(url: str) -> str:
    """The URL without its password (for messages)."""
    p = urlsplit(url)
    if p.password is None and "@" not in p.netloc:
        return url
    return urlunsplit(p._replace(netloc="***@" + p.netloc.rsplit("@", 1)[1]))


def connect(url: str, timeout_s: float, cluster: bool = False, read_timeout_s: float | None = None
            ) -> redis.Redis | RedisCluster:
    """A client with bounded connect/read timeouts (RESP2, hiredis when installed), no command
    retries; checks the server version (every node's, on a cluster). `read_timeout_s` (default
    `timeout_s`) must cover the longest server-side wait a command asks for (WAITAOF)."""
    kw = dict(socket_connect_timeout=timeout_s, socket_timeout=read_timeout_s or timeout_s, protocol=2)
    try:
        if cluster or is_cluster_url(url):
            p = urlsplit(url)
            plain = urlunsplit(p._replace(scheme="redis", path=""))
            client = RedisCluster.from_url(plain, retry=Retry(NoBackoff(), 0), **kw)
        else:
            client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **kw)
        versions = [i["redis_version"] for i in info_all(client, "server")]
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException, OSError) as e:
        raise StoreUnavailable(f"Redis at {safe_url(url)} is unreachable: {e}") from e
    for v in versions:
        check_version(v, f"Redis at {safe_url(url)}")
    return client


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


def info_all(client, section: str) -> list[dict]:
    """INFO `section` of the server, or of every primary of a cluster."""
    if is_cluster(client):
        return [client.get_redis_connection(n).info(section) for n in client.get_primaries()]
    return [client.info(section)]


def node_client(client, key: str) -> redis.Redis:
    """A plain client of the server that holds `key` (the client itself when not a cluster): what a
    pipeline that must stay on one connection (a write, then WAITAOF) runs on."""
    if is_cluster(client):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def describe(client) -> str:
    """redis://host:port/db, or redis+cluster://host:port of one primary (no password)."""
    if is_cluster(client):
        n = client.get_primaries()[0]
        return f"{CLUSTER_SCHEME}://{n.host}:{n.port}"
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="factstore-node")
    return _POOL


def pipelined(client, items: list[tuple[str, Callable]]) -> list:
    """Run `queue(pipe)` of each (routing key, queue) item in a pipeline and return every reply in
    item order. One pipeline on a single server; on a cluster one per node holding the routing keys,
    the nodes in parallel (scatter-gather: one round trip per node), each on a plain connection, so
    scripts (EVALSHA) can be pipelined too. An item's commands must touch its routing key's slot."""
    if not items:
        return []
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for _, queue in items:
            queue(pipe)
        return pipe.execute()
    groups: dict[str, list[int]] = {}
    nodes = {}
    for i, (key, _) in enumerate(items):
        node = client.get_node_from_key(key)
        nodes[node.name] = node
        groups.setdefault(node.name, []).append(i)

    def run(name: str) -> list[list]:
        pipe = client.get_redis_connection(nodes[name]).pipeline(transaction=False)
        sizes = []
        for i in groups[name]:
            before = len(pipe.command_stack)
            items[i][1](pipe)
            sizes.append(len(pipe.command_stack) - before)
        flat = iter(pipe.execute())
        return [[next(flat) for _ in range(k)] for k in sizes]

    names = list(groups)
    results = list(_pool().map(run, names)) if len(names) > 1 else [run(names[0])]
    per_item: list[list] = [[] for _ in items]
    for name, res in zip(names, results):
        for i, r in zip(groups[name], res):
            per_item[i] = r
    return [r for rs in per_item for r in rs]
