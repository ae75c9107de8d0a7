"""Connections to one Redis server or a Redis Cluster, behind the few calls the store needs.

`redis+cluster://host:port` (or `FactStoreConfig.cluster`) opens redis-py's cluster client; anything
else a plain client. Neither retries a command by itself: a write that may or may not have reached
the server is never sent twice behind the caller's back (the store retries only reads, and writes
carry batch ids; store.py). Redirections (MOVED/ASK) are answers, not failures, and are followed.

The pipelined paths (`pipelined`, `on_key_node`) send plain per-node pipelines, so they follow
redirections themselves. A command answered MOVED, ASK or TRYAGAIN was not executed: it is sent
again (by `on_key_node` with the keyless commands after it), to the node the reply names (after
ASKING, for an ASK; a MOVED also updates the client's slot map), for at most REDIRECTS rounds; then
StoreUnavailable names the slot that would not settle (mid-migration, a command on several keys split
between two masters keeps answering TRYAGAIN). No command answered otherwise is sent again.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, TryAgainError
from redis.retry import Retry

from .server import StoreUnavailable, check_version

CLUSTER_SCHEME = "redis+cluster"
REDIRECTS = 5  # rounds of resending redirected commands before giving up


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
    scripts (EVALSHA) can be pipelined too. An item's commands must touch its routing key's slot.
    On a cluster each command that is redirected is sent again on its own (module docstring)."""
    if not items:
        return []
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for _, queue in items:
            queue(pipe)
        return pipe.execute()
    rec = _recorder(client)
    units = []
    for key, queue in items:
        before = len(rec.command_stack)
        queue(rec)
        units += [(key, [j]) for j in range(before, len(rec.command_stack))]
    return _execute(client, rec, units)


def on_key_node(client, key: str, queue: Callable) -> list:
    """Run `queue(pipe)` in one pipeline on one connection to the server holding `key` and return
    its replies: a write followed by WAITAOF, which waits for this connection's writes. The first
    command must be the only one that touches keys: when it is redirected (not executed), the whole
    pipeline is sent again, to the node the reply names (the rest is keyless, safe to repeat)."""
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        queue(pipe)
        return pipe.execute()
    rec = _recorder(client)
    queue(rec)
    return _execute(client, rec, [(key, list(range(len(rec.command_stack))))])


def _recorder(client: RedisCluster):
    """A pipeline that only collects commands (their args and the scripts they need), never run."""
    return client.get_redis_connection(client.get_primaries()[0]).pipeline(transaction=False)


def _execute(client: RedisCluster, rec, units: list[tuple[str, list[int]]]) -> list:
    """Send each unit (routing key, indices of `rec`'s commands) to the node serving its key, nodes in
    parallel, then the units whose first command was redirected again, where the redirect says;
    returns the replies in command order, raising the first error."""
    cmds = rec.command_stack
    replies: list = [None] * len(cmds)
    if not cmds:
        return replies
    nodes = {key: client.get_node_from_key(key) for key in dict.fromkeys(key for key, _ in units)}
    route = {u: (nodes[key], False) for u, (key, _) in enumerate(units)}

    def run(us: list[int]) -> list[list]:
        pipe = client.get_redis_connection(route[us[0]][0]).pipeline(transaction=False)
        pipe.scripts.update(rec.scripts)
        for u in us:
            for j in units[u][1]:
                if route[u][1]:  # ASKING lets the next command into a slot being imported
                    pipe.execute_command("ASKING")
                pipe.command_stack.append(cmds[j])
        got = iter(pipe.execute(raise_on_error=False))
        out = []
        for u in us:
            out.append([])
            for _ in units[u][1]:
                if route[u][1]:
                    next(got)  # ASKING's OK
                out[-1].append(next(got))
        return out

    last: dict[int, Exception] = {}  # unit -> the redirect its first command got
    for attempt in range(REDIRECTS + 1):
        if any(isinstance(e, TryAgainError) for e in last.values()):
            time.sleep(0.025 * 2 ** attempt)  # keys on their way between masters: let MIGRATE finish
        groups: dict[str, list[int]] = {}
        for u, (node, _) in route.items():
            groups.setdefault(node.name, []).append(u)
        names = list(groups)
        results = list(_pool().map(run, [groups[n] for n in names])) if len(names) > 1 else [run(groups[names[0]])]
        last = {}
        for name, res in zip(names, results):
            for u, got in zip(groups[name], res):
                if isinstance(got[0], (AskError, TryAgainError)):  # MovedError is an AskError
                    last[u] = got[0]
                else:
                    for j, r in zip(units[u][1], got):
                        replies[j] = r
        if not last:
            break
        route = {u: _redirect(client, route[u], e) for u, e in last.items()}
    else:
        u, e = next(iter(last.items()))
        raise StoreUnavailable(f"Redis Cluster at {describe(client)}: slot {client.keyslot(units[u][0])} still "
                               f"answers {type(e).__name__} after {REDIRECTS} resends; it may be migrating between "
                               "masters: try again when the reshard is done")
    for j, r in enumerate(replies):
        if isinstance(r, redis.ResponseError):
            rec.annotate_exception(r, j + 1, cmds[j][0])
            raise r
    return replies


def _redirect(client: RedisCluster, route: tuple, e: Exception) -> tuple:
    """Where a redirected command goes next: (node, send ASKING first)."""
    if isinstance(e, TryAgainError):
        return route
    if isinstance(e, MovedError):
        client.nodes_manager.move_slot(e)  # the slot map redis-py itself keeps (what it does on MOVED)
    node = client.get_node(host=e.host, port=e.port)
    if node is None:  # a node the client has not seen yet
        client.nodes_manager.initialize()
        node = client.get_node(host=e.host, port=e.port)
    if node is None:
        raise StoreUnavailable(f"Redis Cluster at {describe(client)} redirects to {e.host}:{e.port}, "
                               "a node it does not list")
    return node, not isinstance(e, MovedError)
