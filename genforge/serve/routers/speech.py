"""Speech synthesis in OpenAI's shape: POST /v1/audio/speech for audio-generation runs. `input`
names a label ("seven", or the numeral "7"); the answer is one generated clip as WAV bytes, so
the official client's `client.audio.speech.create(model=..., voice=..., input="seven",
response_format="wav")` works unchanged. `voice` is accepted and ignored (one voice per run);
response formats other than wav are refused (the server encodes nothing else), and so is a
`speed` other than 1."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from genforge.config import ConfigError
from genforge.data.audio import wav_bytes
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError
from genforge.serve.routers.common import run_one, served_model
from genforge.serve.schemas import _Body

ENDPOINT = "/v1/audio/speech"


class SpeechRequest(_Body):
    model: str
    input: str = Field(..., max_length=4096)
    voice: Optional[str] = None
    response_format: Optional[str] = None  # OpenAI's default is mp3; this server writes wav
    speed: Optional[float] = Field(None, ge=0.25, le=4.0)
    instructions: Optional[str] = None
    stream_format: Optional[str] = None
    seed: Optional[int] = Field(None, ge=0, le=2 ** 62)  # genforge extension


SCHEMAS = (SpeechRequest,)
router = APIRouter()


def prepare(m: ServedModel, run_dir: Path) -> None:
    pass


def describe(m: ServedModel, lim: Limits) -> dict:
    cfg = m.cfg
    return {"classes": list(cfg.classes), "sample_rate": cfg.sample_rate, "family": cfg.model,
            "response_format": "wav"}


def _label(m: ServedModel, text: str) -> int:
    word = text.strip().strip(".!?,;:\"'").strip().lower()
    try:
        return m.recipe.parse_label(m.cfg, word)
    except ConfigError:
        raise APIError(400, f"input: {text!r} names no label of this model; say one of: "
                       + ", ".join(m.cfg.classes) + " (or its index as a numeral)",
                       param="input", code="unknown_label") from None


@router.post("/v1/audio/speech")
async def speech(req: SpeechRequest, request: Request):
    m = served_model(request, req.model, "audio-generation")
    if req.response_format not in (None, "wav"):
        raise APIError(400, f"response_format: {req.response_format!r} is not offered; this server "
                       "writes wav only (pass response_format='wav')", param="response_format")
    if req.speed not in (None, 1.0):
        raise APIError(400, "speed: only 1.0 is offered (clips are generated at their natural "
                       "rate)", param="speed")
    if req.stream_format not in (None, "audio"):
        raise APIError(400, "stream_format: only 'audio' (the whole file) is offered",
                       param="stream_format")
    if not m.cfg.conditional:
        label = None
    else:
        label = _label(m, req.input)
    seed = secrets.randbits(62) if req.seed is None else req.seed

    def work():
        try:
            wave = m.recipe.sample(m.model, m.cfg, n=1, label=label, seed=seed)[0]
        except (ConfigError, ValueError) as e:
            raise APIError(400, str(e)) from None
        yield wav_bytes(wave, m.cfg.sample_rate)

    wav = await run_one(request, work())
    if wav is None:
        return JSONResponse({}, status_code=499)
    return Response(wav, media_type="audio/wav")
