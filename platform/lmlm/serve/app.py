"""The LMLM Ray Serve app: OpenAI-style completions, generation with a lookup trace, fact admin.

    serve run serve/config.yaml          # import_path lmlm.serve.app:app_builder
    lmlm serve --set model_path=...

`build_app(cfg, model_loader=..., tokenizer_loader=..., store_loader=...)` returns the bound
application; loaders are picklable zero-argument callables run inside each replica (tests pass a
tiny saved model and a FactStore at a known Redis URL; the defaults are in `lmlm.serve.loaders`).
The ingress validates each body against its schema and the server's caps (schemas.py: every 400
names the field), tokenises each prompt once, and hands the ids to the replica's `Scheduler`
(scheduler.py), which bridges them to the engine's thread (admission, the queue bound and the steps
are the engine's) and streams display-text deltas to `stream: true` clients as server-sent events.
A request that times out or whose client goes away leaves the batch at the next step. What a
lookup trace shows is `cfg.exposure` (exposure.py). A body over `cfg.limits.max_body_bytes` is a
413, chunked or not (limits.py). If the scheduler thread has ended, `check_health` raises (Serve
replaces the replica) and `/healthz` answers 503.
"""

import asyncio
import json
import os
import re
import secrets
import time
import uuid
from functools import partial
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve

from lmlm.config import from_dict, load_config, to_dict
from lmlm.generate.params import GenerationParams, ParamsError

from .config import ServeConfig
from .exposure import expose
from .limits import BodyLimit
from .limits import error_response as _error
from .loaders import (default_model_loader, default_store_loader, default_tokenizer_loader, model_from_dir,
                      store_at, tokenizer_from_dir)
from .schemas import Caps, CompletionRequest, FactsDelete, FactsPut, GenerateRequest

__all__ = ["LMLMServer", "ServeConfig", "app", "app_builder", "build_app", "model_from_dir", "store_at",
           "tokenizer_from_dir"]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field_name: Optional[str] = None, kind: str = "invalid_request_error",
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.kind, self.headers = status, message, field_name, kind, headers


app = FastAPI(title="LMLM")
app.add_middleware(BodyLimit)  # reads app.state.max_body_bytes, set by each replica
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*)$")


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    err = exc.errors()[0]
    # Union members appear in the location ("prompt", "str"): keep only field names and indexes.
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query") and not _TYPE_TAG.match(str(p))]
    name = ".".join(loc) or "body"
    kind = err.get("type")
    if kind == "value_error":  # a validator's own words (schemas.py), which may name the field themselves
        msg = str(err.get("ctx", {}).get("error", err.get("msg", "invalid")))
        return _error(400, msg if msg.startswith(name + " ") else f"{name}: {msg}", name)
    msg = {"extra_forbidden": "unknown field", "missing": "is required"}.get(kind, err.get("msg", "invalid"))
    return _error(400, f"{name}: {msg}", name)


@app.exception_handler(ParamsError)
async def _params_error(request: Request, exc: ParamsError):
    name = str(exc).split(":")[0]
    return _error(400, str(exc), "max_tokens" if name == "max_new_tokens" else name)


@app.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError):
    return _error(exc.status, exc.message, exc.field, exc.kind, exc.headers)


# Module-level helpers the deployment uses must be defined above it: Serve serializes the class when
# it is decorated, with the module's names as they are at that moment.
def _finish(res) -> str:
    return {"eos": "stop", "stop": "stop"}.get(res.finish_reason, "length")


def _usage(res) -> dict:
    return {"prompt_tokens": res.n_prompt_tokens, "completion_tokens": res.n_generated_tokens,
            "text_tokens": res.n_text_tokens, "lookup_tokens": res.n_lookup_tokens,
            "total_tokens": res.n_prompt_tokens + res.n_generated_tokens}


