"""What the task routers share: the served model a request names, and running one job in the
worker pool. The app keeps its state on `app.state` (models, limits, pool, endpoints), so
routers are plain module-level APIRouters with no closure over a particular app."""
from __future__ import annotations

import asyncio

from fastapi import Request

from genforge.serve.engine import Limits, ServedModel, WorkerPool
from genforge.serve.errors import APIError


def models(request: Request) -> dict[str, ServedModel]:
    return request.app.state.models


def limits(request: Request) -> Limits:
    return request.app.state.limits


def pool(request: Request) -> WorkerPool:
    return request.app.state.pool


def not_found(models: dict[str, ServedModel], name: str) -> APIError:
    return APIError(404, f"the model {name!r} does not exist; served models: "
                    + ", ".join(sorted(models)), param="model", code="model_not_found")


def served_model(request: Request, name: str, *tasks: str) -> ServedModel:
    """The model `name`, which must serve one of `tasks` (else 404 / 400 naming the right
    endpoint for it)."""
    served = models(request)
    m = served.get(name)
    if m is None:
        raise not_found(served, name)
    if m.task not in tasks:
        raise APIError(400, f"{name!r} is a {m.task} model; use {request.app.state.endpoints[m.task]}",
                       param="model", code="wrong_model_type")
    return m


async def run_one(request: Request, job):
    """Run a one-result job (a generator yielding once) in the pool; None if the client
    went away first (the job is then cancelled)."""
    batch = pool(request).submit([(0, job)], asyncio.get_running_loop())
    result = None
    async for _, result in batch.items(poll=request.is_disconnected):
        pass
    return result
