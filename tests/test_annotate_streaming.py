"""Streaming annotation: every input format and location read by the workers, per-shard resume after
a real kill, and a driver whose memory does not grow with the corpus (session Ray cluster)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from lmlm.annotate import AnnotateConfig, fit_tagger, run_annotation
from lmlm.annotate.config import OpenAIAnnotatorConfig
from lmlm.corpus import Record, write_jsonl, write_parquet
from lmlm.world import WorldConfig, generate_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    docs = [d.annotated_text for d in generate_world(WorldConfig(people=40, seed=1)).documents]
    return fit_tagger(docs, epochs=4, log=lambda s: None).save(tmp_path_factory.mktemp("ann") / "model")


def _rows(out, sub):
    return [r for p in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _run(src, out, model, **kw) -> dict:
    cfg = AnnotateConfig(input=str(src), output_dir=str(out), trained_path=str(model), num_actors=1,
                         num_cpus_per_actor=0.5, batch_size=4, shard_docs=5, load_store=False, progress=False, **kw)
    return run_annotation(cfg, log=lambda s: None)


def test_each_format_and_location_gives_the_same_annotated_rows(ray_cluster, tagger_dir, tmp_path):
    from lmlm.annotate.inputs import plan_shards

    docs = generate_world(WorldConfig(people=12, seed=5)).documents
    recs = [Record(d.id, d.text, "", "world", {}) for d in docs]
    write_jsonl(recs, tmp_path / "in" / "c.jsonl")
    write_parquet(recs, tmp_path / "in" / "c.parquet")
    ref = {"examples": [{"text": d.text, "model_id": "none"} for d in docs]}  # the reference layout: no ids
    (tmp_path / "in" / "ref.json").write_text(json.dumps(ref))
    for k in range(3):  # a glob (or the directory) over three files, and a file that is no corpus
        write_jsonl(recs[k * 4:(k + 1) * 4], tmp_path / "parts" / f"part-{k}.jsonl")
    (tmp_path / "parts" / "notes.txt").write_text("not a corpus")
    inputs = {"jsonl": tmp_path / "in" / "c.jsonl", "parquet": tmp_path / "in" / "c.parquet",
              "reference": tmp_path / "in" / "ref.json", "glob": f"{tmp_path}/parts/part-*.jsonl",
              "dir": tmp_path / "parts", "uri": f"file://{tmp_path}/in/c.jsonl"}
    outputs = {name: tmp_path / f"out-{name}" for name in inputs}
    annotated = {}
    for name, src in inputs.items():
        # the output and the annotator by URI too: the actors open them through pyarrow's filesystem,
        # as on any node
        s = (_run(src, f"file://{outputs[name]}", f"file://{tagger_dir}") if name == "uri"
             else _run(src, outputs[name], tagger_dir))
        assert (s["annotated"], s["rejected"], s["documents"]) == (12, 0, 12), (name, s)
        assert s["shards_written"] == s["shards"] >= 3 and sum(s["docs_per_worker"]) == 12
        rows = _rows(tmp_path / f"out-{name}", "annotated")
        assert len({r["id"] for r in rows}) == 12
        annotated[name] = sorted((r["text"], r["annotated_text"], r["special_text"], r["triples"]) for r in rows)
        if name == "reference":
            assert sorted(r["id"] for r in rows) == sorted(f"ref:{i}" for i in range(12))
        else:
            assert sorted(r["id"] for r in rows) == sorted(d.id for d in docs)
    assert all(a == annotated["jsonl"] for a in annotated.values())
    again = _run(inputs["uri"], f"file://{outputs['uri']}", f"file://{tagger_dir}")  # resume reads the shards by URI
    assert (again["skipped_finished"], again["annotated"], again["shards_written"]) == (12, 0, 0)
    assert json.loads((outputs["uri"] / "summary.json").read_text())["output_dir"] == f"file://{outputs['uri']}"
    assert sum(len(json.loads(r["triples"])) for r in _rows(tmp_path / "out-jsonl", "annotated")) > 12

    # the first `limit` items in path order, across files
    _, shards = plan_shards(AnnotateConfig(input=inputs["glob"], limit=6), shard_docs=3)
    assert [(s["shard"].split("-")[1], s["count"]) for s in shards] == [("0", 3), ("0", 1), ("1", 2)]
    assert len({s["shard"] for s in shards}) == 3


# --------------------------------------------------------------------------------------------
# Resume after a kill: a slow endpoint, a driver in a subprocess killed by PID mid-run


class SlowEcho(BaseHTTPRequestHandler):
    delay = 0.3

    def log_message(self, *args):
        pass

    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        time.sleep(SlowEcho.delay)
        n = re.match(r"Doc (\d+) says", doc).group(1)
        out = f"Doc {n} says [dblookup('Doc {n}', 'Says') -> hello {n}] hello {n}."
        body = json.dumps({"choices": [{"message": {"content": out}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


DRIVER = """
import json, sys
from lmlm.annotate import run_annotation
from lmlm.annotate.config import AnnotateConfig
from lmlm.config import from_dict
from lmlm.rayinit import init_ray
address, cfg = sys.argv[1], from_dict(AnnotateConfig, json.loads(sys.argv[2]))
init_ray(address)
print(json.dumps(run_annotation(cfg)))
"""


def _driver_env() -> dict:
    """A driver's environment, taken after the session cluster started (it sets the auth mode a driver needs)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_run_resumes_per_shard_and_annotates_each_document_once(ray_cluster, chat_prompt, tmp_path):
    from lmlm.config import to_dict

    n_docs, shard_docs = 60, 4
    src = write_jsonl([Record(f"d{i}", f"Doc {i} says hello {i}.", "", "t") for i in range(n_docs)],
                      tmp_path / "c.jsonl")
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowEcho)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    cfg = AnnotateConfig(input=str(src), output_dir=str(out), annotator="openai", num_actors=1, batch_size=4,
                         shard_docs=shard_docs, load_store=False, progress=False,
                         openai=OpenAIAnnotatorConfig(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                                      prompt_path=chat_prompt, concurrency=4))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, ray_cluster.get_runtime_context().gcs_address,
                             json.dumps(to_dict(cfg))], env=_driver_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(list((out / "stats").glob("*.parquet"))) < 3:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.time() < deadline, "no shard finished in 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # the killed run's actor goes with its driver: wait until it has, so nothing writes beside the rerun
        actors = {int(r["worker"].rsplit(":", 1)[1]) for r in _rows(out, "stats")}
        deadline = time.time() + 60
        while any(_alive(pid) for pid in actors):
            assert time.time() < deadline, f"the killed run's actors {actors} are still alive"
            time.sleep(0.1)
        finished = len(list((out / "stats").glob("*.parquet")))
        assert 3 <= finished < n_docs // shard_docs, "the run was not killed midway"

        SlowEcho.delay = 0.0
        again = run_annotation(cfg, log=lambda s: None)
    finally:
        SlowEcho.delay = 0.3
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
    assert again["skipped_finished"] == finished * shard_docs
    assert again["skipped_finished"] + again["annotated"] == n_docs and again["rejected"] == 0
    assert again["shards_written"] == n_docs // shard_docs - finished
    ids = Counter(r["id"] for r in _rows(out, "annotated"))
    assert set(ids) == {f"d{i}" for i in range(n_docs)} and set(ids.values()) == {1}
    assert Counter(r["id"] for r in _rows(out, "stats")) == ids
    assert all(json.loads(r["triples"]) == [[f"Doc {r['id'][1:]}", "Says", f"hello {r['id'][1:]}"]]
               for r in _rows(out, "annotated"))
    third = run_annotation(cfg, log=lambda s: None)
    assert (third["skipped_finished"], third["documents"], third["shards_written"]) == (n_docs, 0, 0)


