"""Request bodies of the HTTP API, as pydantic models (FastAPI validates against them and
publishes them in /openapi.json). Field names and ranges follow OpenAI's API; the genforge
extensions are marked. Unknown fields are refused: a typo gets a 400 naming it, not silence.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


StopField = Union[str, list[str], None]


# what completions and chat share (a comment, not a docstring: docstrings become schema text)
class SamplingParams(_Body):
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: StopField = None
    seed: Optional[int] = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # genforge extensions (the openai client sends them with extra_body={...})
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)


class CompletionRequest(SamplingParams):
    model: str
    prompt: Union[str, list[str]] = ""
    max_tokens: Optional[int] = Field(None, ge=0)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0)
    best_of: Optional[int] = Field(None, ge=1)
    suffix: Optional[str] = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class ChatRequest(SamplingParams):
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0)


class ImageRequest(_Body):
    prompt: str = Field(..., max_length=4000)
    model: Optional[str] = None
    n: int = Field(1, ge=1, le=128)
    response_format: Optional[Literal["b64_json", "url"]] = None
    size: Optional[str] = None
    user: Optional[str] = None
    # genforge extensions
    seed: Optional[int] = Field(None, ge=0, le=2 ** 63 - 1)
    guidance: Optional[float] = Field(None, ge=0, le=50)
    steps: Optional[int] = Field(None, ge=1, le=1000)
    sampler: Optional[Literal["ddpm", "ddim", "dpm++"]] = None  # diffusion; None = the run's (dpm++)
    # diffusion: guide only while t/T is in [lo, hi]; None = the run's
    guidance_interval: Optional[tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]] = None


class ClassificationRequest(_Body):
    model: str
    input: Union[str, list[str]]
    top: int = Field(3, ge=1, le=1000)
