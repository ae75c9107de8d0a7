"""Test harness: a private local Ray cluster, `ray start --head` on free 127.0.0.1 ports, stopped by PID.

Used by the cluster and infra tests; not part of the `lmlm` library (it needs `psutil`, declared in
the `test` extra). Everything a head starts (GCS, raylet, dashboard, the autoscaler monitor, fake
worker nodes, job drivers) lives in one new session, under one private temp dir, so `stop()` finds exactly these processes and kills them by PID; never `ray stop`
(it kills every Ray process on the machine) and never a kill by name.

    with start_head(HeadConfig(num_cpus=1)) as head:
        subprocess.run(["ray", "job", "submit", "--address", head.dashboard_url, "--", ...],
                       env=head.client_env(), check=True)

Token authentication (on by default in Ray 2.60 when a token file exists) is set explicitly: each
head gets its own random token in its temp dir; the head, the drivers and the job CLI all read it
through `RAY_AUTH_MODE=token` + `RAY_AUTH_TOKEN_PATH`, so a stray `~/.ray/auth_token` plays no part.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from lmlm.netutil import free_port, handed_out, port_free

FAKE_HEAD_TYPE = "ray.head.default"  # the node type the fake_multinode provider gives its head


class ClusterError(RuntimeError):
    pass


@dataclass
class HeadConfig:
    num_cpus: float = 1  # logical CPUs of the head node
    num_gpus: int = 0
    object_store_mb: int = 128  # plasma store of the head
    autoscaling_config: dict | str | Path | None = None  # a fake_multinode config (dict or file)
    include_dashboard: bool = True  # needed for `ray job submit` and the node counts
    auth: str = "token"  # "token" (private token per head) or "disabled"
    start_timeout_s: float = 90.0
    keep_temp_dir: bool = False  # keep logs after stop (debugging)
    env: dict[str, str] = field(default_factory=dict)  # extra env for the head and its workers


def fake_multinode_config(
    head_cpus: float,
    worker_types: dict[str, dict[str, Any]],
    *,
    gcs_port: int | None = None,
    idle_timeout_minutes: float = 0.1,
    max_workers: int | None = None,
) -> dict:
    """A `fake_multinode` autoscaler config: worker_types maps a type name to
    {"resources": {"CPU": 1, ...}, "min_workers": 0, "max_workers": 2}. The GCS port is filled in
    by `start_head` (the provider otherwise assumes 6379)."""
    types: dict[str, Any] = {FAKE_HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {},
                                               "max_workers": 0}}
    for name, spec in worker_types.items():
        if "resources" not in spec:
            raise ClusterError(f"worker type {name!r}: missing 'resources'")
        res = dict(spec["resources"])
        res.setdefault("object_store_memory", 100 * 1024 * 1024)
        types[name] = {"resources": res, "node_config": {},
                       "min_workers": int(spec.get("min_workers", 0)),
                       "max_workers": int(spec.get("max_workers", 1))}
    provider: dict[str, Any] = {"type": "fake_multinode", "use_node_id_as_ip": True,
                                "disable_node_updaters": True, "disable_launch_config_check": True}
    if gcs_port is not None:
        provider["gcs_address"] = f"127.0.0.1:{gcs_port}"
    return {
        "cluster_name": "lmlm-fake", "provider": provider, "auth": {}, "docker": {},
        "max_workers": max_workers if max_workers is not None
        else sum(t.get("max_workers", 0) for t in types.values()),
        "available_node_types": types, "head_node_type": FAKE_HEAD_TYPE,
        "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def free_port_range(n: int, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """n consecutive free ports in [low, high) (worker ports; below the usual ephemeral range)."""
    for _ in range(200):
        base = random.randrange(low, high - n)
        ports = range(base, base + n)
        if not handed_out.intersection(ports) and all(port_free(p) for p in ports):
            handed_out.update(ports)
            return base, base + n - 1
    raise ClusterError(f"no {n} consecutive free ports in [{low}, {high})")


class RayHead:
    """A running head. Attributes: address (GCS host:port, for ray.init), dashboard_url (for the
    job CLI/SDK and the state API), ports, temp_dir, pid (the `ray start --block` process)."""

    def __init__(self, cfg: HeadConfig):
        if cfg.auth not in ("token", "disabled"):
            raise ClusterError(f"HeadConfig.auth={cfg.auth!r}: expected 'token' or 'disabled'")
        if isinstance(cfg.autoscaling_config, (str, Path)) and not Path(cfg.autoscaling_config).is_file():
            raise ClusterError(f"HeadConfig.autoscaling_config {cfg.autoscaling_config}: no such file")
        self.cfg = cfg
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lmlm-ray-", dir="/tmp"))  # short: socket paths
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.ports = {name: free_port() for name in (
            "ray-client-server-port", "node-manager-port", "object-manager-port",
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port")}
        self.min_worker_port, self.max_worker_port = free_port_range(64)
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.token_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._known: dict[int, float] = {}  # pid -> create_time of every process seen in this head
        self._stopped = False

    # -- environment shared by the head and its clients ---------------------------------------
    def _auth_env(self) -> dict[str, str]:
        if self.cfg.auth == "disabled":
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Env for a driver (`ray.init()`), the `ray job` CLI or a `JobSubmissionClient`."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_AUTH_TOKEN", None)  # it would win over RAY_AUTH_TOKEN_PATH
        env.update(self._auth_env())
        # `python` in a job entrypoint must be this interpreter (the venv need not be activated).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update({"RAY_ADDRESS": self.address, "RAY_API_SERVER_ADDRESS": self.dashboard_url,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"})
        return env

    def auth_headers(self) -> dict[str, str]:
        if self.token_path is None:
            return {}
        return {"Authorization": "Bearer " + self.token_path.read_text().strip()}

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> "RayHead":
        cfg = self.cfg
        if cfg.auth == "token":
            self.token_path = self.temp_dir / "auth_token"
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", f"--num-cpus={cfg.num_cpus:g}", f"--num-gpus={cfg.num_gpus}",
               f"--object-store-memory={cfg.object_store_mb * 1024 * 1024}",
               f"--min-worker-port={self.min_worker_port}", f"--max-worker-port={self.max_worker_port}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               f"--include-dashboard={str(cfg.include_dashboard).lower()}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        cmd += [f"--{name}={port}" for name, port in self.ports.items()]
        env = self.client_env()
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_API_SERVER_ADDRESS", None)
        env.update(cfg.env)
        if cfg.autoscaling_config is not None:
            as_cfg = cfg.autoscaling_config
            if not isinstance(as_cfg, dict):
                as_cfg = yaml.safe_load(Path(as_cfg).read_text())
            as_cfg = json.loads(json.dumps(as_cfg))
            if as_cfg.get("provider", {}).get("type") == "fake_multinode":
                as_cfg["provider"]["gcs_address"] = self.address
                env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
            as_path = self.temp_dir / "autoscaling.yaml"
            as_path.write_text(yaml.safe_dump(as_cfg))
            cmd.append(f"--autoscaling-config={as_path}")
        log = open(self.temp_dir / "head.log", "wb")
        # A new session: every process the head starts shares its session id, even once orphaned.
        self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            self._remember()
            if self._proc.poll() is not None:
                raise ClusterError(f"ray start exited with {self._proc.returncode}:\n{self.log_tail()}")
            if not self.cfg.include_dashboard:
                if not port_free(self.gcs_port) and self._gcs_up():
                    return
            else:
                try:
                    if self.alive_nodes():
                        return
                except (urllib.error.URLError, OSError, ValueError, KeyError):
                    pass
            time.sleep(0.5)
        raise ClusterError(f"head not ready after {self.cfg.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def _gcs_up(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.gcs_port)) == 0

    # -- inspection -----------------------------------------------------------------------------
    def _get(self, path: str, timeout: float = 10.0) -> Any:
        req = urllib.request.Request(self.dashboard_url + path, headers=self.auth_headers())
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """Every node the GCS knows (alive and dead), via the dashboard's state API."""
        out = self._get("/api/v0/nodes?limit=1000&detail=true")
        return out["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def actors(self) -> list[dict]:
        """The state API's actor records (class_name, state, address.raylet_id / node_id, ...)."""
        return self._get("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]

    def job_info(self, submission_id: str) -> dict:
        """The Jobs API record of one job: status, message, entrypoint, ..."""
        return self._get(f"/api/jobs/{submission_id}")

    def ray_cli(self, *args: str, timeout: float | None = None, cwd: str | Path | None = None,
                capture: bool = True) -> subprocess.CompletedProcess:
        """Run `ray ARGS...` (this venv's CLI) against this head with the matching auth env."""
        ray_bin = str(Path(sys.executable).with_name("ray"))
        return subprocess.run([ray_bin, *args], env=self.client_env(), cwd=cwd, timeout=timeout,
                              capture_output=capture, text=True)

    def log_tail(self, n: int = 40) -> str:
        lines = []
        head_log = self.temp_dir / "head.log"
        if head_log.exists():
            lines += head_log.read_text(errors="replace").splitlines()[-n:]
        mon = self.temp_dir / "session_latest" / "logs" / "monitor.log"
        if mon.exists():
            lines += ["--- monitor.log ---"] + mon.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def _remember(self) -> None:
        for p in self._collect():
            try:
                self._known.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def _collect(self) -> list[psutil.Process]:
        """This head's processes: the `ray start` process and its descendants, plus any process of
        our session (orphans re-parented to init) or naming our private temp dir in its command."""
        if self._proc is None:
            return []
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self._proc.pid)
            found[root.pid] = root
            for c in root.children(recursive=True):
                found[c.pid] = c
        except psutil.NoSuchProcess:
            pass
        me, tdir = os.getuid(), str(self.temp_dir)
        for p in psutil.process_iter(["pid", "uids", "cmdline"]):
            if p.pid in found or p.pid == os.getpid() or p.info["uids"] is None or p.info["uids"].real != me:
                continue
            try:
                mine = os.getsid(p.pid) == self._proc.pid or any(
                    a == tdir or tdir + "/" in a for a in p.info["cmdline"] or ())
            except (ProcessLookupError, PermissionError):
                continue
            if mine or self._known.get(p.pid) == _ctime(p):
                found[p.pid] = p
                for c in _children(p):
                    found[c.pid] = c
        return list(found.values())

    def pids(self) -> set[int]:
        """PIDs of every live process of this head (head services, workers, fake nodes, drivers)."""
        procs = self._collect()
        for p in procs:
            self._known.setdefault(p.pid, _ctime(p))
        return {p.pid for p in procs}

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, grace_s: float = 5.0) -> None:
        """Kill this head's processes and their children by PID (SIGTERM, then SIGKILL)."""
        if self._stopped:
            return
        self._stopped = True
        for _ in range(4):  # repeat: a dying raylet may still spawn a worker
            procs = self._collect()
            if not procs:
                break
            for p in procs:
                _signal(p, signal.SIGTERM)
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for p in alive:
                _signal(p, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=5)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        leftover = self._collect()
        if not self.cfg.keep_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        handed_out.difference_update({self.gcs_port, self.dashboard_port, *self.ports.values()})
        if leftover:
            raise ClusterError(f"processes survived stop: {[p.pid for p in leftover]}")

    def __enter__(self) -> "RayHead":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _ctime(p: psutil.Process) -> float | None:
    try:
        return p.create_time()
    except psutil.Error:
        return None


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def start_head(cfg: HeadConfig | None = None, **kw) -> RayHead:
    """Start a private head (fields of HeadConfig as keywords, or a HeadConfig) and wait until the
    dashboard answers and the head node is alive. Use as a context manager or call `stop()`."""
    if cfg is None:
        cfg = HeadConfig(**kw)
    elif kw:
        raise ClusterError("pass either a HeadConfig or keywords, not both")
    return RayHead(cfg).start()


def private_mounts_work() -> bool:
    """Whether this machine lets a process mount a tmpfs only it sees (`unshare -m`: root or user
    namespaces): the multi-node tests hide the driver's run directory from the workers that way."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


def with_private_dir(private: Path, command: str) -> list[str]:
    """argv that runs the shell `command` in a mount namespace of its own where `private` is an
    empty tmpfs: the command's files there are invisible to every other process (the Ray workers),
    and gone when it ends."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs lmlm-driver {private} && {command}"]


def wait_for(pred, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll pred() until it returns a truthy value; raise naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            last_err = e
        time.sleep(interval_s)
    raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                       + (f" (last error: {last_err})" if last_err else ""))
