"""Image generation: POST /v1/images/generations. The prompt names a class ("sneaker", or a
sentence containing a class name), or, for a run with the `text-prompt` capability
(text2image), is free text passed to `sample(prompt=...)`; the recipe's `sample` draws the
images as one job."""
from __future__ import annotations

import re
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genforge.config import ConfigError
from genforge.generate.diffusion_samplers import SAMPLERS
from genforge.generate.images import make_grid, png_bytes
from genforge.serve import openai_format as fmt
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError
from genforge.serve.routers.common import limits, models, run_one, served_model
from genforge.serve.schemas import ImageRequest

ENDPOINT = "/v1/images/generations"
SCHEMAS = (ImageRequest,)  # its `model` lists the served image models

router = APIRouter()


def prepare(m: ServedModel, run_dir: Path) -> None:
    pass


def describe(m: ServedModel, lim: Limits) -> dict:
    extra = {"classes": list(m.cfg.classes)} if m.cfg.classes else {}
    text_prompt = "text-prompt" in m.capabilities  # free text instead of a class name
    if "sampler" in m.capabilities:  # the run's default first, for the playground's menu
        extra["sampler"] = m.cfg.sampler
        extra["samplers"] = sorted(SAMPLERS, key=lambda name: name != m.cfg.sampler)
    return {**extra, "conditional": text_prompt or bool(getattr(m.cfg, "conditional", False)), "family": m.cfg.model,
            "size": f"{m.cfg.width}x{m.cfg.height}", "text_prompt": text_prompt}


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


@router.post("/v1/images/generations")
async def images(req: ImageRequest, request: Request):
    lim = limits(request)
    if req.model is None:
        image_models = [k for k, v in models(request).items() if v.task == "image-generation"]
        if len(image_models) != 1:
            raise APIError(400, "model: name the image model (served: "
                           + (", ".join(image_models) or "none") + ")", param="model")
        req.model = image_models[0]
    m = served_model(request, req.model, "image-generation")
    cfg = m.cfg
    if req.n > lim.max_images:
        raise APIError(400, f"n: at most {lim.max_images} images per request, got {req.n}", param="n")
    sizes = {f"{cfg.width}x{cfg.height}"}
    if req.size not in (None, "auto", *sizes):
        raise APIError(400, f"size: this model makes {cfg.width}x{cfg.height} images; "
                       f"omit size or pass '{cfg.width}x{cfg.height}'", param="size")
    asked = {"guidance": req.guidance, "sampling-steps": req.steps}
    if any(value is not None and cap not in m.capabilities for cap, value in asked.items()):
        raise APIError(400, "guidance and steps apply to diffusion models only", param="guidance")
    for field in ("sampler", "guidance_interval"):
        if getattr(req, field) is not None and "sampler" not in m.capabilities:
            raise APIError(400, f"{field}: {req.model} ({cfg.model}) has no choice of {field.replace('_', ' ')}; "
                           f"omit {field} (it applies to image-generate diffusion runs)", param=field)
    text_prompt = "text-prompt" in m.capabilities
    if text_prompt and not req.prompt.strip():
        raise APIError(400, "prompt: empty; describe the image, e.g. \"a pair of running shoes\"",
                       param="prompt")
    label = None if text_prompt else _match_label(m, req.prompt)
    kw = {"prompt": req.prompt} if text_prompt else {"label": label}
    if req.sampler is not None:
        kw["sampler"] = req.sampler
    if req.guidance_interval is not None:
        kw["guidance_interval"] = req.guidance_interval
    seed = secrets.randbits(62) if req.seed is None else req.seed

    def work():
        try:
            images = m.recipe.sample(m.model, cfg, n=req.n, guidance=req.guidance,
                                     steps=req.steps, seed=seed, **kw)
        except (ConfigError, ValueError) as e:
            raise APIError(400, str(e)) from None
        yield [png_bytes(make_grid(img[None], nrow=1, padding=0)) for img in images]

    pngs = await run_one(request, work())
    if pngs is None:
        return JSONResponse({}, status_code=499)
    revised = cfg.classes[label] if label is not None else ("random class" if getattr(cfg, "conditional", False) else "unconditional")
    if text_prompt:  # the prompt itself, with the recipe's note when it does not look English
        note = m.recipe.prompt_note(cfg, req.prompt) if hasattr(m.recipe, "prompt_note") else None
        revised = req.prompt + (f" ({note})" if note else "")
    return fmt.images(pngs, revised, req.response_format)
