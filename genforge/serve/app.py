"""The HTTP API: OpenAI-compatible endpoints over genforge runs, and the web playground.

    GET  /health                      liveness, served models, worker-pool load
    GET  /v1/models                   one entry per served run (id = the run folder's name)
    POST /v1/completions              text models (stream: true -> server-sent events)
    POST /v1/chat/completions         text models, turns rendered with the chat template
    POST /v1/images/generations       image models: prompt = a class name ("sneaker"), PNGs
    POST /v1/classifications          classifiers (genforge's own): label + scores
    GET  /                            the playground (one offline HTML page)

Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}} with status 400
(bad parameters, prompt longer than the context), 401 (missing/wrong API key), 404 (unknown
model or path), 413 (body too large), 429 (generation queue full), 500 (a bug: never expected).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import binascii
import hmac
import json
import logging
import re
import secrets
import time
from importlib import resources
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge import __version__
from genforge.config import ConfigError
from genforge.data.registry import DataError
from genforge.generate.images import make_grid, png_bytes
from genforge.generate.sampling import SamplingConfig, stream_text
from genforge.serve.engine import TASK_ENDPOINTS, APIError, Limits, ServedModel, WorkerPool, new_id

log = logging.getLogger("genforge.serve")


# ---------------------------------------------------------------------------------------
# request bodies (unknown fields are refused: a typo gets a 400 naming it, not silence)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


StopField = Union[str, list[str], None]


class _Sampling(_Body):
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: StopField = None
    seed: Optional[int] = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # genforge extensions (the openai client sends them with extra_body={...})
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)


class CompletionRequest(_Sampling):
    model: str
    prompt: Union[str, list[str]] = ""
    max_tokens: Optional[int] = Field(None, ge=0)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0)
    best_of: Optional[int] = Field(None, ge=1)
    suffix: Optional[str] = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class ChatRequest(_Sampling):
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0)


class ImageRequest(_Body):
    prompt: str = Field(..., max_length=4000)
    model: Optional[str] = None
    n: int = Field(1, ge=1, le=128)
    response_format: Optional[Literal["b64_json", "url"]] = None
    size: Optional[str] = None
    user: Optional[str] = None
    # genforge extensions
    seed: Optional[int] = Field(None, ge=0, le=2 ** 63 - 1)
    guidance: Optional[float] = Field(None, ge=0, le=50)
    steps: Optional[int] = Field(None, ge=1, le=1000)


class ClassificationRequest(_Body):
    model: str
    input: Union[str, list[str]]
    top: int = Field(3, ge=1, le=1000)


# ---------------------------------------------------------------------------------------
# helpers


def _model(models: dict[str, ServedModel], name: str, task: str | tuple[str, ...]) -> ServedModel:
    tasks = (task,) if isinstance(task, str) else task
    m = models.get(name)
    if m is None:
        raise APIError(404, f"the model {name!r} does not exist; served models: "
                       + ", ".join(sorted(models)), param="model", code="model_not_found")
    if m.task not in tasks:
        raise APIError(400, f"{name!r} is a {m.task} model; use {TASK_ENDPOINTS[m.task]}",
                       param="model", code="wrong_model_type")
    return m


def _unsupported(cond: bool, param: str, why: str) -> None:
    if cond:
        raise APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def _stops(stop: StopField) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise APIError(400, f"stop: at most 4 stop strings, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def _sampling(req: _Sampling, max_tokens: int, limits: Limits, extra_stops=()) -> SamplingConfig:
    _unsupported(bool(req.presence_penalty) or bool(req.frequency_penalty), "presence_penalty",
                 "presence/frequency penalties are not supported; use repetition_penalty (> 1 "
                 "discourages repeats)")
    _unsupported(bool(req.logit_bias), "logit_bias", "not supported")
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens: at most {limits.max_tokens} new tokens per choice, "
                       f"got {max_tokens}", param="max_tokens")
    if req.n > limits.max_n:
        raise APIError(400, f"n: at most {limits.max_n} choices per request, got {req.n}", param="n")
    sc = SamplingConfig(max_new_tokens=max_tokens,
                        temperature=1.0 if req.temperature is None else req.temperature,
                        top_p=1.0 if req.top_p is None else req.top_p,
                        top_k=req.top_k or 0,
                        repetition_penalty=req.repetition_penalty or 1.0,
                        stop=_stops(req.stop) + list(extra_stops),
                        seed=req.seed)
    return sc


def _check_prompt(m: ServedModel, ids: list[int], limits: Limits, param: str) -> None:
    limit = m.prompt_limit(limits)
    if len(ids) > limit:
        raise APIError(400, f"{param}: this model's maximum context length is {limit} tokens, "
                       f"but the prompt has {len(ids)} tokens; shorten it",
                       param=param, code="context_length_exceeded")


def _seeds(seed: int | None, k: int) -> list[int]:
    """Distinct, reproducible per-choice seeds (random when no seed is given)."""
    base = secrets.randbits(62) if seed is None else seed % (2 ** 62)
    return [(base + i) % (2 ** 63) for i in range(k)]


def _text_job(m: ServedModel, prompt: str, sc: SamplingConfig, seed: int, stats: dict):
    return stream_text(m.model, m.tokenizer, prompt, SamplingConfig(**{**vars(sc), "seed": seed}),
                       stats=stats)


def _usage(prompt_tokens: int, stats: list[dict]) -> dict:
    done = sum(s.get("completion_tokens", 0) for s in stats)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done,
            "total_tokens": prompt_tokens + done}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """Server-sent events that always run `on_close` when the response ends, however it
    ends (finished, client gone, server stopping): it cancels the request's generation."""

    def __init__(self, body, on_close):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _decode_image(item: str, i: int) -> bytes:
    data = item.split(",", 1)[1] if item.startswith("data:") else item
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"input[{i}]: image classifiers take base64-encoded PNG or JPEG "
                       "images (optionally as data: URLs)", param="input") from None
    if not raw:
        raise APIError(400, f"input[{i}] is empty", param="input")
    return raw


