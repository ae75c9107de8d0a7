"""Real local Ray clusters started with `ray start --head` on free 127.0.0.1 ports (ray_cluster_harness):
an autoscaling run on the fake_multinode provider, and `ray job submit` with the repo's runtime env.
Every head is stopped by PID; each test checks that none of its processes outlive it."""
from __future__ import annotations

import json
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from lmlm.netutil import free_port
from ray_cluster_harness import (ClusterError, HeadConfig, fake_multinode_config, private_mounts_work, start_head,
                                 wait_for, with_private_dir)

REPO = Path(__file__).resolve().parents[1]

# Checks what infra/runtime_env.yaml promises: the repo is the working dir, `lmlm` comes from
# py_modules (not the editable install), the env vars are set, on the driver and in tasks.
RUNTIME_ENV_PROBE = textwrap.dedent('''
    import json, os, sys
    import ray

    def probe():
        import lmlm, lmlm.format
        return {"lmlm": os.path.dirname(lmlm.__file__), "cwd": os.getcwd(),
                "offline": os.environ.get("HF_HUB_OFFLINE"),
                "jobs_dir": os.path.isdir("jobs"), "infra_dir": os.path.isdir("infra"),
                "block": lmlm.format.render_block(lmlm.format.Triple("Ada", "Birth City", "London"))}

    ray.init()
    out = {"driver": probe(), "task": ray.get(ray.remote(num_cpus=0.5)(probe).remote())}
    json.dump(out, open(sys.argv[1], "w"))
''')


def _assert_gone(pids: set[int], what: str) -> None:
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"}
        time.sleep(0.2)
    assert not alive, f"{what}: processes still alive after stop: {sorted(alive)}"


def test_bad_input_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ClusterError, match="auth='tls'"):
        start_head(auth="tls")
    with pytest.raises(ClusterError, match="no such file"):
        start_head(autoscaling_config=tmp_path / "missing.yaml")
    with pytest.raises(ClusterError, match="cpu_worker.*resources"):
        fake_multinode_config(1, {"cpu_worker": {"max_workers": 2}})
    assert all(not 10002 <= free_port() <= 19999 for _ in range(50))


