"""Serving under faults: a body streamed past the size limit, and a scheduler loop that raises or dies.

The scheduler tests run a real `Scheduler` thread over a real engine (tiny random model); the HTTP
tests a real local Ray Serve app whose fact store is a real FactStore behind a tripwire (a test hook
that raises for one entity). Nothing on the code path under test is mocked.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
import time
from functools import partial

import httpx
import pytest
import torch

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import DB_ENTITY, DB_RELATIONSHIP, DB_RETURN
from lmlm.testing.tiny import synthetic_texts, synthetic_triples, tiny_model, tiny_tokenizer
from lmlm.netutil import free_port

BODY_LIMIT = 20_000
LONG_TOKENS = 20_000   # a request that outlives every check below (~25 s of decoding on a quiet 2-core machine)
REQUEST_TIMEOUT_S = 30
NO_EOS = {0: -100}     # the tiny tokenizer's EOS: requests run to max_new_tokens
TRIP = "Trip Wire"


class Tripped(BaseException):
    """Not an Exception: it escapes every `except Exception` between the store and the scheduler thread."""


class TripwireStore:
    """A real FactStore whose lookup of the entity TRIP raises `Tripped` (the fault-injection hook)."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def lookup_batch(self, queries, **policy):
        if any(e.strip() == TRIP for e, _ in queries):
            raise Tripped("tripwire")
        return self.store.lookup_batch(queries, **policy)


def tripwire_store(url: str) -> TripwireStore:
    from lmlm.serve.loaders import store_at

    return TripwireStore(store_at(url, 1.0))


def cloze(entity: str, relation: str) -> str:
    return f"{entity} lives in {DB_ENTITY} {entity}{DB_RELATIONSHIP} {relation}{DB_RETURN}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: two intra-op threads spin-wait each other
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer(synthetic_texts(), out_dir=d)
    tiny_model(len(tok), max_len=LONG_TOKENS + 64).save_pretrained(d)
    return str(d)


# ---------------------------------------------------------------- the scheduler thread, in process
@pytest.fixture(scope="module")
def loaded(model_dir):
    from lmlm.serve.loaders import model_from_dir, tokenizer_from_dir

    return model_from_dir(model_dir), tokenizer_from_dir(model_dir)


def _engine(loaded, max_batch_size: int, max_waiting: int):
    from lmlm.generate import Engine

    model, tok = loaded
    return Engine(model, tok, None, max_batch_size=max_batch_size, max_waiting=max_waiting)


def _params(n: int):
    from lmlm.generate import GenerationParams

    return GenerationParams(max_new_tokens=n, use_lookups=False, logit_bias=NO_EOS)


class BrokenMetrics:
    """A metrics sink whose every call raises."""

    def tick(self, *args):
        raise RuntimeError("metrics backend down")

    def first_token(self, *args):
        raise RuntimeError("metrics backend down")


def _orphan(prompt: str, n: int):
    """A job whose event loop is closed (its client is gone): answering it raises RuntimeError."""
    from lmlm.serve.scheduler import Job

    loop = asyncio.new_event_loop()
    job = Job(prompt, _params(n), loop, loop.create_future())
    loop.close()
    return job


def test_scheduler_survives_errors_in_its_loop(loaded):
    """Metrics that raise on every call, a finished row and a cancelled waiting request whose answers
    cannot be delivered: the other requests all complete, and the thread goes on serving."""
    from lmlm.serve.scheduler import Job, Scheduler

    sched = Scheduler(_engine(loaded, max_batch_size=4, max_waiting=8), metrics=BrokenMetrics())

    async def main():
        loop = asyncio.get_running_loop()
        good = [Job(p, _params(12), loop, loop.create_future()) for p in ("Kira", "Hugo Marsh is", "Ada Varen")]
        finished_orphan, waiting_orphan = _orphan("Lev Arno", 2), _orphan("Elin Sato", 4)
        sched.submit([*good[:2], finished_orphan, good[2], waiting_orphan])  # the last waits: four rows
        sched.cancel(waiting_orphan, "disconnect")
        results = await asyncio.wait_for(asyncio.gather(*(j.future for j in good)), timeout=30)
        later = Job("Greta Holm", _params(3), loop, loop.create_future())
        sched.submit([later])
        return results, await asyncio.wait_for(later.future, timeout=30)

    try:
        results, later = asyncio.run(main())
        assert [r.finish_reason for r in results] == ["length"] * 3, [r.error for r in results]
        assert later.finish_reason == "length"
        assert sched.alive and sched.error is None
        assert sched.stats().cancelled == {"disconnect": 1} and not sched.jobs
    finally:
        sched.stop()


def test_an_error_in_a_step_fails_only_the_requests_that_had_left_the_queue(loaded):
    """An error escaping the engine's step (a bookkeeping fault, not the model's, which the batch
    catches): the running request fails with a SchedulerError, the waiting one is served after it,
    and the thread goes on."""
    from lmlm.serve.scheduler import Job, Scheduler, SchedulerError

    engine = _engine(loaded, max_batch_size=1, max_waiting=8)
    real, calls = engine.batch.step, []

    def faulty_step():  # the fault-injection hook: the third step raises
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("bookkeeping fault")
        return real()

    engine.batch.step = faulty_step
    sched = Scheduler(engine)

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [Job(p, _params(n), loop, loop.create_future()) for p, n in (("Kira", 50), ("Hugo", 3))]
        sched.submit(jobs)  # one row: Hugo waits
        return await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs), return_exceptions=True), timeout=30)

    try:
        running, waiting = asyncio.run(main())
        assert isinstance(running, SchedulerError) and "scheduler error: RuntimeError: bookkeeping fault" in str(running)
        assert waiting.finish_reason == "length" and waiting.n_text_tokens == 3
        assert sched.alive and not sched.jobs and not engine.has_unfinished()
    finally:
        sched.stop()