def _drain(deltas: "asyncio.Queue[str]") -> str:
    """Every display delta queued so far, joined."""
    text = ""
    while not deltas.empty():
        text += deltas.get_nowait()
    return text


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _check_result(res) -> None:
    """A finished row that ended in error becomes its request's HTTP error."""
    if res.finish_reason == "store_unavailable":
        raise HTTPError(503, f"{res.error}; retry later, or send allow_lookups_disabled: true to answer without lookups",
                        None, "store_unavailable")
    if res.finish_reason == "error":
        raise HTTPError(500, f"generation failed: {res.error}", None, "server_error")


def _defaults(cfg: ServeConfig, fuzzy_mode: Optional[str]) -> dict:
    """The GenerationParams a request's settings go over; refused here, at start, when invalid."""
    from lmlm.factstore.config import ALL_THRESHOLDS, check_thresholds

    d = {**cfg.defaults, "max_entity_chars": cfg.limits.max_entity_chars, "max_new_tokens": cfg.default_max_tokens}
    try:
        GenerationParams(**d)
        if fuzzy_mode is not None:
            check_thresholds(fuzzy_mode, {k: d[k] for k in ALL_THRESHOLDS if d.get(k) is not None})
    except (TypeError, ValueError) as e:
        raise ValueError(f"defaults: {e}") from None
    return d


