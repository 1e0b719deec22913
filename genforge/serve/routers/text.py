"""Text generation: POST /v1/completions and POST /v1/chat/completions (stream: true ->
server-sent events). Every choice is one job in the worker pool: a `stream_text` iterator
yielding text pieces."""
from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genforge.generate.sampling import SamplingConfig, stop_strings, stream_text
from genforge.serve import openai_format as fmt
from genforge.serve.batching import ContinuousBatcher, batchable
from genforge.serve.chat import load_chat_template
from genforge.serve.engine import Limits, ServedModel
from genforge.serve.errors import APIError, log, unsupported
from genforge.serve.routers.common import limits, pool, served_model
from genforge.serve.schemas import ChatRequest, CompletionRequest, SamplingParams, StopField

ENDPOINT = "/v1/completions and /v1/chat/completions"
SCHEMAS = (CompletionRequest, ChatRequest)  # their `model` lists the served text models
# recurrent models carry a state, not a window: any prompt fits, so a fixed bound keeps one
# request from holding a worker for minutes
RECURRENT_PROMPT_LIMIT = 4096

router = APIRouter()


def prepare(m: ServedModel, run_dir: Path) -> None:
    m.tokenizer = m.recipe.tokenizer(m.cfg, run_dir)
    m.chat_template = load_chat_template(run_dir, m.tokenizer)


def prompt_limit(m: ServedModel, lim: Limits) -> int:
    if lim.max_prompt_tokens:
        return lim.max_prompt_tokens
    return RECURRENT_PROMPT_LIMIT if "recurrent" in m.capabilities else int(m.model.context_size)


def describe(m: ServedModel, lim: Limits) -> dict:
    return {"context_length": int(m.model.context_size), "max_prompt_tokens": prompt_limit(m, lim)}


def encode(m: ServedModel, text: str, param: str = "prompt") -> list[int]:
    try:
        return m.tokenizer.encode(text)
    except ValueError as e:  # e.g. a character the char-level vocabulary never saw
        raise APIError(400, f"{param}: {e}", param=param) from None


def _stops(stop: StopField) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise APIError(400, f"stop: at most 4 stop strings, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def _sampling(m: ServedModel, req: SamplingParams, max_tokens: int, lim: Limits,
              extra_stops=()) -> SamplingConfig:
    unsupported(bool(req.presence_penalty) or bool(req.frequency_penalty), "presence_penalty",
                "presence/frequency penalties are not supported; use repetition_penalty (> 1 "
                "discourages repeats)")
    unsupported(bool(req.logit_bias), "logit_bias", "not supported")
    if max_tokens > lim.max_tokens:
        raise APIError(400, f"max_tokens: at most {lim.max_tokens} new tokens per choice, "
                       f"got {max_tokens}", param="max_tokens")
    if req.n > lim.max_n:
        raise APIError(400, f"n: at most {lim.max_n} choices per request, got {req.n}", param="n")
    return SamplingConfig(max_new_tokens=max_tokens,
                          temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p,
                          top_k=req.top_k or 0,
                          repetition_penalty=req.repetition_penalty or 1.0,
                          stop=stop_strings(m.cfg, _stops(req.stop) + list(extra_stops)),
                          seed=req.seed)


def _check_prompt(m: ServedModel, ids: list[int], lim: Limits, param: str) -> None:
    limit = prompt_limit(m, lim)
    if len(ids) > limit:
        raise APIError(400, f"{param}: this model's maximum context length is {limit} tokens, "
                       f"but the prompt has {len(ids)} tokens; shorten it",
                       param=param, code="context_length_exceeded")


def _seeds(seed: int | None, k: int) -> list[int]:
    """Distinct, reproducible per-choice seeds (random when no seed is given)."""
    base = secrets.randbits(62) if seed is None else seed % (2 ** 62)
    return [(base + i) % (2 ** 63) for i in range(k)]


def _translation(m: ServedModel, sc: SamplingConfig, temperature: float | None,
                 max_tokens: int | None) -> SamplingConfig:
    """A translation run (capability `translation`): unless the request says otherwise, the
    run's beam search (temperature 0) to the run's length limit, not the text defaults
    (temperature 1, 16 tokens), which would sample and cut every translation short."""
    if temperature is None:
        sc.temperature = 0.0
    if max_tokens is None:
        sc.max_new_tokens = 0
    return sc


