"""Speech recognition in OpenAI's shape: POST /v1/audio/transcriptions (multipart upload of an
audio file) for audio-classification runs; the recognised label is the transcript, so the
official client's `client.audio.transcriptions.create(model=..., file=...)` works unchanged.
response_format: json (default) -> {"text"}, text -> the label alone, verbose_json -> also the
duration, the label's probability and the top labels (a genforge extension). Subtitle formats
(srt, vtt) are refused: one label has no timing."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from genforge.data.registry import DataError
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError
from genforge.serve.routers.common import run_one, served_model

ENDPOINT = "/v1/audio/transcriptions"


class TranscriptionForm(BaseModel):
    """The form fields beside the uploaded `file` (multipart/form-data, as OpenAI's API takes
    them); the endpoint reads them as Form parameters of the same names."""
    model: str
    response_format: str = "json"
    language: Optional[str] = None
    prompt: Optional[str] = None
    temperature: Optional[float] = None


SCHEMAS = (TranscriptionForm,)

router = APIRouter()

FORMATS = ("json", "text", "verbose_json")


def prepare(m: ServedModel, run_dir: Path) -> None:
    pass


def describe(m: ServedModel, lim: Limits) -> dict:
    cfg = m.cfg
    return {"classes": list(cfg.classes), "sample_rate": cfg.sample_rate, "duration": cfg.duration}


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, file: UploadFile = File(...), model: str = Form(...),
                         response_format: str = Form("json"), language: Optional[str] = Form(None),
                         prompt: Optional[str] = Form(None), temperature: Optional[float] = Form(None)):
    m = served_model(request, model, "audio-classification")
    if response_format not in FORMATS:
        raise APIError(400, f"response_format: {response_format!r} is not offered; use one of "
                       f"{', '.join(FORMATS)} (a recognised word has no timing for srt/vtt)",
                       param="response_format")
    data = await file.read()
    if not data:
        raise APIError(400, "file: the upload is empty; send a WAV or FLAC file", param="file")

    def work():
        try:
            yield m.recipe.classify(m.model, m.cfg, [data], top=3)[0]
        except DataError as e:
            raise APIError(400, f"file: {e}", param="file") from None

    r = await run_one(request, work())
    if r is None:
        return JSONResponse({}, status_code=499)
    if response_format == "text":
        return PlainTextResponse(r["label"])
    if response_format == "json":
        return {"text": r["label"]}
    body = {"task": "transcribe", "language": language or "english", "duration": m.cfg.duration,
            "text": r["label"], "probability": r["probability"],
            "top": [{"label": lab, "probability": p} for lab, p in r["top"]]}
    if "note" in r:
        body["note"] = r["note"].removeprefix("note: ")
    return body