PIPELINE = REPO / "jobs" / "pipeline.py"
CI_CONFIG = REPO / "jobs" / "configs" / "ci.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.mark.slow
def test_annotation_job_autoscales_worker_nodes(tmp_path):
    """The real annotation job on a 1-CPU fake_multinode head: its Ray Data pool of 2 actors x 1 CPU
    cannot fit, the autoscaler adds cpu_worker nodes, the job finishes and the idle nodes go."""
    cfg = fake_multinode_config(
        head_cpus=1,
        worker_types={"cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}},
        idle_timeout_minutes=0.1)
    run_dir = tmp_path / "run"
    # The repo's runtime env, with the code `local://` (already on every node): fake nodes share the
    # head's session dir, and a worker node unpacking an uploaded working_dir (overwrite=True)
    # deletes the directory the driver runs in. Real nodes each have their own disk.
    env = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    env.update(working_dir=f"local://{REPO}", py_modules=[f"local://{REPO / 'platform' / 'lmlm'}"])
    env.pop("excludes", None)
    # Ray Data starts the pool with whichever actors are up; on 60 documents the head's actor would
    # finish before the new node's actor is ready. Wait for both, so annotation runs on the new node.
    env["env_vars"]["RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S"] = "150"
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(env))
    t0 = time.monotonic()
    with start_head(HeadConfig(num_cpus=1, autoscaling_config=cfg)) as head:
        nodes = [n["node_id"] for n in head.alive_nodes()]
        assert len(nodes) == 1, f"the cluster must start with the head only: {nodes}"
        head_node = nodes[0]
        # The driver joins this cluster through the RAY_ADDRESS the job supervisor sets (ensure_ray).
        res = head.ray_cli(
            "job", "submit", "--no-wait", "--submission-id", "annotate",
            "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--",
            "python", "jobs/pipeline.py", "--config", "jobs/configs/ci.yaml", "--set", f"run_dir={run_dir}",
            "--set", "stages=[world,train_annotator,annotate,build_factstore]",
            "--set", "annotate.num_actors=2", "--set", "annotate.num_cpus_per_actor=1",
            cwd=REPO, timeout=120)
        assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        counts, info = [], {}
        while time.monotonic() - t0 < 240:
            counts.append(len(head.alive_nodes()))
            info = head.job_info("annotate")
            if info["status"] in TERMINAL:
                break
            time.sleep(1)
        logs = head.ray_cli("job", "logs", "annotate", timeout=60).stdout
        assert info["status"] == "SUCCEEDED", f"{info['status']}: {info.get('message')}\n{logs[-4000:]}"
        # The driver stopped its private Redis (run_dir/redis) itself, before the head goes.
        leaked = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                  if any(str(run_dir) in a for a in p.info["cmdline"] or ())]
        assert not leaked, f"processes of the finished job still alive: {leaked}"
        assert max(counts) >= 2, f"the autoscaler added no node (counts {counts})\n{head.log_tail()}"
        actors = head.actors()
        pool = [(a["class_name"], a["state"], a.get("node_id")) for a in actors if "AnnotateActor" in a["class_name"]]
        # The head's one CPU holds one actor; the other ran on a node the autoscaler added for it.
        assert any(node and node != head_node for _, _, node in pool), f"no annotation actor on a new node: {pool}"
        # Idle workers go after idle_timeout_minutes (6 s) plus an autoscaler round.
        wait_for(lambda: len(head.alive_nodes()) == 1, 60, "the worker nodes to be released")
        pids = head.pids()
        assert len(pids) > 3
    _assert_gone(pids, "autoscaling head")
    shards = sorted((run_dir / "annotated" / "annotated").glob("*.parquet"))
    assert shards, f"no annotated shards in {run_dir / 'annotated'}\n{logs[-3000:]}"
    summary = json.loads((run_dir / "annotated" / "summary.json").read_text())
    assert summary["annotated"] > 0 and summary["triples_loaded"] > 0, summary
    assert summary["num_actors"] == 2 and len(summary["docs_per_worker"]) == 2, summary
    print(f"autoscaling annotation job: node counts {counts}, total {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
def job_head():
    """One head for the `ray job submit` tests (a start costs 10-15 s on 2 cores); none of its
    processes may outlive it."""
    with start_head(num_cpus=4) as head:
        yield head
        pids = head.pids()
    _assert_gone(pids, "job head")


@pytest.mark.slow
def test_job_submit_with_repo_runtime_env(job_head, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(RUNTIME_ENV_PROBE)
    out = tmp_path / "probe.json"
    head = job_head
    res = head.ray_cli("job", "submit", "--submission-id", "runtime-env",
                       "--runtime-env", "infra/runtime_env.yaml", "--",
                       "python", str(probe), str(out), cwd=REPO, timeout=180)
    info = head.job_info("runtime-env")
    assert res.returncode == 0 and info["status"] == "SUCCEEDED", (
        f"{info['status']}: {info.get('message')}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    # Token auth is on: the CLI above passed with this head's token; none or a wrong one fails.
    for headers, code in (({}, 401), ({"Authorization": "Bearer " + "0" * 64}, 403)):
        req = urllib.request.Request(head.dashboard_url + "/api/jobs/", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == code
    got = json.loads(out.read_text())
    for where in ("driver", "task"):
        p = got[where]
        assert p["offline"] == "1", where
        assert p["jobs_dir"] and p["infra_dir"], f"{where}: working dir is not the repo: {p['cwd']}"
        # py_modules ships a copy under the session's runtime resources, not the checkout.
        assert Path(p["lmlm"]).resolve() != (REPO / "platform" / "lmlm").resolve(), where
        assert "runtime_resources" in p["lmlm"], p["lmlm"]
        assert p["block"].startswith("<|db_entity|> Ada"), p["block"]


@pytest.mark.slow
@pytest.mark.skipif(not (PIPELINE.exists() and CI_CONFIG.exists()),
                    reason="jobs/pipeline.py and jobs/configs/ci.yaml not written yet")
def test_pipeline_job_submit(job_head, tmp_path):
    """`ray job submit` of the whole pipeline on a small config, with what the workers read and write
    in storage named by URI (the world's documents, the annotator, the annotated shards, pretraining,
    the models evaluation and serving open) and the driver's own files under --set run_dir.

    Where the machine allows it, the driver's run_dir is a tmpfs in a mount namespace of its own: the
    workers (started by the head, outside it) see an empty folder there, so a worker that opened a
    path only the driver holds fails the job; the driver's files are copied out when it ends."""
    run_dir, storage, kept = tmp_path / "run", tmp_path / "storage", tmp_path / "driver-files"
    run_dir.mkdir()
    pipeline = ("python jobs/pipeline.py --config jobs/configs/ci.yaml "
                f"--set run_dir={run_dir} --set storage=file://{storage}")
    private = private_mounts_work()
    if private:  # the job's exit status is the pipeline's; its files survive the namespace in `kept`
        entrypoint = with_private_dir(run_dir, f"{pipeline}; rc=$?; cp -a {run_dir} {kept}; exit $rc")
    else:
        entrypoint, kept = pipeline.split(), run_dir
    res = job_head.ray_cli("job", "submit", "--submission-id", "pipeline",
                           "--runtime-env", "infra/runtime_env.yaml", "--", *entrypoint, cwd=REPO, timeout=600)
    info = job_head.job_info("pipeline")
    assert info["status"] == "SUCCEEDED", (
        f"{info['status']}: {info.get('message')}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}")
    # the job's own processes (its driver, Redis, Serve) ended with it; the head's stay for the module
    leaked = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
              if any(str(run_dir) in a or str(storage) in a for a in p.info["cmdline"] or ())]
    assert not leaked, f"processes of the finished job still alive: {leaked}"
    if private:
        assert not any(run_dir.iterdir()), f"the driver's run_dir leaked to the workers' view: {list(run_dir.iterdir())}"
    run_dir = kept
    from lmlm.eval.results import read_results

    results = read_results(run_dir)
    assert results.complete and results.demo_wall_s > 0
    # ci.yaml trains the retain-only LMLM: forget quality is measured against it (TOFU)
    assert results.forget_quality_reference == "retain_model" and 0.0 <= results.forget_quality_p <= 1.0
    assert (run_dir / "pretrain" / "lmlm-retain" / "final" / "config.json").is_file()
    # knowledge insertion: people in no training document, evaluated after their facts were put
    assert results.details["inserted"]["triples_added"] > 0 and results.precision_inserted_lmlm is not None
    assert results.own_entity_lookup_rate_inserted is not None
    steps = results.details["serve_demo"]["steps"]
    assert [s["title"].split(" (")[0].split(":")[0] for s in steps] == [
        "unknown to the store", "after PUT /v1/facts", f"after DELETE /v1/facts {results.details['serve_demo']['person']!r}"]
    assert run_dir.is_dir() and any(run_dir.iterdir()), f"no outputs in {run_dir}"
    assert (storage / "world" / "documents.parquet").is_file() and (storage / "annotator" / "annotator.json").is_file()
    assert any((storage / "annotated" / "stats").iterdir()) and not (run_dir / "annotated").exists()
    assert list((storage / "pretrain" / "lmlm").glob("checkpoint_*/complete.json"))