def _match_label(m: ServedModel, prompt: str) -> int | None:
    """A prompt -> class index: the class name itself, or the longest class name found in
    the prompt as whole words (case-insensitive). None = no class asked for."""
    cfg = m.cfg
    text = prompt.strip().lower()
    if not cfg.conditional or text in ("", "random", "any", "*"):
        return None
    try:  # a class name or index, as `genforge generate --label` takes it
        return m.recipe.parse_label(cfg, text)
    except ConfigError:
        pass
    hits = [(len(n), i) for i, n in enumerate(c.lower() for c in cfg.classes)
            if re.search(r"(?<![\w-])" + re.escape(n) + r"(?![\w-])", text)]
    if hits:
        return max(hits)[1]
    raise APIError(400, f"prompt: {prompt!r} names no class of this model; use one of: "
                   + ", ".join(cfg.classes) + " (or an empty prompt for a random class)",
                   param="prompt", code="unknown_class")


class Guard:
    """ASGI middleware, before any route: the API key on /v1/* and the body-size limit (the
    body is read here, at most max_body_bytes of it, and replayed to the route)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def refuse(err: APIError):
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)

        if self.api_key and scope["path"].startswith("/v1/"):
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if not auth.strip():
                return await refuse(APIError(401, "missing API key: send the header "
                                             "'Authorization: Bearer <key>'", code="invalid_api_key"))
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.api_key.encode()):
                return await refuse(APIError(401, "incorrect API key", code="invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body larger than {self.max_body} bytes; send less",
                           code="request_too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await refuse(too_big)
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > self.max_body:
                return await refuse(too_big)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------
# the app


def create_app(models: dict[str, ServedModel], limits: Limits | None = None,
               api_key: str | None = None) -> FastAPI:
    limits = limits or Limits()
    pool = WorkerPool(limits.workers, limits.max_pending)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(title="genforge", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API over genforge runs (see genforge/serve/app.py)")
    app.state.pool, app.state.models, app.state.limits = pool, models, limits

    def openapi() -> dict:
        """The generated document, with each request's `model` listing the served ids."""
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        comps = doc.get("components", {}).get("schemas", {})
        for name, tasks in {"CompletionRequest": ("text-generation",), "ChatRequest": ("text-generation",),
                            "ImageRequest": ("image-generation",),
                            "ClassificationRequest": ("image-classification", "text-classification")}.items():
            ids = sorted(k for k, m in models.items() if m.task in tasks)
            props = comps.get(name, {}).get("properties", {})
            if ids and "model" in props:
                enum = {"type": "string", "enum": ids}
                props["model"] = ({"anyOf": [enum, {"type": "null"}], "title": "Model"}
                                  if name == "ImageRequest" else {**enum, "title": "Model"})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    # ---- errors in the OpenAI shape

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            param = None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            msg = "unknown parameter"
        elif first.get("type") in ("json_invalid", "model_attributes_type"):
            msg = "the request body must be a JSON object" + (f" ({msg})" if first.get("type") == "json_invalid" else "")
        return JSONResponse(APIError(400, f"{param + ': ' if param else ''}{msg}", param=param).body(),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return JSONResponse(APIError(exc.status_code, msg).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(APIError(500, f"internal error ({exc.__class__.__name__}); see the "
                                     "server log").body(), status_code=500)

    # ---- routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> HTMLResponse:
        html = resources.files("genforge.serve").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "models": sorted(models),
                "workers": pool.stats()}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [m.info(limits) for m in models.values()]}

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str) -> dict:
        if model_id not in models:
            raise APIError(404, f"the model {model_id!r} does not exist; served models: "
                           + ", ".join(sorted(models)), param="model", code="model_not_found")
        return models[model_id].info(limits)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        m = _model(models, req.model, "text-generation")
        _unsupported(bool(req.logprobs), "logprobs", "not supported")
        _unsupported(req.suffix is not None, "suffix", "not supported")
        _unsupported(req.best_of is not None and req.best_of != req.n, "best_of",
                     "only best_of == n (or unset) is supported")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        sc = _sampling(req, 16 if req.max_tokens is None else req.max_tokens, limits)
        if len(prompts) * req.n > limits.max_n:
            raise APIError(400, f"n: {len(prompts)} prompts x n={req.n} choices exceeds the limit "
                           f"of {limits.max_n} per request", param="n")
        n_prompt = 0
        for p in prompts:
            ids = m.encode(p)
            _check_prompt(m, ids, limits, "prompt")
            n_prompt += len(ids)
        seeds = _seeds(req.seed, len(prompts) * req.n)
        stats = [dict() for _ in seeds]
        jobs = [(k, _text_job(m, prompts[k // req.n], sc, seeds[k], stats[k])) for k in range(len(seeds))]
        return await _text_response(request, req, m, jobs, stats, n_prompt, "text_completion",
                                    "cmpl", echo=[prompts[k // req.n] if req.echo else "" for k in range(len(seeds))])

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        m = _model(models, req.model, "text-generation")
        _unsupported(bool(req.logprobs) or bool(req.top_logprobs), "logprobs", "not supported")
        turns = []
        for msg in req.messages:
            text = msg.content if isinstance(msg.content, str) else "".join(p.text for p in msg.content)
            turns.append((msg.role, text))
        prompt = m.chat_template.render(turns)
        ids = m.encode(prompt, "messages")
        _check_prompt(m, ids, limits, "messages")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        sc = _sampling(req, limits.chat_max_tokens if max_tokens is None else max_tokens, limits,
                       extra_stops=m.chat_template.stop)
        seeds = _seeds(req.seed, req.n)
        stats = [dict() for _ in seeds]
        jobs = [(k, _text_job(m, prompt, sc, seeds[k], stats[k])) for k in range(req.n)]
        return await _text_response(request, req, m, jobs, stats, len(ids), "chat.completion", "chatcmpl")

    async def _text_response(request: Request, req, m: ServedModel, jobs, stats, n_prompt: int,
                             obj: str, prefix: str, echo: list[str] | None = None):
        loop = asyncio.get_running_loop()
        batch = pool.submit(jobs, loop)
        rid, created, k = new_id(prefix), int(time.time()), len(jobs)
        chat = obj == "chat.completion"
        if not req.stream:
            texts = [[] for _ in range(k)]
            async for tag, piece in batch.items(poll=request.is_disconnected):
                texts[tag].append(piece)
            if batch.open:  # the client went away; nobody reads an answer
                return JSONResponse({}, status_code=499)
            choices = []
            for i in range(k):
                text = "".join(texts[i])
                reason = stats[i].get("finish_reason", "length")
                if chat:
                    choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                    "logprobs": None, "finish_reason": reason})
                else:
                    choices.append({"text": (echo[i] if echo else "") + text, "index": i,
                                    "logprobs": None, "finish_reason": reason})
            return {"id": rid, "object": obj, "created": created, "model": m.id,
                    "choices": choices, "usage": _usage(n_prompt, stats)}

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list, usage=None) -> bytes:
            d = {"id": rid, "object": chunk_obj, "created": created, "model": m.id, "choices": choices}
            if include_usage:
                d["usage"] = usage
            return _sse(d)

        def choice(i: int, text: str | None, reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {"text": text or "", "index": i, "logprobs": None, "finish_reason": reason}

        async def events():
            if chat:
                for i in range(k):
                    yield chunk([choice(i, "", None, first=True)])
            elif echo and any(echo):
                for i in range(k):
                    yield chunk([choice(i, echo[i], None)])
            try:
                async for tag, piece in batch.items():
                    yield chunk([choice(tag, piece, None)])
                for i in range(k):
                    yield chunk([choice(i, None if chat else "", stats[i].get("finish_reason", "length"))])
                if include_usage:
                    yield _sse({"id": rid, "object": chunk_obj, "created": created, "model": m.id,
                                "choices": [], "usage": _usage(n_prompt, stats)})
            except Exception as e:  # the status line is sent already: report in the stream
                log.exception("generation failed")
                yield _sse(APIError(500, f"generation failed ({e.__class__.__name__})").body())
            yield b"data: [DONE]\n\n"

        return SSEResponse(events(), on_close=batch.cancel)

    async def run_one(job, request: Request):
        """Run a one-result job (a generator yielding once) in the pool; None if the client
        went away first (the job is then cancelled)."""
        batch = pool.submit([(0, job)], asyncio.get_running_loop())
        result = None
        async for _, result in batch.items(poll=request.is_disconnected):
            pass
        return result

    @app.post("/v1/images/generations")
    async def images(req: ImageRequest, request: Request):
        if req.model is None:
            image_models = [k for k, v in models.items() if v.task == "image-generation"]
            if len(image_models) != 1:
                raise APIError(400, "model: name the image model (served: "
                               + (", ".join(image_models) or "none") + ")", param="model")
            req.model = image_models[0]
        m = _model(models, req.model, "image-generation")
        cfg = m.cfg
        if req.n > limits.max_images:
            raise APIError(400, f"n: at most {limits.max_images} images per request, got {req.n}", param="n")
        sizes = {f"{cfg.width}x{cfg.height}"}
        if req.size not in (None, "auto", *sizes):
            raise APIError(400, f"size: this model makes {cfg.width}x{cfg.height} images; "
                           f"omit size or pass '{cfg.width}x{cfg.height}'", param="size")
        if cfg.model != "diffusion" and (req.guidance is not None or req.steps is not None):
            raise APIError(400, "guidance and steps apply to diffusion models only", param="guidance")
        label = _match_label(m, req.prompt)
        seed = secrets.randbits(62) if req.seed is None else req.seed

        def work():
            try:
                images = m.recipe.sample(m.model, cfg, n=req.n, label=label, guidance=req.guidance,
                                         steps=req.steps, seed=seed)
            except (ConfigError, ValueError) as e:
                raise APIError(400, str(e)) from None
            yield [png_bytes(make_grid(img[None], nrow=1, padding=0)) for img in images]

        pngs = await run_one(work(), request)
        if pngs is None:
            return JSONResponse({}, status_code=499)
        revised = cfg.classes[label] if label is not None else ("random class" if cfg.conditional else "unconditional")
        data = []
        for png in pngs:
            b64 = base64.b64encode(png).decode()
            if req.response_format == "b64_json":
                data.append({"b64_json": b64, "revised_prompt": revised})
            else:  # no file hosting: the image travels inline as a data: URL
                data.append({"url": "data:image/png;base64," + b64, "revised_prompt": revised})
        return {"created": int(time.time()), "data": data}

    @app.post("/v1/classifications")
    async def classifications(req: ClassificationRequest, request: Request):
        m = _model(models, req.model, ("image-classification", "text-classification"))
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise APIError(400, "input: give a string or a non-empty list", param="input")
        if len(inputs) > limits.max_inputs:
            raise APIError(400, f"input: at most {limits.max_inputs} inputs per request", param="input")
        if m.task == "image-classification":
            items: list = [_decode_image(s, i) for i, s in enumerate(inputs)]
        else:
            items = inputs

        def work():
            try:
                yield m.recipe.classify(m.model, m.cfg, items, top=req.top)
            except DataError as e:
                raise APIError(400, f"input: {e}", param="input") from None

        results = await run_one(work(), request)
        if results is None:
            return JSONResponse({}, status_code=499)
        data = [{"index": i, "label": r["label"], "score": r["probability"],
                 "top": [{"label": lab, "score": p} for lab, p in r["top"]]}
                for i, r in enumerate(results)]
        return {"id": new_id("clf"), "object": "classification", "created": int(time.time()),
                "model": m.id, "data": data}

    return app
