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

The parts: schemas.py (request bodies), errors.py (the error shape and its handlers),
guard.py (API key, body limit), openai_format.py (response objects), routers/ (one per
task, plus models/health and the playground), tasks.py (which router serves which recipe
TASK), engine.py (served models, the worker pool). This module only assembles them.
"""
from __future__ import annotations

import contextlib

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from genforge import __version__
from genforge.serve import errors
from genforge.serve.engine import Limits, ServedModel, WorkerPool
from genforge.serve.guard import Guard
from genforge.serve.routers import models as models_router
from genforge.serve.routers import playground
from genforge.serve.tasks import TASK_ENDPOINTS, TASKS, task_routers


def _openapi(app: FastAPI, models: dict[str, ServedModel]) -> dict:
    """The generated document, with each request's `model` listing the served ids."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    comps = doc.get("components", {}).get("schemas", {})
    for router in task_routers():
        ids = sorted(k for k, m in models.items() if TASKS[m.task] is router)
        for schema in router.SCHEMAS:
            props = comps.get(schema.__name__, {}).get("properties", {})
            if ids and "model" in props:
                enum = {"type": "string", "enum": ids}
                props["model"] = ({**enum, "title": "Model"} if schema.model_fields["model"].is_required()
                                  else {"anyOf": [enum, {"type": "null"}], "title": "Model"})
    app.openapi_schema = doc
    return doc


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
    app.state.endpoints = TASK_ENDPOINTS
    app.openapi = lambda: _openapi(app, models)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    errors.install(app)
    for router in (playground, models_router, *task_routers()):
        app.include_router(router.router)
    return app
