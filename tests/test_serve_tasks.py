"""The server's task table and the capabilities recipes declare (what the routers and
`genforge explain` read instead of family names)."""
from __future__ import annotations

import types

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from genforge.config import make_config
from genforge.recipes import CAPABILITIES, RECIPES, capabilities, get_recipe
from genforge.serve.app import create_app
from genforge.serve.engine import Limits, load_models
from genforge.serve.tasks import TASKS, task_routers


def test_every_task_router_has_what_the_app_reads():
    for task, router in TASKS.items():
        assert isinstance(router.router, APIRouter), task
        assert router.ENDPOINT.startswith("/v1/"), task
        assert router.SCHEMAS and all(issubclass(s, BaseModel) and "model" in s.model_fields
                                      for s in router.SCHEMAS), task
        assert callable(router.prepare) and callable(router.describe), task
    # each recipe TASK the recipes declare has a router
    for rname in RECIPES:
        task = getattr(get_recipe(rname), "TASK", None)
        assert task is None or task in TASKS, (rname, task)
    # a router serving several tasks (classifications: image and text) is included once
    assert task_routers().count(TASKS["text-classification"]) == 1


@pytest.mark.parametrize("rname", list(RECIPES))
def test_recipes_declare_only_known_capabilities(rname):
    recipe = get_recipe(rname)
    for family in recipe.MODELS:
        caps = capabilities(recipe, make_config(recipe, {"model": family}))
        assert caps <= CAPABILITIES.keys(), (rname, family, caps)


@pytest.mark.parametrize("rname,family,expected", [
    ("language-model", "gpt", set()),
    ("language-model", "lstm", {"recurrent"}),
    ("image-generate", "vae", set()),
    ("image-generate", "diffusion", {"guidance", "sampling-steps", "sampler"}),
    ("text-classify", "bag", {"text-input"}),
    ("text-classify", "attention", {"text-input", "attention-pooling"}),
    ("text-classify", "transformer", {"text-input", "self-attention"}),
    ("image-classify", "cnn", {"image-input"}),
    ("sequence-classify", "rnn", {"image-input"}),
])
def test_declared_capabilities(rname, family, expected):
    recipe = get_recipe(rname)
    assert capabilities(recipe, make_config(recipe, {"model": family})) == expected


def test_undeclared_capability_is_one_clear_error():
    recipe = types.ModuleType("my_recipe")
    assert capabilities(recipe, None) == frozenset()  # declaring nothing is allowed
    recipe.capabilities = lambda cfg: {"telepathy"}
    with pytest.raises(ValueError, match="my_recipe.capabilities declares telepathy.*CAPABILITIES"):
        capabilities(recipe, None)


def test_served_models_carry_their_capabilities_and_openapi_lists_them(serve_runs):
    models = load_models([serve_runs[n] for n in ("tiny-gru", "tiny-diffusion", "tiny-vae", "tiny-sentiment")])
    assert models["tiny-gru"].capabilities == {"recurrent"}
    assert models["tiny-diffusion"].capabilities == {"guidance", "sampling-steps", "sampler"}
    assert models["tiny-vae"].capabilities == frozenset()
    with TestClient(create_app(models, Limits(workers=1))) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        # each request's `model` enumerates the served models of its router's tasks
        assert schemas["CompletionRequest"]["properties"]["model"]["enum"] == ["tiny-gru"]
        assert schemas["ChatRequest"]["properties"]["model"]["enum"] == ["tiny-gru"]
        assert schemas["ClassificationRequest"]["properties"]["model"]["enum"] == ["tiny-sentiment"]
        image_model = schemas["ImageRequest"]["properties"]["model"]  # optional: may be null
        assert image_model["anyOf"] == [{"type": "string", "enum": ["tiny-diffusion", "tiny-vae"]},
                                        {"type": "null"}]
        # guidance/steps: accepted where declared, refused elsewhere
        r = c.post("/v1/images/generations", json={"model": "tiny-vae", "prompt": "bag", "steps": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "guidance"
        r = c.post("/v1/images/generations", json={"model": "tiny-diffusion", "prompt": "bag",
                                                   "steps": 2, "guidance": 1.5, "seed": 0})
        assert r.status_code == 200 and len(r.json()["data"]) == 1
