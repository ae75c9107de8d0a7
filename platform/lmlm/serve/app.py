"""The LMLM Ray Serve app: OpenAI-style completions, generation with a lookup trace, fact admin.

    serve run serve/config.yaml          # import_path lmlm.serve.app:app_builder
    lmlm serve --set model_path=...

`build_app(cfg, model_loader=..., tokenizer_loader=..., store_loader=...)` returns the bound
application; loaders are picklable zero-argument callables run inside each replica (tests pass a
tiny saved model and a FactStore at a known Redis URL; the defaults are in `lmlm.serve.loaders`).
Requests that arrive together are decoded together: the ingress validates, then one `@serve.batch`
method runs the engine over the batch in a worker thread, streaming display-text deltas to
`stream: true` clients as server-sent events.
"""

import asyncio
import concurrent.futures
import json
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from lmlm.config import from_dict, load_config, to_dict
from lmlm.generate.params import GenerationParams, ParamsError

from .config import ServeConfig
from .loaders import (default_model_loader, default_store_loader, default_tokenizer_loader, model_from_dir,
                      store_at, tokenizer_from_dir)
from .schemas import CompletionRequest, FactsDelete, FactsPut, GenerateRequest, GenerationFields

__all__ = ["LMLMServer", "ServeConfig", "app", "app_builder", "build_app", "model_from_dir", "store_at",
           "tokenizer_from_dir"]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field_name: Optional[str] = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.field, self.kind = status, message, field_name, kind