def test_scheduler_thread_death_fails_every_request_at_once(loaded):
    """A BaseException from a request's progress callback escapes the loop's guard and ends the
    thread: the running and the waiting requests fail at once, new ones are refused."""
    from lmlm.serve.scheduler import Job, Scheduler, SchedulerError

    sched = Scheduler(_engine(loaded, max_batch_size=1, max_waiting=8))
    calls = []

    def trip(state):
        calls.append(1)
        if len(calls) == 3:
            raise Tripped("progress hook")

    async def main():
        loop = asyncio.get_running_loop()
        running = Job("Kira", _params(LONG_TOKENS), loop, loop.create_future(), trip)
        waiting = [Job(p, _params(LONG_TOKENS), loop, loop.create_future()) for p in ("Hugo", "Ada")]
        sched.submit([running, *waiting])  # one row: the other two wait
        t0 = time.monotonic()
        outcomes = await asyncio.wait_for(asyncio.gather(*(j.future for j in [running, *waiting]),
                                                         return_exceptions=True), timeout=20)
        return outcomes, time.monotonic() - t0

    try:
        outcomes, took = asyncio.run(main())
        assert took < 10
        for o in outcomes:
            assert isinstance(o, SchedulerError) and "scheduler thread died: Tripped: progress hook" in str(o)
        sched.thread.join(timeout=10)
        assert not sched.alive and "Tripped" in sched.error and not sched.jobs
        with pytest.raises(SchedulerError, match="Tripped"):
            sched.submit([_orphan("Kira", 2)])
    finally:
        sched.stop()


# ---------------------------------------------------------------- a real Serve app
@pytest.fixture(scope="module")
def served(ray_cluster, model_dir):
    from ray import cloudpickle, serve

    from lmlm.serve.app import ServeConfig, build_app, model_from_dir, tokenizer_from_dir
    from lmlm.serve.config import RequestLimits

    # The tripwire store is built in the replica: pickle this module's helpers by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    store = FactStore.open(FactStoreConfig())
    store.add_triples(synthetic_triples(), annotator="test")
    cfg = ServeConfig(model_path=model_dir, max_tokens_limit=LONG_TOKENS, default_max_tokens=8, max_batch_size=4,
                      request_timeout_s=REQUEST_TIMEOUT_S, torch_threads=1,
                      limits=RequestLimits(max_body_bytes=BODY_LIMIT))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, model_loader=partial(model_from_dir, model_dir),
                            tokenizer_loader=partial(tokenizer_from_dir, model_dir),
                            store_loader=partial(tripwire_store, store.connection_url),
                            deployment_options={"health_check_period_s": 3}),
                  name="faults", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, port
    finally:
        serve.shutdown()
        store.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
def test_chunked_upload_over_the_limit_is_refused_before_it_ends(served):
    """No Content-Length: the body is counted as it arrives and refused once past the limit, while
    the client is still sending (the body never ends here)."""
    _, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b'{"prompt": "' + b"x" * 4000
        for _ in range(3 * BODY_LIMIT // len(chunk)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        resp = http.client.HTTPResponse(sock)
        resp.begin()  # without the fix: nothing comes back until the body ends (a socket timeout)
        assert resp.status == 413
        err = json.loads(resp.read())["error"]
    assert err["param"] == "body" and f"limit of {BODY_LIMIT}" in err["message"]


@pytest.mark.slow
def test_chunked_upload_within_the_limit_is_served(served):
    client, _ = served
    body = json.dumps({"prompt": "Tell me a bio of Ada Varen. Ada Varen is", "max_tokens": 4}).encode()
    r = client.post("/v1/completions", content=(body[i:i + 7] for i in range(0, len(body), 7)),
                    headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_dead_scheduler_fails_requests_at_once_and_the_replica_is_replaced(served):
    """The tripwire kills the replica's scheduler thread: the running requests fail at once (not at
    their timeout), new ones are refused, /healthz is 503, check_health raises, and Serve replaces
    the replica."""
    from ray import serve

    client, _ = served
    assert client.get("/healthz").json()["status"] == "ok"
    with client.stream("POST", "/v1/completions", json={"prompt": "Tell me a bio of Kira Dunn.", "stream": True,
                                                        "max_tokens": LONG_TOKENS, "logit_bias": {"0": -100}}) as s:
        lines = s.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the long request is running
        t0 = time.monotonic()
        trip = client.post("/v1/generate", json={"prompt": cloze(TRIP, "Birth City"), "max_tokens": 4})
        assert trip.status_code == 500, trip.text
        assert "scheduler thread died: Tripped: tripwire" in trip.json()["error"]["message"]
        events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "scheduler thread died" in json.loads(events[-2])["error"]["message"]
    assert time.monotonic() - t0 < REQUEST_TIMEOUT_S / 2
    h = client.get("/healthz")
    assert h.status_code == 503 and h.json()["status"] == "error" and "Tripped" in h.json()["error"]
    refused = client.post("/v1/generate", json={"prompt": "Kira", "max_tokens": 2})
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "unavailable"
    with pytest.raises(Exception, match="scheduler thread died"):
        serve.get_app_handle("faults").check_health.remote().result(timeout_s=30)
    # Serve sees the failing health checks and starts a fresh replica, which serves again.
    deadline = time.monotonic() + 180
    while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    r = client.post("/v1/generate", json={"prompt": "Kira", "max_tokens": 2})
    assert r.status_code == 200, r.text
