"""The task table: which router serves each recipe `TASK`.

A router module (genforge/serve/routers/) serving a task defines
    router                  its FastAPI APIRouter (the endpoints)
    ENDPOINT                the endpoints, as error messages name them
    SCHEMAS                 request models whose `model` field /openapi.json fills with the
                            ids of the served models of this router's tasks
    prepare(m, run_dir)     loads what the task needs beyond the model (a tokenizer, ...)
    describe(m, limits)     the task's fields in the model's /v1/models `genforge` block
Serving a new task (embeddings, translation, audio) = one router file + one line here.
"""
from __future__ import annotations

from types import ModuleType

from genforge.serve.routers import classifications, embeddings, images, text
from genforge.serve.routers import audio, speech

TASKS: dict[str, ModuleType] = {
    "text-generation": text,
    "image-generation": images,
    "image-classification": classifications,
    "text-classification": classifications,
    "embedding": embeddings,
    "audio-classification": audio,
    "audio-generation": speech,
}

TASK_ENDPOINTS = {task: router.ENDPOINT for task, router in TASKS.items()}


def task_routers() -> list[ModuleType]:
    """Each router once (one may serve several tasks), in table order."""
    return list(dict.fromkeys(TASKS.values()))
