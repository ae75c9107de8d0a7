"""The LMLM Ray Serve app: OpenAI-style completions, generation with a lookup trace, fact admin.

    serve run serve/config.yaml          # import_path lmlm.serve.app:app_builder
    lmlm serve --set model_path=...

`build_app(cfg, model_loader=..., tokenizer_loader=..., store_loader=...)` returns the bound
application; loaders are picklable zero-argument callables run inside each replica (tests pass a
tiny saved model and a FactStore at a known Redis URL; the defaults are in `lmlm.serve.loaders`).
The ingress validates each request against `cfg.limits` and hands its prompts to the replica's
`Scheduler` (continuous batching, scheduler.py), which streams display-text deltas to `stream: true`
clients as server-sent events. A request that times out or whose client goes away leaves the batch
before the next step. What a lookup trace shows is `cfg.exposure` (exposure.py). A body over
`cfg.limits.max_body_bytes` is a 413, chunked or not (limits.py). If the scheduler thread has ended,
`check_health` raises (Serve replaces the replica) and `/healthz` answers 503.
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
from ray import serve

from lmlm.config import from_dict, load_config, to_dict
from lmlm.generate.params import GenerationParams, ParamsError

from .config import ServeConfig
from .exposure import expose
from .limits import BodyLimit
from .limits import error_response as _error
from .loaders import (default_model_loader, default_store_loader, default_tokenizer_loader, model_from_dir,
                      store_at, tokenizer_from_dir)
from .schemas import CompletionRequest, FactsDelete, FactsPut, GenerateRequest, GenerationFields

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
    msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
    if err.get("type") == "missing":
        msg = "is required"
    return _error(400, f"{name}: {msg}", name)


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
                             prefill_chunk=cfg.prefill_chunk)
        self.token = cfg.admin_token or os.environ.get("LMLM_ADMIN_TOKEN", "")
        self.metrics = ServeMetrics()
        self.engine.lookup_listener = self.metrics.lookups
        self.scheduler = Scheduler(self.engine, cfg.max_batch_size, cfg.max_queue, cfg.prefill_chunk, self.metrics)

    def __del__(self):
        if hasattr(self, "scheduler"):
            self.scheduler.stop()

    # ------------------------------------------------------------------ requests -> params
    def _params(self, req: GenerationFields) -> GenerationParams:
        lim = self.cfg.limits
        d = {**self.cfg.defaults, "max_entity_chars": lim.max_entity_chars}
        mt = self.cfg.default_max_tokens if req.max_tokens is None else req.max_tokens
        if mt <= 0 or mt > self.cfg.max_tokens_limit:
            raise HTTPError(400, f"max_tokens: must be between 1 and {self.cfg.max_tokens_limit} (got {mt})", "max_tokens")
        d["max_new_tokens"] = mt
        for name, cap in (("max_lookups", lim.max_lookups), ("max_query_tokens", lim.max_query_tokens)):
            v = getattr(req, name)
            if v is not None and v > cap:
                raise HTTPError(400, f"{name}: at most {cap} on this server (got {v})", name)
        for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "use_lookups", "max_lookups", "max_query_tokens",
                     "fallback", "entity_threshold", "relation_threshold", "cosine_threshold"):
            if getattr(req, name) is not None:
                d[name] = getattr(req, name)
        if req.stop is not None:
            d["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
            if len(d["stop"]) > lim.max_stop_strings:
                raise HTTPError(400, f"stop: at most {lim.max_stop_strings} stop strings (got {len(d['stop'])})", "stop")
            if any(len(x) > lim.max_stop_chars for x in d["stop"]):
                raise HTTPError(400, f"stop: each stop string has at most {lim.max_stop_chars} characters", "stop")
        if req.allow_lookups_disabled:
            d["on_store_error"] = "disable_lookups"
        if req.logit_bias:
            if len(req.logit_bias) > lim.max_logit_bias:
                raise HTTPError(400, f"logit_bias: at most {lim.max_logit_bias} entries (got {len(req.logit_bias)})",
                                "logit_bias")
            try:
                d["logit_bias"] = {int(k): v for k, v in req.logit_bias.items()}
            except ValueError:
                raise HTTPError(400, "logit_bias: keys must be token ids", "logit_bias") from None
            vocab = self.engine.model.config.vocab_size
            if any(not 0 <= k < vocab for k in d["logit_bias"]):
                raise HTTPError(400, f"logit_bias: token ids must lie in [0, {vocab})", "logit_bias")
        mode = getattr(getattr(self.engine.store, "cfg", None), "fuzzy_mode", None)
        if mode is not None:  # a threshold the store's fuzzy mode does not compare against: 400, naming it
            from lmlm.factstore.config import ALL_THRESHOLDS, check_thresholds

            try:
                check_thresholds(mode, {k: d[k] for k in ALL_THRESHOLDS if d.get(k) is not None})
            except ValueError as e:
                raise HTTPError(400, str(e), str(e).split(" ")[0]) from None
        try:
            return GenerationParams(**d)
        except (ParamsError, TypeError) as e:
            name = str(e).split(":")[0]
            raise HTTPError(400, str(e), "max_tokens" if name == "max_new_tokens" else name) from None

    def _check_prompt(self, prompt: str) -> None:
        if not prompt:
            raise HTTPError(400, "prompt: must not be empty", "prompt")
        n = len(self.engine.encode(prompt))
        if n >= self.engine.max_len:
            raise HTTPError(400, f"prompt: {n} tokens, longer than the context ({self.engine.max_len - 1} at most)", "prompt")

    def _is_admin(self, request: Request) -> bool:
        """True with a valid admin token, False without one; a wrong token is a 401."""
        if "authorization" not in request.headers:
            return False
        self._auth(request)
        return True

    # ------------------------------------------------------------------ scheduling
    def _submit(self, prompts: list[str], params: GenerationParams, on_progress=None) -> list:
        from .scheduler import Job, QueueFull, SchedulerError

        loop = asyncio.get_running_loop()
        jobs = [Job(p, params, loop, loop.create_future(), on_progress) for p in prompts]
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
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
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
                "cancelled": st.cancelled}
        if not self.scheduler.alive:
            return JSONResponse({**body, "status": "error", "error": self.scheduler.error or "scheduler not running"}, 503)
        return body

    @app.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "lmlm"}]}

    @app.post("/v1/generate")
    async def generate(self, req: GenerateRequest, request: Request):
        level = "full" if self._is_admin(request) else self.cfg.exposure
        self._check_prompt(req.prompt)
        [res] = await self._results(self._submit([req.prompt], self._params(req)))
        body = {"text": res.display_text, "raw_text": res.raw_text, "finish_reason": res.finish_reason,
                "lookups_disabled": res.lookups_disabled, "usage": _usage(res), "batch_size": res.batch_size,
                "ttft_s": res.ttft_s}
        return expose(body, res.lookups, level)

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        if req.model is not None and req.model != self.cfg.model_name:
            raise HTTPError(404, f"model: {req.model!r} is not served (available: {self.cfg.model_name!r})", "model")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise HTTPError(400, "prompt: must not be an empty list", "prompt")
        if len(prompts) > self.cfg.limits.max_prompts:
            raise HTTPError(400, f"prompt: at most {self.cfg.limits.max_prompts} prompts per request (got {len(prompts)})",
                            "prompt")
        if req.stream and len(prompts) != 1:
            raise HTTPError(400, "prompt: streaming takes one prompt", "prompt")
        for p in prompts:
            self._check_prompt(p)
        params = self._params(req)
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