# --------------------------------------------------------------------------------------------
# The driver holds counts, never documents: its peak memory does not grow with the corpus


MEASURE = """
import json, resource, sys
from lmlm.annotate import run_annotation
from lmlm.annotate.config import AnnotateConfig
from lmlm.config import from_dict
from lmlm.rayinit import init_ray
init_ray(sys.argv[1])
peaks = []
for cfg in json.loads(sys.argv[2]):  # a warm-up, then the corpus, then ten times the corpus
    s = run_annotation(from_dict(AnnotateConfig, cfg), log=lambda m: None)
    peaks.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, s))
print(json.dumps(peaks))
"""


def test_the_driver_memory_does_not_grow_with_the_corpus(ray_cluster, tagger_dir, tmp_path):
    """Each big document (100 kB, over max_doc_bytes) is read and rejected by a worker and the small
    ones annotated; the driver's peak RSS (ru_maxrss) after ten times the corpus (40 MB more text)
    stays where the corpus left it (+2 MB here; the driver that read the corpus itself grew by 34 MB)."""
    from lmlm.config import to_dict

    small = [Record(d.id, d.text, "", "world", {}) for d in generate_world(WorldConfig(people=10, seed=7)).documents]
    big = "word " * 20_000

    def corpus(name: str, n_big: int) -> str:
        return str(write_jsonl(small + [Record(f"big{i}", big, "", "t") for i in range(n_big)], tmp_path / name))

    cfgs = [to_dict(AnnotateConfig(input=src, output_dir=str(tmp_path / f"out{k}"), trained_path=str(tagger_dir),
                                   num_actors=2, num_cpus_per_actor=0.5, shard_docs=50, max_doc_bytes=50_000,
                                   load_store=False, progress=False))
            for k, src in enumerate([corpus("warm.jsonl", 2), corpus("x1.jsonl", 40), corpus("x10.jsonl", 400)])]
    res = subprocess.run([sys.executable, "-c", MEASURE, ray_cluster.get_runtime_context().gcs_address,
                          json.dumps(cfgs)], env=_driver_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (_, _), (peak1, s1), (peak10, s10) = json.loads(res.stdout.strip().splitlines()[-1])
    assert (s1["annotated"], s1["rejects_by_reason"]) == (len(small), {"too_large": 40})
    assert (s10["annotated"], s10["rejects_by_reason"]) == (len(small), {"too_large": 400})
    assert s10["shards_written"] == -(-(len(small) + 400) // 50)  # shards of 50: the first run's size
    assert peak10 - peak1 < 12, f"the driver's peak RSS grew by {peak10 - peak1} MB on 40 MB more documents"
