"""Sampling from any text model: temperature, top-k, top-p, repetition penalty, stop strings,
a seed, and a streaming generator that yields text as it is produced.

Works with every model that has `step(idx, state) -> (last_logits (B, V), state)` (the GPT
with its KV cache, the recurrent models with their hidden state) and a `context_size`.
With `use_cache=False` the whole (cropped) context is re-run for every token instead: that
is the slow reference the KV cache is measured against (bench/bench_lm.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class SamplingConfig:
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 = greedy argmax
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: smallest set with probability >= top_p (Holtzman et al. 2020)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (CTRL, Keskar et al. 2019)
    stop: list[str] = field(default_factory=list)  # stop at (and drop) the first of these strings
    # stop at (and drop) any of these tokens: a pretrained model's end-of-turn / end-of-text
    # tokens, which decode to no text, so no stop string can see them
    stop_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    # decoder Transformers (GPT, Llama): run each one-token decode step through torch.compile
    # (needs a C++ compiler on CPU; the first call compiles for seconds, then each token costs
    # less: the step's many small ops are fused)
    compile: bool = False

    def check(self) -> "SamplingConfig":
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        return self

    def check_model(self, model: Any) -> "SamplingConfig":
        """check(), plus the options that depend on the model."""
        self.check()
        if self.compile and not getattr(model, "supports_compile", False):
            raise ValueError(f"compile applies to decoder Transformer models (GPT, Llama), not "
                             f"{type(model).__name__} (recurrent models carry their state: their "
                             "step is already one cell)")
        return self


def stop_strings(run_cfg: Any, requested: Sequence[str] = ()) -> list[str]:
    """The one stopping rule of every text generation from a run (the CLI, the server,
    the samples logged in training): the stop strings asked for, plus the end of a record
    when the run was trained on records separated by lines of `delimiter` (the model has
    learnt to write that line after each record, so without it one answer runs on into an
    unrelated next record)."""
    stops = [s for s in requested if s]
    delimiter = getattr(run_cfg, "delimiter", "")
    if delimiter and f"\n{delimiter}\n" not in stops:
        stops.append(f"\n{delimiter}\n")
    return stops


# ---------------------------------------------------------------------------------------
# logits -> next token


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: divide positive logits of seen tokens by `penalty`, multiply negative
    ones (so the token always becomes less likely). logits (B, V), seen (B, V) bool."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but the k largest logits of each row to -inf. logits (B, V)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to >= p; the most
    likely token is always kept. logits (B, V)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly before each token
    drop_sorted = before >= p
    drop_sorted[:, 0] = False  # the most likely token stays, even when p rounds to 0 in float32
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token (B,) from last-position logits (B, V)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty).clamp(-1e30, 1e30)
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    if cfg.temperature != 1.0:
        # shift so the best logit is 0 first: a tiny temperature then sends the others to
        # -inf (near-greedy) instead of overflowing everything to inf (NaN probabilities)
        logits = logits.clamp(-1e30, 1e30)
        # (floored at 1e-6, below which float32 division underflows: greedy in effect)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(cfg.temperature, 1e-6)
    logits = top_k_filter(logits, cfg.top_k)
    logits = top_p_filter(logits, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return _draw(probs, generator)


def _draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, V) by inverse-CDF sampling: a uniform draw located in
    the cumulative sums. Same distribution as torch.multinomial(probs, 1) at a tenth of its
    cost for one sample (it matters once per generated token). `right=True` never picks a
    zero-probability token: it returns the first index whose cumulative sum exceeds u."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.size(-1) - 1)


# ---------------------------------------------------------------------------------------
# token streams


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _full_context_logits(model: Any, ctx: torch.Tensor) -> torch.Tensor:
    out = model(ctx)
    logits = out[0] if isinstance(out, tuple) else out
    return logits[:, -1, :]


class TokenSampler:
    """The sampling state of one generation: its settings, its seeded generator and, for the
    repetition penalty, the tokens already in the context. `sample_tokens` and the server's
    continuous batching (genforge/serve/batching.py) both draw every token through one of
    these, so a stream sampled from a row of a batched forward takes exactly the steps it
    takes alone: same filters, same generator, same draws."""

    def __init__(self, cfg: SamplingConfig, prompt: torch.Tensor):
        self.cfg, self.prompt = cfg, prompt  # prompt (B, T) on the model's device
        self.generator = None
        if cfg.seed is not None:
            self.generator = torch.Generator(device=prompt.device)
            self.generator.manual_seed(cfg.seed)
        self.seen: torch.Tensor | None = None  # (B, V) tokens already in the context

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (B,) from last-position logits (B, V); recorded as seen."""
        if self.cfg.repetition_penalty != 1.0 and self.seen is None:
            self.seen = torch.zeros_like(logits, dtype=torch.bool)
            self.seen.scatter_(1, self.prompt.clamp(max=logits.size(-1) - 1), True)
        with torch.inference_mode():
            tok = next_token(logits, self.cfg, self.seen, self.generator)  # (B,)
        tok = tok.clone()  # a normal tensor: the caller may use it outside inference mode
        if self.seen is not None:
            self.seen.scatter_(1, tok.unsqueeze(1), True)
        return tok


