"""Real local Ray clusters started with `ray start --head` on free 127.0.0.1 ports (lmlm.cluster):
an autoscaling run on the fake_multinode provider, and `ray job submit` with the repo's runtime env.
Every head is stopped by PID; each test checks that none of its processes outlive it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from lmlm.cluster import ClusterError, HeadConfig, fake_multinode_config, free_port, start_head, wait_for

REPO = Path(__file__).resolve().parents[1]

# An annotation-shaped workload: shards of documents, each "annotated" by a 1-CPU task that holds
# its CPU for a few seconds. Three shards on a 1-CPU head leave demand the autoscaler must serve.
WORKLOAD = textwrap.dedent('''
    import json, sys, time
    import ray

    ray.init()

    @ray.remote(num_cpus=1)
    def annotate(shard):
        time.sleep(6)
        node = ray.get_runtime_context().get_node_id()
        return {"shard": shard, "node": node, "n": sum(len(d.split()) for d in DOCS[shard])}

    DOCS = [["Ada Lovelace was born in London."] * 50 for _ in range(3)]
    out = ray.get([annotate.remote(i) for i in range(len(DOCS))])
    json.dump(out, open(sys.argv[1], "w"))
''')

# Checks what infra/runtime_env.yaml promises: the repo is the working dir, `lmlm` comes from
# py_modules (not the editable install), the env vars are set, on the driver and in tasks.
RUNTIME_ENV_PROBE = textwrap.dedent('''
    import json, os, sys
    import ray

    def probe():
        import lmlm, lmlm.format
        return {"lmlm": os.path.dirname(lmlm.format.__file__), "cwd": os.getcwd(),
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


@pytest.mark.slow
def test_autoscaling_adds_and_releases_worker_nodes(tmp_path):
    cfg = fake_multinode_config(
        head_cpus=1,
        worker_types={"cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}},
        idle_timeout_minutes=0.1)
    (tmp_path / "annotate_shards.py").write_text(WORKLOAD)
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    with start_head(HeadConfig(num_cpus=1, autoscaling_config=cfg)) as head:
        assert len(head.alive_nodes()) == 1, "the cluster must start with the head only"
        ray_bin = str(Path(sys.executable).with_name("ray"))
        job = subprocess.Popen(
            [ray_bin, "job", "submit", "--address", head.dashboard_url, "--submission-id", "autoscale",
             "--working-dir", str(tmp_path), "--", "python", "annotate_shards.py", str(out)],
            env=head.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        counts = []
        while job.poll() is None and time.monotonic() - t0 < 100:
            counts.append(len(head.alive_nodes()))
            time.sleep(1)
        log, _ = job.communicate(timeout=30)
        info = head.job_info("autoscale")
        assert info["status"] == "SUCCEEDED", f"{info['status']}: {info.get('message')}\n{log[-3000:]}"
        assert max(counts) >= 2, f"the autoscaler added no node (counts {counts})\n{head.log_tail()}"
        shards = json.loads(out.read_text())
        assert sorted(s["shard"] for s in shards) == [0, 1, 2]
        assert len({s["node"] for s in shards}) >= 2, "all shards ran on one node"
        # Idle workers go after idle_timeout_minutes (6 s) plus an autoscaler round.
        wait_for(lambda: len(head.alive_nodes()) == 1, 60, "the worker nodes to be released")
        pids = head.pids()
        assert len(pids) > 3
    _assert_gone(pids, "autoscaling head")
    print(f"autoscaling: node counts {counts}, total {time.monotonic() - t0:.1f} s")


@pytest.mark.slow
def test_job_submit_with_repo_runtime_env(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(RUNTIME_ENV_PROBE)
    out = tmp_path / "probe.json"
    with start_head(num_cpus=2) as head:
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
        pids = head.pids()
    _assert_gone(pids, "job head")
    got = json.loads(out.read_text())
    for where in ("driver", "task"):
        p = got[where]
        assert p["offline"] == "1", where
        assert p["jobs_dir"] and p["infra_dir"], f"{where}: working dir is not the repo: {p['cwd']}"
        # py_modules ships a copy under the session's runtime resources, not the checkout.
        assert Path(p["lmlm"]).resolve() != (REPO / "platform" / "lmlm").resolve(), where
        assert "runtime_resources" in p["lmlm"], p["lmlm"]
        assert p["block"].startswith("<|db_entity|> Ada"), p["block"]


PIPELINE = REPO / "jobs" / "pipeline.py"
CI_CONFIG = REPO / "jobs" / "configs" / "ci.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not (PIPELINE.exists() and CI_CONFIG.exists()),
                    reason="jobs/pipeline.py and jobs/configs/ci.yaml not written yet")
def test_pipeline_job_submit(tmp_path):
    """`ray job submit` of the whole pipeline on a small config; outputs land under --set run_dir."""
    run_dir = tmp_path / "run"
    with start_head(num_cpus=4) as head:
        res = head.ray_cli("job", "submit", "--submission-id", "pipeline",
                           "--runtime-env", "infra/runtime_env.yaml", "--",
                           "python", "jobs/pipeline.py", "--config", "jobs/configs/ci.yaml",
                           "--set", f"run_dir={run_dir}", cwd=REPO, timeout=600)
        info = head.job_info("pipeline")
        assert info["status"] == "SUCCEEDED", (
            f"{info['status']}: {info.get('message')}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}")
        pids = head.pids()
    _assert_gone(pids, "pipeline head")
    assert run_dir.is_dir() and any(run_dir.iterdir()), f"no outputs in {run_dir}"
