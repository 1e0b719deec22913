"""The response objects of OpenAI's API, as genforge fills them: completions and chat
completions (whole, or as server-sent event chunks), images, and genforge's own
classification object. Routes compute; this module only shapes what they computed.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import time
from typing import Any

from fastapi.responses import StreamingResponse

_ids = itertools.count()


def new_id(prefix: str) -> str:
    """Unique per process and per millisecond: time, a counter, and the process id."""
    return f"{prefix}-{int(time.time() * 1000):x}{next(_ids):04x}{os.getpid() & 0xffff:04x}"


def usage(prompt_tokens: int, stats: list[dict]) -> dict:
    done = sum(s.get("completion_tokens", 0) for s in stats)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done,
            "total_tokens": prompt_tokens + done}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class SSEResponse(StreamingResponse):
    """Server-sent events that always run `on_close` when the response ends, however it
    ends (finished, client gone, server stopping): it cancels the request's generation."""

    def __init__(self, body, on_close):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class TextReply:
    """The objects of one completions (`chat=False`) or chat completions request: one id and
    creation time shared by the whole answer or by every chunk of its stream."""

    def __init__(self, model_id: str, chat: bool, include_usage: bool = False):
        self.chat, self.model_id, self.include_usage = chat, model_id, include_usage
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def whole(self, texts: list[str], reasons: list[str], use: dict) -> dict:
        """The non-streamed answer; completions' `texts` include any echoed prompt."""
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model_id, "choices": choices, "usage": use}

    def choice(self, i: int, text: str | None, reason: str | None, first: bool = False) -> dict:
        """One choice of a chunk: chat sends a `delta` (its first names the role), completions
        the text itself."""
        if self.chat:
            delta = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"text": text or "", "index": i, "logprobs": None, "finish_reason": reason}

    def chunk(self, choices: list, use: dict | None = None) -> bytes:
        # with include_usage every chunk carries `usage` (null until the last), as OpenAI does
        d = {"id": self.id, "object": self.chunk_object, "created": self.created,
             "model": self.model_id, "choices": choices}
        if self.include_usage:
            d["usage"] = use
        return sse(d)

    def usage_chunk(self, use: dict) -> bytes:
        return sse({"id": self.id, "object": self.chunk_object, "created": self.created,
                    "model": self.model_id, "choices": [], "usage": use})


def images(pngs: list[bytes], revised_prompt: str, response_format: str | None) -> dict:
    data = []
    for png in pngs:
        b64 = base64.b64encode(png).decode()
        if response_format == "b64_json":
            data.append({"b64_json": b64, "revised_prompt": revised_prompt})
        else:  # no file hosting: the image travels inline as a data: URL
            data.append({"url": "data:image/png;base64," + b64, "revised_prompt": revised_prompt})
    return {"created": int(time.time()), "data": data}


def classifications(model_id: str, results: list[dict]) -> dict:
    """genforge's own object (OpenAI has no classification endpoint): per input the label,
    its probability as `score`, and the top classes."""
    data = [{"index": i, "label": r["label"], "score": r["probability"],
             "top": [{"label": lab, "score": p} for lab, p in r["top"]]}
            for i, r in enumerate(results)]
    return {"id": new_id("clf"), "object": "classification", "created": int(time.time()),
            "model": model_id, "data": data}
