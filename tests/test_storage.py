"""Run storage by URI (lmlm.storage), pretraining on several nodes that share nothing but it, and
the annotation, store load and packing on an S3 object store.

The multi-node test starts a Ray cluster of a CPU-less head and two 3-CPU nodes (room for one 2-CPU
train worker each, so the two ranks run on different nodes), each node in a
working directory of its own, and runs the driver in a mount namespace of its own where its run
directory is a private tmpfs: a worker that opened a path only the driver holds finds nothing
there (the driver proves that first), so the run passes only when every file a worker reads or
writes goes through the storage URI. Both use an S3 server on 127.0.0.1 (moto's) as the storage:
objects only, no directories and no rename, as on a cloud object store.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmlm.storage import Storage, is_uri, local_dir, node_copy, prune_node_cache
from ray_cluster_harness import private_mounts_work, with_private_dir


def test_storage_by_path_and_by_uri_is_the_same_folder(tmp_path):
    by_uri, by_path = Storage(f"file://{tmp_path}/s"), Storage(tmp_path / "s")
    by_uri.write_text("a/b.json", '{"x": 1}')
    assert by_path.read_text("a/b.json") == '{"x": 1}' and by_path.is_file("a/b.json") and by_path.is_dir("a")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"123")
    (src / "c.txt").write_text("c")
    by_uri.upload(src, "dir")
    assert by_path.file_sizes("dir") == {"c.txt": 1, "sub/w.bin": 3}
    assert by_uri.listdir() == ["a", "dir"] and by_uri.listdir("missing") == []
    by_uri.move("dir", "moved")
    assert by_path.listdir() == ["a", "moved"]
    by_uri.delete("moved")
    by_uri.delete("never-there")
    assert by_path.listdir() == ["a"]
    assert is_uri("s3://b/x") and is_uri("file:///x") and not is_uri("runs/x") and not is_uri("/abs/x")


def test_bad_storage_names_the_location():
    with pytest.raises(ValueError, match="storage 'nosuchscheme://x/y': not a folder or URI"):
        Storage("nosuchscheme://x/y")
    with pytest.raises(ValueError, match="storage: empty location"):
        Storage("")


def test_node_copy_is_made_once_per_content(tmp_path):
    store = Storage(f"file://{tmp_path}/s")
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("v1")
    store.upload(src, "tok")
    cache = tmp_path / "cache"
    first = node_copy(store.uri_of("tok"), cache)
    assert Path(first, "tokenizer.json").read_text() == "v1"
    assert node_copy(store.uri_of("tok"), cache) == first  # the same content: the same copy
    (src / "tokenizer.json").write_text("v2!")
    store.upload(src, "tok")
    second = node_copy(store.uri_of("tok"), cache)
    assert second != first and Path(second, "tokenizer.json").read_text() == "v2!"
    assert local_dir(str(src)) == str(src)  # a plain path is read where it is
    with pytest.raises(FileNotFoundError, match="no such directory"):
        node_copy(store.uri_of("missing"), cache)


def test_node_cache_keeps_to_its_size_by_evicting_the_least_recently_used(tmp_path, monkeypatch):
    store, cache = Storage(f"file://{tmp_path}/s"), tmp_path / "cache"
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"x" * 400_000)
        store.upload(tmp_path / name, name)
    monkeypatch.setenv("LMLM_NODE_CACHE_MAX_GB", str(1_000_000 / 2**30))  # room for two copies
    a, b = node_copy(store.uri_of("a"), cache), node_copy(store.uri_of("b"), cache)
    half_made = cache / ".tmp-x-1234"  # what a worker killed while copying left
    half_made.mkdir()
    day_ago = time.time() - 90_000
    os.utime(half_made, (day_ago, day_ago))
    for copy, hours in ((a, 3), (b, 2)):  # last used 3 and 2 hours ago
        os.utime(Path(copy, ".lmlm-copy-complete"), (time.time() - 3600 * hours,) * 2)
    assert node_copy(store.uri_of("a"), cache) == a  # a use refreshes a: b is now the oldest
    c = node_copy(store.uri_of("c"), cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([Path(a).name, Path(c).name])  # b went
    # copies used within the hour stay even above the limit: a reader may still be opening them
    d = node_copy(store.uri_of("d"), cache)
    assert {Path(x).name for x in (a, c, d)} == {p.name for p in cache.iterdir()}
    assert prune_node_cache(cache, keep=d, max_bytes=0, min_idle_s=0) == [Path(a).name, Path(c).name]  # LRU first
    assert [p.name for p in cache.iterdir()] == [Path(d).name] and Path(d, "weights.bin").stat().st_size == 400_000


def test_model_dir_by_uri_takes_a_node_copy_of_the_newest_export(tmp_path, monkeypatch):
    from lmlm.train.runstore import model_dir

    monkeypatch.setenv("LMLM_NODE_CACHE", str(tmp_path / "cache"))
    store = Storage(f"file://{tmp_path}/run")
    for step in (2, 4):
        name = f"checkpoint_{step:07d}"
        store.write_text(f"{name}/hf/config.json", json.dumps({"step": step}))
        store.write_text(f"{name}/train_state.json", json.dumps({"step": step}))
        store.write_text(f"{name}/complete.json", json.dumps({"step": step, "files": store.file_sizes(name)}))
    store.write_text("checkpoint_0000006/hf/config.json", "{}")  # never completed: not a candidate
    got = model_dir(store.uri)
    assert json.loads((got / "config.json").read_text()) == {"step": 4} and str(got).startswith(str(tmp_path / "cache"))
    assert json.loads((model_dir(store.uri_of("checkpoint_0000002/hf")) / "config.json").read_text()) == {"step": 2}
    with pytest.raises(FileNotFoundError, match="model directory file://.*/nothing: no config.json"):
        model_dir(f"file://{tmp_path}/nothing")


def test_serving_and_evaluation_load_a_model_named_by_uri(tiny_tokenizer, tmp_path, monkeypatch):
    from lmlm.eval.scoring import load_model
    from lmlm.serve.loaders import model_from_dir, tokenizer_from_dir
    from lmlm.train.models import build_model

    monkeypatch.setenv("LMLM_NODE_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "model"
    build_model("tiny", len(tiny_tokenizer), 64, seed=0).save_pretrained(local)
    tiny_tokenizer.save_pretrained(local)
    store = Storage(f"file://{tmp_path}/storage")
    store.upload(local, "model")
    uri = store.uri_of("model")
    model, tok = model_from_dir(uri, device="cpu"), tokenizer_from_dir(uri)
    assert model.config.vocab_size == len(tok) == len(tiny_tokenizer)
    evaluated = load_model(uri, "lmlm", device="cpu")
    assert evaluated.path == uri  # Ray workers get the URI, not this node's copy
    with pytest.raises(FileNotFoundError, match="model_path: file://.*/absent is not a checkpoint directory"):
        model_from_dir(store.uri_of("absent"), device="cpu")


# ------------------------------------------------------------------------------------------------
# Several nodes, separate working directories, storage named only by URI

DRIVER = textwrap.dedent('''
    import json, os, sys
    import ray
    from lmlm.train.config import PretrainConfig
    from lmlm.train.loop import run_pretraining

    address, run_dir, storage, max_steps, out = sys.argv[1:6]
    secret = os.path.join(run_dir, "driver-only.txt")
    os.makedirs(run_dir, exist_ok=True)
    open(secret, "w").write("only the driver sees this")
    # the object store's endpoint and credentials, to this job's workers as a cluster's image would give them
    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}})
    seen = ray.get([ray.remote(num_cpus=1)(lambda p: (os.path.exists(p), os.getcwd())).remote(secret)
                    for _ in range(2)])
    cfg = PretrainConfig(model="tiny", storage=storage, run_dir=run_dir, world_people=40, vocab_size=600,
                         seq_len=64, micro_batch_size=2, max_steps=int(max_steps), warmup_steps=1,
                         checkpoint_every=2, log_every=1, num_workers=2, cpus_per_worker=2)
    result = run_pretraining(cfg, progress=False)
    json.dump({"seen": seen, "final_step": result.final_step, "hf_dir": result.hf_dir,
               "attempts": result.attempts, "steps": [m["step"] for m in result.metrics],
               "hf_files": sorted(os.listdir(result.hf_dir)), "driver_files": sorted(os.listdir(run_dir))},
              open(out, "w"))
''')


@pytest.mark.slow
def test_pretraining_on_nodes_that_share_only_the_storage_uri(s3, tmp_path):
    if not private_mounts_work():
        pytest.skip("needs `unshare -m` (root or user namespaces) to hide the driver's files from the nodes")
    from ray.cluster_utils import Cluster

    storage = "s3://lmlm/multinode"  # an object store: no directories, no rename
    run_dir = tmp_path / "driver-run"  # in the driver's namespace a tmpfs: the nodes see an empty folder
    run_dir.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    home = os.getcwd()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for i in range(2):  # each node's raylet and workers run in a directory of their own
            node_cwd = tmp_path / f"node{i}"
            node_cwd.mkdir()
            os.chdir(node_cwd)
            try:
                cluster.add_node(num_cpus=3)  # one 2-CPU train worker per node, a CPU for Ray Data
            finally:
                os.chdir(home)
        cluster.wait_for_nodes()

        def drive(max_steps: int) -> dict:
            out = tmp_path / f"out-{max_steps}.json"
            cmd = f"exec {sys.executable} {script} {cluster.address} {run_dir} {storage} {max_steps} {out}"
            res = subprocess.run(with_private_dir(run_dir, cmd), capture_output=True, text=True,
                                 timeout=600, cwd=tmp_path)
            assert res.returncode == 0, f"driver failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
            return json.loads(out.read_text())

        first = drive(4)
        # the nodes could not see the driver's file, and ran in their own directories
        assert [s[0] for s in first["seen"]] == [False, False], first["seen"]
        assert all(Path(s[1]).name.startswith("node") for s in first["seen"]), first["seen"]
        assert not any(run_dir.iterdir()), "the driver's run_dir leaked onto the shared disk"
        assert first["final_step"] == 4 and first["steps"] == [1, 2, 3, 4]
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(first["hf_files"])
        # the driver's copies: the final export and the logs (its own tokenizer and config beside them)
        assert {"from-storage", "metrics.jsonl", "attempts.jsonl", "tokenizer"} <= set(first["driver_files"])

        store = Storage(storage)
        names = store.listdir()
        assert "checkpoint_0000004" in names and "tokenizer" in names and "metrics.jsonl" in names, names
        complete = json.loads(store.read_text("checkpoint_0000004/complete.json"))
        assert complete["world_size"] == 2
        ranks = sorted(f for f in complete["files"] if "zero_pp_rank_" in f)
        assert len(ranks) == 2, ranks  # both ranks' optimizer states, each uploaded from its own node

        second = drive(6)  # a new driver resumes from the storage alone
        assert second["final_step"] == 6 and [a["start_step"] for a in second["attempts"]] == [0, 4]
        assert second["steps"] == [1, 2, 3, 4, 5, 6]
    finally:
        cluster.shutdown()


S3_DRIVER = textwrap.dedent('''
    import json, os, sys, tempfile
    from pathlib import Path
    import ray
    from lmlm.annotate import AnnotateConfig, fit_tagger, run_annotation
    from lmlm.annotate.pipeline import load_annotated
    from lmlm.corpus import Record, write_jsonl
    from lmlm.factstore import FactStore, FactStoreConfig
    from lmlm.storage import Storage, read_parquet
    from lmlm.tokenizer import train_tokenizer
    from lmlm.train.data import pack_dataset
    from lmlm.train.masks import VALUE
    from lmlm.world import WorldConfig, generate_world

    address, root, out = sys.argv[1:4]
    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}})
    store, local = Storage(root), Path(tempfile.mkdtemp())
    seeds = [d.annotated_text for d in generate_world(WorldConfig(people=40, seed=1)).documents]
    store.upload(fit_tagger(seeds, epochs=4, log=lambda s: None).save(local / "tagger"), "annotator")
    docs = generate_world(WorldConfig(people=12, seed=5)).documents
    store.upload_file(write_jsonl([Record(d.id, d.text, "", "world", {}) for d in docs], local / "c.jsonl"), "in/c.jsonl")
    train_tokenizer([d.annotated_text for d in docs], 400, local / "tok")
    store.upload(local / "tok", "tokenizer")
    cfg = AnnotateConfig(input=store.uri_of("in/c.jsonl"), output_dir=store.uri_of("annotated"),
                         trained_path=store.uri_of("annotator"), num_actors=1, num_cpus_per_actor=0.5,
                         batch_size=4, shard_docs=5, load_store=False, progress=False)
    first, again = run_annotation(cfg, log=lambda s: None), run_annotation(cfg, log=lambda s: None)
    with FactStore.open(FactStoreConfig(namespace="s3")) as facts:
        loaded = load_annotated(store.uri_of("annotated"), facts, workers=1)
        reloaded = load_annotated(store.uri_of("annotated"), facts, workers=1)
    shards = read_parquet(store.uri_of("annotated/annotated"))
    packed = pack_dataset(shards, store.uri_of("tokenizer"), "lmlm", 64)
    json.dump({"first": first, "again": again, "loaded": loaded, "reloaded": reloaded,
               "ids": sorted(r["id"] for r in shards.take_all()), "doc_ids": sorted(d.id for d in docs),
               "rows": len(packed), "value_tokens": int((packed.kinds == VALUE).sum())}, open(out, "w"))
''')


@pytest.fixture
def s3(monkeypatch):
    """An S3 server on 127.0.0.1 (moto's: objects only, no directories, no rename) with a bucket
    `lmlm`; its endpoint and credentials set in this process's environment (for pyarrow here and for
    the drivers the tests start), stopped at the end."""
    import boto3
    from moto.server import ThreadedMotoServer

    from lmlm.netutil import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="lmlm")
    try:
        yield client
    finally:
        server.stop()


def s3_keys(client, prefix: str) -> list[str]:
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="lmlm", Prefix=prefix)
            for o in page.get("Contents", [])]


@pytest.mark.slow
def test_annotation_store_load_and_packing_through_an_s3_object_store(ray_cluster, s3, tmp_path):
    """The annotation's input, annotator, shards and resume, the store load and the packing, all on
    an S3 object store, named by s3:// URI. The driver joins the session cluster as a job of its own
    whose workers get the endpoint and credentials in its runtime environment."""
    script, out = tmp_path / "driver.py", tmp_path / "out.json"
    script.write_text(S3_DRIVER)
    address = ray_cluster.get_runtime_context().gcs_address
    res = subprocess.run([sys.executable, str(script), address, "s3://lmlm/run", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, f"driver failed:\n{res.stdout[-2000:]}\n{res.stderr[-5000:]}"
    got = json.loads(out.read_text())
    keys = s3_keys(s3, "run/")
    assert (got["first"]["annotated"], got["first"]["shards_written"]) == (12, got["first"]["shards"])
    assert got["first"]["output_dir"] == "s3://lmlm/run/annotated"
    assert (got["again"]["skipped_finished"], got["again"]["annotated"]) == (12, 0)  # resume from the bucket
    assert got["loaded"]["written"] == got["loaded"]["triples"] > 12 and got["reloaded"]["written"] == 0
    assert got["ids"] == got["doc_ids"] and got["rows"] > 0 and got["value_tokens"] > 0
    assert sum(k.startswith("run/annotated/annotated/") and k.endswith(".parquet") for k in keys) == got["first"]["shards"]
    assert "run/annotated/summary.json" in keys
