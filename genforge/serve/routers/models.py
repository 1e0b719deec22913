"""GET /health and GET /v1/models[/{id}]: what is served, and how loaded the workers are."""
from __future__ import annotations

from fastapi import APIRouter, Request

from genforge import __version__
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.routers.common import limits, models, not_found, pool
from genforge.serve.tasks import TASKS

router = APIRouter()


def model_entry(m: ServedModel, lim: Limits) -> dict:
    """The /v1/models entry: OpenAI's fields, plus a `genforge` block (the playground reads
    it) to which the model's task router adds what that task needs (classes, context, size)."""
    extra = {"task": m.task, "recipe": m.recipe_name, "architecture": m.cfg.model,
             **TASKS[m.task].describe(m, lim)}
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": "genforge",
            "genforge": extra}


@router.get("/health")
def health(request: Request) -> dict:
    return {"status": "ok", "version": __version__, "models": sorted(models(request)),
            "workers": pool(request).stats()}


@router.get("/v1/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [model_entry(m, limits(request)) for m in models(request).values()]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, request: Request) -> dict:
    served = models(request)
    if model_id not in served:
        raise not_found(served, model_id)
    return model_entry(served[model_id], limits(request))
