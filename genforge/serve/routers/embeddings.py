"""Embeddings (OpenAI's shape): POST /v1/embeddings. `input` is a string, a list of strings,
or token ids (one list, or a list of lists); `encoding_format` float (lists of numbers) or
base64 (the little-endian float32 bytes, what the openai client asks for by default and
decodes itself); `dimensions` is refused unless it equals the model's width (these models
are not trained for truncated vectors)."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from genforge.config import ConfigError
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError, unsupported
from genforge.serve.routers.common import limits, run_one, served_model
from genforge.serve.schemas import _Body

ENDPOINT = "/v1/embeddings"


class EmbeddingRequest(_Body):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


SCHEMAS = (EmbeddingRequest,)

router = APIRouter()


def prepare(m: ServedModel, run_dir: Path) -> None:
    pass


def width(m: ServedModel) -> int:
    return int(getattr(m.cfg.model_cfg, "d_model", 0) or getattr(m.cfg.model_cfg, "dim", 0))


def describe(m: ServedModel, lim: Limits) -> dict:
    return {"dimensions": width(m)}


def _inputs(raw) -> list:
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(x, int) for x in raw):
        return [list(raw)]  # one text given as token ids
    return list(raw)


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request):
    m, lim = served_model(request, req.model, "embedding"), limits(request)
    inputs = _inputs(req.input)
    if not inputs:
        raise APIError(400, "input: give a string or a non-empty list", param="input")
    if len(inputs) > lim.max_inputs:
        raise APIError(400, f"input: at most {lim.max_inputs} inputs per request", param="input")
    if any(isinstance(x, list) and not x for x in inputs):
        raise APIError(400, "input: a token-id list is empty", param="input")
    dim = width(m)
    unsupported(req.dimensions is not None and req.dimensions != dim, "dimensions",
                f"{m.id} gives {dim}-dimensional vectors only")

    def work():
        try:
            yield m.recipe.embed(m.model, m.cfg, inputs)
        except ConfigError as e:
            raise APIError(400, f"input: {e}", param="input") from None

    result = await run_one(request, work())
    if result is None:
        return JSONResponse({}, status_code=499)
    vectors = result["vectors"].numpy().astype("<f4")
    data = [{"object": "embedding", "index": i,
             "embedding": (base64.b64encode(v.tobytes()).decode() if req.encoding_format == "base64"
                           else v.tolist())}
            for i, v in enumerate(vectors)]
    n = int(result["tokens"])
    return {"object": "list", "data": data, "model": m.id,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