@serve.deployment(max_ongoing_requests=96, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class LMLMServer:
    def __init__(self, cfg: ServeConfig, model_loader: Callable, tokenizer_loader: Callable, store_loader: Callable):
        import torch

        from lmlm.generate import Engine

        from .metrics import ServeMetrics
        from .scheduler import Scheduler

        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        app.state.max_body_bytes = cfg.limits.max_body_bytes
        self.engine = Engine(model_loader(), tokenizer_loader(), store_loader(), max_batch_size=cfg.max_batch_size,
                             prefill_chunk=cfg.prefill_chunk, max_waiting=cfg.max_queue)
        fuzzy_mode = getattr(getattr(self.engine.store, "cfg", None), "fuzzy_mode", None)
        self.caps = Caps(cfg.limits, cfg.max_tokens_limit, self.engine.model.config.vocab_size, fuzzy_mode)
        self.defaults = _defaults(cfg, fuzzy_mode)
        self.token = cfg.admin_token or os.environ.get("LMLM_ADMIN_TOKEN", "")
        self.metrics = ServeMetrics()
        self.engine.lookup_listener = self.metrics.lookups
        self.scheduler = Scheduler(self.engine, self.metrics)
        self.started = time.monotonic()

    def __del__(self):
        if hasattr(self, "scheduler"):
            self.scheduler.stop()

    # ------------------------------------------------------------------ requests
    async def _parse(self, schema, request: Request):
        """The body as `schema`, held to this server's caps (a 400 naming the field otherwise)."""
        try:
            return schema.model_validate_json(await request.body(), context=self.caps)
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None

    def _is_admin(self, request: Request) -> bool:
        """True with a valid admin token, False without one; a wrong token is a 401."""
        if "authorization" not in request.headers:
            return False
        self._auth(request)
        return True

    # ------------------------------------------------------------------ scheduling
    def _submit(self, prompts: list[str], params: GenerationParams, on_progress=None) -> list:
        """One job per prompt, queued all or none; each prompt is tokenised here, once."""
        from lmlm.generate import QueueFull

        from .scheduler import Job, SchedulerError

        loop = asyncio.get_running_loop()
        jobs = [Job(p, params, loop, loop.create_future(), on_progress, prompt_ids=self.engine.encode_prompt(p))
                for p in prompts]
        try:
            self.scheduler.submit(jobs)
        except QueueFull as e:
            raise HTTPError(503, f"server busy: {e}; retry later", None, "overloaded", {"Retry-After": "1"}) from None
        except SchedulerError as e:
            raise HTTPError(503, f"replica unavailable: {e}; retry later", None, "unavailable") from None
        return jobs

    async def _results(self, jobs: list) -> list:
        try:
            results = await asyncio.wait_for(asyncio.gather(*(asyncio.shield(j.future) for j in jobs)),
                                             timeout=self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            for j in jobs:
                self.scheduler.cancel(j, "timeout")
            raise HTTPError(504, f"generation took longer than {self.cfg.request_timeout_s} s", None, "timeout") from None
        except asyncio.CancelledError:  # Serve cancels the handler when the client disconnects
            for j in jobs:
                self.scheduler.cancel(j, "disconnect")
            raise
        except Exception as e:  # noqa: BLE001
            raise HTTPError(500, f"generation failed: {type(e).__name__}: {e}", None, "server_error") from None
        for res, j in zip(results, jobs):
            _check_result(res)
            res.batch_size = j.batch_size  # most requests decoded together with this one
            res.ttft_s = j.ttft_s
        return results

    # ------------------------------------------------------------------ endpoints
    def check_health(self) -> None:
        """Ray Serve's periodic probe: raising marks the replica unhealthy, and Serve replaces it."""
        if not self.scheduler.alive:
            raise RuntimeError(f"scheduler: {self.scheduler.error or 'not running'}")

    @app.get("/healthz")
    async def healthz(self):
        st = self.scheduler.stats()
        body = {"status": "ok", "model": self.cfg.model_name, "waiting": st.waiting, "running": st.running,
                "cancelled": st.cancelled, "uptime_s": round(time.monotonic() - self.started, 3)}
        if not self.scheduler.alive:
            return JSONResponse({**body, "status": "error", "error": self.scheduler.error or "scheduler not running"}, 503)
        return body

    @app.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "lmlm"}]}

    @app.post("/v1/generate")
    async def generate(self, request: Request):
        req = await self._parse(GenerateRequest, request)
        level = "full" if self._is_admin(request) else self.cfg.exposure
        [res] = await self._results(self._submit([req.prompt], req.to_params(self.defaults)))
        body = {"text": res.display_text, "raw_text": res.raw_text, "finish_reason": res.finish_reason,
                "lookups_disabled": res.lookups_disabled, "usage": _usage(res), "batch_size": res.batch_size,
                "ttft_s": res.ttft_s}
        return expose(body, res.lookups, level)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        req = await self._parse(CompletionRequest, request)
        if req.model is not None and req.model != self.cfg.model_name:
            raise HTTPError(404, f"model: {req.model!r} is not served (available: {self.cfg.model_name!r})", "model")
        prompts, params = req.prompts, req.to_params(self.defaults)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": created, "model": self.cfg.model_name}
        if req.stream:
            return self._stream(prompts[0], params, head)
        results = await self._results(self._submit(prompts, params))
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for i, r in enumerate(results):
            choices.append({"text": r.display_text, "index": i, "logprobs": None, "finish_reason": _finish(r)})
            u = _usage(r)
            for k in usage:
                usage[k] += u[k]
        return {**head, "choices": choices, "usage": usage,
                "lookups_disabled": any(r.lookups_disabled for r in results)}

    def _stream(self, prompt: str, params: GenerationParams, head: dict) -> StreamingResponse:
        from lmlm.generate.stream import DisplayStream

        loop, deltas, shown = asyncio.get_running_loop(), asyncio.Queue(), DisplayStream(params.stop)

        def on_progress(state):  # scheduler thread
            d = shown.delta(state)
            if d:
                loop.call_soon_threadsafe(deltas.put_nowait, d)

        [job] = self._submit([prompt], params, on_progress)
        return StreamingResponse(self._sse(job, deltas, shown, head), media_type="text/event-stream")

    async def _sse(self, job, deltas: asyncio.Queue, shown, head: dict):
        def chunk(text, finish=None, **extra):
            return _event({**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                           **extra})

        deadline = time.monotonic() + self.cfg.request_timeout_s
        try:
            while not job.future.done():
                get = asyncio.ensure_future(deltas.get())
                done, _ = await asyncio.wait({get, job.future}, timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if get in done:  # with every delta that queued meanwhile: one event, not one per token
                    yield chunk(get.result() + _drain(deltas))
                    continue
                get.cancel()
                if not done:
                    self.scheduler.cancel(job, "timeout")
                    yield _event({"error": {"message": f"generation took longer than {self.cfg.request_timeout_s} s",
                                            "type": "timeout", "param": None}})
                    yield "data: [DONE]\n\n"
                    return
            rest = _drain(deltas)
            if rest:
                yield chunk(rest)
            try:
                res = job.future.result()
                _check_result(res)
            except HTTPError as e:
                yield _event({"error": {"message": e.message, "type": e.kind, "param": e.field}})
            except Exception as e:  # noqa: BLE001
                yield _event({"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None}})
            else:
                yield chunk(res.display_text[shown.sent:], _finish(res), usage=_usage(res),
                            lookups_disabled=res.lookups_disabled, ttft_s=job.ttft_s)
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): a running row leaves the batch
            self.scheduler.cancel(job, "disconnect")

    # ------------------------------------------------------------------ fact administration
    def _auth(self, request: Request) -> None:
        if not self.token:
            raise HTTPError(403, "fact administration is disabled: set admin_token in the serve config", None, "forbidden")
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            raise HTTPError(401, "authorization: a valid bearer token is required", "authorization", "unauthorized")

    async def _store_call(self, fn, *args, **kw):
        from lmlm.factstore import StoreUnavailable

        try:
            return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kw))
        except StoreUnavailable as e:
            raise HTTPError(503, f"fact store unavailable: {e}", None, "store_unavailable") from None
        except ValueError as e:
            raise HTTPError(400, str(e)) from None

    @app.get("/v1/facts")
    async def get_facts(self, request: Request, entity: str, relation: str):
        self._auth(request)
        rec = await self._store_call(self.engine.store.get, entity, relation)
        if rec is None:
            raise HTTPError(404, f"no fact stored for ({entity!r}, {relation!r})", "entity", "not_found")
        return rec

    @app.put("/v1/facts")
    async def put_facts(self, request: Request, body: FactsPut):
        from lmlm.format import Triple

        self._auth(request)
        for f in body.facts:
            await self._store_call(self.engine.store.put, Triple(f.entity, f.relation, f.value),
                                   doc_id=body.doc_id, annotator=body.annotator)
        return {"written": len(body.facts)}

    @app.delete("/v1/facts")
    async def delete_facts(self, request: Request, body: FactsDelete):
        self._auth(request)
        n = await self._store_call(self.engine.store.delete, body.entity, body.relation, body.value)
        return {"deleted": n}