def _text_job(m: ServedModel, prompt: str | list[int], sc: SamplingConfig, seed: int, stats: dict,
              lim: Limits):
    if lim.batching and batchable(m):  # one batched forward per turn for all of m's streams
        if m.batcher is None:
            m.batcher = ContinuousBatcher(m.model)
        return m.batcher.stream(m.tokenizer, prompt, SamplingConfig(**{**vars(sc), "seed": seed}), stats)
    if "translation" in m.capabilities:  # the prompt is the source sentence
        return m.recipe.translate_stream(m.model, m.cfg, prompt, temperature=sc.temperature,
                                         top_p=sc.top_p, top_k=sc.top_k, seed=seed,
                                         max_tokens=sc.max_new_tokens, stats=stats)
    return stream_text(m.model, m.tokenizer, prompt, SamplingConfig(**{**vars(sc), "seed": seed}),
                       stats=stats)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    m, lim = served_model(request, req.model, "text-generation"), limits(request)
    unsupported(bool(req.logprobs), "logprobs", "not supported")
    unsupported(req.suffix is not None, "suffix", "not supported")
    unsupported(req.best_of is not None and req.best_of != req.n, "best_of",
                "only best_of == n (or unset) is supported")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise APIError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
    sc = _sampling(m, req, 16 if req.max_tokens is None else req.max_tokens, lim)
    if "translation" in m.capabilities:
        sc = _translation(m, sc, req.temperature, req.max_tokens)
    if len(prompts) * req.n > lim.max_n:
        raise APIError(400, f"n: {len(prompts)} prompts x n={req.n} choices exceeds the limit "
                       f"of {lim.max_n} per request", param="n")
    n_prompt = 0
    for p in prompts:
        ids = encode(m, p)
        _check_prompt(m, ids, lim, "prompt")
        n_prompt += len(ids)
    seeds = _seeds(req.seed, len(prompts) * req.n)
    stats = [dict() for _ in seeds]
    # choice k continues prompt k // n: the n choices of each prompt are adjacent, as OpenAI orders them
    jobs = [(k, _text_job(m, prompts[k // req.n], sc, seeds[k], stats[k], lim)) for k in range(len(seeds))]
    echo = [prompts[k // req.n] if req.echo else "" for k in range(len(seeds))]
    return await _text_response(request, req, m, jobs, stats, n_prompt, chat=False, echo=echo)


@router.post("/v1/chat/completions")
async def chat(req: ChatRequest, request: Request):
    m, lim = served_model(request, req.model, "text-generation"), limits(request)
    unsupported(bool(req.logprobs) or bool(req.top_logprobs), "logprobs", "not supported")
    messages = []
    for msg in req.messages:
        text = msg.content if isinstance(msg.content, str) else "".join(p.text for p in msg.content)
        messages.append({"role": msg.role, "content": text})
    source = None
    if "translation" in m.capabilities:  # the last user message is the sentence to translate
        users = [msg["content"] for msg in messages if msg["role"] == "user"]
        if not users:
            raise APIError(400, "messages: a translation model translates the last user message; "
                           "there is none", param="messages")
        source = users[-1]
    try:  # the run's chat template (genforge.generate.chat): the model's own, or plain text
        ids = (m.tokenizer.encode(source) if source is not None
               else m.chat_template.prompt_ids(messages, m.tokenizer))
    except ValueError as e:  # a character a char vocabulary never saw; a template's refusal
        raise APIError(400, f"messages: {e}", param="messages") from None
    _check_prompt(m, ids, lim, "messages")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    sc = _sampling(m, req, lim.chat_max_tokens if max_tokens is None else max_tokens, lim,
                   extra_stops=m.chat_template.stop)
    sc.stop_ids = list(m.chat_template.stop_ids)  # end-of-turn tokens: the reply ends there
    if source is not None:
        sc = _translation(m, sc, req.temperature, max_tokens)
    seeds = _seeds(req.seed, req.n)
    stats = [dict() for _ in seeds]
    jobs = [(k, _text_job(m, ids if source is None else source, sc, seeds[k], stats[k], lim))
            for k in range(req.n)]
    return await _text_response(request, req, m, jobs, stats, len(ids), chat=True)


async def _text_response(request: Request, req, m: ServedModel, jobs, stats, n_prompt: int,
                         chat: bool, echo: list[str] | None = None):
    batch = pool(request).submit(jobs, asyncio.get_running_loop())
    k = len(jobs)
    reply = fmt.TextReply(m.id, chat, bool(req.stream_options and req.stream_options.include_usage))
    if not req.stream:
        texts = [[] for _ in range(k)]
        async for tag, piece in batch.items(poll=request.is_disconnected):
            texts[tag].append(piece)
        if batch.open:  # the client went away; nobody reads an answer
            return JSONResponse({}, status_code=499)
        whole = [(echo[i] if echo else "") + "".join(texts[i]) for i in range(k)]
        reasons = [stats[i].get("finish_reason", "length") for i in range(k)]
        return reply.whole(whole, reasons, fmt.usage(n_prompt, stats))

    async def events():
        if chat:
            for i in range(k):
                yield reply.chunk([reply.choice(i, "", None, first=True)])
        elif echo and any(echo):
            for i in range(k):
                yield reply.chunk([reply.choice(i, echo[i], None)])
        try:
            async for tag, piece in batch.items():
                yield reply.chunk([reply.choice(tag, piece, None)])
            for i in range(k):
                yield reply.chunk([reply.choice(i, None if chat else "", stats[i].get("finish_reason", "length"))])
            if reply.include_usage:
                yield reply.usage_chunk(fmt.usage(n_prompt, stats))
        except Exception as e:  # the status line is sent already: report in the stream
            log.exception("generation failed")
            yield fmt.sse(APIError(500, f"generation failed ({e.__class__.__name__})").body())
        yield fmt.SSE_DONE

    return fmt.SSEResponse(events(), on_close=batch.cancel)