def _error(status: int, message: str, field_name: Optional[str] = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": field_name}}, status_code=status)


app = FastAPI(title="LMLM")
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
    return _error(exc.status, exc.message, exc.field, exc.kind)


# Module-level helpers the deployment uses must be defined above it: Serve serializes the class when
# it is decorated, with the module's names as they are at that moment.
def _finish(res) -> str:
    return {"eos": "stop", "stop": "stop"}.get(res.finish_reason, "length")


def _usage(res) -> dict:
    return {"prompt_tokens": res.n_prompt_tokens, "completion_tokens": res.n_generated_tokens,
            "text_tokens": res.n_text_tokens, "lookup_tokens": res.n_lookup_tokens,
            "total_tokens": res.n_prompt_tokens + res.n_generated_tokens}


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@dataclass
class Job:
    prompt: str
    params: GenerationParams
    queue: Optional[asyncio.Queue] = None     # streaming: display deltas, then None
    loop: Optional[asyncio.AbstractEventLoop] = None
    sent: int = 0                             # characters of display text streamed so far


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class LMLMServer:
    def __init__(self, cfg: ServeConfig, model_loader: Callable, tokenizer_loader: Callable, store_loader: Callable):
        import torch

        from lmlm.generate import Engine

        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.engine = Engine(model_loader(), tokenizer_loader(), store_loader(), max_batch_size=cfg.max_batch_size)
        self.token = cfg.admin_token or os.environ.get("LMLM_ADMIN_TOKEN", "")
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._generate_batch.set_max_batch_size(cfg.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    # ------------------------------------------------------------------ requests -> params
    def _params(self, req: GenerationFields) -> GenerationParams:
        d = dict(self.cfg.defaults)
        mt = self.cfg.default_max_tokens if req.max_tokens is None else req.max_tokens
        if mt <= 0 or mt > self.cfg.max_tokens_limit:
            raise HTTPError(400, f"max_tokens: must be between 1 and {self.cfg.max_tokens_limit} (got {mt})", "max_tokens")
        d["max_new_tokens"] = mt
        for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "use_lookups", "max_lookups", "max_query_tokens",
                     "fallback", "entity_threshold", "relation_threshold", "cosine_threshold"):
            if getattr(req, name) is not None:
                d[name] = getattr(req, name)
        if req.stop is not None:
            d["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if req.allow_lookups_disabled:
            d["on_store_error"] = "disable_lookups"
        if req.logit_bias:
            try:
                d["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
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

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, jobs: list[Job]) -> list:
        from lmlm.generate.stream import DisplayStream

        streams = {i: DisplayStream(j.params.stop) for i, j in enumerate(jobs) if j.queue is not None}

        def on_token(i, state):
            if i in streams:
                d = streams[i].delta(state)
                if d:
                    jobs[i].sent += len(d)
                    jobs[i].loop.call_soon_threadsafe(jobs[i].queue.put_nowait, d)

        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self.pool, partial(self.engine.generate, [j.prompt for j in jobs], [j.params for j in jobs], on_token))
        except Exception as e:  # noqa: BLE001 — every caller gets the error, not a hang
            results = [e] * len(jobs)
        for i in streams:
            jobs[i].queue.put_nowait(None)
        return [(r, len(jobs)) for r in results]

    async def _run(self, job: Job):
        try:
            res, batch = await asyncio.wait_for(self._generate_batch(job), timeout=self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"generation took longer than {self.cfg.request_timeout_s} s", None, "timeout") from None
        if isinstance(res, Exception):
            raise HTTPError(500, f"generation failed: {res}", None, "server_error")
        if res.finish_reason == "store_unavailable":
            raise HTTPError(503, f"{res.error}; retry later, or send allow_lookups_disabled: true to answer without lookups",
                            None, "store_unavailable")
        res.batch_size = batch  # how many requests were decoded together with this one
        return res

    # ------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.cfg.model_name}

    @app.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "lmlm"}]}

    @app.post("/v1/generate")
    async def generate(self, req: GenerateRequest):
        self._check_prompt(req.prompt)
        res = await self._run(Job(req.prompt, self._params(req)))
        return {"text": res.display_text, "raw_text": res.raw_text, "lookups": [lk.to_dict() for lk in res.lookups],
                "finish_reason": res.finish_reason, "lookups_disabled": res.lookups_disabled,
                "usage": _usage(res), "batch_size": res.batch_size}

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        if req.model is not None and req.model != self.cfg.model_name:
            raise HTTPError(404, f"model: {req.model!r} is not served (available: {self.cfg.model_name!r})", "model")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise HTTPError(400, "prompt: must not be an empty list", "prompt")
        if req.stream and len(prompts) != 1:
            raise HTTPError(400, "prompt: streaming takes one prompt", "prompt")
        for p in prompts:
            self._check_prompt(p)
        params = self._params(req)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": created, "model": self.cfg.model_name}
        if req.stream:
            return StreamingResponse(self._sse(Job(prompts[0], params, asyncio.Queue(), asyncio.get_running_loop()), head),
                                     media_type="text/event-stream")
        jobs = []
        for p in prompts:
            jobs.append(self._run(Job(p, params)))
        results = await asyncio.gather(*jobs)
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for i, r in enumerate(results):
            choices.append({"text": r.display_text, "index": i, "logprobs": None, "finish_reason": _finish(r)})
            u = _usage(r)
            for k in usage:
                usage[k] += u[k]
        return {**head, "choices": choices, "usage": usage,
                "lookups_disabled": any(r.lookups_disabled for r in results)}

    async def _sse(self, job: Job, head: dict):
        task = asyncio.ensure_future(self._run(job))
        deadline = time.monotonic() + self.cfg.request_timeout_s
        while True:
            try:
                delta = await asyncio.wait_for(job.queue.get(), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if delta is None:
                break
            yield _event({**head, "choices": [{"text": delta, "index": 0, "logprobs": None, "finish_reason": None}]})
        try:
            res = await task
        except HTTPError as e:
            yield _event({"error": {"message": e.message, "type": e.kind, "param": e.field}})
        else:
            tail = res.display_text[job.sent:]
            yield _event({**head, "choices": [{"text": tail, "index": 0, "logprobs": None, "finish_reason": _finish(res)}],
                          "usage": _usage(res), "lookups_disabled": res.lookups_disabled})
        yield "data: [DONE]\n\n"

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
    opts = {"max_ongoing_requests": max(64, 2 * cfg.max_batch_size), **(deployment_options or {})}
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
