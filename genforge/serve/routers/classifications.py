"""Classification (genforge's own endpoint; OpenAI has none): POST /v1/classifications.
Text classifiers take strings; image classifiers take base64 PNG/JPEG (or data: URLs)."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genforge.data.registry import DataError
from genforge.serve import openai_format as fmt
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError
from genforge.serve.routers.common import limits, run_one, served_model
from genforge.serve.schemas import ClassificationRequest

ENDPOINT = "/v1/classifications"
SCHEMAS = (ClassificationRequest,)  # its `model` lists the served classifiers

router = APIRouter()


def prepare(m: ServedModel, run_dir: Path) -> None:
    pass


def describe(m: ServedModel, lim: Limits) -> dict:
    return {"classes": list(m.cfg.classes)} if m.cfg.classes else {}


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


@router.post("/v1/classifications")
async def classifications(req: ClassificationRequest, request: Request):
    m, lim = served_model(request, req.model, "image-classification", "text-classification"), limits(request)
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    if not inputs:
        raise APIError(400, "input: give a string or a non-empty list", param="input")
    if len(inputs) > lim.max_inputs:
        raise APIError(400, f"input: at most {lim.max_inputs} inputs per request", param="input")
    if m.task == "image-classification":
        items: list = [_decode_image(s, i) for i, s in enumerate(inputs)]
    else:
        items = inputs

    def work():
        try:
            yield m.recipe.classify(m.model, m.cfg, items, top=req.top)
        except DataError as e:
            raise APIError(400, f"input: {e}", param="input") from None

    results = await run_one(request, work())
    if results is None:
        return JSONResponse({}, status_code=499)
    return fmt.classifications(m.id, results)