def build_app(cfg: ServeConfig | dict | None = None, *, model_loader: Callable | None = None,
              tokenizer_loader: Callable | None = None, store_loader: Callable | None = None,
              deployment_options: dict | None = None):
    """The bound application; loaders default to the checkpoint and store named in `cfg`."""
    cfg = cfg if isinstance(cfg, ServeConfig) else from_dict(ServeConfig, cfg or {})
    # Serve must pass on more requests than the scheduler holds, or its own queue hides the 503.
    opts = {"max_ongoing_requests": cfg.max_batch_size + cfg.max_queue + 16, **(deployment_options or {})}
    return LMLMServer.options(**opts).bind(cfg, model_loader or partial(default_model_loader, cfg),
                                           tokenizer_loader or partial(default_tokenizer_loader, cfg),
                                           store_loader or partial(default_store_loader, cfg))


def app_builder(args: dict):
    """`serve run serve/config.yaml` entry: args are ServeConfig fields, plus optional
    `config` (a YAML file of them) and `overrides` (["k=v", ...])."""
    args = dict(args or {})
    cfg = load_config(ServeConfig, args.pop("config", None), args.pop("overrides", []))
    if args:
        cfg = from_dict(ServeConfig, {**to_dict(cfg), **args})
    return build_app(cfg)