def sample_tokens(model: Any, prompt: torch.Tensor, cfg: SamplingConfig,
                  use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the generated tokens one step at a time, each a (B,) tensor.

    prompt: (B, T) token ids, T >= 1. `use_cache=False` re-runs the whole context (cropped to
    the model's context size) for every token."""
    cfg.check_model(model)
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError("prompt must be a (batch, length) tensor with at least one token")
    device = _device(model)
    prompt = prompt.to(device)
    sampler = TokenSampler(cfg, prompt)
    state = None
    ctx = prompt[:, :0]  # the context re-run without a cache, (B, <= context_size)

    # inference mode around each model call, never across a `yield`: the caller's code runs
    # between tokens and must not find itself in inference mode
    def advance(new: torch.Tensor) -> torch.Tensor:
        nonlocal state, ctx
        with torch.inference_mode():
            if use_cache:
                logits, state = model.step(new, state, compiled=True) if cfg.compile else model.step(new, state)
                return logits
            ctx = torch.cat([ctx, new], dim=1)[:, -model.context_size:]
            return _full_context_logits(model, ctx)

    was_training = model.training
    model.eval()
    try:
        logits = advance(prompt)
        for _ in range(cfg.max_new_tokens):
            tok = sampler(logits)
            yield tok
            logits = advance(tok.unsqueeze(1))
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------
# text


def _prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:  # nothing to condition on: start after a line break, a natural text boundary
        try:
            ids = tokenizer.encode("\n")
        except ValueError:  # a char vocabulary of text without line breaks: its first token
            ids = []
    return ids or [0]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: it
    must not be shown yet, because the next tokens may complete the stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class TextAssembler:
    """Generated token ids -> the text pieces a stream shows, with stop strings and stop ids.

    Decoding covers every token since the last point where all text so far had been shown
    (so a byte-level token that splits a UTF-8 character is shown only once the character is
    complete, and a partial stop string is held back), not the whole continuation: the
    per-token cost stays flat however long the stream. `push(token)` returns the pieces it
    releases; `done` turns True when a stop string or stop id ended the text; `finish()`
    returns what is left at the end. `stats` is kept up to date with `completion_tokens`
    and, at the end, `finish_reason` ("stop" or "length")."""

    def __init__(self, tokenizer: Tokenizer, cfg: SamplingConfig, stats: dict):
        self.tokenizer, self.stats = tokenizer, stats
        stats["completion_tokens"] = 0
        self.stops = [s for s in cfg.stop if s]
        self.stop_ids = set(cfg.stop_ids)
        self.generated: list[int] = []
        self.base = 0  # tokens before this were decoded and shown in full (nothing held back)
        self.shown = 0  # characters of decode(generated[base:]) already yielded
        self.text = ""
        self.done = False

    def push(self, tok: int) -> list[str]:
        self.stats["completion_tokens"] = len(self.generated) + 1
        if tok in self.stop_ids:
            return self.finish(stopped=True)
        self.generated.append(tok)
        self.text = self.tokenizer.decode(self.generated[self.base:])
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return []
        cut = _first_stop(self.text, self.stops, self.shown)
        if cut >= 0:
            self.stats["finish_reason"] = "stop"
            self.done = True
            return [self.text[self.shown:cut]] if cut > self.shown else []
        pieces = []
        safe = len(self.text) - _held_back(self.text, self.stops)
        if safe > self.shown:
            pieces.append(self.text[self.shown:safe])
            self.shown = safe
        if self.shown == len(self.text):  # all shown: no stop string can straddle this point
            self.base, self.shown, self.text = len(self.generated), 0, ""
        return pieces

    def finish(self, stopped: bool = False) -> list[str]:
        """The rest of the text once the generation ends (`stopped`: by a stop id)."""
        self.done = True
        cut = _first_stop(self.text, self.stops, self.shown)
        self.stats["finish_reason"] = "stop" if cut >= 0 or stopped else "length"
        end = cut if cut >= 0 else len(self.text)
        return [self.text[self.shown:end]] if end > self.shown else []


def prompt_tensor(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> torch.Tensor:
    """A prompt (text, or token ids already encoded) as the (1, T) ids a stream starts from."""
    return torch.tensor([_prompt_ids(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)],
                        dtype=torch.long)


def stream_text(model: Any, tokenizer: Tokenizer, prompt: str | Sequence[int] = "",
                cfg: SamplingConfig | None = None, stats: dict | None = None,
                **overrides: Any) -> Iterator[str]:
    """Yield the continuation of `prompt` (text, or token ids already encoded, e.g. by a chat
    template) piece by piece as it is generated (batch of one), through a `TextAssembler`.

    A stop string ends the stream and is not yielded; so does a token of `stop_ids`.
    `stats`, when given, is kept up to date with `completion_tokens` (tokens sampled so far)
    and, once the stream ends, `finish_reason`: "stop" (a stop string or token) or "length"
    (max_new_tokens)."""
    cfg = SamplingConfig(**{**(vars(cfg) if cfg else {}), **overrides})
    text = TextAssembler(tokenizer, cfg, {} if stats is None else stats)
    for tok in sample_tokens(model, prompt_tensor(tokenizer, prompt), cfg):
        yield from text.push(int(tok[0]))
        if text.done:
            return
    yield from text.finish()


def _first_stop(text: str, stops: Sequence[str], shown: int) -> int:
    """Index of the earliest stop string in `text` (searching only where a new one can be:
    it cannot lie entirely inside the part already shown), or -1."""
    hits = [i for s in stops if (i := text.find(s, max(shown - len(s) + 1, 0))) >= 0]
    return min(hits, default=-1)


def generate_text(model: Any, tokenizer: Tokenizer, prompt: str = "",
                  cfg: SamplingConfig | None = None, **overrides: Any) -> str:
    """The continuation of `prompt` as one string (see `stream_text`)."""
    return "".join(stream_text(model, tokenizer, prompt, cfg, **overrides))
